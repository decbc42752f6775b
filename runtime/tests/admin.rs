//! The admin server (ztunnel's 15000, 15020, 15021 and the control plane's
//! 15014) under floods, over real sockets on loopback: slowloris and silent
//! connections from one source, connections past the caps, and idle
//! keep-alive connections. Flooders connect from 127.0.0.2 and up, the real
//! client (a kubelet probe, a Prometheus scrape) from 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hbone::drain::Drain;
use hbone::limit::{ConnLimiter, LimitReason};
use http::StatusCode;
use mesh_runtime::admin::{
    text, AdminServer, Limits, Refusals, RefusedLabels, Route, REFUSAL_REASONS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

/// Long enough never to fire during a test.
const NEVER: Duration = Duration::from_secs(600);

struct Server {
    addr: SocketAddr,
    limiter: Arc<ConnLimiter>,
    drain: Drain,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.drain.signal();
    }
}

async fn start(limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let route: Route = Arc::new(|_m, path| match path {
        "/healthz/ready" => text(StatusCode::OK, "ready\n"),
        "/metrics" => text(StatusCode::OK, "ztunnel_up 1\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    });
    let server = AdminServer::new(route, limits);
    let limiter = server.limiter();
    let drain = Drain::new();
    let d = drain.clone();
    tokio::spawn(async move { server.serve(listener, d).await });
    Server {
        addr,
        limiter,
        drain,
    }
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A connection to `to` from `127.0.0.<from>`.
async fn connect_from(from: u8, to: SocketAddr) -> TcpStream {
    try_connect_from(from, to).await.unwrap()
}

/// A connection to `to` from `127.0.0.<from>`; a refused one may already
/// be reset when `connect` returns.
async fn try_connect_from(from: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(loopback(from), 0))?;
    s.connect(to).await
}

/// Poll `cond` every 10 ms for up to 5 s.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Reads one response (head and `content-length` body) off `s`; returns
/// its status line.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await.expect("response");
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return head.lines().next().unwrap_or("").to_owned();
            }
        }
    }
}

/// A whole GET from 127.0.0.1 on a fresh connection, bounded: the status
/// line.
async fn get(addr: SocketAddr, path: &str) -> String {
    let exchange = async {
        let mut s = connect_from(1, addr).await;
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_response(&mut s).await
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} was not answered during the flood"))
}

