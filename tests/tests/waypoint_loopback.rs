//! The `waypoint` binary on loopback, without root: the test plays the
//! client's ztunnel (an HBONE client with the client's certificate) and the
//! destination ztunnel of one endpoint (an HBONE server with the endpoint's
//! certificate, relaying to the app); the other endpoint is outside the
//! mesh and gets plain TCP; a third refuses connections, so requests are
//! retried elsewhere and it is ejected. Addresses are a /24 of 127.0.0.0/8
//! of this test's own, so nothing else on the machine is touched.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hbone::ca::DevCa;
use hbone::cert::CertStore;
use hbone::client::{ConnectRequest, HboneClient};
use hbone::drain::Drain;
use hbone::server::{FixedIdentity, Handler, HboneServer, InboundRequest, ServerConfig};
use hbone::SpiffeId;
use mesh_tests::http::{get, h1_client, h2_client, send_h1, send_h2, HttpApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";
const ECHO_ID: &str = "spiffe://cluster.local/ns/shop/sa/echo";

/// A /24 of loopback for this test process.
fn base() -> [u8; 3] {
    let pid = std::process::id();
    [127, 100 + (pid % 100) as u8, ((pid / 100) % 250) as u8 + 1]
}

fn ip(last: u8) -> Ipv4Addr {
    let [a, b, c] = base();
    Ipv4Addr::new(a, b, c, last)
}

/// The destination ztunnel of the in-mesh endpoint: records who connected
/// and relays to the app.
struct FakeZtunnel {
    peers: Arc<Mutex<Vec<SpiffeId>>>,
}

impl Handler for FakeZtunnel {
    fn handle(&self, req: InboundRequest) -> BoxFuture<'static, ()> {
        let peers = self.peers.clone();
        Box::pin(async move {
            peers.lock().unwrap().push(req.peer.clone());
            let Ok(mut app) = tokio::net::TcpStream::connect(req.authority).await else {
                req.reject(http::StatusCode::SERVICE_UNAVAILABLE);
                return;
            };
            let Ok(mut stream) = req.accept() else { return };
            let counters = Arc::default();
            let _ = hbone::copy::copy_bidirectional(&mut stream, &mut app, &counters).await;
        })
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config() -> String {
    format!(
        r#"
nodes: [{{name: node1, ip: {node}}}]
namespaces: [{{name: shop}}]
workloads:
  - {{name: client, namespace: shop, serviceAccount: client, ip: {client}, node: node1, tunnel: HBONE}}
  - {{name: waypoint, namespace: shop, serviceAccount: waypoint, ip: {wp}, node: node1}}
  - {{name: echo-1, namespace: shop, serviceAccount: echo, ip: {e1}, node: node1, tunnel: HBONE, labels: {{app: echo}}}}
  - {{name: echo-2, namespace: shop, serviceAccount: legacy, ip: {e2}, node: node1, labels: {{app: echo}}}}
  - {{name: echo-3, namespace: shop, serviceAccount: legacy, ip: {e3}, node: node1, labels: {{app: echo}}}}
  - {{name: guarded, namespace: shop, serviceAccount: legacy, ip: {e4}, node: node1, labels: {{app: guarded}}}}
services:
  - {{name: echo, namespace: shop, vip: 10.96.0.10, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: echo}}, labels: {{istio.io/use-waypoint: waypoint}}}}
  - {{name: other, namespace: shop, vip: 10.96.0.11, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: echo}}}}
  - {{name: guarded, namespace: shop, vip: 10.96.0.12, ports: [{{port: 7000, targetPort: 8080, appProtocol: tcp}}], selector: {{app: guarded}}, labels: {{istio.io/use-waypoint: waypoint}}}}
  - {{name: open, namespace: shop, vip: 10.96.0.13, ports: [{{port: 7000, targetPort: 8080, appProtocol: tcp}}], selector: {{app: echo}}, labels: {{istio.io/use-waypoint: waypoint}}}}
policies:
  - {{name: no-client, namespace: shop, selector: {{matchLabels: {{app: guarded}}}}, action: DENY, rules: [{{from: [{{source: {{principals: [cluster.local/ns/shop/sa/client]}}}}]}}]}}
"#,
        node = ip(254),
        client = ip(2),
        wp = ip(1),
        e1 = ip(11),
        e2 = ip(12),
        e3 = ip(13),
        e4 = ip(14),
    )
}

