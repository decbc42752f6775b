//! The next resource set from the previous one: only resources whose
//! inputs changed are converted, encoded and hashed again. The result is
//! always equal to [`ResourceSet::from_snapshot`] of the new snapshot (a
//! proptest in `tests.rs` checks it over random edit sequences).
//!
//! What each resource is made of, and so what makes it dirty:
//! - a workload's `Address`: the workload itself (as the snapshot resolved
//!   it: tunnel, waypoint, labels, ...), the name and ports of every
//!   service it is an endpoint of, and the names of the `WORKLOAD_SELECTOR`
//!   policies of its namespace that select it. So it is dirty when the
//!   workload changed, when a service whose endpoints include it (before or
//!   after) changed, and when a selector policy of its namespace changed.
//!   Namespace labels and waypoints reach it only through the workload as
//!   resolved, which the comparison sees;
//! - a service's `Address`: the service itself (with its resolved
//!   waypoint);
//! - a policy's `Authorization`: the policies with that key;
//! - a namespace's STRICT policy: the namespace's mTLS mode.
//!
//! Finding what changed compares every object with its predecessor (cheap
//! equality, no allocation); converting, encoding and hashing, the costly
//! part, runs only for the dirty names.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use mesh_model::state::{MtlsMode, Policy, PolicyScope, Service, Snapshot};
use prost::Message;
use proto::workload as pb;

use super::{Kind, ResourceSet, Versioned};
use crate::convert::{self, policy_name, service_name, STRICT_POLICY_NAME};

/// The names whose resource was added, changed or removed, per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub addresses: BTreeSet<String>,
    pub authorizations: BTreeSet<String>,
}

impl Changes {
    pub fn of(&self, kind: Kind) -> &BTreeSet<String> {
        match kind {
            Kind::Address => &self.addresses,
            Kind::Authorization => &self.authorizations,
        }
    }

