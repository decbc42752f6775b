//! The waypoint scenario of the netns suites: two client pods and the
//! waypoint pod (`istio.io/dataplane-mode: none`, its own HBONE) on node 1;
//! two `echo` endpoints (`version: v1` and `v2`) and `db` on node 2.
//! `echo` (HTTP), `private` (HTTP, the same pods) and `db` (opaque TCP)
//! are bound to the waypoint; `direct` selects the echo pods without one,
//! and `echo-v1` / `echo-v2` one version each (route backends). Routes and
//! L7 policies come from the test ([`Scenario::start_with`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::{Source, WaypointProc};
use crate::grpc::GrpcApp;
use crate::http::HttpApp;
use crate::mesh::Mesh;
use crate::{Netns, Topology};

pub const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
/// The Service behind the waypoint, its opaque TCP one, and one without.
pub const ECHO_VIP: &str = "10.96.0.10:80";
pub const DB_VIP: &str = "10.96.0.11:3306";
pub const DIRECT_VIP: &str = "10.96.0.12:80";
/// Bound to the waypoint, the same pods as `echo`.
pub const PRIVATE_VIP: &str = "10.96.0.13:80";
/// A gRPC Service on the echo pods ([`crate::grpc::GrpcApp`] on 50051,
/// `appProtocol: grpc`), bound to the waypoint.
pub const GRPC_VIP: &str = "10.96.0.16:50051";
/// [`GRPC_VIP`]'s Service, to put first in [`Scenario::start_with`]'s
/// `extra` (it continues the `services:` list).
pub const GRPC_SERVICE: &str = "  - {name: grpc, namespace: shop, vip: 10.96.0.16, ports: [{port: 50051, appProtocol: grpc}], selector: {app: echo}, labels: {istio.io/use-waypoint: waypoint}}\n";
pub const WAIT: Duration = Duration::from_secs(10);

/// Client and waypoint on node 1; two `echo` endpoints and `db` on node 2.
pub struct Scenario {
    // Dropped in this order: the waypoint (printing its stderr on failure)
    // before the mesh removes its scratch directory.
    pub waypoint: WaypointProc,
    pub mesh: Mesh,
    pub topo: Topology,
}

/// The mesh config of the scenario.
pub fn config(topo: &Topology, extra: &str) -> String {
    let pod = |name: &str, sa: &str, labels: &str| {
        let p = topo.pod(name);
        format!(
            "  - {{name: {name}, namespace: shop, serviceAccount: {sa}, ip: {}, node: node{}, labels: {{{labels}}}}}\n",
            p.ip, p.node
        )
    };
    let pods = pod("client", "client", "app: client")
        + &pod(
            "waypoint",
            "waypoint",
            "istio.io/dataplane-mode: none, gateway.networking.k8s.io/gateway-name: waypoint",
        )
        + &pod("client-2", "client-2", "app: client-2")
        + &pod("echo-1", "echo", "app: echo, version: v1")
        + &pod("echo-2", "echo", "app: echo, version: v2")
        + &pod("db", "db", "app: db");
    format!(
        r#"
trustDomain: cluster.local
nodes:
  - {{name: node1, ip: 10.0.0.1}}
  - {{name: node2, ip: 10.0.0.2}}
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
workloads:
{pods}
services:
  - {{name: echo, namespace: shop, vip: 10.96.0.10, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: echo}}, labels: {{istio.io/use-waypoint: waypoint}}}}
  - {{name: db, namespace: shop, vip: 10.96.0.11, ports: [{{port: 3306}}], selector: {{app: db}}, labels: {{istio.io/use-waypoint: waypoint}}}}
  - {{name: direct, namespace: shop, vip: 10.96.0.12, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: echo}}}}
  - {{name: private, namespace: shop, vip: 10.96.0.13, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: echo}}, labels: {{istio.io/use-waypoint: waypoint}}}}
  - {{name: echo-v1, namespace: shop, vip: 10.96.0.14, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: echo, version: v1}}}}
  - {{name: echo-v2, namespace: shop, vip: 10.96.0.15, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: echo, version: v2}}}}
{extra}
"#
    )
}

impl Scenario {
    /// The mesh in file mode and the waypoint started with `waypoint_args`.
    pub fn start(waypoint_args: &[&str]) -> Scenario {
        Scenario::start_with("", waypoint_args)
    }

