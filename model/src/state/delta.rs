//! The next snapshot from the previous one and what changed, without
//! re-indexing what did not: what the xDS store does on each delta.
//!
//! A patch copies the previous snapshot's indexes (pointers only: no
//! workload, service or string is copied), then removes and adds the
//! changed objects with the same checks as [`Snapshot::build`]. It is for
//! state in the xDS form: services name their endpoints by uid
//! ([`Service::endpoint_uids`]) and waypoints come resolved. Label
//! selectors and `istio.io/use-waypoint` labels (the local config file)
//! need the whole state, so that source always builds from scratch.

use std::collections::HashSet;
use std::sync::Arc;

use super::l7::L7Index;
use super::snapshot::{check_identity, ByName, LabelIndex};
use super::{Policies, Policy, Service, Snapshot, StateError, Workload};
use crate::l7policy::L7Policy;
use crate::route::Route;

/// What changed between two snapshots.
///
/// Objects are replaced by removing the old one and adding the new one: a
/// workload added under a uid that is still present, or a service under a
/// `namespace/name` that is still present, is a duplicate. A service's
/// endpoints are computed when it is added, so whoever changes or removes a
/// workload must also re-add every service that lists its uid.
#[derive(Debug, Default, Clone)]
pub struct SnapshotDelta {
    /// Workloads to remove, by uid; unknown uids are ignored.
    pub removed_workloads: Vec<String>,
    /// Services to remove, by (namespace, name); unknown ones are ignored.
    pub removed_services: Vec<(String, String)>,
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Service>,
    /// The whole policy set, when it changed.
    pub policies: Option<Vec<Policy>>,
    /// The whole route set, when it changed.
    pub routes: Option<Vec<Arc<Route>>>,
    /// The whole L7 policy set, when it changed.
    pub l7_policies: Option<Vec<Arc<L7Policy>>>,
}

impl SnapshotDelta {
    pub fn is_empty(&self) -> bool {
        self.removed_workloads.is_empty()
            && self.removed_services.is_empty()
            && self.workloads.is_empty()
            && self.services.is_empty()
            && self.policies.is_none()
            && self.routes.is_none()
            && self.l7_policies.is_none()
    }
}

impl Snapshot {
    /// This snapshot with `delta` applied. Errors as [`Snapshot::build`]
    /// would on the resulting state (the message may name the two clashing
    /// objects in the other order).
    pub fn patch(&self, delta: SnapshotDelta) -> Result<Snapshot, StateError> {
        let SnapshotDelta {
            removed_workloads,
            removed_services,
            workloads,
            services,
            policies,
            routes,
            l7_policies,
        } = delta;
        let mut next = self.clone();
        next.remove_workloads(&removed_workloads);
        next.remove_services(&removed_services);
        for w in workloads {
            next.add_workload(w)?;
        }
        let no_labels = LabelIndex::default();
        for svc in services {
            next.add_service(svc, &no_labels)?;
        }
        if let Some(p) = policies {
            next.policies = Policies::new(p);
        }
        if routes.is_some() || l7_policies.is_some() {
            let routes = routes.unwrap_or_else(|| self.l7.routes().to_vec());
            let l7_policies = l7_policies.unwrap_or_else(|| self.l7.policies().to_vec());
            next.l7 = Arc::new(L7Index::build(routes, l7_policies)?);
        }
        Ok(next)
    }

    fn remove_workloads(&mut self, uids: &[String]) {
        let mut gone: Vec<Arc<Workload>> = Vec::new();
        for uid in uids {
            let Some(w) = self.workload_by_uid.take(uid.as_str()).map(|b| b.0) else {
                continue;
            };
            for ip in &w.ips {
                if self
                    .workload_by_ip
                    .get(ip)
                    .is_some_and(|x| Arc::ptr_eq(x, &w))
                {
                    self.workload_by_ip.remove(ip);
                }
            }
            if let Some(names) = self.workload_by_name.get_mut(w.namespace.as_str()) {
                if names
                    .get(w.name.as_str())
                    .is_some_and(|x| Arc::ptr_eq(&x.0, &w))
                {
                    names.remove(w.name.as_str());
                }
                if names.is_empty() {
                    self.workload_by_name.remove(w.namespace.as_str());
                }
            }
            gone.push(w);
        }
        if gone.is_empty() {
            return;
        }
        let gone_ptrs: HashSet<*const Workload> = gone.iter().map(Arc::as_ptr).collect();
        self.workloads
            .retain(|w| !gone_ptrs.contains(&Arc::as_ptr(w)));
        // Another workload of the same name (rare) takes the name back:
        // the last one listed, as in a build.
        for w in &gone {
            let taken = self
                .workload_by_name
                .get(w.namespace.as_str())
                .is_some_and(|m| m.contains(w.name.as_str()));
            if taken {
                continue;
            }
            if let Some(other) = self
                .workloads
                .iter()
                .rev()
                .find(|o| o.namespace == w.namespace && o.name == w.name)
            {
                self.workload_by_name
                    .entry(other.namespace.clone())
                    .or_default()
                    .insert(ByName(other.clone()));
            }
        }
    }

    fn remove_services(&mut self, keys: &[(String, String)]) {
        let mut gone: Vec<Arc<Service>> = Vec::new();
        for (namespace, name) in keys {
            let Some(names) = self.endpoints.get_mut(namespace.as_str()) else {
                continue;
            };
            let Some(served) = names.remove(name.as_str()) else {
                continue;
            };
            if names.is_empty() {
                self.endpoints.remove(namespace.as_str());
            }
            for vip in &served.service.vips {
                if self
                    .service_by_vip
                    .get(vip)
                    .is_some_and(|x| Arc::ptr_eq(x, &served.service))
                {
                    self.service_by_vip.remove(vip);
                }
            }
            gone.push(served.service);
        }
        if !gone.is_empty() {
            self.services
                .retain(|s| !gone.iter().any(|g| Arc::ptr_eq(g, s)));
        }
    }

    fn add_workload(&mut self, w: Arc<Workload>) -> Result<(), StateError> {
        if self.workload_by_uid.contains(w.uid.as_str()) {
            return Err(StateError::DuplicateWorkload(w.uid.clone()));
        }
        check_identity(&w)?;
        for ip in &w.ips {
            if let Some(first) = self.ip_claimed_by(ip) {
                return Err(StateError::DuplicateIp {
                    ip: *ip,
                    first,
                    second: w.key(),
                });
            }
        }
        // Two addresses of one workload that are equal: as in a build.
        let mut own = HashSet::new();
        for ip in &w.ips {
            if !own.insert(*ip) {
                return Err(StateError::DuplicateIp {
                    ip: *ip,
                    first: w.key(),
                    second: w.key(),
                });
            }
        }
        self.index_workload(&w);
        self.workloads.push(w);
        Ok(())
    }
}
