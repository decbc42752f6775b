//! `demo`: the two-node ambient mesh in network namespaces, end to end.
//!
//! Builds 2 nodes (each a netns running a real `ztunnel`; node 1 also runs
//! the real `control-plane`, which serves config over delta xDS and signs
//! the pods' certificates), 5 pods in three
//! namespaces (`shop` ambient + STRICT, `bank` ambient + PERMISSIVE, `legacy`
//! outside the mesh), a Service VIP with endpoints on both nodes and two
//! policies; runs echo apps in the pods, sends traffic, and prints what the
//! ztunnels saw (access logs and metrics) and what the wire between the nodes
//! carried (tcpdump). A waypoint pod (`shop/waypoint`, the `waypoint`
//! binary over xDS) serves the `reviews` Service at L7: a 90/10 split
//! between two versions, an L7 DENY of `POST /admin` (403), and the pods'
//! L4 policy refusing a client that bypasses it (module `waypoint`).
//! Then it removes the DENY policy from the control
//! plane's config file and shows the change reach the ztunnels over xDS.
//! Last it stops the ztunnels: SIGTERM keeps each node's capture, so traffic
//! is refused (fails closed) until a ztunnel serves again, and `ztunnel
//! uninstall` removes the rules. Everything is torn down at the end, on
//! Ctrl-C and on panic.
//!
//! Run as root: `ZTUNNEL_BIN=target/release/ztunnel target/release/demo`
//! (or `./scripts/demo`, which installs, builds and runs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use mesh_tests::mesh::{
    metric_sum, ztunnel_bin, Mesh, CONTROL_PLANE_ADDR, CONTROL_PLANE_METRICS_ADDR,
};
use mesh_tests::{process, rules};
use mesh_tests::{require_root, ChildGuard, Netns, Topology};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

mod waypoint;

const APP_PORT: u16 = 8080;
const VIP: &str = "10.96.0.10";
const VIP_PORT: u16 = 80;
const WAIT: Duration = Duration::from_secs(5);
const SECRET: &[u8] = b"TOP-SECRET-CARD-NUMBER-4111-1111-1111-1111;";
const LEGACY_MARKER: &[u8] = b"LEGACY-PLAINTEXT-HELLO;";

/// (pod, node, namespace, service account, labels)
const PODS: [(&str, usize, &str, &str, &str); 8] = [
    ("frontend", 1, "shop", "frontend", "app: frontend"),
    ("cart-1", 1, "shop", "cart", "app: cart"),
    ("old-client", 1, "legacy", "default", "app: old-client"),
    (
        "waypoint",
        1,
        "shop",
        "waypoint",
        "istio.io/dataplane-mode: none, gateway.networking.k8s.io/gateway-name: waypoint",
    ),
    ("cart-2", 2, "shop", "cart", "app: cart"),
    ("ledger", 2, "bank", "ledger", "app: ledger"),
    (
        "reviews-v1",
        2,
        "shop",
        "reviews",
        "app: reviews, version: v1",
    ),
    (
        "reviews-v2",
        2,
        "shop",
        "reviews",
        "app: reviews, version: v2",
    ),
];

fn main() {
    process::ensure_ztunnel_bin();
    process::install_signal_cleanup();
    if !require_root() {
        eprintln!("the demo builds network namespaces and nftables rules: run it as root");
        std::process::exit(2);
    }
    let bin = ztunnel_bin();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(demo(&bin));
    }));
    drop(rt);
    // The topology and mesh dropped inside `demo` (also when it panicked);
    // this finds anything a destructor could not remove.
    process::emergency_cleanup();
    let (ns, nft) = process::leftovers();
    println!("\n== Teardown");
    println!(
        "  namespaces of this run left: {}; nft `ambient` table in the root namespace: {}",
        ns.len(),
        if nft { "PRESENT (bug)" } else { "none" }
    );
    if result.is_err() || !ns.is_empty() || nft {
        std::process::exit(1);
    }
}

