//! ztunnel's node-level TPROXY capture (DESIGN.md §4) with real nftables rules
//! and real packets: pods in network namespaces, ztunnel's listeners created
//! inside the node namespace from this process.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use mesh_model::HBONE_PORT;
use mesh_tests::echo::{
    assert_never_accepts, assert_refused_at_once, payload, round_trip, spawn_echo,
};
use mesh_tests::rules::{assert_nothing_left, ip_rule_count};
use mesh_tests::{require_root, Netns, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use ztunnel::capture::{orig_dst, rules, transparent_listener, Capture, ListenerPorts};

const WAIT: Duration = Duration::from_secs(5);

fn topology() -> Topology {
    Topology::builder()
        .nodes(2)
        .pod("a", 1)
        .pod("b", 2)
        .build()
        .expect("build topology")
}

fn set(ips: &[Ipv4Addr]) -> BTreeSet<IpAddr> {
    ips.iter().map(|&ip| IpAddr::V4(ip)).collect()
}

fn install(node: &Netns, pods: &[Ipv4Addr]) -> Capture {
    install_to(node, pods, ListenerPorts::default())
}

fn install_to(node: &Netns, pods: &[Ipv4Addr], ports: ListenerPorts) -> Capture {
    node.run(|| Capture::install(&set(pods), ports))
        .unwrap()
        .expect("install capture")
}

fn listener(node: &Netns, port: u16) -> TcpListener {
    node.run(|| transparent_listener(SocketAddr::from(([0, 0, 0, 0], port))))
        .unwrap()
        .expect("transparent listener")
}

/// Accepts one connection; returns (original destination, peer, stream).
async fn accept(listener: &TcpListener) -> (SocketAddr, SocketAddr, tokio::net::TcpStream) {
    let (stream, peer) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("no connection captured")
        .expect("accept");
    (orig_dst(&stream).unwrap(), peer, stream)
}

#[tokio::test]
async fn outbound_is_captured_then_released_by_remove() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (n1, a, b) = (&topo.node(1).ns, topo.pod("a"), topo.pod("b"));
    let dst = SocketAddr::from((b.ip, 8080));
    let echo_b = spawn_echo(b.ns.listen(dst).unwrap());

    let _capture = install(n1, &[a.ip]);
    let outbound = listener(n1, rules::OUTBOUND_PORT);
    let mut client = a.ns.connect(dst).await.expect("connect from pod a");
    let (orig, peer, mut server) = accept(&outbound).await;
    assert_eq!(orig, dst, "original destination");
    assert_eq!(peer, client.local_addr().unwrap(), "peer is the pod");
    assert_eq!(peer.ip(), a.ip);

    // Bytes flow both ways through the captured connection, exactly.
    let data = payload(100_000);
    client.write_all(&data).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert!(got == data, "captured bytes differ");
    server.write_all(b"from ztunnel").await.unwrap();
    drop(server);
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"from ztunnel");

    n1.run(Capture::remove).unwrap().expect("remove");
    assert_nothing_left(n1);
    n1.run(Capture::remove)
        .unwrap()
        .expect("remove is idempotent");

    // With capture gone, the same connection reaches pod b directly.
    let stream = a.ns.connect(dst).await.expect("direct connect");
    let back = round_trip(stream, b"direct").await.unwrap();
    assert_eq!(back, b"direct");
    echo_b.abort();
}

