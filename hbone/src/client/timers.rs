//! The pool's clocks, apart from its sockets (DESIGN §3): a connection with
//! no open stream is released after [`DEFAULT_IDLE_TIMEOUT`] (5 min), and
//! each connection sends a keepalive PING every
//! [`DEFAULT_KEEPALIVE_INTERVAL`] (10 s) that must be answered within
//! [`DEFAULT_KEEPALIVE_TIMEOUT`] (20 s). Everything here reads tokio's
//! clock and is generic over the connection's I/O, so the tests
//! (`timers/tests.rs`) run it on the paused clock over in-memory HTTP/2.
//!
//! [`DEFAULT_IDLE_TIMEOUT`]: super::DEFAULT_IDLE_TIMEOUT
//! [`DEFAULT_KEEPALIVE_INTERVAL`]: super::DEFAULT_KEEPALIVE_INTERVAL
//! [`DEFAULT_KEEPALIVE_TIMEOUT`]: super::DEFAULT_KEEPALIVE_TIMEOUT

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// The reaper looks at least this often...
const REAPER_MIN_PERIOD: Duration = Duration::from_millis(100);
/// ...and at most this rarely.
const REAPER_MAX_PERIOD: Duration = Duration::from_secs(30);

/// Whether a connection idle since `idle_since` (`None`: it has open
/// streams) has been idle for `idle_timeout` at `now`. Pure.
pub(super) fn idle_expired(
    idle_since: Option<Instant>,
    now: Instant,
    idle_timeout: Duration,
) -> bool {
    idle_since.is_some_and(|t| now.saturating_duration_since(t) >= idle_timeout)
}

/// How often the reaper looks: a quarter of the idle timeout, within
/// 100 ms and 30 s. An idle connection is released at most this long after
/// it expired (every 30 s for the default 5 minutes). Pure.
pub(super) fn reaper_period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(REAPER_MIN_PERIOD, REAPER_MAX_PERIOD)
}

/// Why a pooled connection's driver stopped.
#[derive(Debug)]
pub(super) enum Ended {
    /// The connection ended: cleanly (`None`), or with this error.
    Closed(Option<h2::Error>),
    /// A PING went unanswered for the keepalive timeout.
    KeepaliveTimedOut,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Closed(None) => write!(f, "closed"),
            Ended::Closed(Some(e)) => write!(f, "closed: {e}"),
            Ended::KeepaliveTimedOut => write!(f, "keepalive timed out"),
        }
    }
}

/// Drives `connection` until it ends or its keepalive fails: a PING every
/// `interval`, each answered within `timeout`.
pub(super) async fn drive<T>(
    mut connection: h2::client::Connection<T, Bytes>,
    interval: Duration,
    timeout: Duration,
) -> Ended
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let ping = connection.ping_pong().expect("ping_pong taken once");
    tokio::select! {
        r = &mut connection => Ended::Closed(r.err()),
        () = keepalive(ping, interval, timeout) => Ended::KeepaliveTimedOut,
    }
}

/// Returns once a PING, sent `interval` after the previous answer, is not
/// answered within `timeout`. Never returns once the connection failed: its
/// error surfaces on the connection future instead.
async fn keepalive(mut ping: h2::PingPong, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) => std::future::pending::<()>().await,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests;
