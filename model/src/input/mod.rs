//! The neutral, source-independent input of the mesh: keyed objects that a
//! source upserts and deletes one at a time, and the store that turns them
//! into snapshots.
//!
//! ```text
//!  file source ──(diff of the parsed file)──┐
//!  Kubernetes watches ──(one per event)─────┴─► [Change] ─► MeshInput::apply
//!                                                             │ raw objects by key,
//!                                                             │ reverse indexes
//!                                                             ▼
//!                                   Update { Arc<Snapshot>, Touched: what may have changed }
//! ```
//!
//! Objects are held as the source gave them: labels, not their
//! consequences. A workload's `authorization_policies` (from
//! `WORKLOAD_SELECTOR` policies) and any object's `waypoint` (from
//! `istio.io/use-waypoint` labels) are resolved when the snapshot is built.
//!
//! [`Touched`] is what a change can reach, found through reverse indexes
//! (workloads and services per namespace, waypoint references by name), so
//! its cost is what it touches: a pod's change touches the pod, the
//! services whose selectors match it before or after, and whatever uses it
//! as a waypoint; a selector policy touches the workloads of its namespace;
//! a namespace touches its workloads and services. The control plane
//! converts and encodes only the touched resources.
//!
//! The snapshot is then patched from the previous one (`patch.rs`): only
//! the touched objects are resolved and re-indexed, so a batch costs what
//! it touches, not the mesh. [`MeshInput::with_full_rebuild`] builds it
//! whole instead ([`Snapshot::build`]), for comparison.

mod patch;
#[cfg(test)]
mod tests;
mod touched;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::l7policy::L7Policy;
use crate::route::{Route, RouteKey};
use crate::state::{
    selected_policies, Namespace, Node, Policy, PolicyKey, PolicyScope, Service, SharedParts,
    Snapshot, SnapshotParts, StateError, Workload, DEFAULT_TRUST_DOMAIN,
};

pub use touched::Touched;

/// One object of the mesh, as a source knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Node(Node),
    Namespace(Namespace),
    /// Held without its resolved `waypoint` and `authorization_policies`.
    Workload(Workload),
    /// Held without its resolved `waypoint`.
    Service(Service),
    Policy(Policy),
    /// An HTTPRoute or GRPCRoute (the waypoint's).
    Route(Route),
    /// An AuthorizationPolicy with `targetRefs` (the waypoint's).
    L7Policy(L7Policy),
}

/// The objects of unindexed parts (each workload and service as given; its
/// resolved fields are cleared when stored).
pub fn objects_of(parts: SnapshotParts) -> Vec<Object> {
    let SnapshotParts {
        trust_domain: _,
        nodes,
        namespaces,
        workloads,
        services,
        policies,
        routes,
        l7_policies,
    } = parts;
    nodes
        .into_iter()
        .map(Object::Node)
        .chain(namespaces.into_iter().map(Object::Namespace))
        .chain(workloads.into_iter().map(Object::Workload))
        .chain(services.into_iter().map(Object::Service))
        .chain(policies.into_iter().map(Object::Policy))
        .chain(routes.into_iter().map(Object::Route))
        .chain(l7_policies.into_iter().map(Object::L7Policy))
        .collect()
}

/// What names an [`Object`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Node(String),
    Namespace(String),
    /// By uid.
    Workload(String),
    /// `(namespace, name)`.
    Service(String, String),
    Policy(PolicyKey),
    Route(RouteKey),
    L7Policy(PolicyKey),
}

impl Object {
    pub fn key(&self) -> Key {
        match self {
            Object::Node(n) => Key::Node(n.name.clone()),
            Object::Namespace(n) => Key::Namespace(n.name.clone()),
            Object::Workload(w) => Key::Workload(w.uid.clone()),
            Object::Service(s) => Key::Service(s.namespace.clone(), s.name.clone()),
            Object::Policy(p) => Key::Policy(p.key()),
            Object::Route(r) => Key::Route(r.key()),
            Object::L7Policy(p) => Key::L7Policy(p.key()),
        }
    }

    /// The object as the store holds it: what resolution fills in is
    /// cleared, so that two sources' forms of one object compare equal.
    fn raw(self) -> Object {
        match self {
            Object::Workload(mut w) => {
                w.waypoint = None;
                w.authorization_policies.clear();
                Object::Workload(w)
            }
            Object::Service(mut s) => {
                s.waypoint = None;
                Object::Service(s)
            }
            other => other,
        }
    }
}

