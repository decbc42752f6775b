//! The immutable, indexed view of the mesh. Built once per update and shared
//! as `Arc<Snapshot>`; lookups never allocate.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use crate::identity::SpiffeId;
use crate::identity::SpiffeIdError;
use crate::l7policy::L7Policy;
use crate::route::Route;

use super::l7::L7Index;
use super::{
    labels_match, Labels, MissingWaypoint, MtlsMode, Namespace, Node, Policies, Policy, Service,
    Tunnel, UseWaypoint, Waypoint, Workload, DEFAULT_TRUST_DOMAIN, USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL, USE_WAYPOINT_NONE,
};

/// Everything a snapshot is built from, unindexed.
#[derive(Debug, Clone, Default)]
pub struct SnapshotParts {
    pub trust_domain: String,
    pub nodes: Vec<Node>,
    pub namespaces: Vec<Namespace>,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Policy>,
    /// HTTPRoutes and GRPCRoutes (the waypoint's).
    pub routes: Vec<Route>,
    /// AuthorizationPolicies with `targetRefs` (the waypoint's).
    pub l7_policies: Vec<L7Policy>,
}

/// [`SnapshotParts`] with the workloads behind `Arc`s, for
/// [`Snapshot::build_shared`].
#[derive(Debug, Clone, Default)]
pub struct SharedParts {
    pub trust_domain: String,
    pub nodes: Vec<Node>,
    pub namespaces: Vec<Namespace>,
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Service>,
    pub policies: Vec<Policy>,
    pub routes: Vec<Arc<Route>>,
    pub l7_policies: Vec<Arc<L7Policy>>,
}

/// Inconsistent input to [`Snapshot::build`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("namespace {0:?} is defined twice")]
    DuplicateNamespace(String),
    #[error("workload uid {0:?} is defined twice")]
    DuplicateWorkload(String),
    #[error("service {0:?} is defined twice")]
    DuplicateService(String),
    #[error("IP {ip} belongs to both {first} and {second}")]
    DuplicateIp {
        ip: IpAddr,
        first: String,
        second: String,
    },
    #[error("workload {workload} has an invalid identity")]
    BadIdentity {
        workload: String,
        #[source]
        source: SpiffeIdError,
    },
    #[error("route {0} is defined twice")]
    DuplicateRoute(String),
    #[error("L7 policy {0} is defined twice")]
    DuplicateL7Policy(String),
}

/// An immutable, indexed view of the mesh.
///
/// Cloning one copies the indexes (pointers, no workload or string is
/// copied): [`Snapshot::patch`] builds the next snapshot from a clone.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub(super) trust_domain: String,
    pub(super) nodes: BTreeMap<String, Node>,
    pub(super) namespaces: BTreeMap<String, Namespace>,
    pub(super) workloads: Vec<Arc<Workload>>,
    pub(super) services: Vec<Arc<Service>>,
    pub(super) policies: Policies,
    pub(super) workload_by_ip: HashMap<IpAddr, Arc<Workload>>,
    /// Keyed by the workload's own uid (no copy of the string).
    pub(super) workload_by_uid: HashSet<ByUid>,
    /// Namespace → workloads keyed by their own name.
    pub(super) workload_by_name: HashMap<String, HashSet<ByName>>,
    pub(super) service_by_vip: HashMap<IpAddr, Arc<Service>>,
    /// Namespace → service name → the service and its endpoints.
    pub(super) endpoints: HashMap<String, HashMap<String, Served>>,
    /// Routes and L7 policies, indexed (the waypoint's).
    pub(super) l7: Arc<L7Index>,
}

/// A service and its endpoints, sorted by uid.
#[derive(Debug, Clone)]
pub(super) struct Served {
    pub(super) service: Arc<Service>,
    pub(super) workloads: Vec<Arc<Workload>>,
}

/// A workload in a set keyed by its uid.
#[derive(Debug, Clone)]
pub(super) struct ByUid(pub(super) Arc<Workload>);

/// A workload in a set keyed by its name.
#[derive(Debug, Clone)]
pub(super) struct ByName(pub(super) Arc<Workload>);

