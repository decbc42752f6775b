//! The waypoint against hostile clients: CONNECTs for what it does not
//! serve, malformed HTTP/1.1, a slowloris, an HTTP/2 rapid-reset flood, an
//! HTTP/2 header block never finished.
//! Each is refused before it reaches an upstream, and the waypoint keeps
//! serving. Same scenario as `waypoint.rs`.

use mesh_tests::http::{get, h1_client, raw_exchange, raw_status, send_h1};
use mesh_tests::mesh::metric_sum;
use mesh_tests::require_root;
use mesh_tests::waypoint::scenario::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    // Each refusal has its access-log line, with the reason.
    let ev = s.waypoint.wait_event("the refused CONNECT", |e| {
        e["method"] == "CONNECT" && e["authority"] == DIRECT_VIP
    });
    assert_eq!(ev["status"], 400, "{ev}");
    assert_eq!(ev["reason"], "not_bound", "{ev}");
    assert_eq!(ev["protocol"], "HBONE", "{ev}");
    assert_eq!(ev["src.identity"], CLIENT_ID, "{ev}");
    let ev = s.waypoint.wait_event("the unknown destination", |e| {
        e["method"] == "CONNECT" && e["authority"] == "192.0.2.1:443"
    });
    assert_eq!(ev["reason"], "unknown_destination", "{ev}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_header_block_never_finished_is_cut_at_the_header_timeout() {
    if !require_root() {
        return;
    }
    let s = Scenario::start(&["--request-header-timeout", "1s"]);
    let apps = s.echo_apps();
    let mut conn = s.connect(ECHO_VIP).await;
    // The preface, SETTINGS, then HEADERS for stream 1 without
    // END_HEADERS: the CONTINUATION that must follow never comes.
    let mut stalled = mesh_tests::http::H2_PREFACE.to_vec();
    stalled.extend(h2_frame(0x4, 0, 0, &[]));
    stalled.extend(h2_frame(0x1, 0x1, 1, &[0x82, 0x86, 0x84]));
    conn.write_all(&stalled).await.unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        let mut sink = Vec::new();
        let _ = conn.read_to_end(&mut sink).await;
    })
    .await;
    assert!(
        closed.is_ok(),
        "the unfinished header block held the connection"
    );
    assert_eq!(apps.iter().map(|a| a.seen().len()).sum::<usize>(), 0);
    // The waypoint serves on.
    let mut h1 = h1_client(s.connect(ECHO_VIP).await).await.unwrap();
    let a = send_h1(&mut h1, get("echo.shop", "/after")).await.unwrap();
    assert_eq!(a.status, 200);
    let metrics = s.waypoint.metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "waypoint_connects_refused_total",
            Some("h2_header_timeout")
        ),
        1,
        "{metrics}"
    );
}
