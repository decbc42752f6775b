//! Dual-stack pods: capture is IPv4, so a captured pod's IPv6 must never
//! go around ztunnel (no mTLS, no STRICT, no policy). In node mode,
//! ztunnel's table refuses TCP from or to a captured pod's IPv6 addresses
//! with a reset and counts it (`nft list counter inet ambient
//! ipv6_refused`); in sidecar mode the pod's own `ip6 ambient_sidecar6`
//! table does (`nft list counter ip6 ambient_sidecar6 ipv6_refused`).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use mesh_tests::echo::{assert_refused_at_once, echo_through, spawn_echo};
use mesh_tests::mesh::Mesh;
use mesh_tests::sidecar::Sidecars;
use mesh_tests::{require_root, Netns, Pod, Topology};

/// Gives `pod` the IPv6 address `ip`, routed through its node (which
/// forwards IPv6) over the pod's veth, with the node's side as `fe80::1`.
fn add_ipv6(node: &Netns, pod: &Pod, ip: Ipv6Addr) {
    node.exec(&format!(
        "sysctl -qw net.ipv6.conf.all.forwarding=1\n\
         ip -6 addr add fe80::1/64 dev {veth} nodad\n\
         ip -6 route add {ip}/128 dev {veth}",
        veth = pod.host_veth
    ))
    .expect("node side of the pod's IPv6");
    pod.ns
        .exec(&format!(
            "ip -6 addr add {ip}/128 dev eth0 nodad\n\
             ip -6 route add default via fe80::1 dev eth0"
        ))
        .expect("pod's IPv6");
}

fn counter_packets(node: &Netns) -> u64 {
    packets(node, "inet ambient")
}

