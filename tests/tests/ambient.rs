//! ztunnel end to end: real `ztunnel` processes in node namespaces, real
//! nftables capture, real HBONE between nodes, apps in pod namespaces.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_tests::echo::{payload, round_trip};
use mesh_tests::mesh::Mesh;
use mesh_tests::{require_root, ChildGuard, Netns, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// An app in a pod: echoes each connection, after first sending `greeting`
/// (if any), and records every peer address it accepted.
struct App {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

fn serve_app(ns: &Netns, port: u16, greeting: &'static str) -> App {
    let listener = ns
        .listen(SocketAddr::from(([0, 0, 0, 0], port)))
        .expect("app listener");
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer);
            tokio::spawn(async move {
                if !greeting.is_empty() && stream.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                let (mut rd, mut wr) = stream.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    App { peers, task }
}

async fn echo_through(from: &Netns, to: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let stream = tokio::time::timeout(WAIT, from.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    tokio::time::timeout(WAIT, round_trip(stream, data))
        .await
        .map_err(|_| std::io::Error::other("round trip timed out"))?
}

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

fn tcpdump(node: &Netns, file: &std::path::Path) -> ChildGuard {
    let guard = node
        .spawn(&[
            "tcpdump",
            "-i",
            "peer0",
            "-U",
            "-s",
            "0",
            "-w",
            file.to_str().unwrap(),
            "tcp",
        ])
        .expect("start tcpdump");
    // tcpdump needs a moment to attach before traffic starts.
    std::thread::sleep(Duration::from_millis(500));
    guard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_traffic_is_hbone_encrypted_with_real_source_ip() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("server", 2)
        .build()
        .unwrap();
    let pods = pod_line(&topo, "client", "shop", "client", "app: client")
        + &pod_line(&topo, "server", "bank", "server", "app: server");
    let mut mesh = Mesh::new(&topo, &config(&pods, ""));
    mesh.start_all();
    let server = topo.pod("server");
    let client = topo.pod("client");
    let app = serve_app(&server.ns, 8080, "");

    let pcap = std::env::temp_dir().join(format!("{}-link.pcap", topo.id()));
    let mut dump = tcpdump(&topo.node(1).ns, &pcap);
    let secret = b"TOP-SECRET-PAYLOAD-0123456789-".repeat(100);
    let back = echo_through(&client.ns, SocketAddr::from((server.ip, 8080)), &secret)
        .await
        .expect("echo through the mesh");
    assert_eq!(back, secret, "byte-exact through HBONE");
    std::thread::sleep(Duration::from_millis(300));
    let _ = dump.signal(nix::sys::signal::Signal::SIGINT);
    dump.wait_exit(Duration::from_secs(5));
    let captured = std::fs::read(&pcap).expect("read pcap");
    let _ = std::fs::remove_file(&pcap);

    // The app saw the client pod's own IP, not a node or ztunnel address.
    let peers = app.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].ip(), std::net::IpAddr::V4(client.ip));

    // The link carried TLS to 15008, never the payload in cleartext.
    assert!(
        captured.len() > secret.len(),
        "capture too small ({} bytes): tcpdump saw no traffic",
        captured.len()
    );
    let needle = b"TOP-SECRET-PAYLOAD";
    assert!(
        !captured.windows(needle.len()).any(|w| w == needle),
        "payload visible in cleartext on the node link"
    );
    let port = 15008u16.to_be_bytes();
    assert!(
        captured.windows(2).any(|w| w == port),
        "no HBONE (15008) traffic on the link"
    );

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

    let metrics = mesh.metrics(2);
    assert!(
        metrics.contains("istio_tcp_connections_opened_total{reporter=\"destination\""),
        "{metrics}"
    );
    assert!(metrics.contains("source_principal=\"cluster.local/ns/shop/sa/client\""));
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
        .map(|n| serve_app(&topo.pod(n).ns, 8080, n))
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

#[allow(dead_code)]
async fn read_some(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap_or(0);
    buf.truncate(n);
    buf
}

#[allow(dead_code)]
fn data() -> Vec<u8> {
    payload(16 * 1024)
}