#[tokio::test]
async fn install_twice_keeps_one_ip_rule_and_update_replaces_set() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (n1, a, b) = (&topo.node(1).ns, topo.pod("a"), topo.pod("b"));
    let _first = install(n1, &[a.ip]);
    let mut second = install(n1, &[a.ip]);
    assert_eq!(ip_rule_count(n1), 1);
    // A duplicate from an older version is cleaned up on install.
    n1.exec(&format!("ip rule add {}", rules::ip_rule_selector()))
        .unwrap();
    assert_eq!(ip_rule_count(n1), 2);
    let _third = install(n1, &[a.ip]);
    assert_eq!(ip_rule_count(n1), 1);

    let other = Ipv4Addr::new(10, 1, 1, 99);
    n1.run(|| second.update(&set(&[a.ip, other])))
        .unwrap()
        .expect("update");
    n1.run(|| second.update(&set(&[a.ip, other])))
        .unwrap()
        .expect("update again");
    let listed = n1.exec("nft list table inet ambient").unwrap();
    assert!(
        listed.contains(&format!("{}, {other}", a.ip)),
        "set: {listed}"
    );
    assert_eq!(
        n1.exec("nft list tables")
            .unwrap()
            .matches("ambient")
            .count(),
        1
    );
    assert_eq!(ip_rule_count(n1), 1);

    // Leaving the set takes effect at once for new connections.
    let dst = SocketAddr::from((b.ip, 8080));
    let echo_b = spawn_echo(b.ns.listen(dst).unwrap());
    let _outbound = listener(n1, rules::OUTBOUND_PORT);
    n1.run(|| second.update(&BTreeSet::new()))
        .unwrap()
        .expect("update to empty");
    let stream = a.ns.connect(dst).await.unwrap();
    assert_eq!(round_trip(stream, b"bypass").await.unwrap(), b"bypass");
    echo_b.abort();

    n1.run(Capture::remove).unwrap().expect("remove");
    assert_nothing_left(n1);
}

#[tokio::test]
async fn inbound_plaintext_and_hbone_are_captured_at_the_destination_node() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (n2, a, b) = (&topo.node(2).ns, topo.pod("a"), topo.pod("b"));
    let _capture = install(n2, &[b.ip]);
    let plaintext = listener(n2, rules::INBOUND_PLAINTEXT_PORT);
    let hbone = listener(n2, HBONE_PORT);

    for (port, listener) in [(8080, &plaintext), (HBONE_PORT, &hbone)] {
        let dst = SocketAddr::from((b.ip, port));
        let client = a.ns.connect(dst).await.expect("connect to pod b");
        let (orig, peer, _server) = accept(listener).await;
        assert_eq!(orig, dst);
        assert_eq!(peer, client.local_addr().unwrap());
    }
}

/// Listeners moved off the default ports (`--outbound-addr` and friends):
/// the rules deliver to them, and HBONE is still the traffic to a pod's
/// 15008.
#[tokio::test]
async fn moved_listeners_receive_the_captured_traffic() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (n1, n2, a, b) = (
        &topo.node(1).ns,
        &topo.node(2).ns,
        topo.pod("a"),
        topo.pod("b"),
    );
    let ports = ListenerPorts {
        outbound: 17001,
        inbound_plaintext: 17006,
        hbone: 17008,
    };
    let _c1 = install_to(n1, &[a.ip], ports);
    let _c2 = install_to(n2, &[b.ip], ports);
    let outbound = listener(n1, ports.outbound);
    let plaintext = listener(n2, ports.inbound_plaintext);
    let hbone = listener(n2, ports.hbone);

    let dst = SocketAddr::from((b.ip, 8080));
    let client = a.ns.connect(dst).await.expect("connect from pod a");
    let (orig, peer, _server) = accept(&outbound).await;
    assert_eq!((orig, peer), (dst, client.local_addr().unwrap()));

    for (port, listener) in [(8080, &plaintext), (HBONE_PORT, &hbone)] {
        let dst = SocketAddr::from((b.ip, port));
        // From node 1 itself (not a pod, so node 1 does not capture it).
        let client = tokio::time::timeout(WAIT, n1.connect(dst))
            .await
            .expect("connect timed out")
            .expect("connect to pod b");
        let (orig, peer, _server) = accept(listener).await;
        assert_eq!((orig, peer), (dst, client.local_addr().unwrap()), "{port}");
    }
}

#[tokio::test]
async fn node_addresses_and_node_to_pod_traffic_are_not_captured() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (node1, a) = (topo.node(1), topo.pod("a"));
    let _capture = install(&node1.ns, &[a.ip]);
    let outbound = listener(&node1.ns, rules::OUTBOUND_PORT);

    // Pod → its node's own IP (fib daddr type local): reaches the node's app.
    let node_addr = SocketAddr::from((node1.ip, 9000));
    let echo_node = spawn_echo(node1.ns.listen(node_addr).unwrap());
    let stream = a.ns.connect(node_addr).await.unwrap();
    assert_eq!(round_trip(stream, b"to node").await.unwrap(), b"to node");

    // Node → pod (a kubelet probe): locally generated, never captured.
    let pod_addr = SocketAddr::from((a.ip, 8080));
    let echo_pod = spawn_echo(a.ns.listen(pod_addr).unwrap());
    let stream = node1.ns.connect(pod_addr).await.unwrap();
    assert_eq!(round_trip(stream, b"probe").await.unwrap(), b"probe");

    let stray = tokio::time::timeout(Duration::from_millis(200), outbound.accept()).await;
    assert!(stray.is_err(), "15001 accepted something it should not");
    echo_node.abort();
    echo_pod.abort();
}

