//! The versioned resource set published to clients: every resource encoded
//! once per snapshot, with a version that is a hash of its bytes, so an
//! unchanged resource keeps its version and is never re-sent.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::cmp::Ordering;

use mesh_model::state::{Keyed, PSet, PSetIter, Snapshot};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::convert;

#[cfg(test)]
mod tests;
mod update;

pub use update::Changes;

/// The resource types we serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Address,
    Authorization,
    /// A waypoint's routes (`ambient.mesh.v1.Route`).
    Route,
    /// A waypoint's L7 policies (`ambient.mesh.v1.L7Authorization`).
    L7Authorization,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Address,
        Kind::Authorization,
        Kind::Route,
        Kind::L7Authorization,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Address => proto::ADDRESS_TYPE_URL,
            Kind::Authorization => proto::AUTHORIZATION_TYPE_URL,
            Kind::Route => proto::ROUTE_TYPE_URL,
            Kind::L7Authorization => proto::L7_AUTHORIZATION_TYPE_URL,
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// A short, bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Address => "address",
            Kind::Authorization => "authorization",
            Kind::Route => "route",
            Kind::L7Authorization => "l7_authorization",
        }
    }
}

/// One encoded resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub name: String,
    /// Hex of the first 8 bytes of SHA-256 over `body`.
    pub version: String,
    /// The encoded `istio.workload.Address` or `istio.security.Authorization`.
    pub body: Vec<u8>,
}

impl Versioned {
    pub fn new(name: String, body: Vec<u8>) -> Self {
        Versioned {
            version: content_version(&body),
            name,
            body,
        }
    }

    /// The xDS `Resource` wrapping this one as an `Any` of `kind`.
    pub fn to_resource(&self, kind: Kind) -> proto::discovery::Resource {
        proto::discovery::Resource {
            name: self.name.clone(),
            version: self.version.clone(),
            resource: Some(prost_types::Any {
                type_url: kind.type_url().to_owned(),
                value: self.body.clone(),
            }),
            ..Default::default()
        }
    }
}

/// The version of some encoded bytes.
pub fn content_version(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Resources of one kind, by name. A persistent set ([`PSet`]): the next
/// generation's is a clone of this one (a few pointers) with the changed
/// names put, so publishing one change costs that change, not a copy of
/// every name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Resources(PSet<ByName>);

/// A resource in [`Resources`], ordered by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByName(Arc<Versioned>);

impl Keyed for ByName {
    fn cmp_key(&self, other: &Self) -> Ordering {
        self.0.name.cmp(&other.0.name)
    }
}

/// (name, resource).
pub type Pair<'a> = (&'a String, &'a Arc<Versioned>);

fn pair(e: &ByName) -> Pair<'_> {
    (&e.0.name, &e.0)
}

impl Resources {
    pub fn get<N: AsRef<str> + ?Sized>(&self, name: &N) -> Option<&Arc<Versioned>> {
        let name = name.as_ref();
        self.0.find(|e| e.0.name.as_str().cmp(name)).map(|e| &e.0)
    }

    pub fn contains_key<N: AsRef<str> + ?Sized>(&self, name: &N) -> bool {
        self.get(name).is_some()
    }

    /// Puts `r` under its name; returns what it replaced.
    pub fn insert(&mut self, r: Arc<Versioned>) -> Option<Arc<Versioned>> {
        self.0.insert(ByName(r)).map(|e| e.0)
    }

    pub fn remove(&mut self, name: &str) -> Option<Arc<Versioned>> {
        self.0
            .remove_by(|e| e.0.name.as_str().cmp(name))
            .map(|e| e.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (name, resource), by name.
    pub fn iter(&self) -> std::iter::Map<PSetIter<'_, ByName>, fn(&ByName) -> Pair<'_>> {
        self.0.iter().map(pair as fn(&ByName) -> Pair<'_>)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|e| &e.0.name)
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<Versioned>> {
        self.0.iter().map(|e| &e.0)
    }
}

impl std::ops::Index<&str> for Resources {
    type Output = Arc<Versioned>;

    /// The resource `name`; panics when there is none (as a map's index).
    fn index(&self, name: &str) -> &Arc<Versioned> {
        self.get(name).expect("no resource of that name")
    }
}

impl<'a> IntoIterator for &'a Resources {
    type Item = Pair<'a>;
    type IntoIter = std::iter::Map<PSetIter<'a, ByName>, fn(&ByName) -> Pair<'_>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl FromIterator<(String, Arc<Versioned>)> for Resources {
    /// From (name, resource) pairs; the name is the resource's own.
    fn from_iter<I: IntoIterator<Item = (String, Arc<Versioned>)>>(iter: I) -> Self {
        Resources(iter.into_iter().map(|(_, r)| ByName(r)).collect())
    }
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Everything one snapshot publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSet {
    pub addresses: Resources,
    pub authorizations: Resources,
    pub routes: Resources,
    pub l7_authorizations: Resources,
}

impl ResourceSet {
    pub fn from_snapshot(snap: &Snapshot) -> Self {
        fn encode<M: Message>(m: BTreeMap<String, M>) -> Resources {
            m.into_iter()
                .map(|(name, msg)| {
                    let body = msg.encode_to_vec();
                    (name.clone(), Arc::new(Versioned::new(name, body)))
                })
                .collect()
        }
        ResourceSet {
            addresses: encode(convert::addresses(snap)),
            authorizations: encode(convert::authorizations(snap)),
            routes: encode(convert::routes(snap)),
            l7_authorizations: encode(convert::l7_authorizations(snap)),
        }
    }

    pub fn of(&self, kind: Kind) -> &Resources {
        match kind {
            Kind::Address => &self.addresses,
            Kind::Authorization => &self.authorizations,
            Kind::Route => &self.routes,
            Kind::L7Authorization => &self.l7_authorizations,
        }
    }
}