/// One edit of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Adds the object, or replaces the one with its key.
    Upsert(Object),
    /// Removes the object with this key (nothing if there is none).
    Delete(Key),
}

/// The result of a batch of changes.
#[derive(Debug, Clone)]
pub struct Update {
    pub snapshot: Arc<Snapshot>,
    pub touched: Touched,
}

/// Every object of the mesh by key, with the reverse indexes that find
/// what a change touches.
#[derive(Debug, Clone)]
pub struct MeshInput {
    trust_domain: String,
    nodes: BTreeMap<String, Node>,
    namespaces: BTreeMap<String, Namespace>,
    workloads: BTreeMap<String, Workload>,
    services: BTreeMap<(String, String), Service>,
    policies: BTreeMap<PolicyKey, Policy>,
    routes: BTreeMap<RouteKey, Arc<Route>>,
    l7_policies: BTreeMap<PolicyKey, Arc<L7Policy>>,
    /// Workload uids per namespace.
    workloads_in: HashMap<String, BTreeSet<String>>,
    /// Service names per namespace.
    services_in: HashMap<String, BTreeSet<String>>,
    /// The services that name a workload uid as an endpoint.
    endpoint_refs: HashMap<String, BTreeSet<(String, String)>>,
    /// Who names a waypoint `(namespace, name)` in its labels.
    waypoint_users: HashMap<(String, String), BTreeSet<Key>>,
    /// Workloads by label, for selectors.
    labels: patch::LabelIndex,
    /// Workloads by name, for waypoint labels.
    names: patch::NameIndex,
    snapshot: Arc<Snapshot>,
    /// Build each snapshot whole instead of patching the previous one.
    full_rebuild: bool,
}

impl Default for MeshInput {
    fn default() -> Self {
        MeshInput::new(DEFAULT_TRUST_DOMAIN)
    }
}

impl MeshInput {
    pub fn new(trust_domain: &str) -> Self {
        MeshInput {
            trust_domain: trust_domain.to_owned(),
            nodes: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            workloads: BTreeMap::new(),
            services: BTreeMap::new(),
            policies: BTreeMap::new(),
            routes: BTreeMap::new(),
            l7_policies: BTreeMap::new(),
            workloads_in: HashMap::new(),
            services_in: HashMap::new(),
            endpoint_refs: HashMap::new(),
            waypoint_users: HashMap::new(),
            labels: patch::LabelIndex::default(),
            names: patch::NameIndex::default(),
            full_rebuild: false,
            snapshot: Arc::new(
                Snapshot::build(SnapshotParts {
                    trust_domain: trust_domain.to_owned(),
                    ..SnapshotParts::default()
                })
                .unwrap_or_default(),
            ),
        }
    }