/// A plain GET on loopback: the whole response, or "" if unreachable.
fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn ready(addr: SocketAddr) -> bool {
    http_get(addr, "/healthz/ready").starts_with("HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waypoint_binary_balances_over_hbone_and_plain_tcp_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = DevCa::load_or_create(&ca_dir).unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config()).unwrap();
    let access_log = dir.path().join("access.log");

    // The endpoints: echo-1 behind its fake ztunnel, echo-2 plain.
    let app1 = HttpApp::serve(
        tokio::net::TcpListener::bind((ip(11), 8080)).await.unwrap(),
        "echo-1",
    );
    let app2 = HttpApp::serve(
        tokio::net::TcpListener::bind((ip(12), 8080)).await.unwrap(),
        "echo-2",
    );
    let certs = CertStore::new(Arc::new(ca.clone()));
    let peers = Arc::new(Mutex::new(Vec::new()));
    let ztunnel = HboneServer::new(
        Arc::new(FixedIdentity {
            certs: certs.clone(),
            id: ECHO_ID.parse().unwrap(),
        }),
        Arc::new(FakeZtunnel {
            peers: peers.clone(),
        }),
        ServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind((ip(11), 15008))
        .await
        .unwrap();
    let drain = Drain::new();
    let d = drain.clone();
    tokio::spawn(async move { ztunnel.serve(listener, d).await });

    let wp = ip(1);
    let bin = mesh_tests::waypoint::waypoint_bin();
    let at = |port: u16| SocketAddr::new(IpAddr::V4(wp), port).to_string();
    let child = Command::new(bin)
        .args(["--name", "waypoint", "--namespace", "shop"])
        .arg("--config-file")
        .arg(&config_path)
        .arg("--ca-dir")
        .arg(&ca_dir)
        .arg("--access-log")
        .arg(&access_log)
        .args(["--hbone-addr", &at(15008), "--admin-addr", &at(15000)])
        .args(["--metrics-addr", &at(15020), "--readiness-addr", &at(15021)])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn waypoint (cargo build -p waypoint)");
    let _child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(SocketAddr::new(IpAddr::V4(wp), 15021)) {
        assert!(Instant::now() < deadline, "waypoint not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The client's ztunnel: HBONE to the waypoint for the Service VIP.
    let client = HboneClient::new(certs, Default::default());
    let connect = |authority: &str| ConnectRequest {
        source: CLIENT_ID.parse().unwrap(),
        source_ip: None,
        expected: vec![WAYPOINT_ID.parse().unwrap()],
        via: SocketAddr::new(IpAddr::V4(wp), 15008),
        authority: authority.parse().unwrap(),
        meta: Default::default(),
    };
    let stream = client.connect(&connect("10.96.0.10:80")).await.unwrap();
    let mut h1 = h1_client(stream).await.unwrap();
    let mut names = Vec::new();
    for i in 0..24 {
        let a = send_h1(&mut h1, get("echo.shop", &format!("/h1/{i}")))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        names.push(a.body.trim().to_owned());
    }
    let stream = client.connect(&connect("10.96.0.10:80")).await.unwrap();
    let mut h2 = h2_client(stream).await.unwrap();
    for i in 0..24 {
        let a = send_h2(&mut h2, get("echo.shop", &format!("/h2/{i}")))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        names.push(a.body.trim().to_owned());
    }
    for name in ["echo-1", "echo-2"] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} never answered: {names:?}"
        );
    }
    assert!(!app1.seen().is_empty() && !app2.seen().is_empty());
    // echo-3 refuses connections: its requests went to another endpoint
    // (none failed), and it was ejected after five failures in a row.
    let dead = SocketAddr::new(IpAddr::V4(ip(13)), 8080).to_string();
    let dump = http_get(SocketAddr::new(IpAddr::V4(wp), 15000), "/config_dump");
    assert!(
        dump.contains(&format!("\"ejected_endpoints\": [\n    \"{dead}\"")),
        "{dump}"
    );
    let log = std::fs::read_to_string(&access_log).unwrap_or_default();
    let retried: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e["attempts"] == 2)
        .collect();
    assert!(!retried.is_empty(), "{log}");
    assert!(retried.iter().all(|e| e["status"] == 200), "{retried:?}");
    // The in-mesh endpoint was reached over HBONE as the waypoint.
    let seen: Vec<String> = peers
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|p| p == WAYPOINT_ID), "{seen:?}");
    // A gRPC call keeps its trailers, and its error status, end to end.
    let call = http::Request::post("http://echo.shop/pkg.Svc/5")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\0",
        )))
        .unwrap();
    let a = send_h2(&mut h2, call).await.unwrap();
    assert_eq!(a.status, 200);
    let trailers = a.trailers.expect("trailers through the waypoint");
    assert_eq!(trailers["grpc-status"], "5");
    assert_eq!(trailers["grpc-message"], "from the app");
    let metrics = http_get(SocketAddr::new(IpAddr::V4(wp), 15020), "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("request_protocol=\"grpc\"")
                && l.contains("grpc_response_status=\"5\"")),
        "{metrics}"
    );
    // HTTP/2 extended CONNECT (WebSocket over HTTP/2) passes through.
    let stream = client.connect(&connect("10.96.0.10:80")).await.unwrap();
    let mut h2 = h2_client(stream).await.unwrap();
    let ws = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("http://echo.shop/ws")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    h2.ready().await.unwrap();
    let resp = h2.send_request(ws).await.expect("extended CONNECT");
    assert_eq!(resp.status(), 200);
    let upgraded = hyper::upgrade::on(resp).await.expect("upgraded stream");
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    io.write_all(b"over h2").await.unwrap();
    let mut back = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut back))
        .await
        .expect("echo over the extended CONNECT")
        .unwrap();
    assert_eq!(&back, b"over h2");
    // A port declared TCP is connected before the CONNECT is answered: an
    // L4 denial is a 401 on the CONNECT itself; an allowed one carries
    // bytes (here an HTTP request, forwarded whole as TCP).
    let err = client
        .connect(&connect("10.96.0.12:7000"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let mut tcp = client.connect(&connect("10.96.0.13:7000")).await.unwrap();
    tcp.write_all(b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut raw))
        .await
        .expect("an answer over opaque TCP")
        .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let denied = |log: &str| {
        log.lines().any(|l| {
            l.contains("\"protocol\":\"TCP\"") && l.contains("\"response_flags\":\"DENY\"")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !denied(&std::fs::read_to_string(&access_log).unwrap_or_default()) {
        assert!(
            Instant::now() < deadline,
            "no access-log line for the denial"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A Service not bound to the waypoint is refused.
    let err = client.connect(&connect("10.96.0.11:80")).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    // The config file is followed: once the label is gone, so is the binding.
    let unbound = config().replace(", labels: {istio.io/use-waypoint: waypoint}", "");
    let tmp = dir.path().join("config.yaml.tmp");
    std::fs::write(&tmp, unbound).unwrap();
    std::fs::rename(&tmp, &config_path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.connect(&connect("10.96.0.10:80")).await.is_ok() {
        assert!(Instant::now() < deadline, "the edit was not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drain.signal();
}
