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
//! - a namespace's STRICT policy: the namespace's mTLS mode;
//! - a route's `Route` and an L7 policy's `L7Authorization`: that route or
//!   policy alone.
//!
//! Which objects changed comes from the source, keyed: the
//! [`Touched`] of each [`mesh_model::input::MeshInput`] update already holds
//! the closure above (a service's endpoints before and after, a selector
//! policy's namespace, the users of a waypoint), so nothing here scans the
//! mesh: converting, encoding and hashing run only for the touched names.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mesh_model::input::Touched;
use mesh_model::state::{MtlsMode, Service, Snapshot};
use prost::Message;
use proto::workload as pb;

use super::{Kind, ResourceSet, Versioned};
use crate::convert::{self, policy_name, service_name, STRICT_POLICY_NAME};

/// The names whose resource was added, changed or removed, per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub addresses: BTreeSet<String>,
    pub authorizations: BTreeSet<String>,
    pub routes: BTreeSet<String>,
    pub l7_authorizations: BTreeSet<String>,
}

impl Changes {
    pub fn of(&self, kind: Kind) -> &BTreeSet<String> {
        match kind {
            Kind::Address => &self.addresses,
            Kind::Authorization => &self.authorizations,
            Kind::Route => &self.routes,
            Kind::L7Authorization => &self.l7_authorizations,
        }
    }

    pub fn len(&self) -> usize {
        self.addresses.len()
            + self.authorizations.len()
            + self.routes.len()
            + self.l7_authorizations.len()
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
            routes: names(&old.routes, &new.routes),
            l7_authorizations: names(&old.l7_authorizations, &new.l7_authorizations),
        }
    }
}

impl ResourceSet {
    /// The set for `new`, given that `self` is the set for `old` and that
    /// `touched` holds every object whose resolved form may differ between
    /// them (a [`mesh_model::input::Update`]'s), and which names changed.
    /// Equal to `ResourceSet::from_snapshot(new)`.
    pub fn update(
        &self,
        old: &Snapshot,
        new: &Snapshot,
        touched: &Touched,
    ) -> (ResourceSet, Changes) {
        let dirty = Dirty::from_touched(old, new, touched);
        let mut next = self.clone();
        let mut changes = Changes::default();

        let services: HashMap<String, &Arc<Service>> = touched
            .services
            .iter()
            .filter_map(|(ns, name)| new.service_by_name(ns, name))
            .map(|s| (service_name(s), s))
            .collect();
        let addresses = dirty.workloads.iter().chain(&dirty.services);
        for name in addresses.collect::<BTreeSet<_>>() {
            // As in `convert::addresses`: a service wins a name clash.
            let service = services
                .get(name)
                .copied()
                .or_else(|| service_named(new, name));
            let fresh = match (service, new.workload_by_uid(name)) {
                (Some(s), _) => Some(pb::address::Type::Service(convert::service(s))),
                (None, Some(w)) => Some(pb::address::Type::Workload(convert::workload(
                    new,
                    w,
                    convert::workload_services(new, &w.uid),
                ))),
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
        for key in &touched.routes {
            let fresh = new
                .routes()
                .find(|r| r.key() == *key)
                .map(|r| proto::mesh::Route::from(&**r));
            apply(
                &mut next.routes,
                &mut changes.routes,
                &key.to_string(),
                fresh,
            );
        }
        for key in &touched.l7_policies {
            let fresh = new
                .l7_policies()
                .find(|p| p.key() == *key)
                .map(|p| proto::mesh::L7Authorization::from(&**p));
            let name = policy_name(&key.namespace, &key.name);
            apply(
                &mut next.l7_authorizations,
                &mut changes.l7_authorizations,
                &name,
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
                set.insert(Arc::new(v));
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
    /// The resource names of the touched objects, as either snapshot names
    /// them (a service's name holds its hostname).
    fn from_touched(old: &Snapshot, new: &Snapshot, touched: &Touched) -> Dirty {
        let mut d = Dirty {
            workloads: touched.workloads.clone(),
            ..Dirty::default()
        };
        for (ns, name) in &touched.services {
            for snap in [old, new] {
                if let Some(s) = snap.service_by_name(ns, name) {
                    d.services.insert(service_name(s));
                }
            }
        }
        for key in &touched.policies {
            d.authorizations
                .insert(policy_name(&key.namespace, &key.name));
        }
        for ns in &touched.namespaces {
            let strict = |s: &Snapshot| s.namespace(ns).map(|n| n.mtls) == Some(MtlsMode::Strict);
            if strict(old) || strict(new) {
                d.authorizations.insert(policy_name(ns, STRICT_POLICY_NAME));
            }
        }
        d
    }
}

/// The service whose resource name is `name` (`namespace/hostname`), for a
/// workload uid that spells one: the service wins the name.
fn service_named<'a>(snap: &'a Snapshot, name: &str) -> Option<&'a Arc<Service>> {
    let (ns, host) = name.split_once('/')?;
    let svc = snap.service_by_name(ns, host.split('.').next()?)?;
    (svc.hostname == host).then_some(svc)
}
