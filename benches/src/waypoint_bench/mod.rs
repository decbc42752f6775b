//! The pure parts of the waypoint benchmark (`waypoint-bench`): the modes,
//! the mesh config they share, the Envoy waypoint's bootstrap ([`envoy`]),
//! the search for the highest sustainable rate ([`search`]) and the report
//! ([`report`]). No sockets, no processes, no clock: the binary
//! (`src/bin/waypoint-bench.rs`) does the I/O.
//!
//! Topology (one run, every mode in it): node 1 holds the `client` pod and
//! both waypoint pods (`waypoint`, ours, and `envoy-waypoint`, each
//! `istio.io/dataplane-mode: none` and doing its own HBONE), node 2 the
//! `server` pod. Three Services select `server`: `echo-direct` (no
//! waypoint), `echo-wp` (`istio.io/use-waypoint: waypoint`) and
//! `echo-envoy` (`istio.io/use-waypoint: envoy-waypoint`), so the modes
//! differ only in the VIP the client dials. The no-mesh baseline is a pair
//! outside the mesh on the same nodes (`plain-client` → `plain-server`).

pub mod envoy;
pub mod report;
pub mod search;

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

/// Trust domain and Kubernetes namespace of the benchmark.
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const NAMESPACE: &str = "shop";
/// Our waypoint's name (its Gateway, pod and service account).
pub const OUR_WAYPOINT: &str = "waypoint";
/// The Envoy waypoint's name (its Gateway, pod and service account).
pub const ENVOY_WAYPOINT: &str = "envoy-waypoint";
/// The Service port every mode dials, and the app's port behind it.
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = mesh_tests::l7load::APP_PORT;
/// VIPs of the three Services.
pub const DIRECT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
pub const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
pub const ENVOY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 22);

/// The data paths compared, in the order they alternate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `plain-client` → `plain-server`, no proxy.
    NoMesh,
    /// client → ztunnel → ztunnel → server (`echo-direct`).
    Ztunnel,
    /// client → ztunnel → our waypoint → ztunnel → server (`echo-wp`).
    Waypoint,
    /// client → ztunnel → Envoy as the waypoint → ztunnel → server
    /// (`echo-envoy`).
    EnvoyWaypoint,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::NoMesh,
        Mode::Ztunnel,
        Mode::Waypoint,
        Mode::EnvoyWaypoint,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Mode::NoMesh => "no_mesh",
            Mode::Ztunnel => "ztunnel",
            Mode::Waypoint => "waypoint",
            Mode::EnvoyWaypoint => "envoy_waypoint",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Mode::NoMesh => "no mesh",
            Mode::Ztunnel => "ztunnel only",
            Mode::Waypoint => "ztunnel + our waypoint",
            Mode::EnvoyWaypoint => "ztunnel + Envoy waypoint",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.key() == s)
    }

    /// Whether a waypoint process is on the path (its CPU and RSS are
    /// measured).
    pub fn has_waypoint(self) -> bool {
        matches!(self, Mode::Waypoint | Mode::EnvoyWaypoint)
    }

    /// The address the client dials: a Service VIP, or the plain server's
    /// pod IP.
    pub fn target(self, plain_server: Ipv4Addr) -> SocketAddrV4 {
        match self {
            Mode::NoMesh => SocketAddrV4::new(plain_server, TARGET_PORT),
            Mode::Ztunnel => SocketAddrV4::new(DIRECT_VIP, SERVICE_PORT),
            Mode::Waypoint => SocketAddrV4::new(WAYPOINT_VIP, SERVICE_PORT),
            Mode::EnvoyWaypoint => SocketAddrV4::new(ENVOY_VIP, SERVICE_PORT),
        }
    }

    /// The client pod of the mode.
    pub fn client_pod(self) -> &'static str {
        match self {
            Mode::NoMesh => "plain-client",
            _ => "client",
        }
    }
}

/// `spiffe://cluster.local/ns/shop/sa/<sa>`.
pub fn spiffe_uri(service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service_account}")
}

/// A pod of the benchmark: name (= service account), IP, node (1 or 2).
#[derive(Debug, Clone)]
pub struct PodAddr {
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: usize,
}

/// The L7 rules both waypoints get for their Service: the HTTP/1.1 path
/// exactly, the gRPC service by prefix, both to the Service's endpoints.
/// As Gateway API `HTTPRoute` matches: (type, value).
pub const ROUTE_MATCHES: [(&str, &str); 2] = [("Exact", "/echo"), ("PathPrefix", "/bench.Echo/")];

