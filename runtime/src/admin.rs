//! Admin (15000, localhost only), metrics (15020) and readiness (15021).
//!
//! A tiny HTTP/1.1 server on hyper; each port serves a fixed set of paths
//! from a routing function, so the handlers stay plain functions.
//!
//! Pods can reach a node's 15020 and 15021 directly, so these ports must
//! never share fate with the data path, whoever connects ([`Limits`]):
//! - at most [`Limits::max_connections`] open, and at most
//!   [`Limits::max_per_source`] from one source IP (more are reset at
//!   accept, counted and warned about: [`hbone::limit`]);
//! - a request head must arrive whole within
//!   [`Limits::header_read_timeout`] of the server starting to wait for it
//!   (a new connection, or the first byte of the next request on a
//!   keep-alive one): slowloris and silent connections are closed;
//! - a connection on which no byte moved either way for
//!   [`Limits::idle_timeout`] is closed (an idle keep-alive connection, or a
//!   client that stopped reading its response);
//! - a request head is at most [`Limits::max_header_bytes`].
//!
//! The timers are decided by [`expiry`] (pure) from the connection's
//! [`Activity`]. With [`AdminServer::counted`], refusals at the caps and
//! connections closed for a request head not in time are counted in a
//! metric family ([`Refusals`]) by port and reason.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hbone::limit::{ConnLimiter, ConnPermit};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use hbone::drain::Drain;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Labels of the refusals of an admin port: which port (a fixed name,
/// `admin`, `metrics`, `readiness`) and one of [`REFUSAL_REASONS`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub port: &'static str,
    pub reason: &'static str,
}

/// Connections an admin port refused (reset at accept at the caps), or
/// closed because a request head did not arrive in time.
pub type Refusals = Family<RefusedLabels, Counter>;

/// `reason` values of [`Refusals`]: `global_limit` and `source_limit`
/// ([`hbone::limit`]), and `header_read_timeout`.
pub const REFUSAL_REASONS: [&str; 3] = ["global_limit", "source_limit", HEADER_READ_TIMEOUT];
const HEADER_READ_TIMEOUT: &str = "header_read_timeout";

pub type Reply = (StatusCode, &'static str, String);
pub type Route = Arc<dyn Fn(&Method, &str) -> Reply + Send + Sync>;

pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    (status, "text/plain; charset=utf-8", body.into())
}

pub fn json(body: String) -> Reply {
    (StatusCode::OK, "application/json", body)
}

/// A request head must arrive within this long.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no byte moving either way is closed after this long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections one admin port holds at once. Probes and scrapes need a
/// handful; the admin runtime is shared with xDS and rotation.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Connections from one source IP at once.
pub const DEFAULT_MAX_PER_SOURCE: usize = 32;
/// The largest request head (hyper's read buffer; it answers 431 past it).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

/// What one admin port tolerates from its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_per_source: usize,
    /// At least 8 KiB (hyper's minimum).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_source: DEFAULT_MAX_PER_SOURCE,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

impl Limits {
    fn caps(&self) -> hbone::limit::Limits {
        hbone::limit::Limits {
            max_connections: self.max_connections,
            max_per_source: self.max_per_source,
        }
    }
}

/// What is known of a connection's progress, for its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// When a byte last moved either way (or the connection was accepted).
    pub last_io: Instant,
    /// Since when the server has been waiting for a request head to
    /// complete; `None` while a request is being answered and until the
    /// next request's first byte.
    pub awaiting_head: Option<Instant>,
}

/// Why a connection's timer closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    HeaderRead,
    Idle,
}

/// Whether a connection in state `a` has expired at `now`, and otherwise
/// when to look again. Pure.
pub fn expiry(a: &Activity, limits: &Limits, now: Instant) -> Result<Instant, Expiry> {
    let header_deadline = a.awaiting_head.map(|t| t + limits.header_read_timeout);
    let idle_deadline = a.last_io + limits.idle_timeout;
    if header_deadline.is_some_and(|d| now >= d) {
        return Err(Expiry::HeaderRead);
    }
    if now >= idle_deadline {
        return Err(Expiry::Idle);
    }
    Ok(header_deadline.map_or(idle_deadline, |d| d.min(idle_deadline)))
}

/// Serve `route` on `listener` until drained, with the default [`Limits`].
pub async fn serve(listener: TcpListener, route: Route, drain: Drain) {
    AdminServer::new(route, Limits::default())
        .serve(listener, drain)
        .await
}

/// [`serve`], counting refusals into `refusals` under `port`.
pub async fn serve_counted(
    listener: TcpListener,
    route: Route,
    drain: Drain,
    port: &'static str,
    refusals: &Refusals,
) {
    AdminServer::new(route, Limits::default())
        .counted(port, refusals)
        .serve(listener, drain)
        .await
}

/// One admin port: its routes, limits and open connections.
pub struct AdminServer {
    route: Route,
    limits: Limits,
    limiter: Arc<ConnLimiter>,
    /// Where refusals are counted ([`AdminServer::counted`]).
    refusals: Option<(&'static str, Refusals)>,
}

impl AdminServer {
    pub fn new(route: Route, limits: Limits) -> Self {
        AdminServer {
            route,
            limits,
            limiter: ConnLimiter::new("admin", limits.caps()),
            refusals: None,
        }
    }