/// ztunnel's outbound socket: SO_MARK 0x539, IP_TRANSPARENT, bound to the
/// client pod's IP, created in the node namespace.
fn spoofed_socket(node: &Netns, src: Ipv4Addr) -> tokio::net::TcpSocket {
    node.run(|| -> std::io::Result<tokio::net::TcpSocket> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_mark(rules::ZTUNNEL_MARK)?;
        socket.set_ip_transparent_v4(true)?;
        socket.bind(&SocketAddr::from((src, 0)).into())?;
        socket.set_nonblocking(true)?;
        Ok(tokio::net::TcpSocket::from_std_stream(socket.into()))
    })
    .unwrap()
    .expect("spoofed socket")
}

#[tokio::test]
async fn replies_to_spoofed_ztunnel_sockets_come_back_via_ct_mark() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (n1, a, b) = (&topo.node(1).ns, topo.pod("a"), topo.pod("b"));
    let dst = SocketAddr::from((b.ip, 8080));
    let echo_b = spawn_echo(b.ns.listen(dst).unwrap());

    // Without the rules, b's SYN-ACK goes to pod a, which resets it.
    let without = tokio::time::timeout(
        Duration::from_secs(1),
        spoofed_socket(n1, a.ip).connect(dst),
    )
    .await;
    assert!(
        !matches!(without, Ok(Ok(_))),
        "spoofed connect should not work without capture"
    );

    let _capture = install(n1, &[a.ip]);
    let stream = tokio::time::timeout(WAIT, spoofed_socket(n1, a.ip).connect(dst))
        .await
        .expect("spoofed connect timed out")
        .expect("spoofed connect");
    assert_eq!(stream.local_addr().unwrap().ip(), a.ip);
    let data = payload(64 * 1024);
    let back = round_trip(stream, &data).await.unwrap();
    assert!(back == data, "echo through spoofed socket differs");
    echo_b.abort();
}

#[tokio::test]
async fn captured_traffic_without_a_ztunnel_socket_is_reset_never_delivered_to_the_host() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (n1, n2, a, b) = (
        &topo.node(1).ns,
        &topo.node(2).ns,
        topo.pod("a"),
        topo.pod("b"),
    );
    // The rules as a crashed ztunnel leaves them: installed, nobody listening.
    let _c1 = install(n1, &[a.ip]);
    let _c2 = install(n2, &[b.ip]);
    let host1 = n1.listen(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    let host2 = n2.listen(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    let host2_hbone = n2
        .listen(SocketAddr::from(([0, 0, 0, 0], HBONE_PORT)))
        .unwrap();
    let app_b = b.ns.listen(SocketAddr::from((b.ip, 8080))).unwrap();

    // Outbound from a captured pod (at node 1); inbound plaintext and HBONE
    // to one (at node 2, from node 1 itself, which nothing captures).
    let (to_b, to_b_hbone) = (
        SocketAddr::from((b.ip, 8080)),
        SocketAddr::from((b.ip, HBONE_PORT)),
    );
    assert_refused_at_once(&a.ns, to_b, "outbound").await;
    assert_refused_at_once(n1, to_b, "inbound plaintext").await;
    assert_refused_at_once(n1, to_b_hbone, "inbound HBONE").await;
    assert_never_accepts(&host1, "node1 :8080").await;
    assert_never_accepts(&host2, "node2 :8080").await;
    assert_never_accepts(&host2_hbone, "node2 :15008").await;
    assert_never_accepts(&app_b, "pod b's app (bypass)").await;

    // Once a transparent listener exists, the same traffic is captured.
    let outbound = listener(n1, rules::OUTBOUND_PORT);
    let dst = SocketAddr::from((b.ip, 8080));
    let client = a.ns.connect(dst).await.expect("captured connect");
    let (orig, peer, _server) = accept(&outbound).await;
    assert_eq!((orig, peer), (dst, client.local_addr().unwrap()));
}
