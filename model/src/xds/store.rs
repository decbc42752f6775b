//! The resources received over delta xDS, converted, and the [`Snapshot`]
//! built from them. Pure: a delta response goes in, a new snapshot (or the
//! reasons to NACK) comes out.
//!
//! A resource that fails to decode or convert is rejected on its own
//! (NACKed), and the rest of the response applies. Anything but an L4
//! authorization policy is not stored (a previous version of it stays).
//! An authorization policy fails closed: a deny-all over the scope it names
//! takes its place, a previous version included ([`fail_closed`]); it is
//! held without a version, so a reconnect asks for it again. If the
//! accepted resources together are inconsistent (say two workloads claim
//! one IP), the whole response is rejected and the previous state stays in
//! force.
//!
//! Four types are held: `istio.workload.Address` and
//! `istio.security.Authorization` (ztunnel's), and the waypoint's
//! `ambient.mesh.v1.Route` and `ambient.mesh.v1.L7Authorization`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use proto::discovery::Resource;
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_AUTHORIZATION_TYPE_URL, ROUTE_TYPE_URL};

use super::convert::{ConvertError, ServiceEntry, WaypointRef, WorkloadEntry};
use super::l7convert::FieldError;
use crate::l7policy::L7Policy;
use crate::route::Route;
use crate::state::{
    Policy, SharedParts, Snapshot, SnapshotDelta, StateError, UseWaypoint, Workload,
};
use decode::decode;
use resolve::Resolver;

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
    /// A route or L7 policy with a bad field.
    #[error(transparent)]
    Field(#[from] FieldError),
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
            ResourceError::Field(e) => e.reason(),
        }
    }
}

/// A resource that was not applied, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub name: String,
    pub error: ResourceError,
    /// For a policy: the deny-all installed in its place.
    pub fail_closed: Option<Policy>,
}

/// The outcome of applying one delta response.
#[derive(Debug)]
pub enum Applied {
    /// Everything applied; publish this snapshot.
    Ok(Arc<Snapshot>),
    /// Some resources were rejected (NACK with these), the rest applied.
    Partial(Arc<Snapshot>, Vec<Rejection>),
    /// The response as a whole is inconsistent; nothing changed.
    Inconsistent(StateError),
}

/// A workload as held: shared with every snapshot that holds it unchanged
/// (one with a waypoint gets its own copy, with the waypoint resolved).
#[derive(Debug, Clone)]
struct StoredWorkload {
    workload: Arc<Workload>,
    waypoint: Option<WaypointRef>,
    /// `namespace/hostname` of the services it is an endpoint of.
    services: Vec<String>,
}

impl From<WorkloadEntry> for StoredWorkload {
    fn from(e: WorkloadEntry) -> Self {
        StoredWorkload {
            workload: Arc::new(e.workload),
            waypoint: e.waypoint,
            services: e.services,
        }
    }
}

#[derive(Debug, Clone)]
enum AddressEntry {
    Workload(StoredWorkload),
    /// Boxed: a `Service` is several times a workload's entry, and every
    /// slot of the map would be that large.
    Service(Box<ServiceEntry>),
}

impl AddressEntry {
    fn waypoint(&self) -> Option<&WaypointRef> {
        match self {
            AddressEntry::Workload(w) => w.waypoint.as_ref(),
            AddressEntry::Service(s) => s.waypoint.as_ref(),
        }
    }
}

/// A resource as held, with its version.
#[derive(Debug, Clone)]
struct Held<T> {
    version: String,
    value: T,
}

/// A decoded and converted resource.
enum Decoded {
    Address(AddressEntry),
    Authorization(Policy),
    Route(Route),
    L7Policy(L7Policy),
}

/// What one response changed: every touched name with what it held before
/// (`None`: nothing), to roll back an inconsistent response and to patch
/// the snapshot.
#[derive(Default)]
struct Touched {
    addresses: BTreeMap<String, Option<Held<AddressEntry>>>,
    authorizations: BTreeMap<String, Option<Held<Policy>>>,
    routes: BTreeMap<String, Option<Held<Arc<Route>>>>,
    l7_policies: BTreeMap<String, Option<Held<Arc<L7Policy>>>>,
}

