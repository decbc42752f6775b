//! Waypoints and service members resolved across the whole store, with
//! indexes built once per snapshot.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{service_key, StoredWorkload};
use crate::state::{MissingWaypoint, UseWaypoint, Waypoint, Workload};
use crate::xds::convert::{ServiceEntry, WaypointRef};

/// Indexes built once per snapshot, so resolving every workload's
/// waypoint and every service's endpoints stays linear in the state size.
pub(super) struct Resolver<'a> {
    /// Service key → the workloads that name it, sorted by uid.
    members: HashMap<&'a str, Vec<&'a Workload>>,
    /// Address → the workload with the smallest uid that holds it.
    owner_by_ip: HashMap<IpAddr, &'a Workload>,
    /// The first service (in resource order) by key and by VIP.
    service_by_key: HashMap<String, &'a ServiceEntry>,
    service_by_vip: HashMap<IpAddr, &'a ServiceEntry>,
}

impl<'a> Resolver<'a> {
    pub(super) fn index(workloads: &[&'a StoredWorkload], services: &[&'a ServiceEntry]) -> Self {
        let mut members: HashMap<&str, Vec<&Workload>> = HashMap::new();
        let mut owner_by_ip: HashMap<IpAddr, &Workload> = HashMap::new();
        for w in workloads {
            for key in &w.services {
                members.entry(key.as_str()).or_default().push(&w.workload);
            }
            for ip in &w.workload.ips {
                let owner = owner_by_ip.entry(*ip).or_insert(&w.workload);
                if w.workload.uid < owner.uid {
                    *owner = &w.workload;
                }
            }
        }
        for list in members.values_mut() {
            list.sort_by(|a, b| a.uid.cmp(&b.uid));
        }
        let mut service_by_key = HashMap::new();
        let mut service_by_vip = HashMap::new();
        for s in services {
            let key = service_key(&s.service.namespace, &s.service.hostname);
            service_by_key.entry(key).or_insert(*s);
            for vip in &s.service.vips {
                service_by_vip.entry(*vip).or_insert(*s);
            }
        }
        Resolver {
            members,
            owner_by_ip,
            service_by_key,
            service_by_vip,
        }
    }

    pub(super) fn members(&self, key: &str) -> &[&'a Workload] {
        self.members.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The waypoint behind `r`: its address, and the identity of the
    /// workload that serves it; [`UseWaypoint::Missing`] when `r` names
    /// nothing we know (or a Service without a VIP or an endpoint).
    pub(super) fn waypoint(&self, r: Option<&WaypointRef>) -> Option<UseWaypoint> {
        let r = r?;
        Some(match self.resolve(r) {
            Some(wp) => UseWaypoint::Ready(wp),
            None => UseWaypoint::Missing(Box::new(missing(r))),
        })
    }

    fn resolve(&self, r: &WaypointRef) -> Option<Waypoint> {
        let (svc, address) = match r {
            WaypointRef::Address(ip) => {
                if let Some(owner) = self.owner_by_ip.get(ip) {
                    return Some(Waypoint {
                        address: *ip,
                        identity: owner.identity(),
                    });
                }
                (*self.service_by_vip.get(ip)?, *ip)
            }
            WaypointRef::Service(key) => {
                let svc = *self.service_by_key.get(key)?;
                (svc, *svc.service.vips.first()?)
            }
        };
        let key = service_key(&svc.service.namespace, &svc.service.hostname);
        let server = self.members(&key).first()?;
        Some(Waypoint {
            address,
            identity: server.identity(),
        })
    }
}

/// How a reference that resolves to nothing is named in the snapshot.
fn missing(r: &WaypointRef) -> MissingWaypoint {
    match r {
        WaypointRef::Address(ip) => MissingWaypoint::Address(*ip),
        WaypointRef::Service(key) => {
            let (namespace, hostname) = key.split_once('/').unwrap_or(("", key));
            MissingWaypoint::Service {
                namespace: namespace.to_owned(),
                hostname: hostname.to_owned(),
            }
        }
    }
}
