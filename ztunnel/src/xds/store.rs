//! The resources received over delta xDS, converted, and the [`Snapshot`]
//! built from them. Pure: a delta response goes in, a new snapshot (or the
//! reasons to NACK) comes out.
//!
//! A resource that fails to decode or convert is rejected on its own: it is
//! not stored (a previous version of it stays), and the rest of the
//! response applies. If the accepted resources together are inconsistent
//! (say two workloads claim one IP), the whole response is rejected and the
//! previous state stays in force.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use proto::discovery::Resource;
use proto::workload::address::Type as AddressType;
use proto::{security as pb_sec, workload as pb, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use super::convert::{self, ConvertError, ServiceEntry, WaypointRef, WorkloadEntry};
use crate::state::{Policy, Snapshot, SnapshotParts, StateError, Waypoint, Workload};

/// Why one resource was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource has type {got}, expected {want}")]
    WrongType { got: String, want: &'static str },
    #[error("resource has no body")]
    Empty,
    #[error("decoding protobuf: {0}")]
    Decode(String),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error("unknown type URL {0}")]
    UnknownTypeUrl(String),
}

impl ResourceError {
    /// A low-cardinality reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ResourceError::WrongType { .. } | ResourceError::UnknownTypeUrl(_) => "wrong_type",
            ResourceError::Empty | ResourceError::Decode(_) => "decode",
            ResourceError::Convert(e) => e.reason(),
        }
    }
}

/// A resource that was not applied, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub name: String,
    pub error: ResourceError,
}

/// The outcome of applying one delta response.
#[derive(Debug)]
pub enum Applied {
    /// Everything applied; publish this snapshot.
    Ok(Snapshot),
    /// Some resources were rejected (NACK with these), the rest applied.
    Partial(Snapshot, Vec<Rejection>),
    /// The response as a whole is inconsistent; nothing changed.
    Inconsistent(StateError),
}

#[derive(Debug, Clone)]
enum AddressEntry {
    Workload(WorkloadEntry),
    Service(ServiceEntry),
}

/// Every resource held, by type URL and name, with its version.
#[derive(Debug, Clone, Default)]
pub struct XdsStore {
    addresses: BTreeMap<String, (String, AddressEntry)>,
    authorizations: BTreeMap<String, (String, Policy)>,
}

