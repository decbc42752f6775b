//! Certificate faults with real processes: a control plane (the CA) and
//! two ztunnels in network namespaces, on certificates of a few seconds
//! (`--cert-ttl`, the control plane's `--min-cert-ttl`).
//!
//! - A certificate that expires while the control plane is down is never
//!   used: new connections fail closed at once (`TLS_FAILURE`, reason
//!   `NO_CERT` in the access log, `ztunnel_certificates_expired_total`, an
//!   error line naming the identity), and the mesh recovers when the
//!   control plane returns.
//! - Certificates rotating every couple of seconds under load drop
//!   nothing: long streams keep moving bytes and new connections keep
//!   round-tripping across several rotations of both ztunnels.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_tests::echo::{echo_through, App};
use mesh_tests::mesh::{metric_sum, Mesh};
use mesh_tests::traffic::{Churn, LongStream};
use mesh_tests::{require_root, Netns, Topology};

/// Pod `client` on node 1, pod `server` on node 2, both ambient.
fn client_and_server() -> (Topology, String) {
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("server", 2)
        .build()
        .unwrap();
    let config = format!(
        r#"
nodes: [{{name: node1, ip: 10.0.0.1}}, {{name: node2, ip: 10.0.0.2}}]
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
  - {{name: bank, labels: {{istio.io/dataplane-mode: ambient}}, mtls: STRICT}}
workloads:
  - {{name: client, namespace: shop, serviceAccount: client, ip: {}, node: node1}}
  - {{name: server, namespace: bank, serviceAccount: server, ip: {}, node: node2}}
"#,
        topo.pod("client").ip,
        topo.pod("server").ip
    );
    (topo, config)
}

/// A mesh whose CA issues certificates as short as 1 s, with both
/// ztunnels asking for `ttl`.
fn short_lived(topo: &Topology, config: &str, ttl: &str) -> Mesh {
    let mut mesh = Mesh::with_control_plane_args(topo, config, &["--min-cert-ttl", "1s"]);
    for node in [1, 2] {
        mesh.start_with_args(node, &["--cert-ttl", ttl]);
    }
    mesh
}

async fn talk(from: &Netns, to: SocketAddr) -> Result<(), String> {
    match echo_through(from, to, b"hello").await {
        Ok(back) if back == b"hello" => Ok(()),
        Ok(back) => Err(format!("{} bytes back, or different", back.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn counter(mesh: &Mesh, node: usize, name: &str) -> u64 {
    metric_sum(&mesh.metrics(node), name, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_while_the_control_plane_is_down_fails_closed_then_recovers() {
    if !require_root() {
        return;
    }
    let (topo, config) = client_and_server();
    let mut mesh = short_lived(&topo, &config, "4s");
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    let _app = App::serve(&server.ns, 8080);
    let to = SocketAddr::from((server.ip, 8080));
    talk(&client.ns, to).await.expect("served at start");

    mesh.kill_control_plane();
    let down = Instant::now();
    // The certificates held (4 s, renewed at half-life until the control
    // plane went) expire within 4 s; until then connections are served.
    let refused = loop {
        match talk(&client.ns, to).await {
            Ok(()) => {}
            Err(e) => break e,
        }
        assert!(
            down.elapsed() < Duration::from_secs(15),
            "still served 15 s after the control plane went: an expired certificate is in use"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "refused {:?} after the control plane went: {refused}",
        down.elapsed()
    );
    // Every new connection now fails, and promptly (the client is reset,
    // not left waiting for its own timeout).
    for i in 0..3 {
        let began = Instant::now();
        let r = talk(&client.ns, to).await;
        assert!(
            r.is_err(),
            "connection {i} served with no valid certificate"
        );
        assert!(
            began.elapsed() < Duration::from_secs(8),
            "connection {i} hung {:?} instead of being refused",
            began.elapsed()
        );
    }
    let ev = mesh.wait_event(1, "the refusal", |e| {
        e["direction"] == "outbound" && e["response_flags"] == "TLS_FAILURE"
    });
    assert_eq!(ev["reason"], "NO_CERT", "{ev}");
    assert!(
        counter(&mesh, 1, "ztunnel_certificates_expired_total") >= 1,
        "{}",
        mesh.metrics(1)
    );
    assert!(counter(&mesh, 1, "ztunnel_certificate_fetch_failures_total") >= 1);
    let stderr = mesh.stderr(1);
    assert!(
        stderr.contains("certificate expired and could not be renewed")
            && stderr.contains("spiffe://cluster.local/ns/shop/sa/client"),
        "no error line naming the identity:\n{stderr}"
    );
    // Nothing reached the server meanwhile.
    let inbound_before = mesh
        .access_log(2)
        .iter()
        .filter(|e| e["direction"] == "inbound")
        .count();

    // The control plane returns: new certificates, served again.
    let installed = counter(&mesh, 1, "ztunnel_certificates_installed_total");
    mesh.start_control_plane();
    let back = Instant::now();
    loop {
        if talk(&client.ns, to).await.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "not served 20 s after the control plane returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "served again {:?} after the control plane returned",
        back.elapsed()
    );
    assert!(counter(&mesh, 1, "ztunnel_certificates_installed_total") > installed);
    let inbound_after = mesh
        .settled_access_log(2)
        .iter()
        .filter(|e| e["direction"] == "inbound")
        .count();
    assert!(inbound_after > inbound_before);
    mesh.terminate_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_rotate_under_load_through_two_ztunnels_with_nothing_dropped() {
    if !require_root() {
        return;
    }
    let (topo, config) = client_and_server();
    // 3 s certificates, renewed every ~1.5 s on both nodes.
    let mut mesh = short_lived(&topo, &config, "3s");
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    let _app = App::serve(&server.ns, 8080);
    let to = SocketAddr::from((server.ip, 8080));
    talk(&client.ns, to).await.expect("served at start");
    let installed =
        |mesh: &Mesh| [1, 2].map(|n| counter(mesh, n, "ztunnel_certificates_installed_total"));
    let before = installed(&mesh);

    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(LongStream::open(&client.ns, to).await);
    }
    let churn = Churn::start(&client.ns, to, 3);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (ok, failures) = churn.stop().await;
    let mut moved = Vec::new();
    for s in streams {
        moved.push(s.finish().await.expect("a long stream across rotations"));
    }
    let after = installed(&mesh);
    eprintln!(
        "{ok} connections and long streams of {moved:?} bytes across {:?} renewals on node1/node2",
        [after[0] - before[0], after[1] - before[1]]
    );
    assert!(failures.is_empty(), "dropped or failed: {failures:?}");
    assert!(ok > 50, "only {ok} connections in 10 s");
    assert!(moved.iter().all(|&m| m > 0));
    // Each node renewed its pod's certificate several times meanwhile
    // (10 s of 3 s certificates renewed at half-life).
    for n in 0..2 {
        assert!(
            after[n] >= before[n] + 4,
            "node{}: {} renewals in 10 s",
            n + 1,
            after[n] - before[n]
        );
    }
    assert_eq!(counter(&mesh, 1, "ztunnel_certificates_expired_total"), 0);
    assert_eq!(counter(&mesh, 2, "ztunnel_certificates_expired_total"), 0);
    mesh.terminate_all();
}
