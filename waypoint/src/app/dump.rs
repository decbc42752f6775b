//! `/config_dump`: what this waypoint serves, as JSON: the Services and
//! pods bound to it, each Service port with the routes attached to it (or
//! `default`: all ready endpoints), those routes in full, the L7 policies
//! bound to its Gateway and Services, the L4 policies of the endpoints
//! behind them (opaque TCP), the load balancing in force, ejected endpoints
//! and its certificate. Private keys never appear. Pure.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hbone::cert::WorkloadCert;
use mesh_model::l7policy::{L7Policy, PolicyTarget};
use mesh_model::policy::applies;
use mesh_model::route::Route;
use mesh_model::state::{AppProtocol, Policy, Service, Snapshot, UseWaypoint, Workload};
use mesh_model::SpiffeId;
use serde::Serialize;

use crate::lb::{LbPolicy, OutlierConfig, RetryBudget};
use crate::upstream::pool::PoolStats;

/// Everything the dump shows besides the snapshot.
pub struct DumpInput<'a> {
    pub identity: &'a SpiffeId,
    /// The waypoint's Gateway (`namespace`, `name`).
    pub gateway: (&'a str, &'a str),
    pub lb: LbPolicy,
    pub outlier: OutlierConfig,
    pub retry_budget: RetryBudget,
    pub ejected: Vec<SocketAddr>,
    pub pool: PoolStats,
    pub cert: Option<&'a WorkloadCert>,
}

#[derive(Serialize)]
struct Dump<'a> {
    identity: String,
    trust_domain: &'a str,
    services: Vec<ServiceDump<'a>>,
    workloads: Vec<WorkloadDump<'a>>,
    routes: Vec<&'a Route>,
    l7_policies: Vec<&'a L7Policy>,
    policies: Vec<&'a Policy>,
    load_balancing: LbDump,
    ejected_endpoints: Vec<String>,
    upstream_pool: PoolStats,
    certificate: Option<CertDump>,
}

#[derive(Serialize)]
struct ServiceDump<'a> {
    #[serde(flatten)]
    service: &'a Service,
    routes: Vec<RouteDump>,
}

#[derive(Serialize)]
struct RouteDump {
    port: u16,
    target_port: u16,
    app_protocol: Option<AppProtocol>,
    /// The routes attached on this port, or `default`.
    routes: Vec<String>,
    endpoints: Vec<String>,
}

#[derive(Serialize)]
struct WorkloadDump<'a> {
    name: String,
    ips: &'a [std::net::IpAddr],
    identity: String,
}

#[derive(Serialize)]
struct LbDump {
    policy: LbPolicy,
    outlier_detection: OutlierConfig,
    retry_budget: RetryBudget,
}