async fn demo(bin: &Path) {
    let mut builder = Topology::builder().nodes(2);
    for (name, node, ..) in PODS {
        builder = builder.pod(name, node);
    }
    let topo = builder.build().expect("build topology");
    let mut mesh = Mesh::with_control_plane(&topo, &config(&topo, true));
    // The waypoint's token: the control plane reads its tokens at start.
    let token = waypoint::add_token(&mesh);
    mesh.kill_control_plane();
    mesh.start_control_plane();
    mesh.start_all();
    let l7 = waypoint::start(&topo, &mesh, &token);
    print_intro(&topo, &mesh, bin);

    let _apps: Vec<App> = ["cart-1", "cart-2", "ledger"]
        .iter()
        .map(|n| serve(&topo.pod(n).ns, n))
        .collect();

    println!("\n== Traffic (each app replies \"<its name>: \" and echoes what it got)");
    let ledger = SocketAddr::from((topo.pod("ledger").ip, APP_PORT));
    let cart1 = SocketAddr::from((topo.pod("cart-1").ip, APP_PORT));
    let cart2 = SocketAddr::from((topo.pod("cart-2").ip, APP_PORT));
    let vip: SocketAddr = format!("{VIP}:{VIP_PORT}").parse().expect("vip");

    let pcap = std::env::temp_dir().join(format!("{}-peer0.pcap", topo.id()));
    let dump = tcpdump(&topo.node(1).ns, &pcap);
    let secret = SECRET.repeat(64);
    send(
        &topo,
        "frontend",
        ledger,
        &secret,
        "cross-node, HBONE (secret payload)",
    )
    .await;
    let legacy_msg = LEGACY_MARKER.repeat(4);
    send(
        &topo,
        "old-client",
        ledger,
        &legacy_msg,
        "legacy -> bank (PERMISSIVE)",
    )
    .await;
    let wire = stop_capture(dump, &pcap);

    send(&topo, "frontend", cart1, b"hi", "same node, in-process").await;
    let mut spread = BTreeMap::new();
    for _ in 0..6 {
        let who = send_quiet(&topo.pod("frontend").ns, vip, b"!").await;
        *spread.entry(who.unwrap_or_else(|e| e)).or_insert(0) += 1;
    }
    let spread: Vec<String> = spread.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    println!(
        "  {:<8} {:<11} -> {:<21} {:<38} {}",
        "ok",
        "frontend",
        format!("cart VIP {VIP}:{VIP_PORT}"),
        "service VIP, endpoints on both nodes",
        spread.join(", ")
    );
    send(
        &topo,
        "old-client",
        cart2,
        b"hi",
        "legacy -> shop (STRICT mTLS)",
    )
    .await;
    send(
        &topo,
        "cart-1",
        ledger,
        b"hi",
        "DENY policy: shop/sa/cart -> ledger",
    )
    .await;
    lift_deny(&topo, &mesh, ledger).await;
    waypoint::traffic(&topo, &l7).await;

    settle_logs(&mesh);
    print_access_logs(&topo, &mesh);
    print_metrics(&mesh);
    waypoint::print_metrics(&l7);
    print_wire(&wire, secret.len());
    print_control_plane(&mesh);
    drop(l7);
    shutdown(&topo, &mut mesh, ledger).await;
}

/// SIGTERMs both ztunnels (each keeps its node's capture), shows a
/// connection refused at once while none runs, then `ztunnel uninstall`.
async fn shutdown(topo: &Topology, mesh: &mut Mesh, ledger: SocketAddr) {
    println!("\n== Shutdown (SIGTERM drains and keeps the capture rules: a restart or an upgrade never opens the node)");
    for node in 1..=2 {
        let status = mesh.terminate(node);
        assert!(status.success(), "ztunnel node{node} exited with {status}");
        rules::assert_installed_once(&topo.node(node).ns);
        println!(
            "  node{node}: ztunnel exited on SIGTERM; table inet ambient and its ip rule stay"
        );
    }
    send(
        topo,
        "frontend",
        ledger,
        b"hi",
        "no ztunnel running: fails closed",
    )
    .await;
    for node in 1..=2 {
        mesh.uninstall(node);
        rules::assert_nothing_left(&topo.node(node).ns);
        println!("  node{node}: `ztunnel uninstall` removed the table, the ip rule and the route");
    }
}

