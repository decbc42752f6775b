//! The harness itself: plain routing between pods works with no proxy, and
//! dropping a topology removes every namespace it created.

use std::net::SocketAddr;

use mesh_tests::echo::{payload, round_trip, spawn_echo};
use mesh_tests::{require_root, run, Topology};

fn two_nodes() -> Topology {
    Topology::builder()
        .nodes(2)
        .pod("a", 1)
        .pod("a2", 1)
        .pod("b", 2)
        .build()
        .expect("build topology")
}

async fn assert_echo(topo: &Topology, from: &str, to: &str) {
    let (client, server) = (topo.pod(from), topo.pod(to));
    let addr = SocketAddr::from((server.ip, 8080));
    let echo = spawn_echo(server.ns.listen(addr).expect("listen in pod"));
    let stream = client.ns.connect(addr).await.expect("connect pod to pod");
    assert_eq!(stream.local_addr().unwrap().ip(), client.ip);
    assert_eq!(stream.peer_addr().unwrap(), addr);
    let data = payload(256 * 1024 + 17);
    let back = round_trip(stream, &data).await.expect("round trip");
    assert!(
        back == data,
        "echo differs: {} of {} bytes",
        back.len(),
        data.len()
    );
    echo.abort();
}

#[tokio::test]
async fn pod_to_pod_across_nodes() {
    if !require_root() {
        return;
    }
    let topo = two_nodes();
    assert_echo(&topo, "a", "b").await;
    assert_echo(&topo, "b", "a").await;
}

#[tokio::test]
async fn pod_to_pod_on_same_node() {
    if !require_root() {
        return;
    }
    let topo = two_nodes();
    assert_echo(&topo, "a", "a2").await;
}

#[tokio::test]
async fn single_node_topology_routes() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(1)
        .pod("x", 1)
        .pod("y", 1)
        .build()
        .expect("build topology");
    assert_echo(&topo, "x", "y").await;
}

#[tokio::test]
async fn node_reaches_its_pods_and_the_peer_node() {
    if !require_root() {
        return;
    }
    let topo = two_nodes();
    let n1 = &topo.node(1).ns;
    let b = topo.pod("b");
    let addr = SocketAddr::from((b.ip, 9000));
    let echo = spawn_echo(b.ns.listen(addr).unwrap());
    let stream = n1.connect(addr).await.expect("node 1 to pod b");
    assert_eq!(stream.local_addr().unwrap().ip(), topo.node(1).ip);
    assert_eq!(round_trip(stream, b"hi").await.unwrap(), b"hi");
    echo.abort();
}

#[test]
fn drop_removes_namespaces_and_children() {
    if !require_root() {
        return;
    }
    let topo = two_nodes();
    let names = topo.namespaces();
    assert_eq!(names.len(), 5);
    let pid = topo.spawn(&topo.node(1).ns, &["sleep", "600"]).unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let listed = run("ip netns list").unwrap();
    for name in &names {
        assert!(listed.contains(name.as_str()), "{name} missing: {listed}");
    }
    drop(topo);
    let listed = run("ip netns list").unwrap();
    for name in &names {
        assert!(
            !listed.contains(name.as_str()),
            "{name} left behind: {listed}"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        status.is_empty() || status.contains("State:\tZ"),
        "child {pid} still alive"
    );
}

#[test]
fn drop_cleans_up_after_a_panic() {
    if !require_root() {
        return;
    }
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = Topology::builder().nodes(1).pod("p", 1).build().unwrap();
        names = topo.namespaces();
        panic!("test body failed");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 2);
    let listed = run("ip netns list").unwrap();
    for name in &names {
        assert!(
            !listed.contains(name.as_str()),
            "{name} left behind: {listed}"
        );
    }
}

#[test]
fn builder_rejects_bad_topologies() {
    assert!(Topology::builder().nodes(3).build().is_err());
    assert!(Topology::builder().nodes(1).pod("a", 2).build().is_err());
    assert!(Topology::builder().pod("a", 1).pod("a", 2).build().is_err());
}
