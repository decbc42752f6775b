//! The waypoint end to end: a client pod → its node's ztunnel → the
//! waypoint pod (its own network namespace, `istio.io/dataplane-mode:
//! none`, its own HBONE) → the destination node's ztunnel → server pods.
//! Real `ztunnel` and `waypoint` processes, real HTTP clients and servers.
//! The scenario is `mesh_tests::waypoint::scenario`; hostile clients are in
//! `waypoint_hostile.rs`.

use std::time::Duration;

use mesh_tests::echo::{round_trip, App};
use mesh_tests::http::{get, h1_client, h2_client, send_h1, send_h2};
use mesh_tests::mesh::{metric_sum, Mesh};
use mesh_tests::require_root;
use mesh_tests::waypoint::scenario::*;
use mesh_tests::waypoint::{Source, WaypointProc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    assert_eq!(
        services,
        ["db", "echo", "private"],
        "only the bound Services"
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

/// A route and an L7 policy, for the xDS test.
const XDS_L7: &str = r#"routes:
  - kind: HTTPRoute
    metadata: {name: echo, namespace: shop}
    spec:
      parentRefs: [{name: echo, port: 80}]
      rules:
        - matches: [{headers: [{name: x-canary, value: "true"}]}]
          backendRefs: [{name: echo-v2, port: 80}]
        - backendRefs: [{name: echo, port: 80}]
policies:
  - name: deny-admin-writes
    namespace: shop
    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
    action: DENY
    rules: [{to: [{operation: {methods: [POST], paths: [/admin]}}]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_xds_the_waypoint_gets_its_own_certificate_and_only_what_it_serves() {
    if !require_root() {
        return;
    }
    let topo = Scenario::topology();
    let mut mesh = Mesh::with_control_plane(&topo, &config(&topo, XDS_L7));
    let token = mesh.add_token(
        WAYPOINT_ID,
        &format!(
            "waypoint-token-{}-0123456789abcdef0123456789",
            std::process::id()
        ),
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

    // Its route and L7 policy came over xDS too: the canary header goes to
    // echo-v2 (a backend Service not bound to it, sent for the route), and
    // POST /admin is denied.
    for _ in 0..5 {
        let mut canary = get("echo.shop", "/api");
        canary
            .headers_mut()
            .insert("x-canary", "true".parse().unwrap());
        let a = send_h1(&mut h1, canary).await.unwrap();
        assert_eq!((a.status, a.body.trim()), (200, "echo-2"));
    }
    let post = http::Request::post("/admin")
        .header("host", "echo.shop")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let a = send_h1(&mut h1, post).await.unwrap();
    assert_eq!(a.status, 403);

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