/// The name of the DENY policy the demo removes live.
const DENY_POLICY: &str = "ledger-deny-cart";

/// Removes the DENY policy from the control plane's file, waits until
/// ledger's ztunnel (node 2) no longer holds it, and sends again.
async fn lift_deny(topo: &Topology, mesh: &Mesh, ledger: SocketAddr) {
    let edited = Instant::now();
    mesh.write_config(&config(topo, false));
    let applied = loop {
        let holds = mesh
            .http_get(2, mesh_tests::mesh::ADMIN_PORT, "/config_dump")
            .map_or(true, |(_, body)| body.contains(DENY_POLICY));
        if !holds {
            break Some(edited.elapsed());
        }
        if edited.elapsed() > WAIT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let what = match applied {
        Some(t) => format!("after {DENY_POLICY} was removed ({} ms)", t.as_millis()),
        None => format!("{DENY_POLICY} still in node2's config after {WAIT:?}"),
    };
    send(topo, "cart-1", ledger, b"hi", &what).await;
    println!(
        "  (the DENY was deleted from the control plane's config file; the ms are file edit -> node2's ztunnel applied it, over xDS)"
    );
}

fn config(topo: &Topology, with_deny: bool) -> String {
    let mut workloads = String::new();
    for (name, _, ns, sa, labels) in PODS {
        let pod = topo.pod(name);
        workloads += &format!(
            "  - {{name: {name}, namespace: {ns}, serviceAccount: {sa}, ip: {}, node: node{}, labels: {{{labels}}}}}\n",
            pod.ip, pod.node
        );
    }
    let deny = if with_deny {
        format!(
            r#"  - name: {DENY_POLICY}
    namespace: bank
    selector: {{matchLabels: {{app: ledger}}}}
    action: DENY
    rules:
      - from: [{{source: {{principals: ["cluster.local/ns/shop/sa/cart"]}}}}]
"#
        )
    } else {
        String::new()
    };
    format!(
        r#"# generated by the ambient-mesh demo, served by the control plane
trustDomain: cluster.local
nodes:
  - {{name: node1, ip: 10.0.0.1}}
  - {{name: node2, ip: 10.0.0.2}}
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}, mtls: STRICT}}
  - {{name: bank, labels: {{istio.io/dataplane-mode: ambient}}}}
  - {{name: legacy}}
workloads:
{workloads}services:
  - name: cart
    namespace: shop
    vip: {VIP}
    ports: [{{port: {VIP_PORT}, targetPort: {APP_PORT}}}]
    selector: {{app: cart}}
{l7_services}{routes}policies:
{deny}{l7_policies}  - name: cart-allow-mesh
    namespace: shop
    selector: {{matchLabels: {{app: cart}}}}
    action: ALLOW
    rules:
      - from: [{{source: {{namespaces: [shop, bank]}}}}]
        to: [{{operation: {{ports: ["{APP_PORT}"]}}}}]
"#,
        l7_services = waypoint::services(),
        routes = waypoint::ROUTES,
        l7_policies = waypoint::POLICIES,
    )
}