#[derive(Serialize)]
struct CertDump {
    identity: String,
    /// Seconds since the Unix epoch.
    not_before: u64,
    not_after: u64,
    refresh_at: u64,
    chain_len: usize,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bound(wp: &Option<UseWaypoint>, me: &SpiffeId) -> bool {
    wp.as_ref()
        .and_then(UseWaypoint::ready)
        .is_some_and(|w| w.identity == *me)
}

/// Renders the dump.
pub fn render(snap: &Snapshot, input: &DumpInput<'_>) -> String {
    let me = input.identity;
    let services: Vec<ServiceDump<'_>> = snap
        .services()
        .filter(|s| bound(&s.waypoint, me))
        .map(|s| ServiceDump {
            service: s,
            routes: s
                .ports
                .iter()
                .map(|p| RouteDump {
                    port: p.port,
                    target_port: p.target_port,
                    app_protocol: p.app_protocol,
                    routes: {
                        let keys: Vec<String> = snap
                            .routes_for(s, p.port)
                            .map(|r| r.key().to_string())
                            .collect();
                        if keys.is_empty() {
                            vec!["default".to_owned()]
                        } else {
                            keys
                        }
                    },
                    endpoints: snap
                        .endpoints(s)
                        .iter()
                        .filter_map(|w| w.primary_ip())
                        .map(|ip| SocketAddr::new(ip, p.target_port).to_string())
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let workloads: Vec<&Workload> = snap
        .workloads()
        .filter(|w| bound(&w.waypoint, me))
        .map(|w| &**w)
        .collect();
    // The policies of the endpoints behind what we serve (opaque TCP is
    // authorized against them).
    let behind: Vec<&Workload> = services
        .iter()
        .flat_map(|s| snap.endpoints(s.service).iter().map(|w| &**w))
        .chain(workloads.iter().copied())
        .collect();
    let policies: Vec<&Policy> = snap
        .policies()
        .iter()
        .filter(|p| behind.iter().any(|w| applies(p, w)))
        .collect();
    let mut routes: Vec<&Route> = services
        .iter()
        .flat_map(|s| {
            s.service
                .ports
                .iter()
                .flat_map(|p| snap.routes_for(s.service, p.port))
        })
        .collect();
    routes.sort_by_key(|r| r.key());
    routes.dedup_by_key(|r| r.key());
    let (gw_ns, gw_name) = input.gateway;
    let l7_policies: Vec<&L7Policy> = snap
        .l7_policies()
        .map(|p| &**p)
        .filter(|p| {
            p.targets.iter().any(|t| match t {
                PolicyTarget::Gateway(n) => p.namespace == gw_ns && n == gw_name,
                PolicyTarget::Service(n) => services
                    .iter()
                    .any(|s| s.service.namespace == p.namespace && s.service.name == *n),
            })
        })
        .collect();
    let dump = Dump {
        identity: me.to_string(),
        trust_domain: snap.trust_domain(),
        services,
        workloads: workloads
            .iter()
            .map(|w| WorkloadDump {
                name: w.key(),
                ips: &w.ips,
                identity: w.identity().to_string(),
            })
            .collect(),
        routes,
        l7_policies,
        policies,
        load_balancing: LbDump {
            policy: input.lb,
            outlier_detection: input.outlier,
            retry_budget: input.retry_budget,
        },
        ejected_endpoints: input.ejected.iter().map(|a| a.to_string()).collect(),
        upstream_pool: input.pool,
        certificate: input.cert.map(|c| CertDump {
            identity: c.identity().to_string(),
            not_before: unix(c.not_before()),
            not_after: unix(c.not_after()),
            refresh_at: unix(c.refresh_at()),
            chain_len: c.chain().len(),
        }),
    };
    serde_json::to_string_pretty(&dump).expect("dump serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::{DEFAULT_OUTLIER, DEFAULT_RETRY_BUDGET};

    #[test]
    fn shows_only_what_is_bound_to_us() {
        let snap = mesh_model::config::parse(
            r#"
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces: [{name: shop, labels: {istio.io/dataplane-mode: ambient}}]
workloads:
  - {name: wp, namespace: shop, serviceAccount: wp, ip: 10.1.1.2, node: n1, labels: {istio.io/dataplane-mode: none}}
  - {name: cart-1, namespace: shop, ip: 10.1.1.10, node: n1, labels: {app: cart}}
  - {name: other, namespace: shop, ip: 10.1.1.11, node: n1, labels: {app: other}}
services:
  - {name: cart, namespace: shop, vip: 10.96.0.10, ports: [{port: 80, targetPort: 8080}], selector: {app: cart}, labels: {istio.io/use-waypoint: wp}}
  - {name: other, namespace: shop, vip: 10.96.0.11, ports: [{port: 80}], selector: {app: other}}
routes:
  - kind: HTTPRoute
    metadata: {name: cart, namespace: shop}
    spec: {parentRefs: [{name: cart, port: 80}], rules: [{backendRefs: [{name: cart, port: 80}]}]}
  - kind: HTTPRoute
    metadata: {name: other, namespace: shop}
    spec: {parentRefs: [{name: other}], rules: [{backendRefs: [{name: other, port: 80}]}]}
policies:
  - {name: cart-only, namespace: shop, selector: {matchLabels: {app: cart}}, action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/wp]}}]}]}
  - {name: other-only, namespace: shop, selector: {matchLabels: {app: other}}, action: DENY}
  - {name: gw, namespace: shop, targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}], action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}
  - {name: on-cart, namespace: shop, targetRefs: [{kind: Service, group: "", name: cart}], rules: [{}]}
  - {name: on-other, namespace: shop, targetRefs: [{kind: Service, group: "", name: other}], rules: [{}]}
"#,
        )
        .unwrap();
        let me: SpiffeId = "spiffe://cluster.local/ns/shop/sa/wp".parse().unwrap();
        let input = DumpInput {
            identity: &me,
            gateway: ("shop", "wp"),
            lb: LbPolicy::LeastRequest,
            outlier: DEFAULT_OUTLIER,
            retry_budget: DEFAULT_RETRY_BUDGET,
            ejected: vec!["10.1.1.10:8080".parse().unwrap()],
            pool: PoolStats::default(),
            cert: None,
        };
        let v: serde_json::Value = serde_json::from_str(&render(&snap, &input)).unwrap();
        assert_eq!(v["identity"], "spiffe://cluster.local/ns/shop/sa/wp");
        let services = v["services"].as_array().unwrap();
        assert_eq!(services.len(), 1, "{v:#}");
        assert_eq!(services[0]["name"], "cart");
        assert_eq!(services[0]["routes"][0]["routes"][0], "HTTPRoute/shop/cart");
        assert_eq!(services[0]["routes"][0]["endpoints"][0], "10.1.1.10:8080");
        let names = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names("routes"), ["cart"]);
        assert_eq!(names("l7_policies"), ["gw", "on-cart"]);
        let policies: Vec<&str> = v["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(policies, ["cart-only"]);
        assert_eq!(v["load_balancing"]["policy"], "least-request");
        assert_eq!(v["ejected_endpoints"][0], "10.1.1.10:8080");
    }
}