impl Touched {
    fn is_empty(&self) -> bool {
        self.addresses.is_empty()
            && self.authorizations.is_empty()
            && self.routes.is_empty()
            && self.l7_policies.is_empty()
    }
}

/// A delta touching more addresses than this (or than an eighth of those
/// held) builds the snapshot from scratch instead of patching it.
const MAX_PATCH: usize = 64;

/// Every resource held, by type URL and name, with its version, and the
/// snapshot built from them.
///
/// A response is applied in place, remembering what it replaced, and
/// undone if the result is inconsistent. The next snapshot is patched from
/// the previous one ([`Snapshot::patch`]) when the delta is small and
/// touches nothing a waypoint reference resolves through; otherwise it is
/// built from scratch ([`XdsStore::snapshot`]).
#[derive(Debug, Default)]
pub struct XdsStore {
    addresses: BTreeMap<String, Held<AddressEntry>>,
    authorizations: BTreeMap<String, Held<Policy>>,
    routes: BTreeMap<String, Held<Arc<Route>>>,
    l7_policies: BTreeMap<String, Held<Arc<L7Policy>>>,
    /// Service resource names by `namespace/hostname`.
    services_by_key: HashMap<String, BTreeSet<String>>,
    /// The waypoint references held, with how many resources make each.
    waypoint_refs: HashMap<WaypointRef, usize>,
    /// The snapshot of what is held: the base of the next patch.
    last: Option<Arc<Snapshot>>,
}

