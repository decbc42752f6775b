//! The data path without root: outbound → HBONE → inbound in one process,
//! on loopback, with no capture, no nftables, no `IP_TRANSPARENT` and no
//! `SO_MARK`, so anyone can run it (`cargo test -p ztunnel --test datapath`).
//!
//! Two ztunnels, each the real `ztunnel::proxy` code: ztunnel-1 serves the
//! client pod's node (outbound: `classify`, the pooled HBONE client),
//! ztunnel-2 the server pod's (inbound: the HBONE server, `admit`,
//! `authorize`, the dial to the app). Between them real TLS 1.3 with
//! certificates from one dev CA (`hbone::ca::DevCa`), real HTTP/2 CONNECT,
//! and a real TCP echo app. Every address is in 127/8, which Linux routes
//! to `lo` whole: the client pod is `127.a.b.2`, the server pod
//! `127.a.b.3` (HBONE on its real port, 15008), with `a.b` random per test
//! so parallel runs do not meet.
//!
//! Without capture, nothing tells the outbound side where a connection was
//! going, so ztunnel-1's listeners are forwarded ones
//! ([`OrigDstSource::Forwarded`]): each stands for one destination, and the
//! client pod connects to the listener for the destination it wants. The
//! app sees the connection from the host's own loopback address rather
//! than the client pod's (no `IP_TRANSPARENT`): the only difference from
//! production, where capture supplies the destination and sockets leave
//! from the pod's IP.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone::ca::DevCa;
use hbone::cert::CertStore;
use hbone::client::{ClientConfig, HboneClient};
use hbone::drain::Drain;
use hbone::server::{HboneServer, ServerConfig};
use mesh_model::state::{Scope, Snapshot};
use mesh_runtime::accesslog::{AccessLog, AccessLogCounters};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use ztunnel::metrics::Metrics;
use ztunnel::proxy::inbound::{HboneInbound, LocalIdentities};
use ztunnel::proxy::outbound::serve_outbound;
use ztunnel::proxy::record::Telemetry;
use ztunnel::proxy::{OrigDstSource, Proxy};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";
/// What the echo app writes after the client's EOF, before closing.
const TRAILER: &[u8] = b"\nEOF seen; bye\n";
/// Bound on every wait, so a broken data path fails instead of hanging.
const WAIT: Duration = Duration::from_secs(20);

/// Access-log lines, written by the real writer thread into memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One ztunnel's telemetry, readable by the test.
struct Observed {
    telemetry: Telemetry,
    lines: Lines,
}

impl Observed {
    fn new() -> Self {
        let lines = Lines::default();
        let telemetry = Telemetry {
            metrics: Metrics::new(),
            access_log: Arc::new(AccessLog::spawn(
                Box::new(lines.clone()),
                AccessLogCounters::default(),
            )),
        };
        Observed { telemetry, lines }
    }

    /// The access-log events so far.
    fn events(&self) -> Vec<Value> {
        self.telemetry.access_log.flush();
        let text = String::from_utf8(self.lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
            .collect()
    }

    /// The sum of `name` over the series carrying every `labels` pair.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let text = self.telemetry.metrics.encode();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// Waits until no connection is open here (every record finished).
    async fn settled(&self) {
        wait_until("connections to finish", || {
            self.telemetry.metrics.active_connections.get() == 0
        })
        .await;
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A TCP echo app: echoes until the client's EOF (a half-close), then
/// writes [`TRAILER`] on its still-open side and closes. Keeps what it
/// received per connection.
struct EchoApp {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl EchoApp {
    fn start(listener: TcpListener) -> Self {
        let app = EchoApp {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            received: Arc::default(),
        };
        let (accepted, received) = (app.accepted.clone(), app.received.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let received = received.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        let n = sock.read(&mut buf).await.expect("app read");
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                        sock.write_all(&buf[..n]).await.expect("app echo");
                    }
                    // Kept before the trailer goes out, so it is there by
                    // the time the client has read it.
                    received.lock().unwrap().push(got);
                    sock.write_all(TRAILER).await.expect("app writes after EOF");
                    sock.shutdown().await.expect("app closes");
                });
            }
        });
        app
    }
}

