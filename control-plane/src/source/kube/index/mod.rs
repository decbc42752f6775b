//! The index: what the watches have said, per object, and what the mesh
//! should hold because of it. Pure: each watch event goes in, keyed
//! [`Change`]s come out, and its cost is what it touches.
//!
//! ```text
//!  [ Namespace ] ─labels─► its [ Pod ]s            (ambient enrolment)
//!  [ Pod ] ──────────────► its workload; the [ Service ]s whose
//!                          EndpointSlices name it (readiness) or whose
//!                          selector picks it for a named targetPort
//!  [ EndpointSlice ] ────► its [ Service ]         (endpoints)
//!  [ PeerAuthentication ] ► its namespace (all of them from the root
//!                          namespace), or a workload-selector policy
//!  [ AuthorizationPolicy ] ► its policy (ztunnel's, or with targetRefs
//!                          the waypoint's L7 policy)
//!  [ Gateway ] ──────────► the pods of its namespace labelled with its
//!                          name (a waypoint's workload answers for it)
//!  [ HTTPRoute ], [ GRPCRoute ] ► its route
//! ```
//!
//! An event updates the stored info and marks what depends on it dirty;
//! [`Index::take_changes`] recomputes only the dirty keys and emits a
//! change for each whose object differs from the one last emitted. An
//! update that changes nothing the mesh reads (a container restart count)
//! stops at the info comparison. Several events before one
//! `take_changes` coalesce: a key dirtied twice is computed once.
//!
//! A restarted watch (`Init` .. `InitDone`, after a `410 Gone` or an
//! outage) hands its whole list to [`Index::resync`]: what is no longer
//! listed is deleted, what differs is updated, the rest costs a
//! comparison each.

mod names;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mesh_model::input::{Change, Key, Object};
use mesh_model::route::RouteKey;
use mesh_model::state::{labels_match, Labels, PolicyKey};

use super::convert::waypoint::{waypoint_alias, GatewayInfo, RouteState};
use super::gateway::GATEWAY_NAME_LABEL;

use super::convert::policy::{
    namespace_mtls, peer_authentication_policy, peer_authentication_policy_key, Converted,
    PeerAuthInfo,
};
use super::convert::{
    namespace, service, workload, workload_uid, NamespaceInfo, ObjectName, PodInfo, ServiceInfo,
    SliceInfo,
};

/// What the index needs to know beyond the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub trust_domain: String,
    /// Istio's root namespace: its policies are global, its
    /// namespace-wide PeerAuthentication is the mesh's default.
    pub root_namespace: String,
}

pub use names::{Info, Kind, Name};

/// Keys whose objects must be computed again.
#[derive(Debug, Default)]
struct Dirty {
    namespaces: BTreeSet<String>,
    pods: BTreeSet<ObjectName>,
    services: BTreeSet<ObjectName>,
    policies: BTreeSet<ObjectName>,
    peer_policies: BTreeSet<ObjectName>,
    routes: BTreeSet<RouteKey>,
}

/// Objects of one namespace, by name.
type PerNamespace = HashMap<String, BTreeSet<String>>;

fn add(index: &mut PerNamespace, (ns, name): &ObjectName) {
    index.entry(ns.clone()).or_default().insert(name.clone());
}

fn remove(index: &mut PerNamespace, (ns, name): &ObjectName) {
    if let Some(set) = index.get_mut(ns) {
        set.remove(name);
        if set.is_empty() {
            index.remove(ns);
        }
    }
}