/// The mesh config (ztunnels and our waypoint, file mode). `pods` must
/// hold `client`, `plain-client`, `waypoint`, `envoy-waypoint` (node 1)
/// and `server`, `plain-server` (node 2).
pub fn mesh_config(pods: &[PodAddr]) -> String {
    let mut w = String::new();
    for p in pods {
        let mut labels = format!("app: {}", p.name);
        if p.name.starts_with("plain-") {
            labels += ", istio.io/dataplane-mode: none";
        }
        if p.name == OUR_WAYPOINT || p.name == ENVOY_WAYPOINT {
            labels += &format!(
                ", istio.io/dataplane-mode: none, gateway.networking.k8s.io/gateway-name: {}",
                p.name
            );
        }
        w += &format!(
            "  - {{name: {n}, namespace: {NAMESPACE}, serviceAccount: {n}, ip: {ip}, node: node{node}, labels: {{{labels}}}}}\n",
            n = p.name,
            ip = p.ip,
            node = p.node
        );
    }
    let svc = |name: &str, vip: Ipv4Addr, waypoint: Option<&str>| {
        let labels = waypoint
            .map(|w| format!(", labels: {{istio.io/use-waypoint: {w}}}"))
            .unwrap_or_default();
        format!(
            "  - {{name: {name}, namespace: {NAMESPACE}, vip: {vip}, ports: [{{port: {SERVICE_PORT}, targetPort: {TARGET_PORT}, name: http}}], selector: {{app: server}}{labels}}}\n"
        )
    };
    let rules: String = ROUTE_MATCHES
        .iter()
        .map(|(kind, value)| {
            format!(
                "        - matches: [{{path: {{type: {kind}, value: \"{value}\"}}}}]\n          backendRefs: [{{name: echo-wp, port: {SERVICE_PORT}}}]\n"
            )
        })
        .collect();
    format!(
        "trustDomain: {TRUST_DOMAIN}\nnodes:\n  - {{name: node1, ip: 10.0.0.1}}\n  - {{name: node2, ip: 10.0.0.2}}\n\
         namespaces:\n  - {{name: {NAMESPACE}, labels: {{istio.io/dataplane-mode: ambient}}}}\nworkloads:\n{w}\
         services:\n{}{}{}\
         routes:\n  - kind: HTTPRoute\n    metadata: {{name: echo-wp, namespace: {NAMESPACE}}}\n    spec:\n      parentRefs: [{{name: echo-wp, port: {SERVICE_PORT}}}]\n      rules:\n{rules}",
        svc("echo-direct", DIRECT_VIP, None),
        svc("echo-wp", WAYPOINT_VIP, Some(OUR_WAYPOINT)),
        svc("echo-envoy", ENVOY_VIP, Some(ENVOY_WAYPOINT)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<PodAddr> {
        [
            ("client", 1, 10),
            ("plain-client", 1, 11),
            ("waypoint", 1, 12),
            ("envoy-waypoint", 1, 13),
            ("server", 2, 10),
            ("plain-server", 2, 11),
        ]
        .map(|(n, node, last)| PodAddr {
            name: n.into(),
            ip: Ipv4Addr::new(10, 1, node as u8, last),
            node,
        })
        .to_vec()
    }

    #[test]
    fn modes_parse_back_and_dial_their_own_service() {
        let plain = Ipv4Addr::new(10, 1, 2, 11);
        let cases = [
            (Mode::NoMesh, "10.1.2.11:8080", "plain-client"),
            (Mode::Ztunnel, "10.96.0.20:80", "client"),
            (Mode::Waypoint, "10.96.0.21:80", "client"),
            (Mode::EnvoyWaypoint, "10.96.0.22:80", "client"),
        ];
        for (m, target, client) in cases {
            assert_eq!(Mode::parse(m.key()), Some(m));
            assert_eq!(m.target(plain).to_string(), target, "{m:?}");
            assert_eq!(m.client_pod(), client, "{m:?}");
        }
        let mut sorted = Mode::ALL;
        sorted.sort_unstable();
        assert_eq!(sorted, Mode::ALL);
    }

    /// The config parses as the mesh's own config file, with each Service
    /// bound to the waypoint its mode needs, the plain pair outside the
    /// mesh, and our waypoint's routes attached to its Service.
    #[test]
    fn mesh_config_binds_each_service_to_its_waypoint() {
        let yaml = mesh_config(&pods());
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect(&yaml);
        let svc = |name: &str| {
            doc["services"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|s| s["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("{name} in {yaml}"))
                .clone()
        };
        let wp = |name: &str| svc(name)["labels"]["istio.io/use-waypoint"].clone();
        assert!(wp("echo-direct").is_null());
        assert_eq!(wp("echo-wp").as_str(), Some("waypoint"));
        assert_eq!(wp("echo-envoy").as_str(), Some("envoy-waypoint"));
        let workload = |name: &str| {
            doc["workloads"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|w| w["name"].as_str() == Some(name))
                .unwrap()
                .clone()
        };
        for out in ["plain-client", "plain-server", "waypoint", "envoy-waypoint"] {
            assert_eq!(
                workload(out)["labels"]["istio.io/dataplane-mode"].as_str(),
                Some("none"),
                "{out}"
            );
        }
        assert!(workload("server")["labels"]["istio.io/dataplane-mode"].is_null());
        let route = &doc["routes"][0];
        assert_eq!(
            route["spec"]["parentRefs"][0]["name"].as_str(),
            Some("echo-wp")
        );
        assert_eq!(route["spec"]["rules"].as_sequence().unwrap().len(), 2);
        assert_eq!(
            route["spec"]["rules"][1]["matches"][0]["path"]["value"].as_str(),
            Some("/bench.Echo/")
        );
        // And the mesh's own parser takes it.
        mesh_model::config::parse(&yaml).expect("the mesh parses the benchmark's config");
    }
}
