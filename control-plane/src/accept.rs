//! The front door of the TLS port (15012): what a connection must get
//! through before gRPC sees it.
//!
//! ```text
//!  listener ──accept (EMFILE/ENFILE: back off)──► global and per-source caps (hbone::limit)
//!    ──► [handshake task: TLS + the HTTP/2 preface, one deadline] ──► tonic
//! ```
//!
//! - At most [`Limits::max_connections`] connections are open at once
//!   (handshaking or serving), and one source IP may hold at most
//!   [`Limits::max_connections_per_ip`]: a connection past either is reset
//!   at once and counted ([`hbone::limit`], as on 15008 and the admin
//!   ports). By default the global cap stays below the open-file limit, so
//!   `accept` does not run out of descriptors in the first place.
//! - The TLS handshake and the client's HTTP/2 preface share one deadline,
//!   [`Limits::handshake_timeout`]: a connection that says nothing, or
//!   drips its hello, costs a slot for that long and no CPU.
//! - A failing `accept` (out of descriptors or memory, or anything
//!   unexpected) backs off from [`BACKOFF_MIN`] to [`BACKOFF_MAX`] instead
//!   of retrying at once; the pending connection stays in the backlog and
//!   is taken once descriptors are free again. Errors that belong to one
//!   connection (it was reset before we took it) are skipped at once.
//!
//! Every refusal is counted in the metrics ([`crate::metrics::Metrics`]).
//! HTTP/2 keepalive (pings, dead peers dropped) is tonic's, set in
//! [`crate::serve`].

#[cfg(test)]
mod tests;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hbone::limit::{ConnLimiter, ConnPermit};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::{Metrics, ReasonLabel};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// TLS handshake plus the HTTP/2 preface.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once, unless the open-file limit is lower.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Connections one source IP may hold: a node's ztunnel needs two (xDS
/// and the CA).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// Descriptors the default cap leaves for everything else (listeners,
/// files, the runtime).
pub const RESERVED_FDS: u64 = 128;
pub const BACKOFF_MIN: Duration = Duration::from_millis(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Handshaken connections waiting for the gRPC server to take them.
const HANDOFF_QUEUE: usize = 64;

/// The limits of the TLS port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub handshake_timeout: Duration,
}

/// The connection cap: `configured` as given, or the default kept under
/// the open-file limit `fd_soft_limit` (with [`RESERVED_FDS`] left over,
/// but never less than half the limit).
pub fn connection_cap(configured: Option<usize>, fd_soft_limit: Option<u64>) -> usize {
    if let Some(n) = configured {
        return n.max(1);
    }
    let by_fds = fd_soft_limit.map_or(u64::MAX, |l| l.saturating_sub(RESERVED_FDS).max(l / 2));
    let by_fds = usize::try_from(by_fds).unwrap_or(usize::MAX);
    DEFAULT_MAX_CONNECTIONS.min(by_fds).max(1)
}

/// What to do after `accept` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptAction {
    /// The error belonged to one connection: accept the next at once.
    Next,
    /// The process or system is short of something: wait before retrying.
    BackOff(&'static str),
}

/// Pure: how the accept loop reacts to `err`.
pub fn accept_action(err: &io::Error) -> AcceptAction {
    match err.raw_os_error() {
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EPERM | libc::EINTR) => {
            AcceptAction::Next
        }
        Some(libc::EMFILE | libc::ENFILE) => AcceptAction::BackOff("fd_limit"),
        Some(libc::ENOBUFS | libc::ENOMEM) => AcceptAction::BackOff("memory"),
        _ => AcceptAction::BackOff("other"),
    }
}