/// Two nodes on loopback: the client pod on n1 behind ztunnel-1, the server
/// pod on n2 behind ztunnel-2, one dev CA, and L4 policy denying the client
/// on the server's `denied` port.
struct Mesh {
    client_pod: IpAddr,
    /// ztunnel-1's forwarded listener for the echo app, and for the port
    /// the policy denies.
    to_echo: SocketAddr,
    to_denied: SocketAddr,
    echo: EchoApp,
    denied: EchoApp,
    client_node: Observed,
    server_node: Observed,
    hbone_client: Arc<HboneClient>,
    _drains: [Drain; 2],
}

/// Binds `127.a.b.3:15008` for a random `a.b`, the server pod's HBONE
/// address; retries where another run holds that address.
async fn hbone_listener() -> (u8, u8, TcpListener) {
    for _ in 0..50 {
        let (a, b) = (rand::random_range(1..=254u8), rand::random::<u8>());
        match TcpListener::bind((Ipv4Addr::new(127, a, b, 3), mesh_model::HBONE_PORT)).await {
            Ok(l) => return (a, b, l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("binding the HBONE listener on loopback: {e}"),
        }
    }
    panic!("no free 127.a.b.3:15008 after 50 tries");
}

fn config(a: u8, b: u8, denied_port: u16) -> Snapshot {
    let yaml = format!(
        "nodes: [{{name: n1, ip: 127.{a}.{b}.1}}, {{name: n2, ip: 127.{a}.{b}.4}}]
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
workloads:
  - {{name: client, namespace: shop, serviceAccount: client, ip: 127.{a}.{b}.2, node: n1}}
  - {{name: server, namespace: shop, serviceAccount: server, ip: 127.{a}.{b}.3, node: n2}}
policies:
  - name: no-client-on-denied-port
    namespace: shop
    action: DENY
    rules:
      - from: [{{source: {{principals: [cluster.local/ns/shop/sa/client]}}}}]
        to: [{{operation: {{ports: [\"{denied_port}\"]}}}}]
"
    );
    mesh_model::config::parse(&yaml).expect("test config parses")
}

impl Mesh {
    async fn start() -> Mesh {
        let (a, b, hbone) = hbone_listener().await;
        let ip = |last: u8| IpAddr::V4(Ipv4Addr::new(127, a, b, last));
        let (node1, client_pod, server_pod) = (ip(1), ip(2), ip(3));
        let echo = EchoApp::start(TcpListener::bind((server_pod, 0)).await.unwrap());
        let denied = EchoApp::start(TcpListener::bind((server_pod, 0)).await.unwrap());
        let snap = Arc::new(config(a, b, denied.addr.port()));
        let ca = Arc::new(DevCa::generate().expect("dev CA"));

        // ztunnel-2: the server pod's node, HBONE on 127.a.b.3:15008.
        let server_node = Observed::new();
        let drain2 = Drain::new();
        let certs2 = CertStore::new(ca.clone());
        let proxy2 = Proxy::new(
            Scope::Node("n2".into()),
            watch::channel(snap.clone()).1,
            certs2.clone(),
            HboneClient::new(certs2, ClientConfig::default()),
            server_node.telemetry.clone(),
            drain2.clone(),
            false,
            vec![],
        );
        let server = HboneServer::new(
            Arc::new(LocalIdentities(proxy2.clone())),
            Arc::new(HboneInbound(proxy2)),
            ServerConfig::default(),
        );
        let d = drain2.clone();
        tokio::spawn(async move { server.serve(hbone, d).await });

        // ztunnel-1: the client pod's node; one forwarded listener per
        // destination the test dials.
        let client_node = Observed::new();
        let drain1 = Drain::new();
        let certs1 = CertStore::new(ca);
        let hbone_client = HboneClient::new(certs1.clone(), ClientConfig::default());
        let listen_echo = TcpListener::bind((node1, 0)).await.unwrap();
        let listen_denied = TcpListener::bind((node1, 0)).await.unwrap();
        let (to_echo, to_denied) = (
            listen_echo.local_addr().unwrap(),
            listen_denied.local_addr().unwrap(),
        );
        let forwarded = HashMap::from([(to_echo, echo.addr), (to_denied, denied.addr)]);
        let mut proxy1 = Proxy::new(
            Scope::Node("n1".into()),
            watch::channel(snap).1,
            certs1,
            hbone_client.clone(),
            client_node.telemetry.clone(),
            drain1.clone(),
            false,
            vec![],
        );
        Arc::get_mut(&mut proxy1).expect("not shared yet").orig_dst =
            OrigDstSource::Forwarded(Arc::new(forwarded));
        tokio::spawn(serve_outbound(proxy1.clone(), listen_echo));
        tokio::spawn(serve_outbound(proxy1, listen_denied));

        Mesh {
            client_pod,
            to_echo,
            to_denied,
            echo,
            denied,
            client_node,
            server_node,
            hbone_client,
            _drains: [drain1, drain2],
        }
    }

    /// A connection from the client pod's address to `listener`. A refused
    /// connection may already be reset when the connect completes.
    async fn connect_from_client_pod(&self, listener: SocketAddr) -> std::io::Result<TcpStream> {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(self.client_pod, 0)).unwrap();
        sock.connect(listener).await
    }
}

/// `len` bytes that differ from connection to connection.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data`, half-closes, and reads until the far side closes.
async fn echo_once(mut sock: TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut rd, mut wr) = sock.split();
    let send = async {
        wr.write_all(data).await.expect("client write");
        wr.shutdown().await.expect("client half-close");
    };
    let mut back = Vec::new();
    let recv = rd.read_to_end(&mut back);
    let ((), read) = tokio::time::timeout(WAIT, async { tokio::join!(send, recv) })
        .await
        .expect("echo finished");
    read.expect("client read");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_echo_is_byte_exact_with_half_close_and_the_client_identity() {
    let mesh = Mesh::start().await;
    let sizes = [0usize, 1, 65_537, (1 << 20) + 17];
    let runs = sizes.iter().enumerate().map(|(i, &len)| {
        let mesh = &mesh;
        async move {
            let data = payload(len, i as u64 + 1);
            let sock = mesh
                .connect_from_client_pod(mesh.to_echo)
                .await
                .expect("ztunnel-1 accepts");
            let back = echo_once(sock, &data).await;
            (data, back)
        }
    });
    for (data, back) in futures::future::join_all(runs).await {
        // Everything sent came back in order, then what the app wrote after
        // it saw our half-close, then its FIN.
        assert_eq!(back.len(), data.len() + TRAILER.len());
        assert!(back[..data.len()] == data[..], "echo differs");
        assert_eq!(&back[data.len()..], TRAILER);
    }
    mesh.client_node.settled().await;
    mesh.server_node.settled().await;

    // The app received each payload exactly (no extra, none lost).
    let mut got = mesh.echo.received.lock().unwrap().clone();
    got.sort_by_key(Vec::len);
    let want: Vec<Vec<u8>> = (0..sizes.len())
        .map(|i| payload(sizes[i], i as u64 + 1))
        .collect();
    assert!(got == want, "the app received other bytes");
    assert_eq!(
        mesh.hbone_client.stats().connections_opened,
        1,
        "one pooled HBONE connection carries every stream"
    );

    // ztunnel-2 verified the client's certificate: each inbound event
    // carries its SPIFFE id, with the bytes of both directions.
    let inbound = mesh.server_node.events();
    assert_eq!(inbound.len(), sizes.len(), "{inbound:#?}");
    let mut seen: Vec<(u64, u64)> = Vec::new();
    for ev in &inbound {
        assert_eq!(ev["direction"], "inbound", "{ev}");
        assert_eq!(ev["src.identity"], CLIENT_ID, "{ev}");
        assert_eq!(ev["dst.identity"], SERVER_ID, "{ev}");
        assert_eq!(ev["dst.workload"], "shop/server", "{ev}");
        assert_eq!(ev["dst.addr"], mesh.echo.addr.to_string(), "{ev}");
        assert_eq!(ev["response_flags"], "-", "{ev}");
        assert!(ev.get("error").is_none(), "{ev}");
        seen.push((
            ev["bytes_sent"].as_u64().unwrap(),
            ev["bytes_recv"].as_u64().unwrap(),
        ));
    }
    seen.sort();
    let expected: Vec<(u64, u64)> = sizes
        .iter()
        .map(|&n| (n as u64, (n + TRAILER.len()) as u64))
        .collect();
    assert_eq!(seen, expected);

    // ztunnel-1 tunnelled each to 127.a.b.3:15008 as the client.
    let outbound = mesh.client_node.events();
    assert_eq!(outbound.len(), sizes.len(), "{outbound:#?}");
    let hbone_addr = SocketAddr::new(mesh.echo.addr.ip(), mesh_model::HBONE_PORT).to_string();
    for ev in &outbound {
        assert_eq!(ev["direction"], "outbound", "{ev}");
        assert_eq!(ev["src.workload"], "shop/client", "{ev}");
        assert_eq!(ev["src.identity"], CLIENT_ID, "{ev}");
        assert_eq!(ev["dst.hbone_addr"], hbone_addr, "{ev}");
        assert_eq!(ev["dst.identity"], SERVER_ID, "{ev}");
        assert_eq!(ev["response_flags"], "-", "{ev}");
    }

    // And the metrics say the same, from each reporter.
    let server_side = [
        ("reporter", "destination"),
        ("source_principal", "cluster.local/ns/shop/sa/client"),
        ("destination_workload", "server"),
        ("connection_security_policy", "mutual_tls"),
        ("response_flags", "-"),
    ];
    let total: usize = sizes.iter().sum();
    let n = sizes.len() as u64;
    let m = &mesh.server_node;
    assert_eq!(
        m.metric("istio_tcp_connections_opened_total", &server_side),
        n
    );
    assert_eq!(
        m.metric("istio_tcp_connections_closed_total", &server_side),
        n
    );
    assert_eq!(
        m.metric("istio_tcp_received_bytes_total", &server_side),
        total as u64
    );
    assert_eq!(
        m.metric("istio_tcp_sent_bytes_total", &server_side),
        (total + sizes.len() * TRAILER.len()) as u64
    );
    let client_side = [("reporter", "source"), ("response_flags", "-")];
    assert_eq!(
        mesh.client_node
            .metric("istio_tcp_connections_closed_total", &client_side),
        n
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_deny_refuses_the_connection_and_records_deny() {
    let mesh = Mesh::start().await;

    // The denied port: the client is reset (as soon as the connect
    // completes, or on its first read), and the app never sees it.
    let refused = async {
        let mut sock = mesh.connect_from_client_pod(mesh.to_denied).await?;
        let mut buf = [0u8; 64];
        sock.read(&mut buf).await
    };
    let read = tokio::time::timeout(WAIT, refused)
        .await
        .expect("refused, not left hanging");
    assert!(
        matches!(read, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "want a reset, got {read:?}"
    );
    mesh.client_node.settled().await;
    mesh.server_node.settled().await;
    assert_eq!(mesh.denied.accepted.load(Ordering::SeqCst), 0);

    let inbound = mesh.server_node.events();
    assert_eq!(inbound.len(), 1, "{inbound:#?}");
    let ev = &inbound[0];
    assert_eq!(ev["direction"], "inbound", "{ev}");
    assert_eq!(ev["response_flags"], "DENY", "{ev}");
    assert_eq!(ev["src.identity"], CLIENT_ID, "{ev}");
    assert_eq!(ev["dst.addr"], mesh.denied.addr.to_string(), "{ev}");
    assert!(
        ev["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-client-on-denied-port")),
        "the error names the policy: {ev}"
    );
    let outbound = mesh.client_node.events();
    assert_eq!(outbound.len(), 1, "{outbound:#?}");
    assert_eq!(outbound[0]["response_flags"], "DENY", "{}", outbound[0]);

    let denied = [
        ("reporter", "destination"),
        ("source_principal", "cluster.local/ns/shop/sa/client"),
        ("response_flags", "DENY"),
    ];
    let m = &mesh.server_node;
    assert_eq!(m.metric("istio_tcp_connections_opened_total", &denied), 1);
    assert_eq!(m.metric("istio_tcp_connections_closed_total", &denied), 1);
    let refused = [("reporter", "source"), ("response_flags", "DENY")];
    assert_eq!(
        mesh.client_node
            .metric("istio_tcp_connections_closed_total", &refused),
        1
    );

    // The same client, same tunnel, on the allowed port: served. The
    // denial was the policy's, not a broken path.
    let sock = mesh
        .connect_from_client_pod(mesh.to_echo)
        .await
        .expect("ztunnel-1 accepts");
    let back = echo_once(sock, b"ping").await;
    assert_eq!(back, [b"ping".as_slice(), TRAILER].concat());
    mesh.server_node.settled().await;
    let allowed = [("reporter", "destination"), ("response_flags", "-")];
    assert_eq!(m.metric("istio_tcp_connections_closed_total", &allowed), 1);
}