fn print_intro(topo: &Topology, mesh: &Mesh, bin: &Path) {
    println!(
        "ambient-mesh demo: 2 nodes, 8 pods, a control plane, 2 ztunnels ({}) and a waypoint",
        bin.display()
    );
    println!("  network namespaces: {}-*\n", topo.id());
    let cp = mesh
        .control_plane_pid()
        .map_or("?".into(), |p| p.to_string());
    println!(
        "  control plane pid {cp} in node1's namespace, {CONTROL_PLANE_ADDR}: delta xDS + CA over TLS; the ztunnels hold only a node token, no CA key"
    );
    for node in topo.nodes() {
        let pid = process::find_pid_with_arg(&mesh.access_log_path(node.index))
            .map_or("?".into(), |p| p.to_string());
        let pods: Vec<String> = PODS
            .iter()
            .filter(|p| p.1 == node.index)
            .map(|(name, _, ns, ..)| format!("{name} {} ({ns})", topo.pod(name).ip))
            .collect();
        println!(
            "  node{} {}  ztunnel pid {pid:<7} pods: {}",
            node.index,
            node.ip,
            pods.join(", ")
        );
    }
    println!("  namespaces: shop = ambient, mTLS STRICT; bank = ambient, PERMISSIVE; legacy = not in the mesh");
    println!(
        "  service:    cart.shop {VIP}:{VIP_PORT} -> cart-1 (node1), cart-2 (node2) :{APP_PORT}"
    );
    println!(
        "  service:    reviews.shop {}:80 -> reviews-v1, reviews-v2 (node2) :{}, through the waypoint (shop/waypoint, node1)",
        waypoint::REVIEWS_VIP,
        waypoint::REVIEWS_PORT
    );
    println!(
        "  policies:   bank/{DENY_POLICY}  DENY  from principal cluster.local/ns/shop/sa/cart"
    );
    println!(
        "              shop/cart-allow-mesh   ALLOW from namespaces shop, bank to port {APP_PORT}"
    );
}

/// An app in a pod: writes `<name>: `, then echoes until EOF.
struct App(JoinHandle<()>);

impl Drop for App {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn serve(ns: &Netns, name: &str) -> App {
    let listener = ns
        .listen(SocketAddr::from(([0, 0, 0, 0], APP_PORT)))
        .expect("app listener");
    let greeting = format!("{name}: ");
    App(tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let greeting = greeting.clone();
            tokio::spawn(async move {
                if stream.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                let (mut rd, mut wr) = stream.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    }))
}

/// Sends `data` from pod `from` to `to` and prints one line with the outcome.
async fn send(topo: &Topology, from: &str, to: SocketAddr, data: &[u8], what: &str) {
    let target = topo
        .pods()
        .iter()
        .find(|p| p.ip == to.ip())
        .map_or(to.to_string(), |p| format!("{} {}", p.name, to));
    let (verdict, detail) = match send_quiet(&topo.pod(from).ns, to, data).await {
        Ok(who) => ("ok", format!("{who} replied, {} bytes echoed", data.len())),
        Err(why) => ("REFUSED", why),
    };
    println!("  {verdict:<8} {from:<11} -> {target:<21} {what:<38} {detail}");
}

/// One connection: send, half-close, read to EOF. `Ok(app name)` when the
/// app answered with its greeting and the exact echo, else why not.
async fn send_quiet(from: &Netns, to: SocketAddr, data: &[u8]) -> Result<String, String> {
    let attempt = async {
        let mut stream = from
            .connect(to)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut rd, mut wr) = stream.split();
        let write = async {
            wr.write_all(data).await?;
            wr.shutdown().await
        };
        let mut back = Vec::new();
        let (w, r) = tokio::join!(write, rd.read_to_end(&mut back));
        match (w, r) {
            (_, Err(e)) => Err(format!("read: {e}")),
            _ if back.is_empty() => Err("closed without a reply".to_owned()),
            (Err(e), _) => Err(format!("write: {e}")),
            (Ok(()), Ok(_)) => {
                let text = String::from_utf8_lossy(&back);
                match text.split_once(": ") {
                    Some((who, echo)) if echo.as_bytes() == data => Ok(who.to_owned()),
                    _ => Err(format!("unexpected reply ({} bytes)", back.len())),
                }
            }
        }
    };
    tokio::time::timeout(WAIT, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

fn tcpdump(node: &Netns, file: &Path) -> ChildGuard {
    let guard = node
        .spawn(&[
            "sh",
            "-c",
            "exec tcpdump --immediate-mode -i peer0 -U -s 0 -w \"$0\" tcp 2>/dev/null",
            file.to_str().expect("utf-8 path"),
        ])
        .expect("start tcpdump (is it installed? ./scripts/install-deps)");
    // tcpdump needs a moment to attach before traffic starts.
    std::thread::sleep(Duration::from_millis(700));
    guard
}

/// What the capture on the node link showed.
struct Wire {
    bytes: usize,
    packets_hbone: usize,
    packets_other: usize,
    secret_hits: usize,
    legacy_hits: usize,
}

fn stop_capture(mut dump: ChildGuard, pcap: &Path) -> Wire {
    std::thread::sleep(Duration::from_millis(300));
    let _ = dump.signal(nix::sys::signal::Signal::SIGINT);
    dump.wait_exit(Duration::from_secs(5));
    let raw = std::fs::read(pcap).unwrap_or_default();
    let summary = std::process::Command::new("tcpdump")
        .args(["-nn", "-q", "-r"])
        .arg(pcap)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let _ = std::fs::remove_file(pcap);
    let packets_hbone = summary.lines().filter(|l| l.contains(".15008")).count();
    let count = |needle: &[u8]| raw.windows(needle.len()).filter(|w| *w == needle).count();
    Wire {
        bytes: raw.len(),
        packets_hbone,
        packets_other: summary.lines().count() - packets_hbone,
        secret_hits: count(SECRET),
        legacy_hits: count(LEGACY_MARKER),
    }
}

/// Waits until both access logs stop growing (events are written on close).
fn settle_logs(mesh: &Mesh) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = usize::MAX;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let n = mesh.access_log(1).len() + mesh.access_log(2).len();
        if n == last {
            return;
        }
        last = n;
    }
}