    /// An input that builds each snapshot whole ([`Snapshot::build`])
    /// instead of patching the previous one: what it did before the
    /// incremental update, kept for benchmarks and as the reference the
    /// tests compare the patched snapshots with.
    pub fn with_full_rebuild(trust_domain: &str) -> Self {
        MeshInput {
            full_rebuild: true,
            ..MeshInput::new(trust_domain)
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The snapshot of what is held.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Every object held, in key order.
    pub fn objects(&self) -> impl Iterator<Item = Object> + '_ {
        let nodes = self.nodes.values().cloned().map(Object::Node);
        let namespaces = self.namespaces.values().cloned().map(Object::Namespace);
        let workloads = self.workloads.values().cloned().map(Object::Workload);
        let services = self.services.values().cloned().map(Object::Service);
        let policies = self.policies.values().cloned().map(Object::Policy);
        let routes = self.routes.values().map(|r| Object::Route((**r).clone()));
        let l7 = self
            .l7_policies
            .values()
            .map(|p| Object::L7Policy((**p).clone()));
        nodes
            .chain(namespaces)
            .chain(workloads)
            .chain(services)
            .chain(policies)
            .chain(routes)
            .chain(l7)
    }

    /// Applies `changes` in order and builds the next snapshot. When the
    /// result is inconsistent (two workloads on one IP, a bad identity, ...)
    /// every change of the batch is undone and the last good snapshot stays.
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<Update, StateError> {
        let mut touched = Touched::default();
        let mut undo = Vec::with_capacity(changes.len());
        for change in changes {
            let key = match &change {
                Change::Upsert(o) => o.key(),
                Change::Delete(k) => k.clone(),
            };
            // What the old and the new object reach.
            self.touch(&key, &mut touched);
            let previous = match change {
                Change::Upsert(o) => self.insert(o.raw()),
                Change::Delete(k) => self.remove(&k),
            };
            self.touch(&key, &mut touched);
            undo.push((key, previous));
        }
        let next = if self.full_rebuild {
            self.build()
        } else {
            self.patch(&touched)
        };
        match next {
            Ok(snap) => {
                self.snapshot = Arc::new(snap);
                Ok(Update {
                    snapshot: self.snapshot.clone(),
                    touched,
                })
            }
            Err(e) => {
                for (key, previous) in undo.into_iter().rev() {
                    match previous {
                        Some(o) => self.insert(o),
                        None => self.remove(&key),
                    };
                }
                Err(e)
            }
        }
    }

    /// The changes that turn what is held into `objects` (a whole new
    /// state, as a file gives it): deletions first, then upserts of what is
    /// new or different. Equal objects cost one comparison each.
    pub fn diff(&self, objects: Vec<Object>) -> Vec<Change> {
        let objects: BTreeMap<Key, Object> =
            objects.into_iter().map(|o| (o.key(), o.raw())).collect();
        let held: Vec<Key> = self.objects_keys().collect();
        let mut changes: Vec<Change> = held
            .into_iter()
            .filter(|k| !objects.contains_key(k))
            .map(Change::Delete)
            .collect();
        for (key, o) in objects {
            if self.get(&key).as_ref() != Some(&o) {
                changes.push(Change::Upsert(o));
            }
        }
        changes
    }

    /// Replaces everything with `objects` under `trust_domain` (a file
    /// source's whole new state): a diff, applied as one batch. A new trust
    /// domain changes every identity, so it starts over and touches all.
    pub fn replace(
        &mut self,
        trust_domain: &str,
        objects: Vec<Object>,
    ) -> Result<Update, StateError> {
        if trust_domain == self.trust_domain {
            let changes = self.diff(objects);
            return self.apply(changes);
        }
        let mut fresh = MeshInput::new(trust_domain);
        fresh.full_rebuild = self.full_rebuild;
        let mut update = fresh.apply(objects.into_iter().map(Change::Upsert).collect())?;
        update.touched = Touched::everything(self, &fresh);
        *self = fresh;
        Ok(update)
    }

    fn objects_keys(&self) -> impl Iterator<Item = Key> + '_ {
        let nodes = self.nodes.keys().cloned().map(Key::Node);
        let namespaces = self.namespaces.keys().cloned().map(Key::Namespace);
        let workloads = self.workloads.keys().cloned().map(Key::Workload);
        let services = self
            .services
            .keys()
            .map(|(ns, n)| Key::Service(ns.clone(), n.clone()));
        let policies = self.policies.keys().cloned().map(Key::Policy);
        let routes = self.routes.keys().cloned().map(Key::Route);
        let l7 = self.l7_policies.keys().cloned().map(Key::L7Policy);
        nodes
            .chain(namespaces)
            .chain(workloads)
            .chain(services)
            .chain(policies)
            .chain(routes)
            .chain(l7)
    }

    /// The object with `key`, as held.
    pub fn get(&self, key: &Key) -> Option<Object> {
        match key {
            Key::Node(n) => self.nodes.get(n).cloned().map(Object::Node),
            Key::Namespace(n) => self.namespaces.get(n).cloned().map(Object::Namespace),
            Key::Workload(uid) => self.workloads.get(uid).cloned().map(Object::Workload),
            Key::Service(ns, n) => self
                .services
                .get(&(ns.clone(), n.clone()))
                .cloned()
                .map(Object::Service),
            Key::Policy(k) => self.policies.get(k).cloned().map(Object::Policy),
            Key::Route(k) => self.routes.get(k).map(|r| Object::Route((**r).clone())),
            Key::L7Policy(k) => self
                .l7_policies
                .get(k)
                .map(|p| Object::L7Policy((**p).clone())),
        }
    }

