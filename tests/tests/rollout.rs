//! Restarts, upgrades and crashes of a node's ztunnel never open the node:
//! SIGTERM drains and keeps the capture rules, captured traffic that finds
//! no ztunnel is refused at once (fails closed), `ztunnel uninstall` (or
//! `--uninstall-on-exit`) is the only way the rules go.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::echo::{
    assert_never_accepts, assert_refused_at_once, echo_through, App, REFUSAL_BOUND,
};
use mesh_tests::mesh::Mesh;
use mesh_tests::rules::{assert_installed_once, assert_nothing_left};
use mesh_tests::traffic::{Churn, LongStream};
use mesh_tests::{require_root, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::block_in_place;

/// Pod `client` (namespace shop) on node 1 and pod `server` (namespace
/// bank, STRICT) on node 2, both ambient, pod `legacy` (not in the mesh) on
/// node 1, and the config.
fn client_and_server() -> (Topology, String) {
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("legacy", 1)
        .pod("server", 2)
        .build()
        .unwrap();
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    let config = format!(
        r#"
trustDomain: cluster.local
nodes:
  - {{name: node1, ip: 10.0.0.1}}
  - {{name: node2, ip: 10.0.0.2}}
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
  - {{name: bank, labels: {{istio.io/dataplane-mode: ambient}}, mtls: STRICT}}
  - {{name: legacy}}
workloads:
  - {{name: client, namespace: shop, serviceAccount: client, ip: {}, node: node1}}
  - {{name: legacy, namespace: legacy, ip: {}, node: node1}}
  - {{name: server, namespace: bank, serviceAccount: server, ip: {}, node: node2}}
"#,
        client.ip,
        topo.pod("legacy").ip,
        server.ip
    );
    (topo, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_keeps_the_rules_so_the_node_fails_closed() {
    if !require_root() {
        return;
    }
    let (topo, config) = client_and_server();
    let mut mesh = Mesh::new(&topo, &config);
    mesh.start_all();
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    let app = App::serve(&server.ns, 8080);
    let to = SocketAddr::from((server.ip, 8080));
    let mut live = client.ns.connect(to).await.unwrap();
    live.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    live.read_exact(&mut buf).await.unwrap();

    // SIGTERM while a connection is open: it keeps working during the drain.
    mesh.signal(1, nix::sys::signal::Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    live.write_all(b"during").await.unwrap();
    let mut buf = [0u8; 6];
    live.read_exact(&mut buf)
        .await
        .expect("open connection survives the drain");
    assert_eq!(&buf, b"during");
    live.shutdown().await.unwrap();
    let mut rest = Vec::new();
    live.read_to_end(&mut rest).await.unwrap();
    let status = mesh.wait_exit(1);
    assert!(status.success(), "ztunnel exit status {status}");
    assert!(
        mesh.stderr(1).contains("capture rules kept"),
        "{}",
        mesh.stderr(1)
    );
    let status = mesh.terminate(2);
    assert!(status.success(), "ztunnel exit status {status}");

    // Both nodes keep their capture, and with no ztunnel it fails closed:
    // outbound from the client (node 1) and plaintext into the STRICT server
    // (node 2, from node 1 itself, which nothing captures) are refused at
    // once; neither a host service on the port nor the server's app sees them.
    let (node1, node2) = (&topo.node(1).ns, &topo.node(2).ns);
    assert_installed_once(node1);
    assert_installed_once(node2);
    let any = SocketAddr::from(([0, 0, 0, 0], 8080));
    let (host1, host2) = (node1.listen(any).unwrap(), node2.listen(any).unwrap());
    assert_refused_at_once(&client.ns, to, "client -> server after SIGTERM").await;
    assert_refused_at_once(node1, to, "plaintext into STRICT after SIGTERM").await;
    assert_never_accepts(&host1, "node1's host listener").await;
    assert_never_accepts(&host2, "node2's host listener").await;
    assert_eq!(
        app.peers().len(),
        1,
        "only the tunnelled connection: {:?}",
        app.peers()
    );

    // `ztunnel uninstall` removes every rule, and is idempotent; only then
    // does traffic go around the mesh.
    for node in [1, 2] {
        assert!(mesh.uninstall(node).contains("capture removed"));
        assert_nothing_left(&topo.node(node).ns);
        mesh.uninstall(node);
    }
    drop((host1, host2));
    let back = echo_through(&client.ns, to, b"direct").await.unwrap();
    assert_eq!(back, b"direct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_on_exit_removes_every_rule_at_sigterm() {
    if !require_root() {
        return;
    }
    let (topo, config) = client_and_server();
    let mut mesh = Mesh::new(&topo, &config);
    mesh.start_with_args(1, &["--uninstall-on-exit"]);
    assert_installed_once(&topo.node(1).ns);
    let status = mesh.terminate(1);
    assert!(status.success(), "ztunnel exit status {status}");
    assert_nothing_left(&topo.node(1).ns);
    assert!(
        mesh.stderr(1).contains("capture rules removed"),
        "{}",
        mesh.stderr(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_then_restarted_works_without_duplicates() {
    if !require_root() {
        return;
    }
    let (topo, config) = client_and_server();
    let mut mesh = Mesh::new(&topo, &config);
    mesh.start_all();
    let server = topo.pod("server");
    let _app = App::serve(&server.ns, 8080);
    let client = topo.pod("client");
    let to = SocketAddr::from((server.ip, 8080));
    let mut live = client.ns.connect(to).await.unwrap();
    live.write_all(b"mid").await.unwrap();
    let mut buf = [0u8; 3];
    live.read_exact(&mut buf).await.unwrap();

    mesh.kill(1);
    // A crash leaves the rules: capture must not silently open up, and it
    // fails closed at once: the open connection is reset, a new one is
    // refused, and neither reaches a host service on the same port.
    let node1 = &topo.node(1).ns;
    assert_installed_once(node1);
    let host = node1
        .listen(SocketAddr::from(([0, 0, 0, 0], 8080)))
        .unwrap();
    let cut = tokio::time::timeout(REFUSAL_BOUND, async {
        let _ = live.write_all(b"after the crash").await;
        live.read(&mut [0u8; 16]).await
    })
    .await;
    assert!(
        matches!(cut, Ok(Err(_)) | Ok(Ok(0))),
        "the connection through the dead ztunnel must end at once: {cut:?}"
    );
    assert_refused_at_once(&client.ns, to, "new connection, ztunnel dead").await;
    assert_never_accepts(&host, "node1's host listener on :8080").await;
    drop(host);
    mesh.start(1);
    assert_installed_once(&topo.node(1).ns);
    for i in 0..5 {
        let back = echo_through(&client.ns, to, b"again").await;
        assert_eq!(
            back.unwrap_or_else(|e| panic!("connection {i} after restart: {e}")),
            b"again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_drop_rollout_then_a_crash_fails_closed() {
    if !require_root() {
        return;
    }
    let (topo, config) = client_and_server();
    let mut mesh = Mesh::new(&topo, &config);
    // A drain long enough for the long streams to finish on the old process.
    for node in [1, 2] {
        mesh.start_with_args(node, &["--drain-timeout", "20s"]);
    }
    let (client, legacy, server) = (topo.pod("client"), topo.pod("legacy"), topo.pod("server"));
    let app = App::serve(&server.ns, 8080);
    let to = SocketAddr::from((server.ip, 8080));
    let churn = Churn::start(&client.ns, to, 4);

    // Node 1 holds the client's outbound listener, node 2 the server's
    // HBONE listener. Each upgrade: a new process starts while the old one
    // serves, takes the listeners over, and the old one drains a long stream
    // that crosses the handoff before exiting.
    for node in [1, 2] {
        let stream = LongStream::open(&client.ns, to).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old = block_in_place(|| mesh.begin_upgrade(node));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let moved = stream
            .finish()
            .await
            .unwrap_or_else(|e| panic!("long stream across node{node}'s upgrade: {e}"));
        assert!(moved > 0, "the long stream moved nothing");
        eprintln!("node{node} upgrade: a long stream moved {moved} bytes across it, byte-exact");
        block_in_place(|| mesh.finish_upgrade(node, old));
        assert!(
            mesh.stderr(node)
                .contains("handed the listeners to a new ztunnel"),
            "{}",
            mesh.stderr(node)
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failures) = churn.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} connections failed across the upgrades: {:#?}",
        failures.len(),
        ok as usize + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 0, "no connection round-tripped");
    eprintln!("{ok} connections opened across both upgrades, 0 refused or corrupted");
    let (node1, node2) = (&topo.node(1).ns, &topo.node(2).ns);
    assert_installed_once(node1);
    assert_installed_once(node2);

    // A crash of both: the rules stay and traffic fails closed; nothing
    // bypasses (not the ambient client's, not plaintext into STRICT).
    mesh.kill(1);
    mesh.kill(2);
    assert_installed_once(node1);
    assert_installed_once(node2);
    let served = app.peers().len();
    let any = SocketAddr::from(([0, 0, 0, 0], 8080));
    let (host1, host2) = (node1.listen(any).unwrap(), node2.listen(any).unwrap());
    assert_refused_at_once(&client.ns, to, "client -> server, both crashed").await;
    assert_refused_at_once(&legacy.ns, to, "plaintext into STRICT, both crashed").await;
    assert_never_accepts(&host1, "node1's host listener").await;
    assert_never_accepts(&host2, "node2's host listener").await;
    assert_eq!(app.peers().len(), served, "a connection reached the app");
    drop((host1, host2));

    // Restarted after the crash (the handoff socket is stale: they bind).
    block_in_place(|| {
        mesh.start(1);
        mesh.start(2);
    });
    let back = echo_through(&client.ns, to, b"after the crash")
        .await
        .unwrap();
    assert_eq!(back, b"after the crash");
}