macro_rules! keyed_by {
    ($t:ident, $field:ident) => {
        impl Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0.$field
            }
        }
        impl Hash for $t {
            fn hash<H: Hasher>(&self, h: &mut H) {
                self.0.$field.as_str().hash(h)
            }
        }
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.0.$field == other.0.$field
            }
        }
        impl Eq for $t {}
    };
}
keyed_by!(ByUid, uid);
keyed_by!(ByName, name);

impl Snapshot {
    /// Validates and indexes `parts`, and resolves `istio.io/use-waypoint`
    /// labels into [`UseWaypoint`]s for workloads and services that do not
    /// already name one: ready, or missing when the label names no workload
    /// with an address (the owner stays in the snapshot either way).
    pub fn build(parts: SnapshotParts) -> Result<Snapshot, StateError> {
        let SnapshotParts {
            trust_domain,
            nodes,
            namespaces,
            workloads,
            services,
            policies,
            routes,
            l7_policies,
        } = parts;
        let shared = SharedParts {
            trust_domain,
            nodes,
            namespaces,
            workloads: workloads.into_iter().map(Arc::new).collect(),
            services,
            policies,
            routes: routes.into_iter().map(Arc::new).collect(),
            l7_policies: l7_policies.into_iter().map(Arc::new).collect(),
        };
        Snapshot::build_shared(shared)
    }

    /// [`Snapshot::build`] from workloads already behind `Arc`s (the xDS
    /// store's): a workload whose waypoint needs no resolving is shared,
    /// not copied.
    pub fn build_shared(parts: SharedParts) -> Result<Snapshot, StateError> {
        let SharedParts {
            trust_domain,
            nodes,
            namespaces,
            workloads,
            services,
            policies,
            routes,
            l7_policies,
        } = parts;
        let l7 = Arc::new(L7Index::build(routes, l7_policies)?);
        let mut ns_map = BTreeMap::new();
        for ns in namespaces {
            if ns_map.contains_key(&ns.name) {
                return Err(StateError::DuplicateNamespace(ns.name));
            }
            ns_map.insert(ns.name.clone(), ns);
        }
        let workloads = check_workloads(workloads)?;
        let resolver = WaypointResolver {
            namespaces: &ns_map,
            by_name: workloads
                .iter()
                .map(|w| ((w.namespace.as_str(), w.name.as_str()), &**w))
                .collect(),
        };
        // Waypoints are resolved while the resolver borrows the workloads,
        // which are then moved (not cloned) into the snapshot.
        let mut waypoints = Vec::with_capacity(workloads.len());
        for w in &workloads {
            waypoints.push(match &w.waypoint {
                Some(_) => None,
                None => resolver.resolve(&w.namespace, &w.labels, Some(&w.uid)),
            });
        }
        let mut services = services;
        for svc in &mut services {
            if svc.waypoint.is_none() {
                svc.waypoint = resolver.resolve(&svc.namespace, &svc.labels, None);
            }
        }
        drop(resolver);
        let resolved: Vec<Arc<Workload>> = workloads
            .into_iter()
            .zip(waypoints)
            .map(|(mut w, wp)| {
                if let Some(wp) = wp {
                    Arc::make_mut(&mut w).waypoint = Some(wp);
                }
                w
            })
            .collect();
        let mut snap = Snapshot {
            trust_domain: if trust_domain.is_empty() {
                DEFAULT_TRUST_DOMAIN.to_owned()
            } else {
                trust_domain
            },
            nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
            policies: Policies::new(policies),
            l7,
            ..Snapshot::default()
        };
        snap.workload_by_ip.reserve(resolved.len());
        snap.workload_by_uid.reserve(resolved.len());
        for w in &resolved {
            snap.index_workload(w);
        }
        let labels = LabelIndex::new(&resolved);
        for svc in services {
            snap.add_service(svc, &labels)?;
        }
        snap.workloads = resolved;
        snap.namespaces = ns_map;
        Ok(snap)
    }

    /// Adds `w` to the lookup indexes (not to the workload list).
    pub(super) fn index_workload(&mut self, w: &Arc<Workload>) {
        for ip in &w.ips {
            self.workload_by_ip.insert(*ip, w.clone());
        }
        self.workload_by_uid.insert(ByUid(w.clone()));
        let by_name = match self.workload_by_name.get_mut(w.namespace.as_str()) {
            Some(m) => m,
            None => self
                .workload_by_name
                .entry(w.namespace.clone())
                .or_default(),
        };
        // The last one listed wins, as a map insert would.
        by_name.replace(ByName(w.clone()));
    }

