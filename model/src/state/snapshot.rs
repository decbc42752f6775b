//! The immutable, indexed view of the mesh, shared as `Arc<Snapshot>`;
//! lookups never allocate. Built whole from a list of objects
//! ([`Snapshot::build`]), or patched from the previous one
//! ([`Snapshot::patch`] for xDS deltas, and the mesh input's incremental
//! update): every index is a persistent set ([`PSet`]), so a patch copies
//! only the paths to what changed.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::identity::SpiffeId;
use crate::identity::SpiffeIdError;
use crate::l7policy::L7Policy;
use crate::route::Route;

use super::l7::L7Index;
use super::pset::{Keyed, PSet};
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
/// Every index is a persistent set ([`PSet`]): cloning a snapshot copies a
/// few pointers, and [`Snapshot::patch`] (or the mesh input's incremental
/// update) changes only the paths to what changed, sharing the rest with
/// the previous snapshot.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub(crate) trust_domain: String,
    pub(crate) nodes: Arc<BTreeMap<String, Node>>,
    pub(crate) namespaces: Arc<BTreeMap<String, Namespace>>,
    pub(crate) policies: Arc<Policies>,
    /// By uid, each with the services it is an endpoint of.
    pub(super) workloads: PSet<Entry>,
    pub(super) workload_by_ip: PSet<ByIp<Workload>>,
    /// By (namespace, name, uid).
    pub(super) workload_by_name: PSet<ByName>,
    /// By (namespace, name), each with its endpoints.
    pub(super) services: PSet<Served>,
    pub(super) service_by_vip: PSet<ByIp<Service>>,
    /// Routes and L7 policies, indexed (the waypoint's).
    pub(super) l7: Arc<L7Index>,
}

/// A workload and the services it is an endpoint of, by (namespace, name):
/// the reverse of [`Served`], so a workload's services cost what they are.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub(super) workload: Arc<Workload>,
    pub(super) services: Vec<Arc<Service>>,
}

/// A service and its endpoints, sorted by uid.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Served {
    pub(super) service: Arc<Service>,
    pub(super) workloads: Vec<Arc<Workload>>,
}

/// An address and what holds it.
#[derive(Debug, PartialEq)]
pub(super) struct ByIp<T>(pub(super) IpAddr, pub(super) Arc<T>);

/// A workload in the (namespace, name, uid) order.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ByName(pub(super) Arc<Workload>);

impl Keyed for Entry {
    fn cmp_key(&self, other: &Self) -> Ordering {
        self.workload.uid.cmp(&other.workload.uid)
    }
}

impl Keyed for Served {
    fn cmp_key(&self, other: &Self) -> Ordering {
        ns_name(&self.service).cmp(&ns_name(&other.service))
    }
}

impl<T> Keyed for ByIp<T> {
    fn cmp_key(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl<T> Clone for ByIp<T> {
    fn clone(&self) -> Self {
        ByIp(self.0, self.1.clone())
    }
}

impl Keyed for ByName {
    fn cmp_key(&self, other: &Self) -> Ordering {
        fn key(w: &Workload) -> (&str, &str, &str) {
            (w.namespace.as_str(), w.name.as_str(), w.uid.as_str())
        }
        key(&self.0).cmp(&key(&other.0))
    }
}

fn ns_name(s: &Service) -> (&str, &str) {
    (s.namespace.as_str(), s.name.as_str())
}

/// A probe for the service `namespace/name`.
pub(super) fn service_probe<'a>(
    namespace: &'a str,
    name: &'a str,
) -> impl Fn(&Served) -> Ordering + 'a {
    move |s| ns_name(&s.service).cmp(&(namespace, name))
}

