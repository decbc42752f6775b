//! ztunnel under the control plane: real `control-plane` and `ztunnel`
//! processes in network namespaces, configured over delta xDS, with
//! certificates from the control plane's CA.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_tests::echo::echo_through;
use mesh_tests::mesh::{wait_until, Mesh};
use mesh_tests::{require_root, Netns, Topology};

const WAIT: Duration = Duration::from_secs(10);

fn config(client_ip: &str, server_ip: &str, policies: &str) -> String {
    format!(
        r#"
nodes: [{{name: node1, ip: 10.0.0.1}}, {{name: node2, ip: 10.0.0.2}}]
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
  - {{name: bank, labels: {{istio.io/dataplane-mode: ambient}}}}
workloads:
  - {{name: client, namespace: shop, serviceAccount: client, ip: {client_ip}, node: node1}}
  - {{name: server, namespace: bank, serviceAccount: server, ip: {server_ip}, node: node2, labels: {{app: server}}}}
{policies}
"#
    )
}

const DENY_SHOP: &str = r#"
policies:
  - name: no-shop
    namespace: bank
    selector: {matchLabels: {app: server}}
    action: DENY
    rules: [{from: [{source: {namespaces: [shop]}}]}]
"#;

async fn talk(from: &Netns, to: SocketAddr) -> bool {
    matches!(echo_through(from, to, b"hello").await, Ok(back) if back == b"hello")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnels_follow_the_control_plane_and_survive_its_death() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("server", 2)
        .build()
        .unwrap();
    let (c, s) = (topo.pod("client"), topo.pod("server"));
    let allow = config(&c.ip.to_string(), &s.ip.to_string(), "");
    let deny = config(&c.ip.to_string(), &s.ip.to_string(), DENY_SHOP);
    let mut mesh = Mesh::with_control_plane(&topo, &allow);
    mesh.start_all();
    let listener = s.ns.listen(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    let _echo = mesh_tests::echo::spawn_echo(listener);
    let to = SocketAddr::from((s.ip, 8080));
    assert!(talk(&c.ns, to).await, "allowed at start");
    let ev = mesh.wait_event(2, "inbound over xDS config", |e| {
        e["direction"] == "inbound"
    });
    assert_eq!(
        ev["src.identity"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );

    // A DENY added to the control plane's file reaches the destination ztunnel.
    let edited = Instant::now();
    mesh.write_config(&deny);
    let mut denied = false;
    while edited.elapsed() < WAIT {
        if !talk(&c.ns, to).await {
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(denied, "the DENY never took effect");
    eprintln!("DENY took effect after {:?}", edited.elapsed());

    // The control plane dies: the last good state (the DENY) stays, and the
    // ztunnels stay ready.
    mesh.kill_control_plane();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !talk(&c.ns, to).await,
        "the last good policy must stay in force"
    );
    for node in [1, 2] {
        assert_eq!(mesh.http_get(node, 15021, "/healthz/ready").unwrap().0, 200);
    }

    // It comes back with the DENY removed: the ztunnels resync.
    mesh.write_config(&allow);
    mesh.start_control_plane();
    wait_until("resync after restart", || {
        mesh.http_get(2, 15000, "/config_dump")
            .is_ok_and(|(_, b)| !b.contains("no-shop"))
    });
    assert!(talk(&c.ns, to).await, "allowed again after the resync");
}