/// One row of the who-talked-to-whom table: identical connections merged.
struct Row {
    key: [String; 6],
    conns: u64,
    sent: u64,
    recv: u64,
}

fn print_access_logs(topo: &Topology, mesh: &Mesh) {
    println!("\n== Who talked to whom (the two ztunnels' JSON access logs; identical connections merged)");
    println!(
        "  {:<4} {:<9} {:<24} {:<18} {:<30} {:>5} {:>6} {:>6}  result",
        "node", "side", "from", "to", "identity (src -> dst)", "conns", "sent", "recv"
    );
    let mut rows: Vec<Row> = Vec::new();
    for node in 1..=2 {
        for e in mesh.access_log(node) {
            let key = row_key(topo, node, &e);
            let (sent, recv) = (
                e["bytes_sent"].as_u64().unwrap_or(0),
                e["bytes_recv"].as_u64().unwrap_or(0),
            );
            match rows.iter_mut().find(|r| r.key == key) {
                Some(r) => (r.conns, r.sent, r.recv) = (r.conns + 1, r.sent + sent, r.recv + recv),
                None => rows.push(Row {
                    key,
                    conns: 1,
                    sent,
                    recv,
                }),
            }
        }
    }
    for r in &rows {
        let [node, side, from, to, ids, result] = &r.key;
        println!(
            "  {node:<4} {side:<9} {from:<24} {to:<18} {ids:<30} {:>5} {:>6} {:>6}  {result}",
            r.conns, r.sent, r.recv
        );
    }
    println!("  identities: spiffe://cluster.local/ns/<ns>/sa/<sa> shortened to <ns>/<sa>; `-` = plaintext, none");
    println!(
        "  side: out/HBONE = tunnelled to the other node; outbound/inbound = same-node, in-process"
    );
    println!("  sent/recv: bytes client->server and server->client, as that ztunnel counted them");
}

fn row_key(topo: &Topology, node: usize, e: &Value) -> [String; 6] {
    let src_ip = addr_ip(&e["src.addr"]);
    let from = match e["src.workload"].as_str() {
        Some(w) => w.to_owned(),
        None => topo
            .pods()
            .iter()
            .find(|p| p.ip.to_string() == src_ip)
            .map_or(src_ip.clone(), |p| format!("{} (no mesh)", p.name)),
    };
    let to = match e["dst.workload"].as_str() {
        Some(w) => format!("{w}:{}", addr_port(&e["dst.addr"])),
        None => str_of(&e["dst.addr"]),
    };
    let ids = format!(
        "{} -> {}",
        short_id(&e["src.identity"]),
        short_id(&e["dst.identity"])
    );
    let result = match e["response_flags"].as_str().unwrap_or("?") {
        "-" => "allowed".to_owned(),
        f => format!("DENIED ({f})"),
    };
    let side = match (e["direction"].as_str(), e.get("dst.hbone_addr")) {
        (Some("outbound"), Some(_)) => "out/HBONE".to_owned(),
        (Some(d), _) => d.to_owned(),
        (None, _) => "?".to_owned(),
    };
    [format!("n{node}"), side, from, to, ids, result]
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}

