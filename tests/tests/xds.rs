//! ztunnel under the control plane: real `control-plane` and `ztunnel`
//! processes in network namespaces, configured over delta xDS, with
//! certificates from the control plane's CA.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_tests::echo::echo_through;
use mesh_tests::mesh::{wait_until, Mesh};
use mesh_tests::rules::pod_set;
use mesh_tests::{require_root, Netns, Topology};

const WAIT: Duration = Duration::from_secs(10);

/// The issue's bound for a config edit to change traffic behaviour.
const WITHIN: Duration = Duration::from_secs(1);
/// Allowance on top of [`WITHIN`] for a loaded CI machine: these are
/// correctness tests, not timing tests (the benchmark measures latency).
const SLACK: Duration = Duration::from_secs(2);

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

/// Connects from `from` to `to` every 20 ms until `effect` holds (checked
/// after each attempt), for at most [`WITHIN`] + [`SLACK`] after `edited`;
/// returns how long it took.
async fn poll_effect<F>(
    edited: Instant,
    from: &Netns,
    to: SocketAddr,
    what: &str,
    effect: F,
) -> Duration
where
    F: Fn() -> bool,
{
    loop {
        let _ = talk(from, to).await;
        if effect() {
            let took = edited.elapsed();
            eprintln!("{what}: took effect {took:?} after the file edit");
            return took;
        }
        assert!(
            edited.elapsed() < WITHIN + SLACK,
            "{what}: no effect {:?} after the file edit",
            WITHIN + SLACK
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection on `node` from `src_ip` with identity `id` in the access log.
fn logged(mesh: &Mesh, node: usize, direction: &str, src_ip: &str, id: &str) -> bool {
    mesh.access_log(node).iter().any(|e| {
        e["direction"] == direction
            && e["src.identity"] == id
            && e["src.addr"]
                .as_str()
                .is_some_and(|a| a.split(':').next() == Some(src_ip))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_added_to_the_control_planes_file_joins_the_mesh() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("server", 2)
        .pod("newbie", 1)
        .build()
        .unwrap();
    let (c, s, n) = (topo.pod("client"), topo.pod("server"), topo.pod("newbie"));
    let before = config(&c.ip.to_string(), &s.ip.to_string(), "");
    let newbie = format!(
        "  - {{name: newbie, namespace: shop, serviceAccount: newbie, ip: {}, node: node1}}\n",
        n.ip
    );
    let after = before.replace(
        "\n  - {name: server",
        &format!("\n{newbie}  - {{name: server"),
    );
    assert_ne!(before, after, "the newbie line must be inserted");
    let mut mesh = Mesh::with_control_plane(&topo, &before);
    mesh.start_all();
    let listener = s.ns.listen(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    let _echo = mesh_tests::echo::spawn_echo(listener);
    let to = SocketAddr::from((s.ip, 8080));
    let node1 = &topo.node(1).ns;
    let ip = n.ip.to_string();
    let id = "spiffe://cluster.local/ns/shop/sa/newbie";

    // Unknown to the mesh: not captured, so it arrives as plaintext.
    assert!(!pod_set(node1).contains(&ip));
    assert!(talk(&n.ns, to).await, "plaintext into PERMISSIVE works");
    let ev = mesh.wait_event(2, "the newbie's plaintext", |e| {
        e["src.addr"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{ip}:")))
    });
    assert!(
        ev.get("src.identity").is_none(),
        "not in the mesh yet: {ev}"
    );

    let edited = Instant::now();
    mesh.write_config(&after);
    poll_effect(edited, &n.ns, to, "added pod", || {
        logged(&mesh, 2, "inbound", &ip, id)
    })
    .await;
    // Captured on its node, over HBONE, with its own certificate.
    assert!(pod_set(node1).contains(&ip), "{}", pod_set(node1));
    let out = mesh.wait_event(1, "the newbie's outbound", |e| {
        e["direction"] == "outbound" && e["src.identity"] == id
    });
    assert_eq!(out["dst.hbone_addr"], format!("{}:15008", s.ip));
    assert_eq!(
        out["dst.identity"],
        "spiffe://cluster.local/ns/bank/sa/server"
    );
    assert_eq!(out["response_flags"], "-");
    assert!(
        mesh.metrics(2)
            .contains("source_principal=\"cluster.local/ns/shop/sa/newbie\""),
        "destination metrics name the new pod"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelling_a_namespace_in_the_control_planes_file_captures_its_pods() {
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
    let labelled = config(&c.ip.to_string(), &s.ip.to_string(), "");
    let unlabelled = labelled.replace(
        "{name: shop, labels: {istio.io/dataplane-mode: ambient}}",
        "{name: shop}",
    );
    assert_ne!(labelled, unlabelled);
    let mut mesh = Mesh::with_control_plane(&topo, &unlabelled);
    mesh.start_all();
    let listener = s.ns.listen(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    let _echo = mesh_tests::echo::spawn_echo(listener);
    let to = SocketAddr::from((s.ip, 8080));
    let node1 = &topo.node(1).ns;
    let ip = c.ip.to_string();
    let id = "spiffe://cluster.local/ns/shop/sa/client";

    // Unlabelled: node 1 leaves the client alone.
    assert!(!pod_set(node1).contains(&ip));
    assert!(talk(&c.ns, to).await);
    assert!(
        mesh.settled_access_log(1).is_empty(),
        "an unlabelled pod was captured"
    );

    let edited = Instant::now();
    mesh.write_config(&labelled);
    poll_effect(edited, &c.ns, to, "namespace label", || {
        logged(&mesh, 1, "outbound", &ip, id)
    })
    .await;
    assert!(pod_set(node1).contains(&ip), "{}", pod_set(node1));
    let inb = mesh.wait_event(2, "inbound with the client's identity", |e| {
        e["direction"] == "inbound" && e["src.identity"] == id
    });
    assert_eq!(inb["dst.workload"], "bank/server");
    let metrics = mesh.metrics(1);
    assert!(
        metrics.lines().any(|l| l
            .starts_with("istio_tcp_connections_opened_total{reporter=\"source\"")
            && l.contains("source_principal=\"cluster.local/ns/shop/sa/client\"")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_nft_update_over_xds_is_retried_and_not_ready_meanwhile() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("late", 1)
        .pod("server", 2)
        .build()
        .unwrap();
    let (c, s, late) = (topo.pod("client"), topo.pod("server"), topo.pod("late"));
    let before = config(&c.ip.to_string(), &s.ip.to_string(), "");
    let after = before.replace(
        "workloads:\n",
        &format!(
            "workloads:\n  - {{name: late, namespace: shop, serviceAccount: late, ip: {}, node: node1}}\n",
            late.ip
        ),
    );
    let mut mesh = Mesh::with_control_plane(&topo, &before);
    mesh.start(1);
    let node1 = &topo.node(1).ns;
    let ready = |mesh: &Mesh| {
        mesh.http_get(1, mesh_tests::mesh::READINESS_PORT, "/healthz/ready")
            .map(|(status, _)| status)
    };
    let errors = |mesh: &Mesh| {
        mesh_tests::mesh::metric_value(&mesh.metrics(1), "ztunnel_capture_errors_total")
            .unwrap_or(0.0)
    };
    assert_eq!(ready(&mesh).unwrap(), 200);

    // Another process takes table inet ambient with `flags owner`: while it
    // lives, the kernel refuses ztunnel's replacement of it (EPERM).
    let mut owner = node1
        .spawn(&[
            "sh",
            "-c",
            "{ echo 'delete table inet ambient'; echo 'add table inet ambient { flags owner; }'; exec sleep 60; } | nft -i",
        ])
        .unwrap();
    wait_until("the table is owned by another process", || {
        node1
            .exec("nft list table inet ambient")
            .is_ok_and(|t| t.contains("flags owner"))
    });

    // A pod joins node 1 over xDS: the update fails, readiness turns false,
    // and the update is retried with no further config change.
    mesh.write_config(&after);
    wait_until("not ready while capture is stale", || {
        ready(&mesh).is_ok_and(|s| s == 503)
    });
    wait_until("the failed update is retried", || errors(&mesh) >= 3.0);
    assert!(!pod_set(node1).contains(&late.ip.to_string()));

    // The owner exits, its table goes with it: a retry installs the new pod
    // set and readiness returns.
    owner.kill();
    wait_until("a retry installs the new pod", || {
        pod_set(node1).contains(&late.ip.to_string())
    });
    wait_until("ready again", || ready(&mesh).is_ok_and(|s| s == 200));
    mesh_tests::rules::assert_installed_once(node1);
    assert!(
        mesh.stderr(1).contains("updating capture rules failed"),
        "{}",
        mesh.stderr(1)
    );
}

/// Behind a missing waypoint (issue 13): the control plane's file labels
/// bank with a waypoint that does not exist. Over xDS the server pod and
/// its Service stay in the mesh (the pod captured on its node), and a
/// client's connections to them, by pod IP or VIP, are refused by its
/// ztunnel with `CONNECT` and the reason `waypoint_missing` (access log and
/// metrics), not sent around the waypoint. Once the waypoint appears in the
/// file, the same connection goes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_missing_waypoint_the_pod_stays_captured_and_is_refused() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("server", 2)
        .pod("wp", 1)
        .build()
        .unwrap();
    let (c, s, wp) = (topo.pod("client"), topo.pod("server"), topo.pod("wp"));
    let missing = format!(
        r#"
nodes: [{{name: node1, ip: 10.0.0.1}}, {{name: node2, ip: 10.0.0.2}}]
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
  - {{name: bank, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}}}
workloads:
  - {{name: client, namespace: shop, serviceAccount: client, ip: {}, node: node1}}
  - {{name: server, namespace: bank, serviceAccount: server, ip: {}, node: node2, labels: {{app: server}}}}
services:
  - {{name: server, namespace: bank, vip: 10.96.0.30, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: server}}}}
"#,
        c.ip, s.ip
    );
    let mut mesh = Mesh::with_control_plane(&topo, &missing);
    mesh.start_all();
    let listener = s.ns.listen(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    let _echo = mesh_tests::echo::spawn_echo(listener);

    // The pod behind the missing waypoint is still captured on its node.
    assert!(
        pod_set(&topo.node(2).ns).contains(&s.ip.to_string()),
        "the server left capture: {}",
        pod_set(&topo.node(2).ns)
    );
    let pod = SocketAddr::from((s.ip, 8080));
    let vip: SocketAddr = "10.96.0.30:80".parse().unwrap();
    for (to, what) in [(pod, "pod IP"), (vip, "VIP")] {
        assert!(
            !talk(&c.ns, to).await,
            "{what}: went around the missing waypoint"
        );
        let ev = mesh.wait_event(1, "the refusal", |e| {
            e["direction"] == "outbound" && e["dst.addr"] == to.to_string()
        });
        assert_eq!(ev["response_flags"], "CONNECT", "{what}: {ev}");
        assert_eq!(ev["reason"], "waypoint_missing", "{what}: {ev}");
        assert_eq!(
            ev["src.identity"],
            "spiffe://cluster.local/ns/shop/sa/client"
        );
        assert!(
            ev["error"].as_str().is_some_and(|e| e.contains("wp")),
            "{what}: the error names the waypoint: {ev}"
        );
    }
    let metrics = mesh.metrics(1);
    assert!(
        metrics.contains("ztunnel_outbound_refused_total{reason=\"waypoint_missing\"} 2"),
        "{metrics}"
    );
    assert!(
        mesh.settled_access_log(2).is_empty(),
        "nothing reached the server's node"
    );

    // The waypoint appears: the same connection now goes to it (nothing
    // answers there in this test, but the route is the waypoint's).
    let with_wp = missing.replace(
        "\nservices:",
        &format!(
            "\n  - {{name: wp, namespace: bank, serviceAccount: wp, ip: {}, node: node1, labels: {{istio.io/dataplane-mode: none}}}}\nservices:",
            wp.ip
        ),
    );
    assert_ne!(with_wp, missing);
    let hbone = format!("{}:15008", wp.ip);
    let edited = Instant::now();
    mesh.write_config(&with_wp);
    poll_effect(edited, &c.ns, pod, "the waypoint appears", || {
        mesh.access_log(1)
            .iter()
            .any(|e| e["dst.hbone_addr"] == hbone.as_str())
    })
    .await;
    let ev = mesh.wait_event(1, "to the waypoint", |e| {
        e["dst.hbone_addr"] == hbone.as_str()
    });
    assert_eq!(ev["dst.identity"], "spiffe://cluster.local/ns/bank/sa/wp");
    assert_eq!(
        ev["dst.addr"],
        pod.to_string(),
        "the authority is what was dialled"
    );
}
