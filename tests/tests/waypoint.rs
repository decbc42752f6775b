//! The waypoint end to end: a client pod → its node's ztunnel → the
//! waypoint pod (its own network namespace, `istio.io/dataplane-mode:
//! none`, its own HBONE) → the destination node's ztunnel → server pods.
//! Real `ztunnel` and `waypoint` processes, real HTTP clients and servers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::echo::{round_trip, App};
use mesh_tests::http::{
    get, h1_client, h2_client, raw_exchange, raw_status, send_h1, send_h2, HttpApp,
};
use mesh_tests::mesh::{metric_sum, Mesh};
use mesh_tests::waypoint::{Source, WaypointProc};
use mesh_tests::{require_root, Netns, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
/// The Service behind the waypoint, its opaque TCP one, and one without.
const ECHO_VIP: &str = "10.96.0.10:80";
const DB_VIP: &str = "10.96.0.11:3306";
const DIRECT_VIP: &str = "10.96.0.12:80";
const WAIT: Duration = Duration::from_secs(10);

/// Client and waypoint on node 1; two `echo` endpoints and `db` on node 2.
struct Scenario {
    // Dropped in this order: the waypoint (printing its stderr on failure)
    // before the mesh removes its scratch directory.
    waypoint: WaypointProc,
    mesh: Mesh,
    topo: Topology,
}

fn config(topo: &Topology) -> String {
    let pod = |name: &str, sa: &str, labels: &str| {
        let p = topo.pod(name);
        format!(
            "  - {{name: {name}, namespace: shop, serviceAccount: {sa}, ip: {}, node: node{}, labels: {{{labels}}}}}\n",
            p.ip, p.node
        )
    };
    let pods = pod("client", "client", "app: client")
        + &pod(
            "waypoint",
            "waypoint",
            "istio.io/dataplane-mode: none, gateway.networking.k8s.io/gateway-name: waypoint",
        )
        + &pod("echo-1", "echo", "app: echo")
        + &pod("echo-2", "echo", "app: echo")
        + &pod("db", "db", "app: db");
    format!(
        r#"
trustDomain: cluster.local
nodes:
  - {{name: node1, ip: 10.0.0.1}}
  - {{name: node2, ip: 10.0.0.2}}
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
workloads:
{pods}
services:
  - {{name: echo, namespace: shop, vip: 10.96.0.10, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: echo}}, labels: {{istio.io/use-waypoint: waypoint}}}}
  - {{name: db, namespace: shop, vip: 10.96.0.11, ports: [{{port: 3306}}], selector: {{app: db}}, labels: {{istio.io/use-waypoint: waypoint}}}}
  - {{name: direct, namespace: shop, vip: 10.96.0.12, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: echo}}}}
"#
    )
}

impl Scenario {
    fn start(waypoint_args: &[&str]) -> Scenario {
        let topo = Topology::builder()
            .nodes(2)
            .pod("client", 1)
            .pod("waypoint", 1)
            .pod("echo-1", 2)
            .pod("echo-2", 2)
            .pod("db", 2)
            .build()
            .unwrap();
        let mut mesh = Mesh::new(&topo, &config(&topo));
        mesh.start_all();
        let waypoint = WaypointProc::start(
            &mesh,
            &topo.pod("waypoint").ns,
            "waypoint",
            "shop",
            Source::File,
            waypoint_args,
        );
        Scenario {
            waypoint,
            mesh,
            topo,
        }
    }

    fn ns(&self, pod: &str) -> &Netns {
        &self.topo.pod(pod).ns
    }

    fn echo_apps(&self) -> [HttpApp; 2] {
        let listen = |pod: &str| {
            self.ns(pod)
                .listen(SocketAddr::from(([0, 0, 0, 0], 8080)))
                .expect("app listener")
        };
        [
            HttpApp::serve(listen("echo-1"), "echo-1"),
            HttpApp::serve(listen("echo-2"), "echo-2"),
        ]
    }