    /// Counts refusals into `refusals` with label `port`; every reason's
    /// series exists from the start (at 0).
    pub fn counted(mut self, port: &'static str, refusals: &Refusals) -> Self {
        for reason in REFUSAL_REASONS {
            let _ = refusals.get_or_create(&RefusedLabels { port, reason });
        }
        self.refusals = Some((port, refusals.clone()));
        self
    }

    fn refusal_counter(&self, reason: &'static str) -> Option<Counter> {
        self.refusals
            .as_ref()
            .map(|(port, f)| f.get_or_create(&RefusedLabels { port, reason }).clone())
    }

    /// The open-connection counts and refusals, for tests and metrics.
    pub fn limiter(&self) -> Arc<ConnLimiter> {
        self.limiter.clone()
    }

    /// Serve until drained. Connections already open finish on their own
    /// timers.
    pub async fn serve(&self, listener: TcpListener, drain: Drain) {
        let mut watch = drain.watch();
        loop {
            let (sock, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = watch.signaled() => return,
            };
            let permit = match self.limiter.try_acquire(peer.ip()) {
                Ok(p) => p,
                Err(reason) => {
                    if let Some(c) = self.refusal_counter(reason.as_str()) {
                        c.inc();
                    }
                    hbone::limit::refuse(sock);
                    continue;
                }
            };
            let (route, limits) = (self.route.clone(), self.limits);
            let late_heads = self.refusal_counter(HEADER_READ_TIMEOUT);
            tokio::spawn(connection(sock, peer, route, limits, permit, late_heads));
        }
    }
}

async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    route: Route,
    limits: Limits,
    _permit: ConnPermit,
    late_heads: Option<Counter>,
) {
    let now = Instant::now();
    let activity = Arc::new(Mutex::new(Activity {
        last_io: now,
        awaiting_head: Some(now),
    }));
    let io = Tracked {
        inner: sock,
        activity: activity.clone(),
    };
    let heads = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        heads.lock().expect("activity poisoned").awaiting_head = None;
        let (status, ctype, body) = route(req.method(), req.uri().path());
        let resp = Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("valid response");
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut next = now;
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "admin connection error");
                }
                return;
            }
            () = tokio::time::sleep_until(next) => {
                let a = *activity.lock().expect("activity poisoned");
                match expiry(&a, &limits, Instant::now()) {
                    Ok(at) => next = at,
                    Err(why) => {
                        tracing::debug!(%peer, ?why, "admin connection timed out");
                        if let (Expiry::HeaderRead, Some(c)) = (why, &late_heads) {
                            c.inc();
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// The socket, noting when bytes move and when a request head starts.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Mutex<Activity>>,
}

impl Tracked {
    fn moved(&self, read: bool) {
        let now = Instant::now();
        let mut a = self.activity.lock().expect("activity poisoned");
        a.last_io = now;
        if read && a.awaiting_head.is_none() {
            a.awaiting_head = Some(now);
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved(true);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved(false);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_routes_over_real_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let route: Route = Arc::new(|_m, path| match path {
            "/healthz/ready" => text(StatusCode::OK, "ready"),
            _ => text(StatusCode::NOT_FOUND, "no"),
        });
        let drain = Drain::new();
        tokio::spawn(serve(listener, route, drain.clone()));
        for (path, want) in [("/healthz/ready", "200 OK"), ("/nope", "404 Not Found")] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {want}")), "{out}");
        }
        drain.signal();
    }

    #[test]
    fn expiry_table() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let limits = Limits {
            header_read_timeout: s(10),
            idle_timeout: s(60),
            ..Limits::default()
        };
        let waiting = |since| Activity {
            last_io: t0,
            awaiting_head: Some(since),
        };
        let answered = Activity {
            last_io: t0,
            awaiting_head: None,
        };
        let cases = [
            (
                "fresh: look again at the header deadline",
                waiting(t0),
                t0,
                Ok(t0 + s(10)),
            ),
            (
                "head incomplete after 10 s",
                waiting(t0),
                t0 + s(10),
                Err(Expiry::HeaderRead),
            ),
            (
                "bytes trickling in do not extend the head",
                Activity {
                    last_io: t0 + s(9),
                    ..waiting(t0)
                },
                t0 + s(10),
                Err(Expiry::HeaderRead),
            ),
            (
                "answered: only the idle timer runs",
                answered,
                t0 + s(30),
                Ok(t0 + s(60)),
            ),
            ("idle keep-alive", answered, t0 + s(60), Err(Expiry::Idle)),
            (
                "a write moved bytes: idle restarts",
                Activity {
                    last_io: t0 + s(50),
                    ..answered
                },
                t0 + s(60),
                Ok(t0 + s(110)),
            ),
        ];
        for (what, a, now, want) in cases {
            assert_eq!(expiry(&a, &limits, now), want, "{what}");
        }
    }
}