#[derive(Debug)]
pub struct Index {
    settings: Settings,
    namespaces: HashMap<String, NamespaceInfo>,
    pods: HashMap<ObjectName, PodInfo>,
    pods_in: PerNamespace,
    services: HashMap<ObjectName, ServiceInfo>,
    services_in: PerNamespace,
    slices: HashMap<ObjectName, SliceInfo>,
    /// `(namespace, service)` → the names of its EndpointSlices.
    slices_of: HashMap<ObjectName, BTreeSet<String>>,
    /// `(namespace, pod)` → the services whose slices name it, with how
    /// many slices do (a pod can sit in two while slices are rebalanced).
    endpoint_of: HashMap<ObjectName, BTreeMap<String, u32>>,
    policies: HashMap<ObjectName, Converted>,
    peer_auths: HashMap<ObjectName, PeerAuthInfo>,
    peer_auths_in: PerNamespace,
    gateways: HashMap<ObjectName, GatewayInfo>,
    routes: HashMap<RouteKey, RouteState>,
    dirty: Dirty,
    /// What was last emitted for each key.
    emitted: HashMap<Key, Object>,
}

impl Index {
    pub fn new(settings: Settings) -> Self {
        Index {
            settings,
            namespaces: HashMap::new(),
            pods: HashMap::new(),
            pods_in: HashMap::new(),
            services: HashMap::new(),
            services_in: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            endpoint_of: HashMap::new(),
            policies: HashMap::new(),
            peer_auths: HashMap::new(),
            peer_auths_in: HashMap::new(),
            gateways: HashMap::new(),
            routes: HashMap::new(),
            dirty: Dirty::default(),
            emitted: HashMap::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The object last emitted for `key` (what the mesh should hold).
    pub fn emitted(&self, key: &Key) -> Option<&Object> {
        self.emitted.get(key)
    }

    /// An object was added or modified.
    pub fn upsert(&mut self, info: Info) {
        match info {
            Info::Namespace(i) => {
                let name = i.name.clone();
                if self.namespaces.get(&name) != Some(&i) {
                    self.namespaces.insert(name.clone(), i);
                    self.namespace_changed(&name);
                }
            }
            Info::Pod(i) => {
                let key = (i.namespace.clone(), i.name.clone());
                if self.pods.get(&key) == Some(&i) {
                    return;
                }
                let old = self.pods.insert(key.clone(), i);
                add(&mut self.pods_in, &key);
                self.pod_changed(&key, old.as_ref());
            }
            Info::Service(i) => {
                let key = (i.namespace.clone(), i.name.clone());
                if self.services.get(&key) != Some(&i) {
                    add(&mut self.services_in, &key);
                    self.services.insert(key.clone(), i);
                    self.dirty.services.insert(key);
                }
            }
            Info::EndpointSlice(i) => {
                let key = (i.namespace.clone(), i.name.clone());
                if self.slices.get(&key) == Some(&i) {
                    return;
                }
                self.unlink_slice(&key);
                self.link_slice(&i);
                self.slices.insert(key, i);
            }
            Info::AuthorizationPolicy(key, c) => {
                if self.policies.get(&key) != Some(&c) {
                    self.policies.insert(key.clone(), c);
                    self.dirty.policies.insert(key);
                }
            }
            Info::PeerAuthentication(i) => {
                let key = (i.namespace.clone(), i.name.clone());
                if self.peer_auths.get(&key) == Some(&i) {
                    return;
                }
                add(&mut self.peer_auths_in, &key);
                let old = self.peer_auths.insert(key.clone(), i);
                self.peer_auth_changed(&key, old.as_ref());
            }
            Info::Gateway(i) => {
                let key = (i.namespace.clone(), i.name.clone());
                if self.gateways.get(&key) != Some(&i) {
                    self.gateways.insert(key.clone(), i);
                    self.gateway_changed(&key);
                }
            }
            Info::Route(i) => {
                let old = self.routes.get(&i.key);
                // A refused edit keeps the last good route.
                let keep = matches!(
                    (&i.state, old),
                    (RouteState::Invalid(_), Some(RouteState::Route(_)))
                );
                if !keep && old != Some(&i.state) {
                    self.dirty.routes.insert(i.key.clone());
                    self.routes.insert(i.key, i.state);
                }
            }
        }
    }

    /// An object was deleted.
    pub fn delete(&mut self, name: &Name) {
        match name {
            Name::Namespace(n) => {
                if self.namespaces.remove(n).is_some() {
                    self.namespace_changed(n);
                }
            }
            Name::Pod(key) => {
                if let Some(old) = self.pods.remove(key) {
                    remove(&mut self.pods_in, key);
                    self.pod_changed(key, Some(&old));
                }
            }
            Name::Service(key) => {
                if self.services.remove(key).is_some() {
                    remove(&mut self.services_in, key);
                    self.dirty.services.insert(key.clone());
                }
            }
            Name::EndpointSlice(key) => {
                self.unlink_slice(key);
                self.slices.remove(key);
            }
            Name::AuthorizationPolicy(key) => {
                if self.policies.remove(key).is_some() {
                    self.dirty.policies.insert(key.clone());
                }
            }
            Name::PeerAuthentication(key) => {
                if let Some(old) = self.peer_auths.remove(key) {
                    remove(&mut self.peer_auths_in, key);
                    self.peer_auth_changed(key, Some(&old));
                }
            }
            Name::Gateway(key) => {
                if self.gateways.remove(key).is_some() {
                    self.gateway_changed(key);
                }
            }
            Name::Route(key) => {
                if self.routes.remove(key).is_some() {
                    self.dirty.routes.insert(key.clone());
                }
            }
        }
    }

    /// A restarted watch of `kind` listed `infos`: everything of that
    /// kind it did not list is deleted.
    pub fn resync(&mut self, kind: Kind, infos: Vec<Info>) {
        let listed: BTreeSet<Name> = infos.iter().map(Info::name).collect();
        let gone: Vec<Name> = self.names(kind).filter(|n| !listed.contains(n)).collect();
        for name in &gone {
            self.delete(name);
        }
        for info in infos {
            self.upsert(info);
        }
    }

    /// Every object of `kind` held.
    fn names(&self, kind: Kind) -> Box<dyn Iterator<Item = Name> + '_> {
        match kind {
            Kind::Namespace => Box::new(self.namespaces.keys().cloned().map(Name::Namespace)),
            Kind::Pod => Box::new(self.pods.keys().cloned().map(Name::Pod)),
            Kind::Service => Box::new(self.services.keys().cloned().map(Name::Service)),
            Kind::EndpointSlice => Box::new(self.slices.keys().cloned().map(Name::EndpointSlice)),
            Kind::AuthorizationPolicy => {
                Box::new(self.policies.keys().cloned().map(Name::AuthorizationPolicy))
            }
            Kind::PeerAuthentication => Box::new(
                self.peer_auths
                    .keys()
                    .cloned()
                    .map(Name::PeerAuthentication),
            ),
            Kind::Gateway => Box::new(self.gateways.keys().cloned().map(Name::Gateway)),
            Kind::HttpRoute | Kind::GrpcRoute => Box::new(
                self.routes
                    .keys()
                    .filter(move |k| Name::Route((*k).clone()).kind() == kind)
                    .cloned()
                    .map(Name::Route),
            ),
        }
    }

    /// The pods of a Gateway's namespace labelled with its name: their
    /// workloads answer for it while it is a waypoint. (A scan of the
    /// namespace's pods: Gateways change rarely.)
    fn gateway_changed(&mut self, (ns, name): &ObjectName) {
        let Some(pods) = self.pods_in.get(ns) else {
            return;
        };
        let named = pods.iter().filter(|p| {
            self.pods
                .get(&(ns.clone(), (*p).clone()))
                .is_some_and(|p| p.labels.get(GATEWAY_NAME_LABEL) == Some(name))
        });
        let named: Vec<ObjectName> = named.map(|p| (ns.clone(), p.clone())).collect();
        self.dirty.pods.extend(named);
    }

    fn namespace_changed(&mut self, ns: &str) {
        self.dirty.namespaces.insert(ns.to_owned());
        // Enrolment is decided per pod from its namespace's labels.
        if let Some(pods) = self.pods_in.get(ns) {
            let pods = pods.iter().map(|p| (ns.to_owned(), p.clone()));
            self.dirty.pods.extend(pods);
        }
    }

    fn pod_changed(&mut self, key: &ObjectName, old: Option<&PodInfo>) {
        self.dirty.pods.insert(key.clone());
        // Services listing it in their slices (its readiness).
        if let Some(services) = self.endpoint_of.get(key) {
            let services = services.keys().map(|s| (key.0.clone(), s.clone()));
            self.dirty.services.extend(services);
        }
        // Services that resolve a named port against it, before or after.
        let new = self.pods.get(key);
        for name in self.services_in.get(&key.0).into_iter().flatten() {
            let svc_key = (key.0.clone(), name.clone());
            let svc = &self.services[&svc_key];
            if !svc.has_named_ports() || svc.selector.is_empty() {
                continue;
            }
            let picks =
                |p: Option<&PodInfo>| p.is_some_and(|p| labels_match(&svc.selector, &p.labels));
            if picks(old) || picks(new) {
                self.dirty.services.insert(svc_key);
            }
        }
    }

    fn peer_auth_changed(&mut self, key: &ObjectName, old: Option<&PeerAuthInfo>) {
        self.dirty.peer_policies.insert(key.clone());
        let new = self.peer_auths.get(key);
        let namespace_wide = |p: Option<&PeerAuthInfo>| p.is_some_and(|p| p.selector.is_empty());
        if !namespace_wide(old) && !namespace_wide(new) {
            return;
        }
        if key.0 == self.settings.root_namespace {
            // The mesh's default: every namespace.
            let all: Vec<String> = self.namespaces.keys().cloned().collect();
            self.dirty.namespaces.extend(all);
        } else {
            self.dirty.namespaces.insert(key.0.clone());
        }
    }

    fn link_slice(&mut self, slice: &SliceInfo) {
        let Some(svc) = &slice.service else {
            return;
        };
        let svc_key = (slice.namespace.clone(), svc.clone());
        self.slices_of
            .entry(svc_key.clone())
            .or_default()
            .insert(slice.name.clone());
        for e in &slice.endpoints {
            let pod = (slice.namespace.clone(), e.pod.clone());
            *self
                .endpoint_of
                .entry(pod)
                .or_default()
                .entry(svc.clone())
                .or_default() += 1;
        }
        self.dirty.services.insert(svc_key);
    }

    fn unlink_slice(&mut self, key: &ObjectName) {
        let Some(slice) = self.slices.get(key) else {
            return;
        };
        let Some(svc) = slice.service.clone() else {
            return;
        };
        let svc_key = (slice.namespace.clone(), svc.clone());
        if let Some(set) = self.slices_of.get_mut(&svc_key) {
            set.remove(&slice.name);
            if set.is_empty() {
                self.slices_of.remove(&svc_key);
            }
        }
        for e in &slice.endpoints {
            let pod = (slice.namespace.clone(), e.pod.clone());
            if let Some(services) = self.endpoint_of.get_mut(&pod) {
                if let Some(n) = services.get_mut(&svc) {
                    *n -= 1;
                    if *n == 0 {
                        services.remove(&svc);
                    }
                }
                if services.is_empty() {
                    self.endpoint_of.remove(&pod);
                }
            }
        }
        self.dirty.services.insert(svc_key);
    }

    /// The slices of a service, in name order.
    fn slices_of<'a>(&'a self, key: &'a ObjectName) -> impl Iterator<Item = &'a SliceInfo> {
        self.slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(move |slice| self.slices.get(&(key.0.clone(), slice.clone())))
    }

    /// Recomputes every dirty key; returns the changes against what was
    /// last emitted (deletions and upserts, in key order per kind).
    pub fn take_changes(&mut self) -> Vec<Change> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut out = Vec::new();
        for ns in dirty.namespaces {
            let obj = self.namespace_object(&ns);
            self.emit(Key::Namespace(ns), obj, &mut out);
        }
        for pod in dirty.pods {
            let obj = self.workload_object(&pod);
            self.emit(Key::Workload(workload_uid(&pod.0, &pod.1)), obj, &mut out);
        }
        for svc in dirty.services {
            let obj = self.service_object(&svc);
            self.emit(Key::Service(svc.0, svc.1), obj, &mut out);
        }
        for p in dirty.policies {
            // ztunnel's or the waypoint's: a policy that gains or loses
            // targetRefs moves from one key to the other.
            let (l4, l7) = match self.policies.get(&p) {
                Some(Converted::Policy { policy, .. }) => {
                    (Some(Object::Policy(policy.clone())), None)
                }
                Some(Converted::Waypoint { policy, .. }) => {
                    (None, Some(Object::L7Policy(policy.clone())))
                }
                _ => (None, None),
            };
            let key = PolicyKey {
                namespace: p.0,
                name: p.1,
            };
            self.emit(Key::Policy(key.clone()), l4, &mut out);
            self.emit(Key::L7Policy(key), l7, &mut out);
        }
        for r in dirty.routes {
            let obj = match self.routes.get(&r) {
                Some(RouteState::Route(route)) => Some(Object::Route(route.clone())),
                _ => None,
            };
            self.emit(Key::Route(r), obj, &mut out);
        }
        for p in dirty.peer_policies {
            let obj = self
                .peer_auths
                .get(&p)
                .and_then(peer_authentication_policy)
                .map(Object::Policy);
            self.emit(
                Key::Policy(peer_authentication_policy_key(&p)),
                obj,
                &mut out,
            );
        }
        out
    }