/// Doubling delays from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], reset by a
/// successful accept.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay after one more failure.
    pub fn failed(&mut self) -> Duration {
        let d = BACKOFF_MIN.saturating_mul(1u32 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        d.min(BACKOFF_MAX)
    }

    /// Whether the last accept failed.
    pub fn failing(&self) -> bool {
        self.failures > 0
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What a connection holds while it is open: its place under the caps,
/// and its count in the `connections` gauge.
struct Held {
    _permit: ConnPermit,
    gauge: Gauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A connection past TLS and the preface, handed to tonic. The preface it
/// read is replayed to the HTTP/2 server first.
pub struct Conn {
    io: TlsStream<TcpStream>,
    replay: usize,
    info: TcpConnectInfo,
    _held: Held,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replay < HTTP2_PREFACE.len() {
            let rest = &HTTP2_PREFACE[self.replay..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replay += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Why a connection was closed before serving. `reason()` is the label.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("handshake not finished within the deadline")]
    Timeout,
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
    #[error("no HTTP/2 preface")]
    Preface,
}

impl Refused {
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Timeout => "handshake_timeout",
            Refused::Tls(_) => "tls_error",
            Refused::Preface => "bad_preface",
        }
    }
}

/// TLS, then the client's preface, under one deadline.
pub async fn handshake(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    deadline: Duration,
) -> Result<TlsStream<TcpStream>, Refused> {
    let both = async {
        let mut tls = acceptor.accept(stream).await.map_err(Refused::Tls)?;
        let mut preface = [0u8; HTTP2_PREFACE.len()];
        tls.read_exact(&mut preface)
            .await
            .map_err(|_| Refused::Preface)?;
        if &preface != HTTP2_PREFACE {
            return Err(Refused::Preface);
        }
        Ok(tls)
    };
    tokio::time::timeout(deadline, both)
        .await
        .map_err(|_| Refused::Timeout)?
}

/// Starts accepting on `listener`. The stream yields each connection once
/// it is past the handshake; the accept loop ends when the stream is
/// dropped.
pub fn spawn(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    metrics: Arc<Metrics>,
) -> (ReceiverStream<io::Result<Conn>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    let task = tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(tls),
        limits,
        metrics,
        tx,
    ));
    (ReceiverStream::new(rx), task)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Limits,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let limiter = ConnLimiter::new(
        "xds",
        hbone::limit::Limits {
            max_connections: limits.max_connections,
            max_per_source: limits.max_connections_per_ip,
        },
    );
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = tx.closed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                if backoff.failing() {
                    tracing::info!("accepting connections again");
                }
                backoff.reset();
                a
            }
            Err(e) => match accept_action(&e) {
                AcceptAction::Next => continue,
                AcceptAction::BackOff(reason) => {
                    metrics
                        .accept_errors
                        .get_or_create(&ReasonLabel { reason })
                        .inc();
                    if !backoff.failing() {
                        tracing::warn!(error = %e, reason, "accept failed; backing off until it succeeds");
                    }
                    tokio::time::sleep(backoff.failed()).await;
                    continue;
                }
            },
        };
        let permit = match limiter.try_acquire(peer.ip()) {
            Ok(p) => p,
            Err(reason) => {
                hbone::limit::refuse(stream);
                refused(&metrics, reason.as_str());
                continue;
            }
        };
        metrics.connections.inc();
        let held = Held {
            _permit: permit,
            gauge: metrics.connections.clone(),
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let acceptor = acceptor.clone();
        let (tx, metrics) = (tx.clone(), metrics.clone());
        tokio::spawn(async move {
            match handshake(stream, &acceptor, limits.handshake_timeout).await {
                Ok(io) => {
                    let conn = Conn {
                        io,
                        replay: 0,
                        info: TcpConnectInfo {
                            local_addr: local,
                            remote_addr: Some(peer),
                        },
                        _held: held,
                    };
                    let _ = tx.send(Ok(conn)).await;
                }
                Err(e) => {
                    refused(&metrics, e.reason());
                    tracing::debug!(%peer, error = %e, "connection closed before serving");
                }
            }
        });
    }
}

fn refused(metrics: &Metrics, reason: &'static str) {
    metrics
        .connections_refused
        .get_or_create(&ReasonLabel { reason })
        .inc();
}