    async fn connect(&self, to: &str) -> tokio::net::TcpStream {
        let addr: SocketAddr = to.parse().unwrap();
        tokio::time::timeout(WAIT, self.ns("client").connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect")
    }
}

fn bodies(answers: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.trim().to_owned()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_the_waypoint_is_balanced_per_request() {
    if !require_root() {
        return;
    }
    let s = Scenario::start(&[]);
    let apps = s.echo_apps();

    // HTTP/1.1: twenty requests on one keep-alive connection.
    let mut h1 = h1_client(s.connect(ECHO_VIP).await)
        .await
        .expect("h1 handshake");
    let mut got = Vec::new();
    for i in 0..20 {
        let a = send_h1(&mut h1, get("echo.shop", &format!("/h1/{i}")))
            .await
            .expect("HTTP/1.1 through the waypoint");
        assert_eq!(a.status, 200, "{a:?}");
        got.push(a.body);
    }
    let per = bodies(&got);
    assert_eq!(per.len(), 2, "one connection, both endpoints: {per:?}");

    // HTTP/2: twenty requests multiplexed on one connection.
    let mut h2 = h2_client(s.connect(ECHO_VIP).await)
        .await
        .expect("h2 handshake");
    let sends = (0..20).map(|i| {
        let mut h2 = h2.clone();
        async move { send_h2(&mut h2, get("echo.shop", &format!("/h2/{i}"))).await }
    });
    let answers = futures::future::join_all(sends).await;
    let got: Vec<String> = answers
        .into_iter()
        .map(|a| {
            let a = a.expect("HTTP/2 through the waypoint");
            assert_eq!(a.status, 200, "{a:?}");
            a.body
        })
        .collect();
    let per = bodies(&got);
    assert_eq!(per.len(), 2, "HTTP/2 balanced per request: {per:?}");
    let _ = send_h2(&mut h2, get("echo.shop", "/last")).await;

    // The apps saw every request once, with an id and a trace.
    let seen: Vec<_> = apps.iter().flat_map(|a| a.seen()).collect();
    assert_eq!(
        seen.iter().filter(|r| r.path.starts_with("/h1/")).count(),
        20
    );
    assert_eq!(
        seen.iter().filter(|r| r.path.starts_with("/h2/")).count(),
        20
    );
    for r in &seen {
        assert!(r.headers.contains_key("x-request-id"), "{r:?}");
        assert!(r.headers.contains_key("traceparent"), "{r:?}");
    }
    let h2_seen = seen.iter().find(|r| r.path == "/h2/0").unwrap();
    assert_eq!(h2_seen.version, http::Version::HTTP_2, "HTTP/2 end to end");

    // The destination ztunnel saw the waypoint's identity, not the
    // client's (its connections stay pooled, so ask its metrics).
    assert_destination_saw_the_waypoint(&s, "echo-1");
    assert_destination_saw_the_waypoint(&s, "echo-2");

    // The waypoint logged each request with both identities.
    let ev = s.waypoint.wait_event("GET /h1/3", |e| e["path"] == "/h1/3");
    assert_eq!(ev["method"], "GET");
    assert_eq!(ev["status"], 200);
    assert_eq!(ev["protocol"], "HTTP/1.1");
    assert_eq!(ev["src.identity"], CLIENT_ID);
    assert_eq!(ev["dst.identity"], "spiffe://cluster.local/ns/shop/sa/echo");
    assert_eq!(ev["dst.service"], "echo.shop.svc.cluster.local");
    assert_eq!(ev["attempts"], 1);
    assert!(ev["upstream"].as_str().unwrap().ends_with(":8080"), "{ev}");
    assert!(
        ev["trace_id"].as_str().is_some_and(|t| t.len() == 32),
        "{ev}"
    );
    let ev2 = s.waypoint.wait_event("HTTP/2", |e| e["path"] == "/h2/7");
    assert_eq!(ev2["protocol"], "HTTP/2");

    let metrics = s.waypoint.metrics();
    let ok = metric_sum(
        &metrics,
        "istio_requests_total",
        Some("response_code=\"200\""),
    );
    assert!(ok >= 40, "{metrics}");
    assert!(metrics.contains("reporter=\"waypoint\""));
    assert!(metrics.contains("source_workload=\"client\""));
    assert!(metrics.contains("destination_service=\"echo.shop.svc.cluster.local\""));
    assert!(metrics.contains("istio_request_duration_milliseconds_bucket"));

    let dump = s.waypoint.config_dump();
    assert_eq!(dump["identity"], WAYPOINT_ID);
    let mut services: Vec<&str> = dump["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    services.sort();
    assert_eq!(services, ["db", "echo"], "only the bound Services");
}

/// The destination ztunnel's inbound connections to `workload` came from
/// the waypoint's identity, and none from the client's.
fn assert_destination_saw_the_waypoint(s: &Scenario, workload: &str) {
    let metrics = s.mesh.metrics(2);
    let inbound_to = |principal: &str| {
        metrics.lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\"")
                && l.contains(&format!("destination_workload=\"{workload}\""))
                && l.contains(&format!("source_principal=\"{principal}\""))
        })
    };
    assert!(
        inbound_to("cluster.local/ns/shop/sa/waypoint"),
        "{workload}: {metrics}"
    );
    assert!(
        !inbound_to("cluster.local/ns/shop/sa/client"),
        "{workload}: {metrics}"
    );
}