/// Whether the server closed `s` (EOF or reset) within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn slowloris_and_silent_floods_leave_probes_and_scrapes_answered() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: NEVER,
        max_connections: 64,
        max_per_source: 16,
        ..Limits::default()
    };
    let server = start(limits).await;
    let addr = server.addr;
    // 100 slowloris connections (half a request line, a byte every 100 ms)
    // and 100 silent ones, from 127.0.0.2 and 127.0.0.3.
    let mut flood = Vec::new();
    for i in 0..200 {
        let from = 2 + (i % 2) as u8;
        let start = Instant::now();
        let Ok(mut s) = try_connect_from(from, addr).await else {
            continue; // refused before connect returned
        };
        let slow = i < 100;
        flood.push(tokio::spawn(async move {
            if slow {
                let _ = s.write_all(b"GET /healthz/re").await;
                let trickle = async {
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if s.write_all(b"a").await.is_err() {
                            return;
                        }
                    }
                };
                // Writes fail once the server reset the connection.
                let _ = tokio::time::timeout(Duration::from_secs(10), trickle).await;
                return start.elapsed();
            }
            assert!(closed_within(&mut s, Duration::from_secs(10)).await);
            start.elapsed()
        }));
    }
    // Probes and scrapes keep being answered, and the server never holds
    // more than its caps.
    for _ in 0..20 {
        assert!(get(addr, "/healthz/ready").await.contains("200 OK"));
        assert!(get(addr, "/metrics").await.contains("200 OK"));
        assert!(server.limiter.open() <= limits.max_connections);
        for from in [2, 3] {
            assert!(server.limiter.open_from(loopback(from)) <= limits.max_per_source);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Every flooder was refused or timed out, none outlived the header
    // read timeout by much.
    for f in flood {
        let held = f.await.unwrap();
        assert!(
            held < Duration::from_secs(5),
            "a flood connection held {held:?}"
        );
    }
    assert!(server.limiter.refused_total(LimitReason::SourceLimit) > 0);
    assert!(eventually(|| server.limiter.open() == 0).await);
}

#[tokio::test]
async fn connections_beyond_the_caps_are_reset_at_once() {
    let limits = Limits {
        header_read_timeout: NEVER,
        idle_timeout: NEVER,
        max_connections: 4,
        max_per_source: 2,
        ..Limits::default()
    };
    let server = start(limits).await;
    let addr = server.addr;
    let mut held = Vec::new();
    for from in [2, 2] {
        held.push(connect_from(from, addr).await);
    }
    assert!(eventually(|| server.limiter.open() == 2).await);
    // A third from the same source: reset at once, not left to time out.
    if let Ok(mut third) = try_connect_from(2, addr).await {
        assert!(closed_within(&mut third, Duration::from_secs(2)).await);
    }
    assert_eq!(server.limiter.refused_total(LimitReason::SourceLimit), 1);
    // Another source fills the listener; a fifth connection is refused.
    for from in [3, 3] {
        held.push(connect_from(from, addr).await);
    }
    assert!(eventually(|| server.limiter.open() == 4).await);
    if let Ok(mut fifth) = try_connect_from(4, addr).await {
        assert!(closed_within(&mut fifth, Duration::from_secs(2)).await);
    }
    assert_eq!(server.limiter.refused_total(LimitReason::GlobalLimit), 1);
    // Closing one frees a slot for a real request.
    held.pop();
    assert!(eventually(|| server.limiter.open() == 3).await);
    assert!(get(addr, "/healthz/ready").await.contains("200 OK"));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let limits = Limits {
        header_read_timeout: NEVER,
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = start(limits).await;
    let mut s = connect_from(1, server.addr).await;
    for _ in 0..2 {
        // Keep-alive: two requests on one connection.
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut s).await.contains("200 OK"));
    }
    let start = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "an idle keep-alive connection stays open"
    );
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert!(eventually(|| server.limiter.open() == 0).await);
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let server = start(Limits::default()).await;
    let mut s = connect_from(1, server.addr).await;
    let big = format!(
        "GET /metrics HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(!out.contains("200 OK"), "{out}");
}

#[tokio::test]
async fn refusals_are_counted_by_port_and_reason() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: NEVER,
        max_connections: 4,
        max_per_source: 1,
        ..Limits::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let route: Route = Arc::new(|_m, _path| text(StatusCode::OK, "ok\n"));
    let refusals = Refusals::default();
    let server = AdminServer::new(route, limits).counted("metrics", &refusals);
    let limiter = server.limiter();
    let drain = Drain::new();
    let d = drain.clone();
    tokio::spawn(async move { server.serve(listener, d).await });
    let count = |reason: &'static str| {
        refusals
            .get_or_create(&RefusedLabels {
                port: "metrics",
                reason,
            })
            .get()
    };
    for reason in REFUSAL_REASONS {
        assert_eq!(count(reason), 0, "{reason} exists at 0");
    }
    // A silent connection is closed at the header deadline, and counted.
    let mut silent = connect_from(2, addr).await;
    assert!(eventually(|| limiter.open() == 1).await);
    // A second from the same source is over its cap.
    if let Ok(mut second) = try_connect_from(2, addr).await {
        assert!(closed_within(&mut second, Duration::from_secs(2)).await);
    }
    assert!(eventually(|| count("source_limit") == 1).await);
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
    assert!(eventually(|| count("header_read_timeout") == 1).await);
    assert_eq!(count("global_limit"), 0);
    // A prompt request is no refusal.
    assert!(get(addr, "/metrics").await.contains("200 OK"));
    assert_eq!(count("header_read_timeout"), 1);
    drain.signal();
}
