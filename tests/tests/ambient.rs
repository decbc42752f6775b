//! ztunnel end to end: real `ztunnel` processes in node namespaces, real
//! nftables capture, real HBONE between nodes, apps in pod namespaces.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::echo::{echo_through, payload, round_trip, App};
use mesh_tests::mesh::wait_until;
use mesh_tests::mesh::{assert_hbone_on_the_wire, metric_value, LinkCapture, Mesh};
use mesh_tests::rules::{assert_installed_once, pod_set};
use mesh_tests::{require_root, Netns, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

fn config(pods: &str, extra: &str) -> String {
    format!(
        r#"
trustDomain: cluster.local
nodes:
  - {{name: node1, ip: 10.0.0.1}}
  - {{name: node2, ip: 10.0.0.2}}
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
  - {{name: bank, labels: {{istio.io/dataplane-mode: ambient}}}}
  - {{name: web, labels: {{istio.io/dataplane-mode: ambient}}}}
  - {{name: legacy}}
workloads:
{pods}
{extra}
"#
    )
}

fn pod_line(topo: &Topology, name: &str, ns: &str, sa: &str, labels: &str) -> String {
    let pod = topo.pod(name);
    format!(
        "  - {{name: {name}, namespace: {ns}, serviceAccount: {sa}, ip: {}, node: node{}, labels: {{{labels}}}}}\n",
        pod.ip, pod.node
    )
}

/// Pod `client` (namespace shop) on node 1 and pod `server` (namespace
/// bank, `app: server`) on node 2, and their config lines.
fn client_and_server() -> (Topology, String) {
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("server", 2)
        .build()
        .unwrap();
    let pods = pod_line(&topo, "client", "shop", "client", "app: client")
        + &pod_line(&topo, "server", "bank", "server", "app: server");
    (topo, pods)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_traffic_is_hbone_encrypted_with_real_source_ip() {
    if !require_root() {
        return;
    }
    let (topo, pods) = client_and_server();
    let mut mesh = Mesh::new(&topo, &config(&pods, ""));
    mesh.start_all();
    let server = topo.pod("server");
    let client = topo.pod("client");
    let app = App::serve(&server.ns, 8080);

    let capture = LinkCapture::start(&topo.node(1).ns, &format!("{}-link", topo.id()));
    let secret = b"TOP-SECRET-PAYLOAD-0123456789-".repeat(100);
    let back = echo_through(&client.ns, SocketAddr::from((server.ip, 8080)), &secret)
        .await
        .expect("echo through the mesh");
    assert_eq!(back, secret, "byte-exact through HBONE");
    let captured = capture.finish();

    // The app saw the client pod's own IP, not a node or ztunnel address.
    let peers = app.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].ip(), std::net::IpAddr::V4(client.ip));

    // The link carried TLS to 15008, never the payload in cleartext.
    assert_hbone_on_the_wire(&captured, secret.len(), b"TOP-SECRET-PAYLOAD");

    // Both ztunnels logged the connection with both identities.
    let out = mesh.wait_event(1, "outbound client->server", |e| {
        e["direction"] == "outbound" && e["dst.addr"] == format!("{}:8080", server.ip)
    });
    assert_eq!(
        out["src.identity"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert_eq!(
        out["dst.identity"],
        "spiffe://cluster.local/ns/bank/sa/server"
    );
    assert_eq!(out["dst.hbone_addr"], format!("{}:15008", server.ip));
    assert_eq!(out["bytes_sent"], secret.len() as u64);
    assert_eq!(out["response_flags"], "-");
    let inb = mesh.wait_event(2, "inbound client->server", |e| e["direction"] == "inbound");
    assert_eq!(
        inb["src.identity"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert_eq!(inb["dst.workload"], "bank/server");
    assert_eq!(inb["bytes_recv"], secret.len() as u64);
    // ... and the app saw the client's own source port too, as without a mesh.
    assert_eq!(
        out["src.addr"],
        peers[0].to_string(),
        "the app's peer is the client's own address and port"
    );
    assert_eq!(inb["src.addr"], out["src.addr"]);

    let metrics = mesh.metrics(2);
    assert!(
        metrics.contains("istio_tcp_connections_opened_total{reporter=\"destination\""),
        "{metrics}"
    );
    assert!(metrics.contains("source_principal=\"cluster.local/ns/shop/sa/client\""));
}

/// `--outbound-addr`, `--inbound-plaintext-addr` and `--hbone-addr` move
/// the listeners, and the capture rules follow them: an ambient pod's
/// traffic is still captured and tunnelled (to the peer's 15008, which
/// the peer delivers to its moved HBONE listener), and plaintext from a
/// pod outside the mesh still reaches the moved plaintext listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_listeners_still_capture_and_tunnel() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("old", 1)
        .pod("server", 2)
        .build()
        .unwrap();
    let pods = pod_line(&topo, "client", "shop", "client", "app: client")
        + &pod_line(&topo, "old", "legacy", "old", "app: old")
        + &pod_line(&topo, "server", "bank", "server", "app: server");
    let mut mesh = Mesh::new(&topo, &config(&pods, ""));
    let moved = [
        "--outbound-addr",
        "0.0.0.0:16001",
        "--inbound-plaintext-addr",
        "0.0.0.0:16006",
        "--hbone-addr",
        "0.0.0.0:16008",
    ];
    mesh.start_with_args(1, &moved);
    mesh.start_with_args(2, &moved);
    let (client, old, server) = (topo.pod("client"), topo.pod("old"), topo.pod("server"));
    let _app = App::serve(&server.ns, 8080);
    let to = SocketAddr::from((server.ip, 8080));

    let back = echo_through(&client.ns, to, b"through moved listeners")
        .await
        .expect("echo through the mesh");
    assert_eq!(back, b"through moved listeners");
    let out = mesh.wait_event(1, "outbound client->server", |e| {
        e["direction"] == "outbound"
    });
    assert_eq!(out["dst.hbone_addr"], format!("{}:15008", server.ip));
    assert_eq!(out["response_flags"], "-");
    let inb = mesh.wait_event(2, "inbound over HBONE", |e| {
        e["direction"] == "inbound" && e.get("src.identity").is_some()
    });
    assert_eq!(
        inb["src.identity"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert_eq!(inb["dst.hbone_addr"], format!("{}:15008", server.ip));

    let back = echo_through(&old.ns, to, b"plain")
        .await
        .expect("plaintext");
    assert_eq!(back, b"plain");
    let plain = mesh.wait_event(2, "plaintext inbound", |e| {
        e["direction"] == "inbound" && e.get("src.identity").is_none()
    });
    assert_eq!(
        plain["src.addr"].as_str().unwrap().split(':').next(),
        Some(old.ip.to_string().as_str())
    );
    mesh.terminate_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_node_and_a_service_vip_reach_all_endpoints() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("cart-1", 1)
        .pod("cart-2", 2)
        .pod("cart-3", 2)
        .build()
        .unwrap();
    let mut pods = pod_line(&topo, "client", "shop", "client", "app: client");
    for name in ["cart-1", "cart-2", "cart-3"] {
        pods += &pod_line(&topo, name, "shop", "cart", "app: cart");
    }
    let services = r#"
services:
  - name: cart
    namespace: shop
    vip: 10.96.0.10
    ports: [{port: 80, targetPort: 8080}]
    selector: {app: cart}
"#;
    let mut mesh = Mesh::new(&topo, &config(&pods, services));
    mesh.start_all();
    let _apps: Vec<App> = ["cart-1", "cart-2", "cart-3"]
        .iter()
        .map(|n| App::serve_with_greeting(&topo.pod(n).ns, 8080, n))
        .collect();
    let client = topo.pod("client");

    // Same node: in-process, no TLS hop, still logged inbound with identity.
    let local = topo.pod("cart-1");
    let back = echo_through(&client.ns, SocketAddr::from((local.ip, 8080)), b"hi")
        .await
        .expect("same-node echo");
    assert_eq!(back, b"cart-1hi");
    let inb = mesh.wait_event(1, "in-process inbound", |e| {
        e["direction"] == "inbound" && e["dst.workload"] == "shop/cart-1"
    });
    assert_eq!(
        inb["src.identity"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert!(inb.get("dst.hbone_addr").is_none(), "no TLS hop: {inb}");

    // The VIP exists nowhere but in config: ztunnel picks endpoints.
    let vip = SocketAddr::from(([10, 96, 0, 10], 80));
    let mut seen = BTreeSet::new();
    for i in 0..12 {
        let back = echo_through(&client.ns, vip, b"!")
            .await
            .unwrap_or_else(|e| panic!("VIP connection {i}: {e}"));
        let text = String::from_utf8(back).unwrap();
        seen.insert(text.trim_end_matches('!').to_owned());
    }
    let want: BTreeSet<String> = ["cart-1", "cart-2", "cart-3"].map(String::from).into();
    assert_eq!(seen, want, "every endpoint on both nodes got traffic");
    let out = mesh.wait_event(1, "outbound via VIP", |e| {
        e["direction"] == "outbound" && e["dst.addr"] == format!("{}:8080", topo.pod("cart-2").ip)
    });
    assert_eq!(
        out["dst.hbone_addr"],
        format!("{}:15008", topo.pod("cart-2").ip)
    );
}

/// A connection that ztunnel refuses is reset (or closed) before any byte
/// comes back.
async fn assert_refused(from: &Netns, to: SocketAddr, what: &str) {
    if let Ok(back) = echo_through(from, to, b"knock").await {
        assert!(back.is_empty(), "{what}: expected refusal, got {back:?}");
    }
}

const POLICIES: &str = r#"
policies:
  - name: no-web
    namespace: bank
    selector: {matchLabels: {app: server}}
    action: DENY
    rules: [{from: [{source: {namespaces: [web]}}]}]
  - name: client-8080-only
    namespace: bank
    selector: {matchLabels: {app: server}}
    action: ALLOW
    rules:
      - from: [{source: {principals: ["cluster.local/ns/shop/sa/client", "cluster.local/ns/web/sa/other"]}}]
        to: [{operation: {ports: ["8080"]}}]
"#;

const DENY_SHOP: &str = r#"
  - name: no-shop-either
    namespace: bank
    selector: {matchLabels: {app: server}}
    action: DENY
    rules: [{from: [{source: {namespaces: [shop]}}]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_by_principal_namespace_and_port_and_live_revocation() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("other", 1)
        .pod("server", 2)
        .build()
        .unwrap();
    let pods = pod_line(&topo, "client", "shop", "client", "app: client")
        + &pod_line(&topo, "other", "web", "other", "app: other")
        + &pod_line(&topo, "server", "bank", "server", "app: server");
    let mut mesh = Mesh::new(&topo, &config(&pods, POLICIES));
    mesh.start_all();
    let server = topo.pod("server");
    let _app = App::serve(&server.ns, 8080);
    let _admin_app = App::serve(&server.ns, 9090);
    let to = |port| SocketAddr::from((server.ip, port));
    let client = &topo.pod("client").ns;

    // ALLOW by principal and port.
    let back = echo_through(client, to(8080), b"allowed").await.unwrap();
    assert_eq!(back, b"allowed");
    // DENY by namespace wins even though the principal is allowed.
    assert_refused(&topo.pod("other").ns, to(8080), "namespace web").await;
    let ev = mesh.wait_event(2, "DENY for web", |e| {
        e["src.identity"] == "spiffe://cluster.local/ns/web/sa/other"
    });
    assert_eq!(ev["response_flags"], "DENY");
    assert!(
        ev["error"].as_str().unwrap().contains("bank/no-web"),
        "{ev}"
    );
    assert_eq!(
        ev["dst.identity"], "spiffe://cluster.local/ns/bank/sa/server",
        "denials name the destination too"
    );
    // ALLOW exists but not for 9090.
    assert_refused(client, to(9090), "port 9090").await;
    let ev = mesh.wait_event(2, "no ALLOW match on 9090", |e| {
        e["dst.addr"] == format!("{}:9090", server.ip)
    });
    assert_eq!(ev["response_flags"], "DENY");
    // The client ztunnel reports the refusal too.
    mesh.wait_event(1, "client-side DENY", |e| {
        e["direction"] == "outbound" && e["response_flags"] == "DENY"
    });

    // A live connection is cut when a new policy denies it.
    let mut live = tokio::time::timeout(WAIT, client.connect(to(8080)))
        .await
        .unwrap()
        .unwrap();
    live.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    live.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    mesh.write_config(&config(&pods, &format!("{POLICIES}{DENY_SHOP}")));
    let cut = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 16];
        loop {
            // Keep talking: the connection must end (EOF or reset) by itself.
            if live.write_all(b"x").await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), live.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the denied live connection stayed open");
    let ev = mesh.wait_event(2, "revocation", |e| {
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("policy changed"))
    });
    assert_eq!(ev["response_flags"], "DENY");
    assert_refused(client, to(8080), "after the new DENY").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ambient_client_is_allowed_when_permissive_and_refused_when_strict() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("old", 1)
        .pod("server", 2)
        .build()
        .unwrap();
    let pods = pod_line(&topo, "old", "legacy", "old", "app: old")
        + &pod_line(&topo, "server", "bank", "server", "app: server");
    let mut mesh = Mesh::new(&topo, &config(&pods, ""));
    mesh.start_all();
    let server = topo.pod("server");
    let old = topo.pod("old");
    let _app = App::serve(&server.ns, 8080);
    let to = SocketAddr::from((server.ip, 8080));

    // Never captured on the non-ambient side.
    assert!(!pod_set(&topo.node(1).ns).contains(&old.ip.to_string()));
    let back = echo_through(&old.ns, to, b"plain").await.unwrap();
    assert_eq!(back, b"plain");
    let ev = mesh.wait_event(2, "plaintext inbound", |e| e["direction"] == "inbound");
    assert!(
        ev.get("src.identity").is_none(),
        "plaintext has no identity: {ev}"
    );
    assert!(ev.get("dst.hbone_addr").is_none(), "{ev}");
    assert_eq!(
        ev["src.addr"].as_str().unwrap().split(':').next(),
        Some(old.ip.to_string().as_str())
    );
    assert!(
        mesh.settled_access_log(1).is_empty(),
        "node1 must not see the legacy pod's traffic"
    );

    let strict = config(&pods, "").replace(
        "{name: bank, labels: {istio.io/dataplane-mode: ambient}}",
        "{name: bank, labels: {istio.io/dataplane-mode: ambient}, mtls: STRICT}",
    );
    mesh.write_config(&strict);
    wait_until("STRICT applied", || {
        mesh.http_get(2, 15000, "/config_dump")
            .is_ok_and(|(_, b)| b.contains("\"Strict\""))
    });
    assert_refused(&old.ns, to, "plaintext into STRICT").await;
    let ev = mesh.wait_event(2, "STRICT refusal", |e| e["response_flags"] == "DENY");
    assert!(
        ev["error"]
            .as_str()
            .unwrap()
            .contains("requires mutual TLS"),
        "{ev}"
    );
    assert_eq!(
        ev["dst.identity"],
        "spiffe://cluster.local/ns/bank/sa/server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_label_on_and_off_live_without_rule_leaks() {
    if !require_root() {
        return;
    }
    let (topo, pods) = client_and_server();
    let labelled = config(&pods, "");
    let unlabelled = labelled.replace(
        "{name: shop, labels: {istio.io/dataplane-mode: ambient}}",
        "{name: shop}",
    );
    let mut mesh = Mesh::new(&topo, &unlabelled);
    mesh.start_all();
    let node1 = &topo.node(1).ns;
    let client = topo.pod("client");
    let server = topo.pod("server");
    let _app = App::serve(&server.ns, 8080);
    let to = SocketAddr::from((server.ip, 8080));
    let ip = client.ip.to_string();
    assert!(!pod_set(node1).contains(&ip));

    mesh.write_config(&labelled);
    wait_until("label on captures the pod", || pod_set(node1).contains(&ip));
    assert_installed_once(node1);
    assert_eq!(echo_through(&client.ns, to, b"in").await.unwrap(), b"in");
    let ev = mesh.wait_event(1, "captured outbound", |e| e["direction"] == "outbound");
    assert_eq!(
        ev["src.identity"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );

    mesh.write_config(&unlabelled);
    wait_until("label off releases the pod", || {
        !pod_set(node1).contains(&ip)
    });
    assert_installed_once(node1);
    let before = mesh.access_log(1).len();
    assert_eq!(echo_through(&client.ns, to, b"out").await.unwrap(), b"out");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        mesh.access_log(1).len(),
        before,
        "released pod still captured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_costs_access_log_lines_not_connections() {
    if !require_root() {
        return;
    }
    let (topo, pods) = client_and_server();
    let mut mesh = Mesh::new(&topo, &config(&pods, ""));
    // Node 1's access log is /dev/full: every write fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", mesh.access_log_path(1)).unwrap();
    mesh.start_all();
    let server = topo.pod("server");
    let _app = App::serve(&server.ns, 8080);
    let to = SocketAddr::from((server.ip, 8080));
    const CONNS: usize = 20;
    for i in 0..CONNS {
        let data = payload(1000 + i);
        let back = echo_through(&topo.pod("client").ns, to, &data)
            .await
            .unwrap_or_else(|e| panic!("connection {i} with a full disk: {e}"));
        assert_eq!(back, data, "connection {i} byte-exact");
    }
    // Every outbound line on node 1 was lost and counted; node 2 wrote its own.
    let lost = "ztunnel_access_log_lost_lines_total{reason=\"write_failed\"}";
    wait_until("node 1 counts its lost access-log lines", || {
        metric_value(&mesh.metrics(1), lost).is_some_and(|v| v >= CONNS as f64)
    });
    assert_eq!(
        metric_value(&mesh.metrics(1), "ztunnel_access_log_lines_total"),
        Some(0.0)
    );
    wait_until("node 2 logs every inbound connection", || {
        mesh.access_log(2)
            .iter()
            .filter(|e| e["direction"] == "inbound")
            .count()
            == CONNS
    });
    // One warning, not one per connection.
    let warnings = mesh
        .stderr(1)
        .matches("writing the access log failed")
        .count();
    assert_eq!(warnings, 1, "{}", mesh.stderr(1));
    // And the proxy still shuts down cleanly.
    mesh.terminate_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_another_root_cannot_open_a_tunnel() {
    if !require_root() {
        return;
    }
    let (topo, pods) = client_and_server();
    let mut mesh = Mesh::new(&topo, &config(&pods, ""));
    let rogue_ca = mesh.scratch("rogue-ca");
    mesh.start_with_ca(1, &rogue_ca);
    mesh.start(2);
    let server = topo.pod("server");
    let app = App::serve(&server.ns, 8080);
    assert_refused(
        &topo.pod("client").ns,
        SocketAddr::from((server.ip, 8080)),
        "rogue",
    )
    .await;
    let ev = mesh.wait_event(1, "rogue client sees TLS failure", |e| {
        e["direction"] == "outbound"
    });
    assert_eq!(ev["response_flags"], "TLS_FAILURE", "{ev}");
    let ev = mesh.wait_event(2, "server refuses the rogue", |e| {
        e["direction"] == "inbound"
    });
    assert_eq!(ev["response_flags"], "TLS_FAILURE", "{ev}");
    assert!(app.peers().is_empty(), "the app must never see the rogue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_complete_byte_exact() {
    if !require_root() {
        return;
    }
    // 1,000 client plus 1,000 server sockets live in this process.
    ztunnel::app::raise_fd_limit();
    let (topo, pods) = client_and_server();
    let mut mesh = Mesh::new(&topo, &config(&pods, ""));
    mesh.start_all();
    let server = topo.pod("server");
    let _app = App::serve(&server.ns, 8080);
    let to = SocketAddr::from((server.ip, 8080));
    const N: usize = 1000;
    let sockets = topo
        .pod("client")
        .ns
        .run(|| {
            (0..N)
                .map(|_| tokio::net::TcpSocket::new_v4())
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .expect("client sockets");
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, sock)| {
            tokio::spawn(async move {
                let data = payload(4096 + i);
                let stream = sock.connect(to).await?;
                let back = round_trip(stream, &data).await?;
                if back != data {
                    let first = back.iter().zip(&data).position(|(a, b)| a != b);
                    return Err(std::io::Error::other(format!(
                        "got {} bytes back of {}, first difference at {first:?}",
                        back.len(),
                        data.len()
                    )));
                }
                Ok::<bool, std::io::Error>(true)
            })
        })
        .collect();
    let mut exact = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(60), t).await {
            Ok(Ok(Ok(true))) => exact += 1,
            other => {
                let failed: Vec<_> = [1, 2]
                    .into_iter()
                    .flat_map(|n| mesh.access_log(n))
                    .filter(|e| {
                        e["response_flags"] != "-"
                            || e.get("error").is_some()
                            || e["bytes_sent"] != e["bytes_recv"]
                    })
                    .collect();
                panic!("connection {i}: {other:?}; failed events: {failed:#?}")
            }
        }
    }
    assert_eq!(exact, N);
    let metrics = mesh.metrics(2);
    let opened: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(opened as usize, N, "{metrics}");
}