impl XdsStore {
    /// Resource versions held for `type_url`: the `initial_resource_versions`
    /// of a reconnecting client.
    pub fn versions(&self, type_url: &str) -> HashMap<String, String> {
        match type_url {
            ADDRESS_TYPE_URL => self
                .addresses
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect(),
            AUTHORIZATION_TYPE_URL => self
                .authorizations
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect(),
            _ => HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.addresses.len() + self.authorizations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one delta response for `type_url`.
    pub fn apply(&mut self, type_url: &str, resources: &[Resource], removed: &[String]) -> Applied {
        let mut next = self.clone();
        let mut rejected = Vec::new();
        for r in resources {
            if let Err(error) = next.upsert(type_url, r) {
                rejected.push(Rejection {
                    name: r.name.clone(),
                    error,
                });
            }
        }
        for name in removed {
            match type_url {
                ADDRESS_TYPE_URL => {
                    next.addresses.remove(name);
                }
                AUTHORIZATION_TYPE_URL => {
                    next.authorizations.remove(name);
                }
                _ => {}
            }
        }
        match next.snapshot() {
            Ok(snap) => {
                *self = next;
                if rejected.is_empty() {
                    Applied::Ok(snap)
                } else {
                    Applied::Partial(snap, rejected)
                }
            }
            Err(e) => Applied::Inconsistent(e),
        }
    }

    fn upsert(&mut self, type_url: &str, r: &Resource) -> Result<(), ResourceError> {
        let any = r.resource.as_ref().ok_or(ResourceError::Empty)?;
        let want = match type_url {
            ADDRESS_TYPE_URL => ADDRESS_TYPE_URL,
            AUTHORIZATION_TYPE_URL => AUTHORIZATION_TYPE_URL,
            other => return Err(ResourceError::UnknownTypeUrl(other.to_owned())),
        };
        if any.type_url != want {
            return Err(ResourceError::WrongType {
                got: any.type_url.clone(),
                want,
            });
        }
        let decode_err = |e: prost::DecodeError| ResourceError::Decode(e.to_string());
        if want == ADDRESS_TYPE_URL {
            let addr = pb::Address::decode(any.value.as_slice()).map_err(decode_err)?;
            let entry = match addr.r#type {
                Some(AddressType::Workload(w)) => AddressEntry::Workload(convert::workload(&w)?),
                Some(AddressType::Service(s)) => AddressEntry::Service(convert::service(&s)?),
                None => return Err(ConvertError::Missing("type").into()),
            };
            self.addresses
                .insert(r.name.clone(), (r.version.clone(), entry));
        } else {
            let a = pb_sec::Authorization::decode(any.value.as_slice()).map_err(decode_err)?;
            let policy = convert::authorization(&a)?;
            self.authorizations
                .insert(r.name.clone(), (r.version.clone(), policy));
        }
        Ok(())
    }

    /// Builds the domain snapshot: services get their endpoints from the
    /// workloads that name them, and waypoint references are resolved to an
    /// address and identity. A waypoint that cannot be resolved leaves its
    /// owner out of the snapshot (never a silent bypass of the waypoint).
    pub fn snapshot(&self) -> Result<Snapshot, StateError> {
        let mut workloads: Vec<&WorkloadEntry> = Vec::new();
        let mut services: Vec<&ServiceEntry> = Vec::new();
        for (_, entry) in self.addresses.values() {
            match entry {
                AddressEntry::Workload(w) => workloads.push(w),
                AddressEntry::Service(s) => services.push(s),
            }
        }
        let resolver = Resolver {
            workloads: &workloads,
            services: &services,
        };
        let mut parts = SnapshotParts::default();
        for w in &workloads {
            let mut workload = w.workload.clone();
            match resolver.waypoint(w.waypoint.as_ref()) {
                Ok(wp) => workload.waypoint = wp,
                Err(()) => {
                    tracing::warn!(workload = %workload.uid, waypoint = ?w.waypoint, "waypoint unknown; workload left out");
                    continue;
                }
            }
            parts.workloads.push(workload);
        }
        for s in &services {
            let mut service = s.service.clone();
            let key = service_key(&service.namespace, &service.hostname);
            service.endpoint_uids = workloads
                .iter()
                .filter(|w| w.services.contains(&key))
                .map(|w| w.workload.uid.clone())
                .collect();
            match resolver.waypoint(s.waypoint.as_ref()) {
                Ok(wp) => service.waypoint = wp,
                Err(()) => {
                    tracing::warn!(service = %key, waypoint = ?s.waypoint, "waypoint unknown; service left out");
                    continue;
                }
            }
            parts.services.push(service);
        }
        parts.policies = self
            .authorizations
            .values()
            .map(|(_, p)| p.clone())
            .collect();
        Snapshot::build(parts)
    }
}

/// `namespace/hostname`, how xDS names a service.
pub fn service_key(namespace: &str, hostname: &str) -> String {
    format!("{namespace}/{hostname}")
}

struct Resolver<'a> {
    workloads: &'a [&'a WorkloadEntry],
    services: &'a [&'a ServiceEntry],
}

impl Resolver<'_> {
    /// The waypoint behind `r`: its address, and the identity of the
    /// workload that serves it. `Err` when it names nothing we know.
    fn waypoint(&self, r: Option<&WaypointRef>) -> Result<Option<Waypoint>, ()> {
        let Some(r) = r else { return Ok(None) };
        let by_uid = |uids: &mut dyn Iterator<Item = &Workload>| {
            uids.min_by(|a, b| a.uid.cmp(&b.uid)).map(|w| w.identity())
        };
        match r {
            WaypointRef::Address(ip) => {
                let mut owners = self
                    .workloads
                    .iter()
                    .map(|w| &w.workload)
                    .filter(|w| w.ips.contains(ip));
                if let Some(identity) = by_uid(&mut owners) {
                    return Ok(Some(Waypoint {
                        address: *ip,
                        identity,
                    }));
                }
                let svc = self
                    .services
                    .iter()
                    .find(|s| s.service.vips.contains(ip))
                    .ok_or(())?;
                self.behind(svc, *ip)
            }
            WaypointRef::Service(key) => {
                let svc = self
                    .services
                    .iter()
                    .find(|s| service_key(&s.service.namespace, &s.service.hostname) == *key)
                    .ok_or(())?;
                let ip = *svc.service.vips.first().ok_or(())?;
                self.behind(svc, ip)
            }
        }
    }

    fn behind(&self, svc: &ServiceEntry, ip: std::net::IpAddr) -> Result<Option<Waypoint>, ()> {
        let key = service_key(&svc.service.namespace, &svc.service.hostname);
        let identity = self
            .workloads
            .iter()
            .filter(|w| w.services.contains(&key))
            .map(|w| &w.workload)
            .min_by(|a, b| a.uid.cmp(&b.uid))
            .map(|w| w.identity())
            .ok_or(())?;
        Ok(Some(Waypoint {
            address: ip,
            identity,
        }))
    }
}

#[cfg(test)]
mod tests;
