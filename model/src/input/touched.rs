//! What a change can reach: the keys whose resolved form (and so whose xDS
//! resource) may differ after it. Found through [`MeshInput`]'s reverse
//! indexes, never by scanning the whole mesh.

use std::collections::BTreeSet;

use super::{Key, MeshInput, Object};
use crate::route::RouteKey;
use crate::state::{
    labels_match, Labels, PolicyKey, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL,
    USE_WAYPOINT_NONE,
};

/// Keys whose resolved objects may have changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub nodes: BTreeSet<String>,
    /// Namespaces whose own object changed (labels, mTLS mode).
    pub namespaces: BTreeSet<String>,
    /// Workload uids.
    pub workloads: BTreeSet<String>,
    /// `(namespace, name)`.
    pub services: BTreeSet<(String, String)>,
    pub policies: BTreeSet<PolicyKey>,
    /// Routes and L7 policies reach only themselves.
    pub routes: BTreeSet<RouteKey>,
    pub l7_policies: BTreeSet<PolicyKey>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.namespaces.is_empty()
            && self.workloads.is_empty()
            && self.services.is_empty()
            && self.policies.is_empty()
            && self.routes.is_empty()
            && self.l7_policies.is_empty()
    }

    /// Every key of both inputs (a change of trust domain).
    pub(super) fn everything(a: &MeshInput, b: &MeshInput) -> Touched {
        let mut t = Touched::default();
        for input in [a, b] {
            t.nodes.extend(input.nodes.keys().cloned());
            t.namespaces.extend(input.namespaces.keys().cloned());
            t.workloads.extend(input.workloads.keys().cloned());
            t.services.extend(input.services.keys().cloned());
            t.policies.extend(input.policies.keys().cloned());
            t.routes.extend(input.routes.keys().cloned());
            t.l7_policies.extend(input.l7_policies.keys().cloned());
        }
        t
    }

    /// Adds `other`.
    pub fn extend(&mut self, other: Touched) {
        self.nodes.extend(other.nodes);
        self.namespaces.extend(other.namespaces);
        self.workloads.extend(other.workloads);
        self.services.extend(other.services);
        self.policies.extend(other.policies);
        self.routes.extend(other.routes);
        self.l7_policies.extend(other.l7_policies);
    }
}

/// The waypoint `(namespace, name)` an object's own labels name, if any
/// (`none` names nothing). A namespace's label names one for its objects.
pub(super) fn waypoint_named(o: &Object) -> Option<(String, String)> {
    let (labels, namespace): (&Labels, &str) = match o {
        Object::Namespace(n) => (&n.labels, &n.name),
        Object::Workload(w) => (&w.labels, &w.namespace),
        Object::Service(s) => (&s.labels, &s.namespace),
        Object::Node(_) | Object::Policy(_) | Object::Route(_) | Object::L7Policy(_) => {
            return None
        }
    };
    let name = labels.get(USE_WAYPOINT_LABEL)?;
    if name == USE_WAYPOINT_NONE {
        return None;
    }
    let ns = labels
        .get(USE_WAYPOINT_NAMESPACE_LABEL)
        .map_or(namespace, String::as_str);
    Some((ns.to_owned(), name.clone()))
}

impl MeshInput {
    /// Adds to `t` what the object now held under `key` reaches (nothing
    /// when none is held). Called before and after a change, so both the
    /// old and the new object's reach are covered.
    pub(super) fn touch(&self, key: &Key, t: &mut Touched) {
        match key {
            Key::Node(n) => {
                t.nodes.insert(n.clone());
            }
            Key::Namespace(n) => {
                t.namespaces.insert(n.clone());
                self.touch_namespace_members(n, t);
            }
            Key::Workload(uid) => {
                t.workloads.insert(uid.clone());
                let Some(w) = self.workloads.get(uid) else {
                    return;
                };
                // The services it is an endpoint of: by selector (its own
                // namespace), or by uid (any namespace, as xDS names them).
                for name in self.services_in.get(&w.namespace).into_iter().flatten() {
                    let s = &self.services[&(w.namespace.clone(), name.clone())];
                    if !s.selector.is_empty() && labels_match(&s.selector, &w.labels) {
                        t.services.insert((s.namespace.clone(), s.name.clone()));
                    }
                }
                if let Some(services) = self.endpoint_refs.get(uid) {
                    t.services.extend(services.iter().cloned());
                }
                // Whatever uses it as a waypoint.
                self.touch_waypoint_users(&w.namespace, &w.name, t);
            }
            Key::Service(ns, name) => {
                t.services.insert((ns.clone(), name.clone()));
                let Some(s) = self.services.get(&(ns.clone(), name.clone())) else {
                    return;
                };
                // Its endpoints (their `services` lists): by selector in its
                // namespace, and by uid wherever they are.
                // (The label index's shortest posting list, not the
                // whole namespace.)
                for uid in self.labels.candidates(ns, &s.selector) {
                    if labels_match(&s.selector, &self.workloads[uid].labels) {
                        t.workloads.insert(uid.clone());
                    }
                }
                t.workloads.extend(s.endpoint_uids.iter().cloned());
            }
            Key::Route(k) => {
                t.routes.insert(k.clone());
            }
            Key::L7Policy(k) => {
                t.l7_policies.insert(k.clone());
            }
            Key::Policy(k) => {
                t.policies.insert(k.clone());
                // A selector policy reaches every workload of its namespace
                // (their `authorization_policies`).
                if self.policies.get(k).is_some_and(MeshInput::selects) {
                    if let Some(uids) = self.workloads_in.get(&k.namespace) {
                        t.workloads.extend(uids.iter().cloned());
                    }
                }
            }
        }
    }

    fn touch_namespace_members(&self, ns: &str, t: &mut Touched) {
        if let Some(uids) = self.workloads_in.get(ns) {
            t.workloads.extend(uids.iter().cloned());
        }
        if let Some(names) = self.services_in.get(ns) {
            t.services
                .extend(names.iter().map(|n| (ns.to_owned(), n.clone())));
        }
    }

    fn touch_waypoint_users(&self, ns: &str, name: &str, t: &mut Touched) {
        let Some(users) = self.waypoint_users.get(&(ns.to_owned(), name.to_owned())) else {
            return;
        };
        for user in users {
            match user {
                Key::Workload(uid) => {
                    t.workloads.insert(uid.clone());
                }
                Key::Service(ns, n) => {
                    t.services.insert((ns.clone(), n.clone()));
                }
                Key::Namespace(n) => self.touch_namespace_members(n, t),
                Key::Node(_) | Key::Policy(_) | Key::Route(_) | Key::L7Policy(_) => {}
            }
        }
    }
}