/// A probe for the workload `uid`.
pub(super) fn uid_probe(uid: &str) -> impl Fn(&Entry) -> Ordering + '_ {
    move |e| e.workload.uid.as_str().cmp(uid)
}

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
        // Of several workloads with one name, the one with the greatest uid.
        let mut by_name: HashMap<(&str, &str), &Workload> = HashMap::new();
        for w in &workloads {
            by_name
                .entry((w.namespace.as_str(), w.name.as_str()))
                .and_modify(|o| {
                    if w.uid > o.uid {
                        *o = w;
                    }
                })
                .or_insert(w);
        }
        let resolver = WaypointResolver {
            namespaces: &ns_map,
            by_name: |ns: &str, name: &str| by_name.get(&(ns, name)).copied(),
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
            nodes: Arc::new(nodes.into_iter().map(|n| (n.name.clone(), n)).collect()),
            policies: Arc::new(Policies::new(policies)),
            l7,
            ..Snapshot::default()
        };
        for w in &resolved {
            snap.index_workload(w.clone());
        }
        let labels = LabelIndex::new(&resolved);
        for svc in services {
            snap.add_service(svc, &labels)?;
        }
        snap.namespaces = Arc::new(ns_map);
        Ok(snap)
    }

    /// Adds `w` to the indexes, with no services yet (checked by the
    /// caller).
    pub(super) fn index_workload(&mut self, w: Arc<Workload>) {
        for ip in &w.ips {
            self.workload_by_ip.insert(ByIp(*ip, w.clone()));
        }
        self.workload_by_name.insert(ByName(w.clone()));
        self.workloads.insert(Entry {
            workload: w,
            services: Vec::new(),
        });
    }

    /// The workload or service that already holds `ip`, by key.
    pub(super) fn ip_claimed_by(&self, ip: &IpAddr) -> Option<String> {
        self.workload_by_ip(*ip)
            .map(|w| w.key())
            .or_else(|| self.service_by_vip(*ip).map(|s| s.key()))
    }

    pub(super) fn add_service(
        &mut self,
        svc: Service,
        labels: &LabelIndex<'_>,
    ) -> Result<(), StateError> {
        let eps: Vec<Arc<Workload>> = labels
            .select(&svc.namespace, &svc.selector)
            .cloned()
            .chain(
                svc.endpoint_uids
                    .iter()
                    .filter_map(|uid| self.workload_by_uid(uid).cloned()),
            )
            .collect();
        self.insert_service(Arc::new(svc), eps)
    }

    /// Adds `svc` with the endpoints `eps` (sorted and deduplicated here),
    /// and links it from each of them.
    pub(crate) fn insert_service(
        &mut self,
        svc: Arc<Service>,
        mut eps: Vec<Arc<Workload>>,
    ) -> Result<(), StateError> {
        if self.service_by_name(&svc.namespace, &svc.name).is_some() {
            return Err(StateError::DuplicateService(svc.key()));
        }
        for vip in &svc.vips {
            if let Some(first) = self.ip_claimed_by(vip) {
                return Err(StateError::DuplicateIp {
                    ip: *vip,
                    first,
                    second: svc.key(),
                });
            }
            self.service_by_vip.insert(ByIp(*vip, svc.clone()));
        }
        eps.sort_by(|a, b| a.uid.cmp(&b.uid));
        eps.dedup_by(|a, b| a.uid == b.uid);
        for w in &eps {
            self.link(&w.uid, &svc);
        }
        self.services.insert(Served {
            service: svc,
            workloads: eps,
        });
        Ok(())
    }

    /// Records that the workload `uid` (if held) backs `svc`.
    fn link(&mut self, uid: &str, svc: &Arc<Service>) {
        let Some(entry) = self.workloads.find(uid_probe(uid)) else {
            return;
        };
        let mut entry = entry.clone();
        let at = entry
            .services
            .partition_point(|s| ns_name(s) < ns_name(svc));
        if entry
            .services
            .get(at)
            .is_some_and(|s| ns_name(s) == ns_name(svc))
        {
            entry.services[at] = svc.clone();
        } else {
            entry.services.insert(at, svc.clone());
        }
        self.workloads.insert(entry);
    }

    /// Removes the service `namespace/name` and its links; returns it.
    pub(crate) fn remove_service(&mut self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        let served = self.services.remove_by(service_probe(namespace, name))?;
        for vip in &served.service.vips {
            if self
                .service_by_vip(*vip)
                .is_some_and(|x| Arc::ptr_eq(x, &served.service))
            {
                self.service_by_vip.remove_by(|e| e.0.cmp(vip));
            }
        }
        for w in &served.workloads {
            let Some(entry) = self.workloads.find(uid_probe(&w.uid)) else {
                continue;
            };
            if !entry
                .services
                .iter()
                .any(|s| Arc::ptr_eq(s, &served.service))
            {
                continue;
            }
            let mut entry = entry.clone();
            entry.services.retain(|s| !Arc::ptr_eq(s, &served.service));
            self.workloads.insert(entry);
        }
        Some(served.service)
    }

    /// Removes the workload `uid` from every index; returns it with the
    /// services it backed (which still list it: re-add them).
    pub(crate) fn remove_workload(&mut self, uid: &str) -> Option<Arc<Workload>> {
        let entry = self.workloads.remove_by(uid_probe(uid))?;
        let w = &entry.workload;
        for ip in &w.ips {
            if self.workload_by_ip(*ip).is_some_and(|x| Arc::ptr_eq(x, w)) {
                self.workload_by_ip.remove_by(|e| e.0.cmp(ip));
            }
        }
        self.workload_by_name.remove_like(&ByName(w.clone()));
        Some(entry.workload)
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

    /// Every workload, by uid.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.iter().map(|e| &e.workload)
    }

    /// How many workloads there are.
    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }

    /// Every service, by (namespace, name).
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter().map(|s| &s.service)
    }

    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_ip.find(|e| e.0.cmp(&ip)).map(|e| &e.1)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.find(uid_probe(uid)).map(|e| &e.workload)
    }

    /// The services the workload `uid` is an endpoint of, by (namespace,
    /// name): found in O(log n), not by scanning the services.
    pub fn services_of(&self, uid: &str) -> &[Arc<Service>] {
        self.workloads
            .find(uid_probe(uid))
            .map_or(&[][..], |e| e.services.as_slice())
    }

    /// The workload `<namespace>/<name>` (with several of that name, the
    /// one with the greatest uid).
    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workload_by_name
            .find(|e| (e.0.namespace.as_str(), e.0.name.as_str()).cmp(&(namespace, name)))
            .map(|e| &e.0)
    }

    /// The service `<namespace>/<name>`.
    pub fn service_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services
            .find(service_probe(namespace, name))
            .map(|s| &s.service)
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.service_by_vip.find(|e| e.0.cmp(&ip)).map(|e| &e.1)
    }

    /// The endpoints of `svc`, sorted by uid (so an index into them is stable).
    pub fn endpoints(&self, svc: &Service) -> &[Arc<Workload>] {
        self.services
            .find(service_probe(&svc.namespace, &svc.name))
            .map_or(&[][..], |s| s.workloads.as_slice())
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
        self.workloads()
            .filter(|w| w.node == node && self.is_ambient(w))
            .flat_map(|w| w.ips.iter().copied())
            .collect()
    }

    /// Every index, in order, as text: two snapshots of the same state
    /// print the same, however each was made (tests compare a patched
    /// snapshot with one built from scratch this way).
    #[cfg(test)]
    pub(crate) fn canonical(&self) -> String {
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            self.trust_domain,
            self.nodes,
            self.namespaces,
            self.policies,
            self.workloads,
            self.workload_by_ip,
            self.workload_by_name,
            self.services,
            self.service_by_vip,
            self.l7.routes(),
            self.l7.policies(),
        )
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

/// Resolves `istio.io/use-waypoint` labels: `by_name` finds a workload by
/// (namespace, name).
pub(crate) struct WaypointResolver<'a, F> {
    pub(crate) namespaces: &'a BTreeMap<String, Namespace>,
    pub(crate) by_name: F,
}

impl<'a, F: Fn(&str, &str) -> Option<&'a Workload>> WaypointResolver<'a, F> {
    /// The object's own label wins over its namespace's; `none` opts out.
    /// A workload is never its own waypoint (`self_uid`). A name that is
    /// no workload with an address is [`UseWaypoint::Missing`]: the owner
    /// stays, and traffic through the waypoint is refused, not sent around
    /// it.
    pub(crate) fn resolve(
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
        let wp = (self.by_name)(wp_ns, name.as_str());
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