/// Packets counted by `ipv6_refused` in `table` (`<family> <name>`).
fn packets(ns: &Netns, table: &str) -> u64 {
    let listed = ns
        .exec(&format!("nft list counter {table} ipv6_refused"))
        .expect("the ipv6_refused counter exists");
    listed
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {listed}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_pods_ipv6_is_refused_and_counted_never_let_around_ztunnel() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(1)
        .pod("client", 1)
        .pod("server", 1)
        .pod("legacy", 1)
        .build()
        .unwrap();
    let (client, server, legacy) = (topo.pod("client"), topo.pod("server"), topo.pod("legacy"));
    let ip6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let (client6, server6) = (ip6("fd00:1::a"), ip6("fd00:1::b"));
    let node = &topo.node(1).ns;
    add_ipv6(node, client, client6);
    add_ipv6(node, server, server6);
    add_ipv6(node, legacy, ip6("fd00:1::c"));
    let listener = server
        .ns
        .listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 8080)))
        .unwrap();
    let _echo = spawn_echo(listener);
    let to4 = SocketAddr::from((server.ip, 8080));
    let to6 = SocketAddr::from((IpAddr::V6(server6), 8080));
    // Without the mesh, IPv6 between the two pods works: what ztunnel must
    // not let through once they are captured.
    let back = echo_through(&client.ns, to6, b"plain").await;
    assert_eq!(back.expect("IPv6 works before capture"), b"plain");

    let config = format!(
        r#"
nodes: [{{name: node1, ip: 10.0.0.1}}]
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
  - {{name: bank, labels: {{istio.io/dataplane-mode: ambient}}, mtls: STRICT}}
  - {{name: legacy}}
workloads:
  - {{name: client, namespace: shop, serviceAccount: client, ip: {}, extraIps: ['{client6}'], node: node1}}
  - {{name: server, namespace: bank, serviceAccount: server, ip: {}, extraIps: ['{server6}'], node: node1}}
  - {{name: legacy, namespace: legacy, ip: {}, extraIps: ['fd00:1::c'], node: node1}}
"#,
        client.ip, server.ip, legacy.ip
    );
    let mut mesh = Mesh::new(&topo, &config);
    mesh.start(1);
    // IPv4 goes through ztunnel (mTLS, logged).
    let back = echo_through(&client.ns, to4, b"meshed").await;
    assert_eq!(back.expect("IPv4 through the mesh"), b"meshed");
    mesh.wait_event(1, "the IPv4 connection", |e| e["direction"] == "inbound");
    // IPv6 from the captured client to the STRICT server is reset at once.
    assert_refused_at_once(&client.ns, to6, "IPv6 from a captured pod").await;
    let counted = counter_packets(node);
    assert!(counted > 0, "the refusal is counted");
    // IPv6 from outside the mesh to the STRICT server: plaintext that
    // STRICT must refuse, reset too.
    assert_refused_at_once(
        &legacy.ns,
        to6,
        "IPv6 to a STRICT pod from outside the mesh",
    )
    .await;
    assert!(counter_packets(node) > counted, "the refusal is counted");
    mesh.terminate_all();
    let listed = node.exec("nft list tables").unwrap();
    assert!(!listed.contains("ambient"), "{listed}");
    // Uninstalled: the pods are out of the mesh and IPv6 works again.
    let back = echo_through(&client.ns, to6, b"plain again").await;
    assert_eq!(back.expect("IPv6 after uninstall"), b"plain again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_pods_ipv6_is_refused_and_counted_never_let_around_its_sidecar() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(1)
        .pod("server", 1)
        .pod("plain", 1)
        .build()
        .unwrap();
    let (server, plain) = (topo.pod("server"), topo.pod("plain"));
    let ip6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let (server6, plain6) = (ip6("fd00:2::b"), ip6("fd00:2::c"));
    let node = &topo.node(1).ns;
    add_ipv6(node, server, server6);
    add_ipv6(node, plain, plain6);
    let listener = server
        .ns
        .listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 8080)))
        .unwrap();
    let _echo = spawn_echo(listener);
    let plain_listener = plain
        .ns
        .listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 8080)))
        .unwrap();
    let _plain_echo = spawn_echo(plain_listener);
    let to6 = SocketAddr::from((IpAddr::V6(server6), 8080));
    let back = echo_through(&plain.ns, to6, b"plain").await;
    assert_eq!(back.expect("IPv6 works before the sidecar"), b"plain");

    let config = format!(
        r#"
nodes: [{{name: node1, ip: 10.0.0.1}}]
namespaces:
  - {{name: bank, mtls: STRICT}}
  - {{name: legacy}}
workloads:
  - {{name: server, namespace: bank, serviceAccount: server, ip: {}, extraIps: ['{server6}'], node: node1, labels: {{security.istio.io/tlsMode: istio}}}}
  - {{name: plain, namespace: legacy, ip: {}, node: node1}}
"#,
        server.ip, plain.ip
    );
    let mesh = Mesh::new(&topo, &config);
    let mut sidecars = Sidecars::new(&mesh, 1);
    sidecars.start(server, "bank/server");
    // Plaintext over IPv6 to the STRICT pod: reset, counted.
    assert_refused_at_once(&plain.ns, to6, "IPv6 into a sidecar pod").await;
    let table = "ip6 ambient_sidecar6";
    let counted = packets(&server.ns, table);
    assert!(counted > 0, "the refusal is counted");
    // The app's own IPv6 out of the pod: reset too.
    let out6 = SocketAddr::from((IpAddr::V6(plain6), 8080));
    assert_refused_at_once(&server.ns, out6, "IPv6 out of a sidecar pod").await;
    assert!(
        packets(&server.ns, table) > counted,
        "the refusal is counted"
    );
    let status = sidecars.terminate("server");
    assert!(status.success(), "{status}");
    // `ztunnel uninstall` removes both tables.
    let bin = mesh_tests::mesh::ztunnel_bin();
    server
        .ns
        .exec(&format!("'{}' uninstall", bin.display()))
        .expect("ztunnel uninstall in the pod");
    let back = echo_through(&plain.ns, to6, b"again").await;
    assert_eq!(back.expect("IPv6 after uninstall"), b"again");
}
