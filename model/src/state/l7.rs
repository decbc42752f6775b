//! The waypoint's part of a snapshot: routes by the Service (and port)
//! they attach to, and L7 policies by what they target.
//!
//! ```text
//!  [Route] ─parentRefs─► Service <ns>/<name> [port]   routes_for(svc, port)
//!  [L7Policy] ─targetRefs─► Gateway <ns>/<name>        l7_policies_for(gw, svc)
//!                        └► Service <ns>/<name>
//! ```
//!
//! Built whole from the routes and policies (they are few next to
//! workloads), and shared between snapshots behind an `Arc`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{Service, Snapshot, StateError};
use crate::l7policy::{L7Policy, PolicyTarget};
use crate::route::Route;

/// The ports a route attaches to on one Service: `None` for all of them.
type Ports = Option<Vec<u16>>;

/// Routes and L7 policies, indexed.
#[derive(Debug, Default)]
pub(super) struct L7Index {
    routes: Vec<Arc<Route>>,
    /// Service namespace → Service name → the routes attached, in key
    /// order, each once with the ports it attaches to.
    by_service: Named<Vec<(Ports, Arc<Route>)>>,
    policies: Vec<Arc<L7Policy>>,
    /// Namespace → Gateway name → the policies bound to it, by key.
    by_gateway: Named<Vec<Arc<L7Policy>>>,
    /// Namespace → Service name → the policies bound to it, by key.
    by_service_policy: Named<Vec<Arc<L7Policy>>>,
}

/// Namespace → name → value (looked up by `&str`, without allocating).
type Named<T> = HashMap<String, HashMap<String, T>>;

fn named<'a, T>(m: &'a Named<Vec<T>>, namespace: &str, name: &str) -> &'a [T] {
    m.get(namespace)
        .and_then(|n| n.get(name))
        .map_or(&[][..], Vec::as_slice)
}

impl L7Index {
    /// Indexes `routes` and `policies`; names must be unique.
    pub(super) fn build(
        mut routes: Vec<Arc<Route>>,
        mut policies: Vec<Arc<L7Policy>>,
    ) -> Result<L7Index, StateError> {
        routes.sort_by_key(|r| r.key());
        if let Some(w) = routes.windows(2).find(|w| w[0].key() == w[1].key()) {
            return Err(StateError::DuplicateRoute(w[0].key().to_string()));
        }
        policies.sort_by_key(|p| p.key());
        if let Some(w) = policies.windows(2).find(|w| w[0].key() == w[1].key()) {
            return Err(StateError::DuplicateL7Policy(w[0].key().to_string()));
        }
        let mut by_service: Named<Vec<(Ports, Arc<Route>)>> = HashMap::new();
        for r in &routes {
            // One entry per Service: the union of the ports its refs name.
            let mut ports: HashMap<(&str, &str), Option<BTreeSet<u16>>> = HashMap::new();
            for p in &r.parents {
                let entry = ports
                    .entry((p.namespace.as_str(), p.name.as_str()))
                    .or_insert_with(|| Some(BTreeSet::new()));
                match (p.port, entry.as_mut()) {
                    (Some(port), Some(set)) => {
                        set.insert(port);
                    }
                    (None, _) => *entry = None,
                    (Some(_), None) => {}
                }
            }
            for ((ns, name), set) in ports {
                by_service
                    .entry(ns.to_owned())
                    .or_default()
                    .entry(name.to_owned())
                    .or_default()
                    .push((set.map(|s| s.into_iter().collect()), r.clone()));
            }
        }
        for names in by_service.values_mut() {
            for list in names.values_mut() {
                list.sort_by_key(|(_, r)| r.key());
            }
        }
        let mut by_gateway: Named<Vec<Arc<L7Policy>>> = HashMap::new();
        let mut by_service_policy: Named<Vec<Arc<L7Policy>>> = HashMap::new();
        for p in &policies {
            let targets: BTreeSet<&PolicyTarget> = p.targets.iter().collect();
            for t in targets {
                let (map, name) = match t {
                    PolicyTarget::Gateway(n) => (&mut by_gateway, n),
                    PolicyTarget::Service(n) => (&mut by_service_policy, n),
                };
                map.entry(p.namespace.clone())
                    .or_default()
                    .entry(name.clone())
                    .or_default()
                    .push(p.clone());
            }
        }
        Ok(L7Index {
            routes,
            by_service,
            policies,
            by_gateway,
            by_service_policy,
        })
    }

