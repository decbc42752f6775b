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
use std::net::IpAddr;

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
        let resolver = Resolver::index(&workloads, &services);
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
            service.endpoint_uids = resolver
                .members(&key)
                .iter()
                .map(|w| w.uid.clone())
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

/// Indexes built once per snapshot, so resolving every workload's
/// waypoint and every service's endpoints stays linear in the state size.
struct Resolver<'a> {
    /// Service key → the workloads that name it, sorted by uid.
    members: HashMap<&'a str, Vec<&'a Workload>>,
    /// Address → the workload with the smallest uid that holds it.
    owner_by_ip: HashMap<IpAddr, &'a Workload>,
    /// The first service (in resource order) by key and by VIP.
    service_by_key: HashMap<String, &'a ServiceEntry>,
    service_by_vip: HashMap<IpAddr, &'a ServiceEntry>,
}

impl<'a> Resolver<'a> {
    fn index(workloads: &[&'a WorkloadEntry], services: &[&'a ServiceEntry]) -> Self {
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

    fn members(&self, key: &str) -> &[&'a Workload] {
        self.members.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The waypoint behind `r`: its address, and the identity of the
    /// workload that serves it. `Err` when it names nothing we know.
    fn waypoint(&self, r: Option<&WaypointRef>) -> Result<Option<Waypoint>, ()> {
        let Some(r) = r else { return Ok(None) };
        let (svc, address) = match r {
            WaypointRef::Address(ip) => {
                if let Some(owner) = self.owner_by_ip.get(ip) {
                    return Ok(Some(Waypoint {
                        address: *ip,
                        identity: owner.identity(),
                    }));
                }
                (*self.service_by_vip.get(ip).ok_or(())?, *ip)
            }
            WaypointRef::Service(key) => {
                let svc = *self.service_by_key.get(key).ok_or(())?;
                (svc, *svc.service.vips.first().ok_or(())?)
            }
        };
        let key = service_key(&svc.service.namespace, &svc.service.hostname);
        let server = self.members(&key).first().ok_or(())?;
        Ok(Some(Waypoint {
            address,
            identity: server.identity(),
        }))
    }
}

#[cfg(test)]
mod tests;