    /// The scenario's topology (no processes yet).
    pub fn topology() -> Topology {
        Topology::builder()
            .nodes(2)
            .pod("client", 1)
            .pod("waypoint", 1)
            .pod("echo-1", 2)
            .pod("echo-2", 2)
            .pod("db", 2)
            .pod("client-2", 1)
            .build()
            .unwrap()
    }

    /// [`Scenario::start`] with `extra` appended to the config (routes:
    /// and policies: sections).
    pub fn start_with(extra: &str, waypoint_args: &[&str]) -> Scenario {
        let topo = Scenario::topology();
        let mut mesh = Mesh::new(&topo, &config(&topo, extra));
        mesh.start_all();
        let waypoint = WaypointProc::start(
            &mesh,
            &topo.pod("waypoint").ns,
            "waypoint",
            "shop",
            Source::File,
            waypoint_args,
        );
        Scenario {
            waypoint,
            mesh,
            topo,
        }
    }

    pub fn ns(&self, pod: &str) -> &Netns {
        &self.topo.pod(pod).ns
    }

    /// An [`HttpApp`] on 8080 of each echo pod.
    pub fn echo_apps(&self) -> [HttpApp; 2] {
        let listen = |pod: &str| {
            self.ns(pod)
                .listen(SocketAddr::from(([0, 0, 0, 0], 8080)))
                .expect("app listener")
        };
        [
            HttpApp::serve(listen("echo-1"), "echo-1"),
            HttpApp::serve(listen("echo-2"), "echo-2"),
        ]
    }

    /// A [`GrpcApp`] (`mesh.test.Echo`) on 50051 of each echo pod.
    pub fn grpc_apps(&self) -> [GrpcApp; 2] {
        let listen = |pod: &str| {
            self.ns(pod)
                .listen(SocketAddr::from(([0, 0, 0, 0], 50051)))
                .expect("gRPC listener")
        };
        [
            GrpcApp::serve(listen("echo-1"), "echo-1"),
            GrpcApp::serve(listen("echo-2"), "echo-2"),
        ]
    }

    /// A TCP connection from the client pod (captured by its ztunnel).
    pub async fn connect(&self, to: &str) -> tokio::net::TcpStream {
        self.connect_from("client", to).await
    }

    /// A TCP connection from `pod` (captured by its ztunnel).
    pub async fn connect_from(&self, pod: &str, to: &str) -> tokio::net::TcpStream {
        let addr: SocketAddr = to.parse().unwrap();
        tokio::time::timeout(WAIT, self.ns(pod).connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect")
    }
}

/// How many answers each body got.
pub fn bodies(answers: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.trim().to_owned()).or_default() += 1;
    }
    m
}

/// The destination ztunnel's inbound connections to `workload` came from
/// the waypoint's identity, and none from the client's.
pub fn assert_destination_saw_the_waypoint(s: &Scenario, workload: &str) {
    let metrics = s.mesh.metrics(2);
    let inbound_to = |principal: &str| {
        metrics.lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\"")
                && l.contains(&format!("destination_workload=\"{workload}\""))
                && l.contains(&format!("source_principal=\"{principal}\""))
        })
    };
    assert!(
        inbound_to("cluster.local/ns/shop/sa/waypoint"),
        "{workload}: {metrics}"
    );
    assert!(
        !inbound_to("cluster.local/ns/shop/sa/client"),
        "{workload}: {metrics}"
    );
}

/// Opens an HBONE CONNECT from the client pod (with the client's own
/// certificate, as its ztunnel would) straight to the waypoint.
pub fn connect_to_waypoint(s: &Scenario, authority: &str) -> Result<(), String> {
    let ca = hbone::ca::DevCa::load_or_create(s.mesh.ca_dir()).unwrap();
    let via = SocketAddr::new(s.topo.pod("waypoint").ip.into(), 15008);
    let authority: SocketAddr = authority.parse().unwrap();
    s.ns("client")
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let certs = hbone::cert::CertStore::new(std::sync::Arc::new(ca));
                let client = hbone::client::HboneClient::new(certs, Default::default());
                let req = hbone::client::ConnectRequest {
                    source: CLIENT_ID.parse().unwrap(),
                    source_ip: None,
                    expected: vec![WAYPOINT_ID.parse().unwrap()],
                    via,
                    authority,
                    meta: Default::default(),
                };
                client
                    .connect(&req)
                    .await
                    .map(drop)
                    .map_err(|e| mesh_runtime::error_chain(&e))
            })
        })
        .unwrap()
}