    pub(super) fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub(super) fn policies(&self) -> &[Arc<L7Policy>] {
        &self.policies
    }
}

impl Snapshot {
    /// Every route, by `<kind>/<namespace>/<name>`.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.l7.routes().iter()
    }

    /// Every L7 policy, by `<namespace>/<name>`.
    pub fn l7_policies(&self) -> impl Iterator<Item = &Arc<L7Policy>> {
        self.l7.policies().iter()
    }

    /// The routes attached to `svc` that apply on `port`: those whose
    /// `parentRefs` name it with that port or with none. Each route once.
    pub fn routes_for<'a>(&'a self, svc: &Service, port: u16) -> impl Iterator<Item = &'a Route> {
        named(&self.l7.by_service, &svc.namespace, &svc.name)
            .iter()
            .filter(move |(ports, _)| ports.as_ref().is_none_or(|p| p.contains(&port)))
            .map(|(_, r)| &**r)
    }

    /// The L7 policies for a request through the waypoint (Gateway)
    /// `gateway_namespace/gateway_name`, addressed to `service` (when it
    /// was addressed to one): those targeting the Gateway, then those
    /// targeting the Service.
    pub fn l7_policies_for<'a>(
        &'a self,
        gateway_namespace: &str,
        gateway_name: &str,
        service: Option<&Service>,
    ) -> impl Iterator<Item = &'a L7Policy> + Clone {
        let gateway = named(&self.l7.by_gateway, gateway_namespace, gateway_name);
        let service = service.map_or(&[][..], |s| {
            named(&self.l7.by_service_policy, &s.namespace, &s.name)
        });
        gateway.iter().chain(service).map(|p| &**p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7policy::L7Rule;
    use crate::route::{ParentRef, RouteKind, RouteRule, Timeouts};
    use crate::state::{PolicyAction, SnapshotDelta, SnapshotParts};

    fn service(ns: &str, name: &str) -> Service {
        Service {
            name: name.into(),
            namespace: ns.into(),
            hostname: Service::fqdn(name, ns),
            vips: vec![],
            ports: vec![],
            selector: Default::default(),
            endpoint_uids: vec![],
            labels: Default::default(),
            waypoint: None,
        }
    }

    fn route(name: &str, parents: &[(&str, &str, Option<u16>)]) -> Route {
        Route {
            kind: RouteKind::Http,
            name: name.into(),
            namespace: "shop".into(),
            created: None,
            parents: parents
                .iter()
                .map(|(ns, n, port)| ParentRef {
                    namespace: (*ns).into(),
                    name: (*n).into(),
                    port: *port,
                })
                .collect(),
            rules: vec![RouteRule {
                name: None,
                matches: vec![Default::default()],
                grpc_matches: vec![],
                filters: vec![],
                backends: vec![],
                timeouts: Timeouts::default(),
                retry: None,
                fault: None,
            }],
        }
    }

    fn policy(ns: &str, name: &str, targets: Vec<PolicyTarget>) -> L7Policy {
        L7Policy {
            name: name.into(),
            namespace: ns.into(),
            targets,
            action: PolicyAction::Allow,
            rules: vec![L7Rule::default()],
        }
    }

    fn snap(routes: Vec<Route>, l7_policies: Vec<L7Policy>) -> Result<Snapshot, StateError> {
        Snapshot::build(SnapshotParts {
            routes,
            l7_policies,
            ..SnapshotParts::default()
        })
    }

    fn names<'a>(it: impl Iterator<Item = &'a Route>) -> Vec<&'a str> {
        it.map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn routes_by_service_and_port() {
        let s = snap(
            vec![
                route("all-ports", &[("shop", "reviews", None)]),
                route("port-80", &[("shop", "reviews", Some(80))]),
                route(
                    "twice",
                    &[("shop", "reviews", Some(80)), ("shop", "reviews", Some(81))],
                ),
                route(
                    "any-and-81",
                    &[("shop", "reviews", Some(81)), ("shop", "reviews", None)],
                ),
                route("other-ns", &[("bank", "reviews", None)]),
            ],
            vec![],
        )
        .unwrap();
        let reviews = service("shop", "reviews");
        assert_eq!(
            names(s.routes_for(&reviews, 80)),
            ["all-ports", "any-and-81", "port-80", "twice"]
        );
        assert_eq!(
            names(s.routes_for(&reviews, 81)),
            ["all-ports", "any-and-81", "twice"]
        );
        assert_eq!(
            names(s.routes_for(&reviews, 9)),
            ["all-ports", "any-and-81"]
        );
        assert_eq!(
            names(s.routes_for(&service("bank", "reviews"), 80)),
            ["other-ns"]
        );
        assert!(s.routes_for(&service("shop", "cart"), 80).next().is_none());
        assert_eq!(s.routes().count(), 5);
    }

    #[test]
    fn policies_by_gateway_and_service() {
        use PolicyTarget::{Gateway, Service as Svc};
        let s = snap(
            vec![],
            vec![
                policy("shop", "gw", vec![Gateway("waypoint".into())]),
                policy("shop", "svc", vec![Svc("reviews".into())]),
                policy(
                    "shop",
                    "both",
                    vec![
                        Gateway("waypoint".into()),
                        Svc("reviews".into()),
                        Svc("reviews".into()),
                    ],
                ),
                policy("bank", "elsewhere", vec![Gateway("waypoint".into())]),
            ],
        )
        .unwrap();
        let keys = |it: &mut dyn Iterator<Item = &L7Policy>| {
            it.map(|p| p.key().to_string()).collect::<Vec<_>>()
        };
        let reviews = service("shop", "reviews");
        assert_eq!(
            keys(&mut s.l7_policies_for("shop", "waypoint", Some(&reviews))),
            ["shop/both", "shop/gw", "shop/both", "shop/svc"]
        );
        assert_eq!(
            keys(&mut s.l7_policies_for("shop", "waypoint", None)),
            ["shop/both", "shop/gw"]
        );
        assert_eq!(
            keys(&mut s.l7_policies_for("bank", "waypoint", Some(&service("bank", "x")))),
            ["bank/elsewhere"]
        );
        assert!(s
            .l7_policies_for("shop", "other", Some(&service("shop", "cart")))
            .next()
            .is_none());
    }

    #[test]
    fn duplicates_are_refused_and_patches_replace_the_sets() {
        let dup = snap(vec![route("r", &[]), route("r", &[])], vec![]);
        assert_eq!(
            dup.unwrap_err(),
            StateError::DuplicateRoute("HTTPRoute/shop/r".into())
        );
        let dup = snap(
            vec![],
            vec![policy("a", "p", vec![]), policy("a", "p", vec![])],
        );
        assert_eq!(
            dup.unwrap_err(),
            StateError::DuplicateL7Policy("a/p".into())
        );
        let s = snap(
            vec![route("r", &[("shop", "reviews", None)])],
            vec![policy("shop", "p", vec![PolicyTarget::Gateway("w".into())])],
        )
        .unwrap();
        let next = s
            .patch(SnapshotDelta {
                routes: Some(vec![Arc::new(route("r2", &[("shop", "reviews", None)]))]),
                ..SnapshotDelta::default()
            })
            .unwrap();
        assert_eq!(
            names(next.routes_for(&service("shop", "reviews"), 1)),
            ["r2"]
        );
        assert_eq!(next.l7_policies().count(), 1, "policies kept");
        assert_eq!(
            names(s.routes_for(&service("shop", "reviews"), 1)),
            ["r"],
            "the old snapshot is unchanged"
        );
    }
}