impl XdsStore {
    /// Resource versions held for `type_url`: the `initial_resource_versions`
    /// of a reconnecting client. A fail-closed stand-in has no version and
    /// is left out, so the server sends that resource again.
    pub fn versions(&self, type_url: &str) -> HashMap<String, String> {
        fn of<T>(m: &BTreeMap<String, Held<T>>) -> HashMap<String, String> {
            m.iter()
                .filter(|(_, h)| !h.version.is_empty())
                .map(|(k, h)| (k.clone(), h.version.clone()))
                .collect()
        }
        match type_url {
            ADDRESS_TYPE_URL => of(&self.addresses),
            AUTHORIZATION_TYPE_URL => of(&self.authorizations),
            ROUTE_TYPE_URL => of(&self.routes),
            L7_AUTHORIZATION_TYPE_URL => of(&self.l7_policies),
            _ => HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.addresses.len()
            + self.authorizations.len()
            + self.routes.len()
            + self.l7_policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one delta response for `type_url`, copying the resources;
    /// [`XdsStore::apply_owned`] moves them instead.
    pub fn apply(&mut self, type_url: &str, resources: &[Resource], removed: &[String]) -> Applied {
        self.apply_owned(type_url, resources.to_vec(), removed)
    }

    /// Applies one delta response for `type_url`.
    ///
    /// Takes the resources by value: their names and versions move into
    /// the store instead of being copied (see [`super::convert::workload`]).
    pub fn apply_owned(
        &mut self,
        type_url: &str,
        resources: Vec<Resource>,
        removed: &[String],
    ) -> Applied {
        let mut touched = Touched::default();
        let mut rejected = Vec::new();
        for r in resources {
            match decode(type_url, &r) {
                Ok(value) => self.put(&mut touched, r.name, r.version, value),
                Err(error) => {
                    let fail_closed =
                        (type_url == AUTHORIZATION_TYPE_URL).then(|| fail_closed::deny_all(&r));
                    if let Some(p) = &fail_closed {
                        let stand_in = Held {
                            version: String::new(),
                            value: p.clone(),
                        };
                        self.set_authorization(&mut touched, r.name.clone(), Some(stand_in));
                    }
                    rejected.push(Rejection {
                        name: r.name,
                        error,
                        fail_closed,
                    });
                }
            }
        }
        for name in removed {
            match type_url {
                ADDRESS_TYPE_URL => self.set_address(&mut touched, name.clone(), None),
                AUTHORIZATION_TYPE_URL => self.set_authorization(&mut touched, name.clone(), None),
                ROUTE_TYPE_URL => {
                    replace(&mut self.routes, &mut touched.routes, name.clone(), None)
                }
                L7_AUTHORIZATION_TYPE_URL => replace(
                    &mut self.l7_policies,
                    &mut touched.l7_policies,
                    name.clone(),
                    None,
                ),
                _ => {}
            }
        }
        match self.next_snapshot(&touched) {
            Ok(snap) => {
                self.last = Some(snap.clone());
                if rejected.is_empty() {
                    Applied::Ok(snap)
                } else {
                    Applied::Partial(snap, rejected)
                }
            }
            Err(e) => {
                self.undo(touched);
                Applied::Inconsistent(e)
            }
        }
    }

    fn put(&mut self, touched: &mut Touched, name: String, version: String, value: Decoded) {
        match value {
            Decoded::Address(value) => {
                self.set_address(touched, name, Some(Held { version, value }))
            }
            Decoded::Authorization(value) => {
                self.set_authorization(touched, name, Some(Held { version, value }))
            }
            Decoded::Route(r) => {
                let held = Held {
                    version,
                    value: Arc::new(r),
                };
                replace(&mut self.routes, &mut touched.routes, name, Some(held))
            }
            Decoded::L7Policy(p) => {
                let held = Held {
                    version,
                    value: Arc::new(p),
                };
                replace(
                    &mut self.l7_policies,
                    &mut touched.l7_policies,
                    name,
                    Some(held),
                )
            }
        }
    }

    fn set_address(
        &mut self,
        touched: &mut Touched,
        name: String,
        new: Option<Held<AddressEntry>>,
    ) {
        // Unindex the old entry before indexing the new one: both may
        // carry the same keys.
        let old = self.addresses.remove(&name);
        if let Some(o) = &old {
            self.index(&name, &o.value, false);
        }
        if let Some(h) = new {
            self.index(&name, &h.value, true);
            self.addresses.insert(name.clone(), h);
        }
        touched.addresses.entry(name).or_insert(old);
    }

    fn set_authorization(
        &mut self,
        touched: &mut Touched,
        name: String,
        new: Option<Held<Policy>>,
    ) {
        replace(
            &mut self.authorizations,
            &mut touched.authorizations,
            name,
            new,
        );
    }

    /// Adds (`add`) or removes `e`, held as `name`, in the store's indexes.
    fn index(&mut self, name: &str, e: &AddressEntry, add: bool) {
        if let AddressEntry::Service(s) = e {
            let key = service_key(&s.service.namespace, &s.service.hostname);
            if add {
                self.services_by_key
                    .entry(key)
                    .or_default()
                    .insert(name.to_owned());
            } else if let Some(names) = self.services_by_key.get_mut(&key) {
                names.remove(name);
                if names.is_empty() {
                    self.services_by_key.remove(&key);
                }
            }
        }
        if let Some(r) = e.waypoint() {
            if add {
                *self.waypoint_refs.entry(r.clone()).or_default() += 1;
            } else if let Some(n) = self.waypoint_refs.get_mut(r) {
                *n -= 1;
                if *n == 0 {
                    self.waypoint_refs.remove(r);
                }
            }
        }
    }

    /// Puts back what `touched` replaced.
    fn undo(&mut self, touched: Touched) {
        let mut scratch = Touched::default();
        for (name, old) in touched.addresses {
            self.set_address(&mut scratch, name, old);
        }
        for (name, old) in touched.authorizations {
            self.set_authorization(&mut scratch, name, old);
        }
        for (name, old) in touched.routes {
            replace(&mut self.routes, &mut scratch.routes, name, old);
        }
        for (name, old) in touched.l7_policies {
            replace(&mut self.l7_policies, &mut scratch.l7_policies, name, old);
        }
    }

    fn next_snapshot(&self, touched: &Touched) -> Result<Arc<Snapshot>, StateError> {
        let Some(last) = &self.last else {
            return self.snapshot().map(Arc::new);
        };
        if touched.is_empty() {
            return Ok(last.clone());
        }
        let mut delta = if touched.addresses.is_empty() {
            SnapshotDelta::default()
        } else {
            match self.address_delta(last, &touched.addresses) {
                Some(d) => d,
                None => return self.snapshot().map(Arc::new),
            }
        };
        if !touched.authorizations.is_empty() {
            delta.policies = Some(self.policies());
        }
        if !touched.routes.is_empty() {
            delta.routes = Some(values(&self.routes));
        }
        if !touched.l7_policies.is_empty() {
            delta.l7_policies = Some(values(&self.l7_policies));
        }
        last.patch(delta).map(Arc::new)
    }

    fn policies(&self) -> Vec<Policy> {
        self.authorizations
            .values()
            .map(|h| h.value.clone())
            .collect()
    }

    /// The patch from `last` for the addresses in `touched`, or `None`
    /// when the snapshot must be built from scratch: a large delta, or one
    /// that touches a waypoint reference or what one resolves through.
    fn address_delta(
        &self,
        last: &Snapshot,
        touched: &BTreeMap<String, Option<Held<AddressEntry>>>,
    ) -> Option<SnapshotDelta> {
        if touched.len() > MAX_PATCH.max(self.addresses.len() / 8) {
            return None;
        }
        let now = |name: &str| self.addresses.get(name).map(|h| &h.value);
        let affects_waypoints = touched.iter().any(|(name, old)| {
            old.as_ref()
                .is_some_and(|o| self.affects_waypoints(&o.value))
                || now(name).is_some_and(|e| self.affects_waypoints(e))
        });
        if affects_waypoints {
            return None;
        }
        let mut delta = SnapshotDelta::default();
        // Service key → uids that left it, uids that joined it.
        let mut members: BTreeMap<&str, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
        for (name, old) in touched {
            match old.as_ref().map(|h| &h.value) {
                Some(AddressEntry::Workload(w)) => {
                    delta.removed_workloads.push(w.workload.uid.clone());
                    for key in &w.services {
                        members.entry(key).or_default().0.push(&w.workload.uid);
                    }
                }
                Some(AddressEntry::Service(s)) => delta
                    .removed_services
                    .push((s.service.namespace.clone(), s.service.name.clone())),
                None => {}
            }
            match now(name) {
                Some(AddressEntry::Workload(w)) => {
                    delta.workloads.push(w.workload.clone());
                    for key in &w.services {
                        members.entry(key).or_default().1.push(&w.workload.uid);
                    }
                }
                Some(AddressEntry::Service(s)) => {
                    let mut service = s.service.clone();
                    let key = service_key(&service.namespace, &service.hostname);
                    service.endpoint_uids = self.members_of(&key);
                    delta.services.push(service);
                }
                None => {}
            }
        }
        for (key, (left, joined)) in members {
            let names = self.services_by_key.get(key).into_iter().flatten();
            for name in names.filter(|n| !touched.contains_key(*n)) {
                let Some(AddressEntry::Service(s)) = now(name) else {
                    continue;
                };
                let (ns, svc_name) = (&s.service.namespace, &s.service.name);
                // Not in the last snapshot: left out, and stays out.
                let Some(prev) = last.service_by_name(ns, svc_name) else {
                    continue;
                };
                let mut service = (**prev).clone();
                for uid in &left {
                    if let Some(i) = service.endpoint_uids.iter().position(|u| u == uid) {
                        service.endpoint_uids.remove(i);
                    }
                }
                service
                    .endpoint_uids
                    .extend(joined.iter().map(|u| (*u).to_owned()));
                service.endpoint_uids.sort();
                delta.removed_services.push((ns.clone(), svc_name.clone()));
                delta.services.push(service);
            }
        }
        Some(delta)
    }

    /// Whether changing `e` can change how a waypoint reference resolves
    /// (or `e` has one to resolve).
    fn affects_waypoints(&self, e: &AddressEntry) -> bool {
        if e.waypoint().is_some() {
            return true;
        }
        if self.waypoint_refs.is_empty() {
            return false;
        }
        let address = |ip: &IpAddr| self.waypoint_refs.contains_key(&WaypointRef::Address(*ip));
        match e {
            AddressEntry::Workload(w) => {
                w.workload.ips.iter().any(address)
                    || w.services.iter().any(|k| self.key_referenced(k))
            }
            AddressEntry::Service(s) => {
                s.service.vips.iter().any(address)
                    || self.key_referenced(&service_key(&s.service.namespace, &s.service.hostname))
            }
        }
    }

    /// Whether a waypoint reference names the service key `key`, or a VIP
    /// of a service with that key.
    fn key_referenced(&self, key: &str) -> bool {
        if self
            .waypoint_refs
            .contains_key(&WaypointRef::Service(key.to_owned()))
        {
            return true;
        }
        let names = self.services_by_key.get(key).into_iter().flatten();
        names
            .filter_map(|n| match self.addresses.get(n).map(|h| &h.value) {
                Some(AddressEntry::Service(s)) => Some(s),
                _ => None,
            })
            .any(|s| {
                s.service
                    .vips
                    .iter()
                    .any(|ip| self.waypoint_refs.contains_key(&WaypointRef::Address(*ip)))
            })
    }

    /// The uids of the workloads that name service `key`, sorted: a scan,
    /// for a service that changed.
    fn members_of(&self, key: &str) -> Vec<String> {
        let mut uids: Vec<String> = self
            .addresses
            .values()
            .filter_map(|h| match &h.value {
                AddressEntry::Workload(w) if w.services.iter().any(|k| k == key) => {
                    Some(w.workload.uid.clone())
                }
                _ => None,
            })
            .collect();
        uids.sort();
        uids
    }

    /// Builds the domain snapshot from scratch: services get their
    /// endpoints from the workloads that name them, and waypoint references
    /// are resolved to an address and identity. A waypoint that cannot be
    /// resolved stays named as [`UseWaypoint::Missing`]: its owner keeps
    /// its capture and policy, and traffic through the waypoint is refused
    /// (never a silent bypass of it). Workloads without a waypoint are
    /// shared with the store, not copied.
    pub fn snapshot(&self) -> Result<Snapshot, StateError> {
        let mut workloads: Vec<&StoredWorkload> = Vec::new();
        let mut services: Vec<&ServiceEntry> = Vec::new();
        for h in self.addresses.values() {
            match &h.value {
                AddressEntry::Workload(w) => workloads.push(w),
                AddressEntry::Service(s) => services.push(&**s),
            }
        }
        let resolver = Resolver::index(&workloads, &services);
        let mut parts = SharedParts::default();
        parts.workloads.reserve(workloads.len());
        for w in &workloads {
            match resolver.waypoint(w.waypoint.as_ref()) {
                None => parts.workloads.push(w.workload.clone()),
                Some(wp) => {
                    if let UseWaypoint::Missing(m) = &wp {
                        tracing::warn!(workload = %w.workload.uid, waypoint = %m, "waypoint unknown; traffic through it will be refused");
                    }
                    let mut workload = (*w.workload).clone();
                    workload.waypoint = Some(wp);
                    parts.workloads.push(Arc::new(workload));
                }
            }
        }
        for s in &services {
            let mut service = s.service.clone();
            let key = service_key(&service.namespace, &service.hostname);
            service.endpoint_uids = resolver
                .members(&key)
                .iter()
                .map(|w| w.uid.clone())
                .collect();
            service.waypoint = resolver.waypoint(s.waypoint.as_ref());
            if let Some(UseWaypoint::Missing(m)) = &service.waypoint {
                tracing::warn!(service = %key, waypoint = %m, "waypoint unknown; traffic through it will be refused");
            }
            parts.services.push(service);
        }
        parts.policies = self.policies();
        parts.routes = values(&self.routes);
        parts.l7_policies = values(&self.l7_policies);
        Snapshot::build_shared(parts)
    }
}

/// Puts `new` (or nothing) under `name` in `map`, remembering in
/// `touched` what it held before the first change of this response.
fn replace<T>(
    map: &mut BTreeMap<String, Held<T>>,
    touched: &mut BTreeMap<String, Option<Held<T>>>,
    name: String,
    new: Option<Held<T>>,
) {
    let old = match new {
        Some(h) => map.insert(name.clone(), h),
        None => map.remove(&name),
    };
    touched.entry(name).or_insert(old);
}

/// The values held, shared.
fn values<T>(map: &BTreeMap<String, Held<Arc<T>>>) -> Vec<Arc<T>> {
    map.values().map(|h| h.value.clone()).collect()
}

/// `namespace/hostname`, how xDS names a service.
pub fn service_key(namespace: &str, hostname: &str) -> String {
    format!("{namespace}/{hostname}")
}

mod decode;
pub mod fail_closed;
#[cfg(test)]
mod l7_tests;
mod resolve;
#[cfg(test)]
mod tests;