    fn emit(&mut self, key: Key, obj: Option<Object>, out: &mut Vec<Change>) {
        match obj {
            Some(o) => {
                if self.emitted.get(&key) != Some(&o) {
                    self.emitted.insert(key, o.clone());
                    out.push(Change::Upsert(o));
                }
            }
            None => {
                if self.emitted.remove(&key).is_some() {
                    out.push(Change::Delete(key));
                }
            }
        }
    }

    fn namespace_object(&self, ns: &str) -> Option<Object> {
        let info = self.namespaces.get(ns)?;
        let own = self.peer_auths_of(ns);
        let mesh = self.peer_auths_of(&self.settings.root_namespace);
        Some(Object::Namespace(namespace(
            info,
            namespace_mtls(own, mesh),
        )))
    }

    fn peer_auths_of<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a PeerAuthInfo> {
        self.peer_auths_in
            .get(ns)
            .into_iter()
            .flatten()
            .filter_map(move |n| self.peer_auths.get(&(ns.to_owned(), n.clone())))
    }

    fn workload_object(&self, key: &ObjectName) -> Option<Object> {
        let pod = self.pods.get(key)?;
        let empty = Labels::new();
        let ns_labels = self.namespaces.get(&key.0).map_or(&empty, |n| &n.labels);
        let mut w = workload(pod, ns_labels, &self.settings.trust_domain)?;
        let is_waypoint = |gw: &str| {
            self.gateways
                .get(&(key.0.clone(), gw.to_owned()))
                .is_some_and(|g| g.waypoint)
        };
        if let Some(gw) = waypoint_alias(pod, is_waypoint) {
            // `istio.io/use-waypoint: <gateway>` resolves to it.
            w.name = gw.to_owned();
        }
        Some(Object::Workload(w))
    }

    fn service_object(&self, key: &ObjectName) -> Option<Object> {
        let svc = self.services.get(key)?;
        let ns = &key.0;
        let pod = |name: &str| self.pods.get(&(ns.clone(), name.to_owned()));
        let in_ns = self
            .pods_in
            .get(ns)
            .into_iter()
            .flatten()
            .filter_map(|name| self.pods.get(&(ns.clone(), name.clone())));
        service(svc, self.slices_of(key), pod, in_ns).map(Object::Service)
    }
}
