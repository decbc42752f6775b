//! The pool's clocks on tokio's paused clock: real HTTP/2 (h2 on both ends)
//! over an in-memory pipe, so virtual time advances only when every task
//! waits on a timer, and each deadline lands on an exact instant.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::DuplexStream;
use tokio::time::{sleep, sleep_until, Instant};

use super::super::{ClientConfig, HboneClient, PoolKey, PooledConn};
use super::*;
use crate::ca::DevCa;
use crate::cert::CertStore;
use crate::client::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL as INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT as TIMEOUT,
};
use crate::SpiffeId;

#[allow(non_snake_case, reason = "S(30) reads as 30 s in the tables")]
fn S(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

type Client = (
    h2::client::SendRequest<Bytes>,
    h2::client::Connection<DuplexStream, Bytes>,
);

/// An HTTP/2 client connection and the server end of it, handshaken over
/// an in-memory pipe. The server answers PINGs only while it is polled.
async fn h2_pair() -> (Client, h2::server::Connection<DuplexStream, Bytes>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let client = async { h2::client::handshake(c).await.expect("client handshake") };
    let server = async { h2::server::handshake(s).await.expect("server handshake") };
    tokio::join!(client, server)
}

/// Serves `server` (answering PINGs) until `until`, then holds it open
/// without reading: a peer that went silent.
fn serve_until(mut server: h2::server::Connection<DuplexStream, Bytes>, until: Instant) {
    tokio::spawn(async move {
        tokio::select! {
            () = async { while let Some(Ok(_)) = server.accept().await {} } => {}
            () = sleep_until(until) => {}
        }
        // `server` stays open, unread, as long as the test runs.
        std::future::pending::<()>().await;
    });
}

#[test]
fn idle_expiry_and_reaper_period_table() {
    let t0 = Instant::now();
    let idle = DEFAULT_IDLE_TIMEOUT;
    let cases = [
        ("streams open", None, t0 + S(3600), false),
        (
            "idle just short of 5 min",
            Some(t0),
            t0 + idle - Duration::from_millis(1),
            false,
        ),
        ("idle exactly 5 min", Some(t0), t0 + idle, true),
        ("idle longer", Some(t0), t0 + S(3600), true),
        (
            "last use after now (clock raced)",
            Some(t0 + S(1)),
            t0,
            false,
        ),
    ];
    for (what, since, now, want) in cases {
        assert_eq!(idle_expired(since, now, idle), want, "{what}");
    }
    assert_eq!(reaper_period(idle), S(30), "5 min: every 30 s");
    assert_eq!(reaper_period(S(60)), S(15));
    assert_eq!(
        reaper_period(Duration::from_millis(100)),
        Duration::from_millis(100)
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_fails_the_keepalive_after_10s_plus_20s() {
    let ((_send, conn), server) = h2_pair().await;
    // Handshaken, then never polled again: no PING is answered.
    let _held = server;
    let t0 = Instant::now();
    let ended = drive(conn, INTERVAL, TIMEOUT).await;
    assert!(matches!(ended, Ended::KeepaliveTimedOut), "{ended}");
    assert_eq!(t0.elapsed(), INTERVAL + TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn answered_pings_hold_the_connection_until_one_goes_unanswered() {
    let ((_send, conn), server) = h2_pair().await;
    let t0 = Instant::now();
    // Answered for ten minutes and five seconds, then silent.
    serve_until(server, t0 + S(605));
    let ended = drive(conn, INTERVAL, TIMEOUT).await;
    assert!(matches!(ended, Ended::KeepaliveTimedOut), "{ended}");
    // PINGs at 10 s, 20 s, ... 600 s were answered; the one at 610 s was
    // not, and failed 20 s later. Sent every 15 s instead, the last
    // answered one would be at 600 s too, but the failure at 635 s.
    assert_eq!(t0.elapsed(), S(630));
}

#[tokio::test(start_paused = true)]
async fn a_closed_peer_ends_the_connection_at_once_not_by_keepalive() {
    let ((_send, conn), server) = h2_pair().await;
    let t0 = Instant::now();
    drop(server);
    let ended = drive(conn, INTERVAL, TIMEOUT).await;
    assert!(matches!(ended, Ended::Closed(_)), "{ended}");
    assert!(t0.elapsed() < INTERVAL, "{:?}", t0.elapsed());
}

/// The reaper that [`HboneClient::new`] spawns, with the default 5 minute
/// idle timeout, over one pooled connection (in-memory HTTP/2 in place of
/// a dialled one).
#[tokio::test(start_paused = true)]
async fn the_reaper_releases_a_connection_5_minutes_after_its_last_stream() {
    let certs = CertStore::new(Arc::new(DevCa::generate().unwrap()));
    let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/client".parse().unwrap();
    let cert = certs.get(&id).await.unwrap();
    let client = HboneClient::new(certs, ClientConfig::default());
    // The reaper looks now and every 30 s from here.
    let start = Instant::now();
    let ((send, _conn), _server) = h2_pair().await;
    let conn = Arc::new(PooledConn {
        send,
        tls_error: Arc::default(),
        active: AtomicUsize::new(0),
        max: 100,
        dead: AtomicBool::new(false),
        cert_generation: cert.generation(),
        last_used: Mutex::new(Instant::now()),
    });
    let key = PoolKey {
        source: id,
        source_ip: None,
        expected: Vec::new(),
        via: SocketAddr::from(([127, 0, 0, 3], crate::HBONE_PORT)),
    };
    let stream = conn.try_reserve().expect("room");
    client
        .key_pool(&key)
        .conns
        .lock()
        .unwrap()
        .push(conn.clone());
    let pooled = || client.stats().connections;

    // A connection with an open stream is never idle.
    sleep(S(3600)).await;
    assert_eq!(pooled(), 1, "released while a stream was open");
    // The last stream closes 10 s past a reaper tick...
    sleep(S(10)).await;
    drop(stream);
    let closed = Instant::now();
    assert_eq!(closed - start, S(3610));
    // ...so the tick 5 min later (4:50 idle) keeps it, and the next
    // (5:20 idle) releases it.
    sleep_until(closed + DEFAULT_IDLE_TIMEOUT + S(19)).await;
    assert_eq!(pooled(), 1, "released before 5 minutes idle");
    sleep_until(closed + DEFAULT_IDLE_TIMEOUT + S(21)).await;
    assert_eq!(pooled(), 0, "not released after 5 minutes idle");
}