    /// The workload or service that already holds `ip`, by key.
    pub(super) fn ip_claimed_by(&self, ip: &IpAddr) -> Option<String> {
        self.workload_by_ip
            .get(ip)
            .map(|w| w.key())
            .or_else(|| self.service_by_vip.get(ip).map(|s| s.key()))
    }

    pub(super) fn add_service(
        &mut self,
        svc: Service,
        labels: &LabelIndex<'_>,
    ) -> Result<(), StateError> {
        if self
            .endpoints
            .get(&svc.namespace)
            .is_some_and(|m| m.contains_key(&svc.name))
        {
            return Err(StateError::DuplicateService(svc.key()));
        }
        let svc = Arc::new(svc);
        for vip in &svc.vips {
            if let Some(first) = self.ip_claimed_by(vip) {
                return Err(StateError::DuplicateIp {
                    ip: *vip,
                    first,
                    second: svc.key(),
                });
            }
            self.service_by_vip.insert(*vip, svc.clone());
        }
        let mut eps: Vec<Arc<Workload>> = labels
            .select(&svc.namespace, &svc.selector)
            .chain(
                svc.endpoint_uids
                    .iter()
                    .filter_map(|uid| self.workload_by_uid.get(uid.as_str()).map(|b| &b.0)),
            )
            .cloned()
            .collect();
        eps.sort_by(|a, b| a.uid.cmp(&b.uid));
        eps.dedup_by(|a, b| a.uid == b.uid);
        self.endpoints
            .entry(svc.namespace.clone())
            .or_default()
            .insert(
                svc.name.clone(),
                Served {
                    service: svc.clone(),
                    workloads: eps,
                },
            );
        self.services.push(svc);
        Ok(())
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// Every namespace, by name.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.iter()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter()
    }

    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_ip.get(&ip)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workload_by_uid.get(uid).map(|b| &b.0)
    }

    /// The workload `<namespace>/<name>` (with several of that name, the
    /// last listed).
    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workload_by_name
            .get(namespace)?
            .get(name)
            .map(|b| &b.0)
    }

    /// The service `<namespace>/<name>`.
    pub fn service_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        Some(&self.endpoints.get(namespace)?.get(name)?.service)
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.service_by_vip.get(&ip)
    }

    /// The endpoints of `svc`, sorted by uid (so an index into them is stable).
    pub fn endpoints(&self, svc: &Service) -> &[Arc<Workload>] {
        self.endpoints
            .get(&svc.namespace)
            .and_then(|m| m.get(&svc.name))
            .map(|s| s.workloads.as_slice())
            .unwrap_or(&[])
    }

    /// The namespace's mTLS mode; unknown namespaces are permissive.
    pub fn mtls_mode(&self, namespace: &str) -> MtlsMode {
        self.namespaces
            .get(namespace)
            .map(|ns| ns.mtls)
            .unwrap_or_default()
    }

    /// Whether a node ztunnel captures this pod: it speaks HBONE (Istio's
    /// `tunnel_protocol`) and does not terminate it itself
    /// ([`Workload::native_tunnel`]: a pod with a sidecar is left to it).
    /// The local config sets the protocol from the namespace label
    /// `istio.io/dataplane-mode=ambient` (unless the pod opts out with
    /// `istio.io/dataplane-mode=none`); over xDS the control plane sets it.
    pub fn is_ambient(&self, w: &Workload) -> bool {
        w.tunnel == Tunnel::Hbone && !w.native_tunnel
    }

    /// Whether `w` takes HBONE on `podIP:15008`: an ambient pod (its node's
    /// ztunnel terminates it), or a pod whose own sidecar does
    /// ([`Workload::native_tunnel`]). What sidecars, and node ztunnels for
    /// a pod without a waypoint, tunnel to.
    pub fn accepts_hbone(&self, w: &Workload) -> bool {
        self.is_ambient(w) || w.native_tunnel
    }

    /// The IPs of ambient pods on `node`: the nftables `ambient_pods` set.
    pub fn local_ambient_ips(&self, node: &str) -> BTreeSet<IpAddr> {
        self.workloads
            .iter()
            .filter(|w| w.node == node && self.is_ambient(w))
            .flat_map(|w| w.ips.iter().copied())
            .collect()
    }
}