/// Opens an HBONE CONNECT from the client pod (with the client's own
/// certificate, as its ztunnel would) straight to the waypoint.
fn connect_to_waypoint(s: &Scenario, authority: &str) -> Result<(), String> {
    let ca = hbone::ca::DevCa::load_or_create(s.mesh.ca_dir()).unwrap();
    let via = SocketAddr::new(s.topo.pod("waypoint").ip.into(), 15008);
    let authority: SocketAddr = authority.parse().unwrap();
    s.ns("client")
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let certs = hbone::cert::CertStore::new(std::sync::Arc::new(ca));
                let client = hbone::client::HboneClient::new(certs, Default::default());
                let req = hbone::client::ConnectRequest {
                    source: CLIENT_ID.parse().unwrap(),
                    source_ip: None,
                    expected: vec![WAYPOINT_ID.parse().unwrap()],
                    via,
                    authority,
                    meta: Default::default(),
                };
                client
                    .connect(&req)
                    .await
                    .map(drop)
                    .map_err(|e| mesh_runtime::error_chain(&e))
            })
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_for_what_is_not_bound_to_the_waypoint_is_refused() {
    if !require_root() {
        return;
    }
    let s = Scenario::start(&[]);
    assert_eq!(connect_to_waypoint(&s, ECHO_VIP), Ok(()), "a bound Service");
    let echo_pod = format!("{}:8080", s.topo.pod("echo-1").ip);
    for authority in [
        DIRECT_VIP,
        echo_pod.as_str(),
        "192.0.2.1:443",
        "10.96.0.10:81",
    ] {
        let err = connect_to_waypoint(&s, authority).expect_err(authority);
        assert!(err.contains("400"), "{authority}: {err}");
    }
    let metrics = s.waypoint.metrics();
    assert!(
        metric_sum(
            &metrics,
            "waypoint_connects_refused_total",
            Some("not_bound")
        ) >= 2,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_and_a_server_first_protocol_pass() {
    if !require_root() {
        return;
    }
    let s = Scenario::start(&[]);
    let _db = App::serve_with_greeting(s.ns("db"), 3306, "db-greeting\n");

    // Server first: the greeting arrives though the client says nothing.
    let mut conn = s.connect(DB_VIP).await;
    let mut greeting = [0u8; 12];
    tokio::time::timeout(WAIT, conn.read_exact(&mut greeting))
        .await
        .expect("the greeting of a server-first protocol")
        .unwrap();
    assert_eq!(&greeting, b"db-greeting\n");
    conn.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    conn.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");
    drop(conn);

    // Client first, not HTTP: forwarded whole.
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let back = tokio::time::timeout(WAIT, round_trip(s.connect(DB_VIP).await, &payload))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back[..12], b"db-greeting\n");
    assert_eq!(&back[12..], &payload[..], "byte-exact");

    let ev = s.waypoint.wait_event("opaque TCP", |e| {
        e["protocol"] == "TCP" && e["bytes_recv"] == payload.len() as u64
    });
    assert_eq!(ev["src.identity"], CLIENT_ID);
    assert_eq!(ev["dst.workload"], "shop/db");
    assert_eq!(ev["response_flags"], "-");
    let inbound = s.mesh.wait_event(2, "inbound to db", |e| {
        e["direction"] == "inbound" && e["dst.workload"] == "shop/db"
    });
    assert_eq!(
        inbound["src.identity"], WAYPOINT_ID,
        "opaque TCP is not pooled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_passes() {
    if !require_root() {
        return;
    }
    let s = Scenario::start(&[]);
    let _apps = s.echo_apps();
    let mut conn = s.connect(ECHO_VIP).await;
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nHost: echo.shop\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(WAIT, conn.read_exact(&mut b))
            .await
            .expect("upgrade answer")
            .unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in [
        &b"\x81\x05hello"[..],
        b"GET / HTTP/1.1\n\nnot http any more",
    ] {
        conn.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, conn.read_exact(&mut back))
            .await
            .expect("echo over the upgraded stream")
            .unwrap();
        assert_eq!(back, msg);
    }
    drop(conn);
    let ev = s
        .waypoint
        .wait_event("the upgraded request", |e| e["path"] == "/ws");
    assert_eq!(ev["status"], 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http1_is_refused_before_the_upstream() {
    if !require_root() {
        return;
    }
    let s = Scenario::start(&[]);
    let apps = s.echo_apps();
    let many_headers: String = (0..120).map(|i| format!("X-{i}: v\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "a".repeat(70 * 1024));
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "Content-Length with Transfer-Encoding",
            "POST /smuggle-1 HTTP/1.1\r\nHost: e\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX".into(),
            400,
        ),
        (
            "duplicate Content-Length",
            "POST /smuggle-2 HTTP/1.1\r\nHost: e\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx".into(),
            400,
        ),
        (
            "obs-fold",
            "GET /smuggle-3 HTTP/1.1\r\nHost: e\r\nX-A: 1\r\n folded\r\n\r\n".into(),
            400,
        ),
        (
            "bad chunk size",
            "POST /smuggle-4 HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "bare LF",
            "GET /smuggle-5 HTTP/1.1\nHost: e\n\n".into(),
            400,
        ),
        (
            "two Hosts",
            "GET /smuggle-6 HTTP/1.1\r\nHost: e\r\nHost: f\r\n\r\n".into(),
            400,
        ),
        (
            "too many headers",
            format!("GET /smuggle-7 HTTP/1.1\r\nHost: e\r\n{many_headers}\r\n"),
            431,
        ),
        (
            "headers over the limit",
            format!("GET /smuggle-8 HTTP/1.1\r\nHost: e\r\n{big_header}\r\n"),
            431,
        ),
    ];
    for (what, raw, want) in &cases {
        let resp = raw_exchange(s.connect(ECHO_VIP).await, raw.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(raw_status(&resp), *want, "{what}: {resp}");
        assert!(
            resp.to_ascii_lowercase().contains("connection: close"),
            "{what}: {resp}"
        );
    }
    // A request before the bad one on the same connection is served.
    let resp = raw_exchange(
        s.connect(ECHO_VIP).await,
        b"GET /fine HTTP/1.1\r\nHost: e\r\n\r\nGET /smuggle-9 HTTP/1.1\nHost: e\n\n",
    )
    .await
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("HTTP/1.1 400"), "{resp}");
    for app in &apps {
        for r in app.seen() {
            assert!(
                !r.path.starts_with("/smuggle"),
                "{} reached the upstream",
                r.path
            );
        }
    }
    assert_eq!(apps.iter().map(|a| a.seen_path("/fine")).sum::<usize>(), 1);
    let ev = s
        .waypoint
        .wait_event("a refused request", |e| e["reason"] == "length_and_chunked");
    assert_eq!(ev["status"], 400);
    assert_eq!(ev["src.identity"], CLIENT_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_at_the_header_timeout() {
    if !require_root() {
        return;
    }
    let s = Scenario::start(&["--request-header-timeout", "1s"]);
    let apps = s.echo_apps();
    let mut slow = s.connect(ECHO_VIP).await;
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: e\r\n")
        .await
        .unwrap();
    // Meanwhile a normal client is served.
    let mut h1 = h1_client(s.connect(ECHO_VIP).await).await.unwrap();
    let a = send_h1(&mut h1, get("echo.shop", "/meanwhile"))
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    let mut resp = String::new();
    tokio::time::timeout(WAIT, slow.read_to_string(&mut resp))
        .await
        .expect("the slow client is answered and closed")
        .unwrap();
    assert_eq!(raw_status(&resp), 408, "{resp}");
    assert_eq!(apps.iter().map(|a| a.seen_path("/slow")).sum::<usize>(), 0);
    s.waypoint
        .wait_event("the timeout", |e| e["reason"] == "head_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_xds_the_waypoint_gets_its_own_certificate_and_only_what_it_serves() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("waypoint", 1)
        .pod("echo-1", 2)
        .pod("echo-2", 2)
        .pod("db", 2)
        .build()
        .unwrap();
    let mut mesh = Mesh::with_control_plane(&topo, &config(&topo));
    let token = mesh.add_token(
        WAYPOINT_ID,
        &format!("waypoint-token-{}", std::process::id()),
    );
    mesh.kill_control_plane();
    mesh.start_control_plane();
    mesh.start_all();
    let waypoint = WaypointProc::start(
        &mesh,
        &topo.pod("waypoint").ns,
        "waypoint",
        "shop",
        Source::Xds {
            address: mesh_tests::mesh::CONTROL_PLANE_ADDR,
            token_file: &token,
        },
        &[],
    );
    let s = Scenario {
        waypoint,
        mesh,
        topo,
    };
    let _apps = s.echo_apps();
    let mut h1 = h1_client(s.connect(ECHO_VIP).await)
        .await
        .expect("h1 handshake");
    let mut got = Vec::new();
    for i in 0..10 {
        let a = send_h1(&mut h1, get("echo.shop", &format!("/xds/{i}")))
            .await
            .expect("HTTP/1.1 through the waypoint");
        assert_eq!(a.status, 200, "{a:?}");
        got.push(a.body);
    }
    assert_eq!(bodies(&got).len(), 2, "{got:?}");
    assert_destination_saw_the_waypoint(&s, "echo-1");

    // Its certificate came from the control plane's CA, for its own
    // identity (the config dump names it; the destinations verified it).
    let dump = s.waypoint.config_dump();
    assert_eq!(dump["certificate"]["identity"], WAYPOINT_ID, "{dump:#}");

    // It was sent only what it serves: the Service without a waypoint is
    // not even known to it.
    let err = connect_to_waypoint(&s, DIRECT_VIP).unwrap_err();
    assert!(err.contains("400"), "{err}");
    let metrics = s.waypoint.metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "waypoint_connects_refused_total",
            Some("unknown_destination")
        ),
        1,
        "{metrics}"
    );

    // The control plane gone, the waypoint serves on with what it has.
    let mut s = s;
    s.mesh.kill_control_plane();
    let a = send_h1(&mut h1, get("echo.shop", "/after")).await.unwrap();
    assert_eq!(a.status, 200);
    let mut fresh = h1_client(s.connect(ECHO_VIP).await).await.unwrap();
    let a = send_h1(&mut fresh, get("echo.shop", "/after-2"))
        .await
        .unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_goaway_and_connection_close() {
    if !require_root() {
        return;
    }
    let mut s = Scenario::start(&[]);
    let _apps = s.echo_apps();
    let mut h1 = h1_client(s.connect(ECHO_VIP).await).await.unwrap();
    let mut h2 = h2_client(s.connect(ECHO_VIP).await).await.unwrap();
    // Warm both connections, then start a slow request on each.
    assert_eq!(
        send_h1(&mut h1, get("echo.shop", "/warm"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        send_h2(&mut h2, get("echo.shop", "/warm"))
            .await
            .unwrap()
            .status,
        200
    );
    let slow1 = tokio::spawn(async move {
        let a = send_h1(&mut h1, get("echo.shop", "/delay/1500")).await;
        (a, h1)
    });
    let mut h2_slow = h2.clone();
    let slow2 =
        tokio::spawn(async move { send_h2(&mut h2_slow, get("echo.shop", "/delay/1500")).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.waypoint.signal_term();

    // In-flight requests finish; HTTP/1.1 is told to close.
    let (a1, mut h1) = slow1.await.unwrap();
    let a1 = a1.expect("the in-flight HTTP/1.1 request completes");
    assert_eq!(a1.status, 200);
    assert_eq!(
        a1.headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close"),
        "{:?}",
        a1.headers
    );
    let a2 = slow2
        .await
        .unwrap()
        .expect("the in-flight HTTP/2 request completes");
    assert_eq!(a2.status, 200);
    // HTTP/2 got GOAWAY: no new stream on that connection.
    let after = send_h2(&mut h2, get("echo.shop", "/after-goaway")).await;
    assert!(after.is_err(), "{after:?}");
    let again = send_h1(&mut h1, get("echo.shop", "/after-close")).await;
    assert!(again.is_err(), "the HTTP/1.1 connection closed: {again:?}");
    let status = s.waypoint.wait_exit();
    assert!(status.success(), "{status}");
}

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_flood_is_cut_off() {
    if !require_root() {
        return;
    }
    let s = Scenario::start(&[]);
    let apps = s.echo_apps();
    let mut conn = s.connect(ECHO_VIP).await;
    // The preface, then 500 streams each opened and at once cancelled
    // (CVE-2023-44487): HEADERS (GET / for authority "e") + RST_STREAM.
    let mut flood = mesh_tests::http::H2_PREFACE.to_vec();
    flood.extend(h2_frame(0x4, 0, 0, &[]));
    let block = [0x82, 0x86, 0x84, 0x01, 0x01, b'e'];
    for i in 0..500u32 {
        let id = 2 * i + 1;
        flood.extend(h2_frame(0x1, 0x5, id, &block));
        flood.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    conn.write_all(&flood).await.unwrap();
    // Read frames until GOAWAY.
    let mut buf = Vec::new();
    let goaway = tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = [0u8; 16 * 1024];
            let n = conn.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while buf.len() >= at + 9 {
                let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
                if buf.len() < at + 9 + len {
                    break;
                }
                if buf[at + 3] == 0x7 {
                    let p = &buf[at + 9..at + 9 + len];
                    return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                }
                at += 9 + len;
            }
        }
    })
    .await
    .expect("an answer to the flood");
    assert_eq!(goaway, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM");
    let reached: usize = apps.iter().map(|a| a.seen().len()).sum();
    assert!(
        reached < 500,
        "{reached} of 500 cancelled requests reached the upstream"
    );
    // The waypoint itself is fine.
    let mut h1 = h1_client(s.connect(ECHO_VIP).await).await.unwrap();
    assert_eq!(
        send_h1(&mut h1, get("echo.shop", "/ok"))
            .await
            .unwrap()
            .status,
        200
    );
}
