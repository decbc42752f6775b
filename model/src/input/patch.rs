//! The next snapshot from the previous one and what a batch touched,
//! without rebuilding it: the cost of an update is what it touches.
//!
//! ```text
//!  Touched ──► services to re-add: the touched ones, and those whose
//!              endpoint list holds a touched workload (the previous
//!              snapshot's workload → services index says which)
//!          ──► remove them and the touched workloads from a clone of the
//!              previous snapshot (persistent sets: a few pointers)
//!          ──► add back what is still held, resolved as a build resolves
//!              it (selected policies, waypoint labels; a service's
//!              endpoints from the label index), with a build's checks
//! ```
//!
//! Nodes, namespaces, policies, routes and L7 policies are few; a batch
//! that touches one of them re-copies that one collection. The result
//! equals [`MeshInput`]'s whole rebuild (a proptest in `tests.rs` checks
//! it over random edit sequences).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{MeshInput, Touched};
use crate::state::{
    labels_match, selected_policies, Labels, Policies, Service, Snapshot, StateError,
    WaypointResolver, Workload,
};

/// Raw workloads by (namespace, label key, label value), for selectors.
#[derive(Debug, Clone, Default)]
pub(super) struct LabelIndex {
    by_label: HashMap<String, HashMap<String, HashMap<String, BTreeSet<String>>>>,
}

impl LabelIndex {
    pub(super) fn add(&mut self, w: &Workload) {
        let ns = self.by_label.entry(w.namespace.clone()).or_default();
        for (k, v) in &w.labels {
            ns.entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(w.uid.clone());
        }
    }

    pub(super) fn remove(&mut self, w: &Workload) {
        let Some(ns) = self.by_label.get_mut(&w.namespace) else {
            return;
        };
        for (k, v) in &w.labels {
            let Some(values) = ns.get_mut(k) else {
                continue;
            };
            if let Some(uids) = values.get_mut(v) {
                uids.remove(&w.uid);
                if uids.is_empty() {
                    values.remove(v);
                }
            }
            if values.is_empty() {
                ns.remove(k);
            }
        }
        if ns.is_empty() {
            self.by_label.remove(&w.namespace);
        }
    }

    /// The uids in `namespace` carrying `key=value`.
    fn with(&self, namespace: &str, key: &str, value: &str) -> Option<&BTreeSet<String>> {
        self.by_label.get(namespace)?.get(key)?.get(value)
    }

    /// Candidates for `selector` in `namespace` (none for an empty one):
    /// the shortest posting list; the caller checks every label.
    pub(super) fn candidates<'a>(
        &'a self,
        namespace: &str,
        selector: &Labels,
    ) -> impl Iterator<Item = &'a String> {
        let mut shortest: Option<&BTreeSet<String>> = None;
        for (k, v) in selector {
            match self.with(namespace, k, v) {
                None => {
                    shortest = None;
                    return shortest.into_iter().flatten();
                }
                Some(list) if shortest.is_none_or(|s| list.len() < s.len()) => {
                    shortest = Some(list)
                }
                Some(_) => {}
            }
        }
        shortest.into_iter().flatten()
    }
}

/// Raw workload uids by (namespace, name): several pods may share a name
/// (with different uids); the greatest uid holds it, as in a build.
#[derive(Debug, Clone, Default)]
pub(super) struct NameIndex {
    by_name: HashMap<String, HashMap<String, BTreeSet<String>>>,
}

impl NameIndex {
    pub(super) fn add(&mut self, w: &Workload) {
        self.by_name
            .entry(w.namespace.clone())
            .or_default()
            .entry(w.name.clone())
            .or_default()
            .insert(w.uid.clone());
    }

    pub(super) fn remove(&mut self, w: &Workload) {
        let Some(names) = self.by_name.get_mut(&w.namespace) else {
            return;
        };
        if let Some(uids) = names.get_mut(&w.name) {
            uids.remove(&w.uid);
            if uids.is_empty() {
                names.remove(&w.name);
            }
        }
        if names.is_empty() {
            self.by_name.remove(&w.namespace);
        }
    }

    fn holder(&self, namespace: &str, name: &str) -> Option<&String> {
        self.by_name.get(namespace)?.get(name)?.last()
    }
}

impl MeshInput {
    /// The snapshot after a batch that touched `touched`, patched from the
    /// current one. Errors as [`Snapshot::build`] would on the whole state.
    pub(super) fn patch(&self, touched: &Touched) -> Result<Snapshot, StateError> {
        let old = &*self.snapshot;
        let mut next = old.clone();
        if !touched.nodes.is_empty() {
            let nodes = Arc::make_mut(&mut next.nodes);
            for name in &touched.nodes {
                match self.nodes.get(name) {
                    Some(n) => nodes.insert(name.clone(), n.clone()),
                    None => nodes.remove(name),
                };
            }
        }
        if !touched.namespaces.is_empty() {
            let namespaces = Arc::make_mut(&mut next.namespaces);
            for name in &touched.namespaces {
                match self.namespaces.get(name) {
                    Some(n) => namespaces.insert(name.clone(), n.clone()),
                    None => namespaces.remove(name),
                };
            }
        }
        if !touched.policies.is_empty() {
            next.policies = Arc::new(Policies::new(self.policies.values().cloned().collect()));
        }
        if !touched.routes.is_empty() || !touched.l7_policies.is_empty() {
            next.replace_l7(
                self.routes.values().cloned().collect(),
                self.l7_policies.values().cloned().collect(),
            )?;
        }

        // A service's endpoint list holds its workloads: re-add those of
        // a touched workload too, so they hold its new form.
        let mut services: BTreeSet<(String, String)> = touched.services.clone();
        for uid in &touched.workloads {
            for s in old.services_of(uid) {
                services.insert((s.namespace.clone(), s.name.clone()));
            }
        }
        for (ns, name) in &services {
            next.remove_service(ns, name);
        }
        for uid in &touched.workloads {
            next.remove_workload(uid);
        }

        let resolver = WaypointResolver {
            namespaces: &self.namespaces,
            by_name: |ns: &str, name: &str| {
                let uid = self.names.holder(ns, name)?;
                self.workloads.get(uid)
            },
        };
        for uid in &touched.workloads {
            let Some(raw) = self.workloads.get(uid) else {
                continue;
            };
            let mut w = raw.clone();
            w.authorization_policies = selected_policies(next.policies.iter(), &w);
            w.waypoint = resolver.resolve(&w.namespace, &w.labels, Some(&w.uid));
            next.add_workload(Arc::new(w))?;
        }
        for (ns, name) in &services {
            let Some(raw) = self.services.get(&(ns.clone(), name.clone())) else {
                continue;
            };
            let mut s = raw.clone();
            s.waypoint = resolver.resolve(ns, &s.labels, None);
            let eps = self.endpoints(&next, &s);
            next.insert_service(Arc::new(s), eps)?;
        }
        Ok(next)
    }

    /// `s`'s endpoints as `next` holds them: the workloads its selector
    /// selects (in its namespace) and those it names by uid.
    fn endpoints(&self, next: &Snapshot, s: &Service) -> Vec<Arc<Workload>> {
        let selected = self
            .labels
            .candidates(&s.namespace, &s.selector)
            .filter(|uid| {
                self.workloads
                    .get(*uid)
                    .is_some_and(|w| labels_match(&s.selector, &w.labels))
            });
        selected
            .chain(&s.endpoint_uids)
            .filter_map(|uid| next.workload_by_uid(uid).cloned())
            .collect()
    }
}