/// Workloads by (namespace, label key, label value), so a service's
/// selector finds its endpoints without scanning every workload (which made
/// building a snapshot O(services × workloads)).
#[derive(Default)]
pub(super) struct LabelIndex<'a> {
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<&'a Arc<Workload>>>,
}

impl<'a> LabelIndex<'a> {
    pub(super) fn new(workloads: &'a [Arc<Workload>]) -> Self {
        let mut by_label: HashMap<_, Vec<_>> = HashMap::new();
        for w in workloads {
            for (k, v) in &w.labels {
                by_label
                    .entry((w.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(w);
            }
        }
        LabelIndex { by_label }
    }

    /// The workloads of `namespace` that carry every label of `selector`;
    /// none for an empty selector. Walks the shortest posting list.
    fn select<'s>(
        &'s self,
        namespace: &'s str,
        selector: &'s Labels,
    ) -> impl Iterator<Item = &'a Arc<Workload>> + 's {
        let shortest = selector
            .iter()
            .map(|(k, v)| {
                self.by_label
                    .get(&(namespace, k.as_str(), v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|list| list.len())
            .unwrap_or(&[]);
        shortest
            .iter()
            .copied()
            .filter(move |w| labels_match(selector, &w.labels))
    }
}

fn check_workloads(workloads: Vec<Arc<Workload>>) -> Result<Vec<Arc<Workload>>, StateError> {
    let mut uids = BTreeSet::new();
    let mut ips: HashMap<IpAddr, String> = HashMap::new();
    for w in &workloads {
        if !uids.insert(w.uid.as_str()) {
            return Err(StateError::DuplicateWorkload(w.uid.clone()));
        }
        check_identity(w)?;
        for ip in &w.ips {
            if let Some(first) = ips.insert(*ip, w.key()) {
                return Err(StateError::DuplicateIp {
                    ip: *ip,
                    first,
                    second: w.key(),
                });
            }
        }
    }
    Ok(workloads)
}

pub(super) fn check_identity(w: &Workload) -> Result<(), StateError> {
    SpiffeId::new(&w.trust_domain, &w.namespace, &w.service_account)
        .map(|_| ())
        .map_err(|source| StateError::BadIdentity {
            workload: w.key(),
            source,
        })
}

struct WaypointResolver<'a> {
    namespaces: &'a BTreeMap<String, Namespace>,
    by_name: HashMap<(&'a str, &'a str), &'a Workload>,
}

impl WaypointResolver<'_> {
    /// The object's own label wins over its namespace's; `none` opts out.
    /// A workload is never its own waypoint (`self_uid`). A name that is
    /// no workload with an address is [`UseWaypoint::Missing`]: the owner
    /// stays, and traffic through the waypoint is refused, not sent around
    /// it.
    fn resolve(
        &self,
        namespace: &str,
        labels: &Labels,
        self_uid: Option<&str>,
    ) -> Option<UseWaypoint> {
        let ns_labels = self.namespaces.get(namespace).map(|ns| &ns.labels);
        let source = if labels.contains_key(USE_WAYPOINT_LABEL) {
            Some(labels)
        } else {
            ns_labels.filter(|l| l.contains_key(USE_WAYPOINT_LABEL))
        };
        let source = source?;
        let name = &source[USE_WAYPOINT_LABEL];
        if name == USE_WAYPOINT_NONE {
            return None;
        }
        let wp_ns = source
            .get(USE_WAYPOINT_NAMESPACE_LABEL)
            .map(String::as_str)
            .unwrap_or(namespace);
        let wp = self.by_name.get(&(wp_ns, name.as_str()));
        if wp.is_some_and(|wp| Some(wp.uid.as_str()) == self_uid) {
            return None;
        }
        match wp.and_then(|wp| Some((wp.primary_ip()?, wp.identity()))) {
            Some((address, identity)) => Some(UseWaypoint::Ready(Waypoint { address, identity })),
            None => Some(UseWaypoint::Missing(Box::new(MissingWaypoint::Named {
                namespace: wp_ns.to_owned(),
                name: name.clone(),
            }))),
        }
    }
}