    pub fn len(&self) -> usize {
        self.addresses.len() + self.authorizations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What changed between two sets, by comparing every version: for sets
    /// not made from one another, and for tests.
    pub fn between(old: &ResourceSet, new: &ResourceSet) -> Changes {
        fn names(old: &super::Resources, new: &super::Resources) -> BTreeSet<String> {
            let changed = new
                .iter()
                .filter(|(n, r)| old.get(*n).map(|o| &o.version) != Some(&r.version))
                .map(|(n, _)| n.clone());
            let removed = old.keys().filter(|n| !new.contains_key(*n)).cloned();
            changed.chain(removed).collect()
        }
        Changes {
            addresses: names(&old.addresses, &new.addresses),
            authorizations: names(&old.authorizations, &new.authorizations),
        }
    }
}

impl ResourceSet {
    /// The set for `new`, given that `self` is the set for `old`, and which
    /// names changed. Equal to `ResourceSet::from_snapshot(new)`.
    pub fn update(&self, old: &Snapshot, new: &Snapshot) -> (ResourceSet, Changes) {
        let dirty = Dirty::between(old, new);
        let mut next = self.clone();
        let mut changes = Changes::default();

        let uids: HashSet<&str> = dirty.workloads.iter().map(String::as_str).collect();
        let mut backs = convert::backed_services(new, |uid| uids.contains(uid));
        let services: HashMap<String, &Arc<Service>> =
            new.services().map(|s| (service_name(s), s)).collect();
        let addresses = dirty.workloads.iter().chain(&dirty.services);
        for name in addresses.collect::<BTreeSet<_>>() {
            // As in `convert::addresses`: a service wins a name clash.
            let fresh = match (services.get(name), new.workload_by_uid(name)) {
                (Some(s), _) => Some(pb::address::Type::Service(convert::service(s))),
                (None, Some(w)) => {
                    let backed = backs.remove(w.uid.as_str()).unwrap_or_default();
                    Some(pb::address::Type::Workload(convert::workload(
                        new, w, backed,
                    )))
                }
                (None, None) => None,
            };
            let fresh = fresh.map(|t| pb::Address { r#type: Some(t) });
            apply(&mut next.addresses, &mut changes.addresses, name, fresh);
        }

        for name in &dirty.authorizations {
            let fresh = authorization_named(new, name);
            apply(
                &mut next.authorizations,
                &mut changes.authorizations,
                name,
                fresh,
            );
        }
        (next, changes)
    }
}

/// Puts the resource `name` as `fresh` encodes it (or removes it), and
/// records the name if its version moved.
fn apply<M: Message>(
    set: &mut super::Resources,
    changed: &mut BTreeSet<String>,
    name: &str,
    fresh: Option<M>,
) {
    match fresh {
        Some(msg) => {
            let v = Versioned::new(name.to_owned(), msg.encode_to_vec());
            if set.get(name).map(|o| &o.version) != Some(&v.version) {
                set.insert(name.to_owned(), Arc::new(v));
                changed.insert(name.to_owned());
            }
        }
        None => {
            if set.remove(name).is_some() {
                changed.insert(name.to_owned());
            }
        }
    }
}

/// The `Authorization` named `name` in `snap`, as
/// [`convert::authorizations`] makes it: a STRICT namespace's policy wins
/// over a user policy of the same name, and of several user policies with
/// one key, the last.
fn authorization_named(snap: &Snapshot, name: &str) -> Option<proto::security::Authorization> {
    let (ns, policy) = name.split_once('/')?;
    if policy == STRICT_POLICY_NAME
        && snap
            .namespace(ns)
            .is_some_and(|n| n.mtls == MtlsMode::Strict)
    {
        return Some(convert::strict_policy(ns));
    }
    snap.policies()
        .iter()
        .rfind(|p| p.namespace == ns && p.name == policy)
        .map(convert::authorization)
}

/// Names to convert again.
#[derive(Debug, Default)]
struct Dirty {
    /// Workload uids (also `Address` names).
    workloads: BTreeSet<String>,
    /// Service `Address` names.
    services: BTreeSet<String>,
    authorizations: BTreeSet<String>,
}

impl Dirty {
    fn between(old: &Snapshot, new: &Snapshot) -> Dirty {
        let mut d = Dirty::default();
        for w in new.workloads() {
            if old.workload_by_uid(&w.uid).is_none_or(|o| **o != **w) {
                d.workloads.insert(w.uid.clone());
            }
        }
        for o in old.workloads() {
            if new.workload_by_uid(&o.uid).is_none() {
                d.workloads.insert(o.uid.clone());
            }
        }
        d.services(old, new);
        d.policies(old, new);
        for ns in old.namespaces().chain(new.namespaces()) {
            let strict =
                |s: &Snapshot| s.namespace(&ns.name).map(|n| n.mtls) == Some(MtlsMode::Strict);
            if strict(old) != strict(new) {
                d.authorizations
                    .insert(policy_name(&ns.name, STRICT_POLICY_NAME));
            }
        }
        d
    }

    /// A changed, added or removed service: its own name, and every
    /// workload that was or is its endpoint (their `services` maps).
    fn services(&mut self, old: &Snapshot, new: &Snapshot) {
        let (before, after) = (services_by_key(old), services_by_key(new));
        let mut touch = |snap: &Snapshot, svc: &Service| {
            self.services.insert(service_name(svc));
            self.workloads
                .extend(snap.endpoints(svc).iter().map(|w| w.uid.clone()));
        };
        for (key, s) in &after {
            match before.get(key) {
                Some(o) if **o == **s => {}
                Some(o) => {
                    touch(old, o);
                    touch(new, s);
                }
                None => touch(new, s),
            }
        }
        for (key, o) in &before {
            if !after.contains_key(key) {
                touch(old, o);
            }
        }
    }

    /// A changed, added or removed policy: its `Authorization`, and, if it
    /// selects by labels (before or after), every workload of its namespace
    /// (their `authorization_policies`).
    fn policies(&mut self, old: &Snapshot, new: &Snapshot) {
        let (before, after) = (policies_by_key(old), policies_by_key(new));
        let selector = |ps: Option<&Vec<&Policy>>| {
            ps.into_iter()
                .flatten()
                .any(|p| matches!(p.scope, PolicyScope::WorkloadSelector { .. }))
        };
        let mut namespaces = BTreeSet::new();
        for key in before.keys().chain(after.keys()) {
            let (b, a) = (before.get(key), after.get(key));
            if b == a {
                continue;
            }
            self.authorizations.insert(policy_name(key.0, key.1));
            if selector(b) || selector(a) {
                namespaces.insert(key.0);
            }
        }
        if namespaces.is_empty() {
            return;
        }
        for w in new.workloads() {
            if namespaces.contains(w.namespace.as_str()) {
                self.workloads.insert(w.uid.clone());
            }
        }
    }
}

type Key<'a> = (&'a str, &'a str);

/// Services by (namespace, name); a snapshot holds each key once.
fn services_by_key(s: &Snapshot) -> HashMap<Key<'_>, &Arc<Service>> {
    s.services()
        .map(|svc| ((svc.namespace.as_str(), svc.name.as_str()), svc))
        .collect()
}

/// Policies by (namespace, name), in the snapshot's order (nothing stops a
/// source from listing one key twice).
fn policies_by_key(s: &Snapshot) -> BTreeMap<Key<'_>, Vec<&Policy>> {
    let mut m: BTreeMap<Key<'_>, Vec<&Policy>> = BTreeMap::new();
    for p in s.policies() {
        m.entry((p.namespace.as_str(), p.name.as_str()))
            .or_default()
            .push(p);
    }
    m
}