fn addr_ip(v: &Value) -> String {
    str_of(v)
        .rsplit_once(':')
        .map_or(String::new(), |(ip, _)| ip.to_owned())
}

fn addr_port(v: &Value) -> String {
    str_of(v)
        .rsplit_once(':')
        .map_or(String::new(), |(_, p)| p.to_owned())
}

fn short_id(v: &Value) -> String {
    match v.as_str() {
        Some(id) => id
            .strip_prefix("spiffe://cluster.local/ns/")
            .map_or(id.to_owned(), |s| s.replace("/sa/", "/")),
        None => "-".to_owned(),
    }
}

fn print_metrics(mesh: &Mesh) {
    println!("\n== Metrics (GET :15020/metrics in each node's namespace, summed over labels)");
    println!(
        "  {:<6} {:>8} {:>8} {:>8} {:>12} {:>12}",
        "node", "opened", "closed", "denied", "bytes in", "bytes out"
    );
    for node in 1..=2 {
        let text = mesh.metrics(node);
        let sum = |name: &str, only: Option<&str>| metric_sum(&text, name, only);
        println!(
            "  node{node:<2} {:>8} {:>8} {:>8} {:>12} {:>12}",
            sum("istio_tcp_connections_opened_total", None),
            sum("istio_tcp_connections_closed_total", None),
            sum(
                "istio_tcp_connections_closed_total",
                Some("response_flags=\"DENY\"")
            ),
            sum("istio_tcp_received_bytes_total", None),
            sum("istio_tcp_sent_bytes_total", None),
        );
    }
    println!("  (both reporters counted: a cross-node connection appears as source on one node, destination on the other)");
}

fn print_wire(w: &Wire, secret_len: usize) {
    println!("\n== On the wire (tcpdump -i peer0 in node1's namespace, during the first two connections)");
    println!(
        "  captured {} bytes: {} packets to/from port 15008 (HBONE), {} other TCP packets",
        w.bytes, w.packets_hbone, w.packets_other
    );
    println!(
        "  mesh payload \"{}...\" ({secret_len} bytes sent): found {} times -> {}",
        String::from_utf8_lossy(&SECRET[..19]),
        w.secret_hits,
        match (w.secret_hits, w.packets_hbone) {
            (0, 0) => "no HBONE traffic captured: inconclusive",
            (0, _) => "encrypted (mutual TLS inside HBONE)",
            _ => "VISIBLE: the mesh leaked cleartext!",
        }
    );
    println!(
        "  legacy payload \"{}\": found {} times -> {}",
        String::from_utf8_lossy(LEGACY_MARKER),
        w.legacy_hits,
        if w.legacy_hits > 0 {
            "cleartext, as expected: legacy is not in the mesh"
        } else {
            "not seen"
        }
    );
}

fn print_control_plane(mesh: &Mesh) {
    let text = mesh.control_plane_metrics();
    let m = |name: &str, only: Option<&str>| metric_sum(&text, name, only);
    println!("\n== Control plane (GET {CONTROL_PLANE_METRICS_ADDR}/metrics)");
    println!(
        "  config and certificates came over xDS from the control plane: {} delta pushes ({} address, {} authorization) to {} connected clients (the ztunnels and the waypoint), {} NACKs",
        m("control_plane_xds_pushes_total", None),
        m("control_plane_xds_pushes_total", Some("type=\"address\"")),
        m("control_plane_xds_pushes_total", Some("type=\"authorization\"")),
        m("control_plane_xds_connected_clients", None),
        m("control_plane_xds_nacks_total", None),
    );
    println!(
        "  certificates signed by its CA: {}, refused: {} (each ztunnel asked only for its own node's pods, the waypoint for itself)",
        m("control_plane_ca_certificates_signed_total", None),
        m("control_plane_ca_certificates_refused_total", None),
    );
}
