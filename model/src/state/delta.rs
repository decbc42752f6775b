//! The next snapshot from the previous one and what changed, without
//! re-indexing what did not: what the xDS store does on each delta.
//!
//! A patch clones the previous snapshot (its indexes are persistent sets:
//! a few pointers), then removes and adds the changed objects with the
//! same checks as [`Snapshot::build`], copying only the index paths they
//! change. It is for
//! state in the xDS form: services name their endpoints by uid
//! ([`Service::endpoint_uids`]) and waypoints come resolved. Label
//! selectors and `istio.io/use-waypoint` labels (the local config file)
//! need the whole state, so that source always builds from scratch.

use std::collections::HashSet;
use std::sync::Arc;

use super::l7::L7Index;
use super::snapshot::{check_identity, LabelIndex};
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
        for uid in &removed_workloads {
            next.remove_workload(uid);
        }
        for (namespace, name) in &removed_services {
            next.remove_service(namespace, name);
        }
        for w in workloads {
            next.add_workload(w)?;
        }
        let no_labels = LabelIndex::default();
        for svc in services {
            next.add_service(svc, &no_labels)?;
        }
        if let Some(p) = policies {
            next.policies = Arc::new(Policies::new(p));
        }
        if routes.is_some() || l7_policies.is_some() {
            let routes = routes.unwrap_or_else(|| self.l7.routes().to_vec());
            let l7_policies = l7_policies.unwrap_or_else(|| self.l7.policies().to_vec());
            next.l7 = Arc::new(L7Index::build(routes, l7_policies)?);
        }
        Ok(next)
    }

    /// Checks `w` against what is held (uid, identity, addresses) and
    /// indexes it, with no services yet.
    pub(crate) fn add_workload(&mut self, w: Arc<Workload>) -> Result<(), StateError> {
        if self.workload_by_uid(&w.uid).is_some() {
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
        self.index_workload(w);
        Ok(())
    }

    /// Indexes `routes` and `l7_policies` anew (they are few).
    pub(crate) fn replace_l7(
        &mut self,
        routes: Vec<Arc<Route>>,
        l7_policies: Vec<Arc<L7Policy>>,
    ) -> Result<(), StateError> {
        self.l7 = Arc::new(L7Index::build(routes, l7_policies)?);
        Ok(())
    }
}