    /// Stores `o`; returns what it replaced.
    fn insert(&mut self, o: Object) -> Option<Object> {
        let previous = self.remove(&o.key());
        if let Some(wp) = touched::waypoint_named(&o) {
            self.waypoint_users.entry(wp).or_default().insert(o.key());
        }
        match o {
            Object::Node(n) => {
                self.nodes.insert(n.name.clone(), n);
            }
            Object::Namespace(n) => {
                self.namespaces.insert(n.name.clone(), n);
            }
            Object::Workload(w) => {
                self.labels.add(&w);
                self.names.add(&w);
                self.workloads_in
                    .entry(w.namespace.clone())
                    .or_default()
                    .insert(w.uid.clone());
                self.workloads.insert(w.uid.clone(), w);
            }
            Object::Service(s) => {
                for uid in &s.endpoint_uids {
                    self.endpoint_refs
                        .entry(uid.clone())
                        .or_default()
                        .insert((s.namespace.clone(), s.name.clone()));
                }
                self.services_in
                    .entry(s.namespace.clone())
                    .or_default()
                    .insert(s.name.clone());
                self.services
                    .insert((s.namespace.clone(), s.name.clone()), s);
            }
            Object::Policy(p) => {
                self.policies.insert(p.key(), p);
            }
            Object::Route(r) => {
                self.routes.insert(r.key(), Arc::new(r));
            }
            Object::L7Policy(p) => {
                self.l7_policies.insert(p.key(), Arc::new(p));
            }
        }
        previous
    }

    /// Removes the object with `key`; returns it.
    fn remove(&mut self, key: &Key) -> Option<Object> {
        let removed = self.remove_unindexed(key)?;
        if let Some(wp) = touched::waypoint_named(&removed) {
            if let Some(users) = self.waypoint_users.get_mut(&wp) {
                users.remove(key);
                if users.is_empty() {
                    self.waypoint_users.remove(&wp);
                }
            }
        }
        Some(removed)
    }

    fn remove_unindexed(&mut self, key: &Key) -> Option<Object> {
        fn unindex(index: &mut HashMap<String, BTreeSet<String>>, ns: &str, name: &str) {
            if let Some(set) = index.get_mut(ns) {
                set.remove(name);
                if set.is_empty() {
                    index.remove(ns);
                }
            }
        }
        match key {
            Key::Node(n) => self.nodes.remove(n).map(Object::Node),
            Key::Namespace(n) => self.namespaces.remove(n).map(Object::Namespace),
            Key::Workload(uid) => {
                let w = self.workloads.remove(uid)?;
                unindex(&mut self.workloads_in, &w.namespace, &w.uid);
                self.labels.remove(&w);
                self.names.remove(&w);
                Some(Object::Workload(w))
            }
            Key::Service(ns, n) => {
                let s = self.services.remove(&(ns.clone(), n.clone()))?;
                unindex(&mut self.services_in, ns, n);
                for uid in &s.endpoint_uids {
                    if let Some(refs) = self.endpoint_refs.get_mut(uid) {
                        refs.remove(&(ns.clone(), n.clone()));
                        if refs.is_empty() {
                            self.endpoint_refs.remove(uid);
                        }
                    }
                }
                Some(Object::Service(s))
            }
            Key::Policy(k) => self.policies.remove(k).map(Object::Policy),
            Key::Route(k) => self
                .routes
                .remove(k)
                .map(|r| Object::Route(Arc::unwrap_or_clone(r))),
            Key::L7Policy(k) => self
                .l7_policies
                .remove(k)
                .map(|p| Object::L7Policy(Arc::unwrap_or_clone(p))),
        }
    }

    /// The snapshot of what is held, with selectors and waypoints resolved.
    fn build(&self) -> Result<Snapshot, StateError> {
        let policies: Vec<Policy> = self.policies.values().cloned().collect();
        let workloads = self
            .workloads
            .values()
            .map(|w| {
                let mut w = w.clone();
                w.authorization_policies = selected_policies(&policies, &w);
                Arc::new(w)
            })
            .collect();
        Snapshot::build_shared(SharedParts {
            trust_domain: self.trust_domain.clone(),
            nodes: self.nodes.values().cloned().collect(),
            namespaces: self.namespaces.values().cloned().collect(),
            workloads,
            services: self.services.values().cloned().collect(),
            policies,
            routes: self.routes.values().cloned().collect(),
            l7_policies: self.l7_policies.values().cloned().collect(),
        })
    }

    /// Whether a policy selects workloads by labels (and so reaches every
    /// workload of its namespace when it changes).
    fn selects(p: &Policy) -> bool {
        matches!(p.scope, PolicyScope::WorkloadSelector { .. })
    }
}
