//! The HBONE server: mutual TLS, HTTP/2, and one CONNECT stream per tunnel.
//!
//! The server owns the protocol: handshakes with timeouts, bounded headers
//! and streams, rapid-reset limits, malformed requests answered 400. Each
//! well-formed CONNECT goes to a caller-supplied [`Handler`] as an
//! [`InboundRequest`], which decides (policy, upstream connect) and answers
//! with [`InboundRequest::accept`] (200) or [`InboundRequest::reject`]. A
//! request dropped unanswered gets 503.
//!
//! What one peer can hold is bounded: at most
//! [`ServerConfig::max_connections`] connections, and
//! [`ServerConfig::max_connections_per_source`] from one source IP (more
//! are reset at accept and reported to [`Handler::connection_refused`]); a
//! connection with no stream for [`ServerConfig::idle_timeout`] after its
//! handshake is sent a GOAWAY and closed; and its buffers are h2's windows
//! and caps ([`MAX_BUFFERED_PER_CONNECTION`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use mesh_model::ResponseFlag;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::cert::CertError;
use crate::drain::{Drain, Watch};
use crate::headers::{parse_authority, AuthorityError, ConnectMeta};
use crate::identity::SpiffeId;
use crate::limit::{ConnLimiter, ConnPermit, LimitReason, Limits};
use crate::stream::H2Stream;
use crate::tls::{self, PeerError, TlsConfigError};
use crate::{CONNECTION_WINDOW, MAX_FRAME_SIZE, SERVER_MAX_STREAMS, STREAM_WINDOW};

pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_PENDING_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// The most one connection can make the server buffer: the connection's
/// receive window (data the peer may send before we read it), each
/// stream's send buffer, and a header list per stream being decoded.
pub const MAX_BUFFERED_PER_CONNECTION: usize = CONNECTION_WINDOW as usize
    + SERVER_MAX_STREAMS as usize * (MAX_SEND_BUFFER + MAX_HEADER_LIST_SIZE as usize);
/// Connections the server holds at once (each costs two file descriptors
/// once its stream dials the app).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16 * 1024;
/// Connections from one source IP at once. A client pool opens one per
/// 100 streams per (identity, destination pod), and a waypoint's or a
/// node's tunnels all come from one IP: generous, but a flood from one
/// pod stays a fraction of the node's.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 1024;
/// A connection with no stream this long after its handshake (or its last
/// stream) is closed: twice the client pool's idle release, so a healthy
/// client always lets go first.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How long a connection closed for idleness may take to say goodbye
/// (GOAWAY, PING) before its socket is closed.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub handshake_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_concurrent_streams: SERVER_MAX_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no local identity serves {0}")]
    UnknownDestination(SocketAddr),
    #[error("certificate for the local identity")]
    Certificate(#[source] CertError),
    #[error("TLS configuration")]
    TlsConfig(#[source] TlsConfigError),
    #[error("TLS handshake")]
    Tls(#[source] std::io::Error),
    #[error("client certificate")]
    Peer(#[source] PeerError),
    #[error("HTTP/2")]
    H2(#[source] h2::Error),
    #[error("handshake timed out")]
    Timeout,
}

impl ServerError {
    /// Istio's `response_flags` value for this failure (DESIGN §7): the
    /// handshake failed or could not be made (no certificate) is
    /// `TLS_FAILURE`; no local identity for the address, or HTTP/2, is
    /// `CONNECT`.
    pub fn flag(&self) -> ResponseFlag {
        match self {
            ServerError::Tls(_)
            | ServerError::Peer(_)
            | ServerError::Timeout
            | ServerError::Certificate(_)
            | ServerError::TlsConfig(_) => ResponseFlag::TlsFailure,
            ServerError::UnknownDestination(_) | ServerError::H2(_) => ResponseFlag::Connect,
        }
    }

    /// A low-cardinality reason for logs: the [`ServerError::flag`] value,
    /// or a finer one where the flag says less (`UNKNOWN_DESTINATION`,
    /// `NO_CERT`).
    pub fn reason(&self) -> &'static str {
        match self {
            ServerError::UnknownDestination(_) => "UNKNOWN_DESTINATION",
            ServerError::Certificate(_) | ServerError::TlsConfig(_) => "NO_CERT",
            _ => self.flag().as_str(),
        }
    }
}

/// Chooses the server certificate for a connection by the address it
/// arrived on (there is no SNI): the destination pod's identity.
pub trait ServerIdentity: Send + Sync + 'static {
    fn tls_config(
        &self,
        local: SocketAddr,
    ) -> BoxFuture<'static, Result<Arc<rustls::ServerConfig>, ServerError>>;
}

/// Decides what to do with each CONNECT.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: InboundRequest) -> BoxFuture<'static, ()>;
    /// A connection failed before any request (TLS, identity, HTTP/2).
    fn connection_failed(&self, _peer: SocketAddr, _local: SocketAddr, _err: &ServerError) {}
    /// A connection was reset at accept: the server, or its source, holds
    /// as many as it may.
    fn connection_refused(&self, _peer: SocketAddr, _reason: LimitReason) {}
}

/// A CONNECT awaiting an answer.
pub struct InboundRequest {
    pub peer: SpiffeId,
    pub peer_addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub authority: SocketAddr,
    pub meta: ConnectMeta,
    pub headers: HeaderMap,
    respond: Option<h2::server::SendResponse<Bytes>>,
    recv: Option<h2::RecvStream>,
}

impl std::fmt::Debug for InboundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundRequest")
            .field("peer", &self.peer)
            .field("peer_addr", &self.peer_addr)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl InboundRequest {
    /// Answer 200 and take the stream.
    pub fn accept(mut self) -> Result<H2Stream, h2::Error> {
        let mut respond = self.respond.take().expect("answered once");
        let recv = self.recv.take().expect("answered once");
        let send = respond.send_response(response(StatusCode::OK), false)?;
        Ok(H2Stream::new(send, recv, None))
    }

    /// Answer with an error status and end the stream.
    pub fn reject(mut self, status: StatusCode) {
        if let Some(mut respond) = self.respond.take() {
            let _ = respond.send_response(response(status), true);
        }
    }
}

impl Drop for InboundRequest {
    fn drop(&mut self) {
        if let Some(mut respond) = self.respond.take() {
            let _ = respond.send_response(response(StatusCode::SERVICE_UNAVAILABLE), true);
        }
    }
}

fn response(status: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r
}

/// Counters the tests and metrics read.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub open_connections: AtomicUsize,
    pub active_streams: AtomicUsize,
}

pub struct HboneServer<I, H> {
    identity: Arc<I>,
    handler: Arc<H>,
    config: ServerConfig,
    stats: Arc<ServerStats>,
    limiter: Arc<ConnLimiter>,
}

impl<I: ServerIdentity, H: Handler> HboneServer<I, H> {
    pub fn new(identity: Arc<I>, handler: Arc<H>, config: ServerConfig) -> Self {
        let limits = Limits {
            max_connections: config.max_connections,
            max_per_source: config.max_connections_per_source,
        };
        HboneServer {
            identity,
            handler,
            config,
            stats: Arc::default(),
            limiter: ConnLimiter::new("HBONE", limits),
        }
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Open connections by source, and what was refused.
    pub fn limiter(&self) -> Arc<ConnLimiter> {
        self.limiter.clone()
    }

    /// Accept connections until drained; then stop accepting and let each
    /// connection finish its streams after a GOAWAY.
    pub async fn serve(&self, listener: TcpListener, drain: Drain) {
        crate::drain::accept_until_drained(&listener, &drain, "HBONE", |sock, peer, watch| {
            let permit = match self.limiter.try_acquire(peer.ip()) {
                Ok(p) => p,
                Err(reason) => {
                    self.handler.connection_refused(peer, reason);
                    crate::limit::refuse(sock);
                    return;
                }
            };
            let conn = Connection {
                identity: self.identity.clone(),
                handler: self.handler.clone(),
                config: self.config.clone(),
                stats: self.stats.clone(),
            };
            tokio::spawn(conn.run(sock, peer, watch, permit));
        })
        .await;
    }
}

struct Connection<I, H> {
    identity: Arc<I>,
    handler: Arc<H>,
    config: ServerConfig,
    stats: Arc<ServerStats>,
}

struct OpenGuard(Arc<ServerStats>);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<I: ServerIdentity, H: Handler> Connection<I, H> {
    async fn run(self, sock: TcpStream, peer: SocketAddr, watch: Watch, _permit: ConnPermit) {
        self.stats.open_connections.fetch_add(1, Ordering::AcqRel);
        let _open = OpenGuard(self.stats.clone());
        let local = match sock.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        if let Err(e) = self.serve_connection(sock, peer, local, watch).await {
            tracing::debug!(%peer, %local, error = %e, cause = ?std::error::Error::source(&e), "HBONE connection failed");
            self.handler.connection_failed(peer, local, &e);
        }
    }

    async fn serve_connection(
        &self,
        sock: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        mut watch: Watch,
    ) -> Result<(), ServerError> {
        let handshake = async {
            let config = self.identity.tls_config(local).await?;
            let tls = tokio_rustls::TlsAcceptor::from(config)
                .accept(sock)
                .await
                .map_err(ServerError::Tls)?;
            let peer_id = tls::peer_identity(tls.get_ref().1.peer_certificates())
                .map_err(ServerError::Peer)?;
            let conn = h2::server::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME_SIZE)
                .max_concurrent_streams(self.config.max_concurrent_streams)
                .max_header_list_size(MAX_HEADER_LIST_SIZE)
                .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
                .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
                .max_send_buffer_size(MAX_SEND_BUFFER)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(ServerError::H2)?;
            Ok::<_, ServerError>((peer_id, conn))
        };
        let (peer_id, mut conn) = tokio::time::timeout(self.config.handshake_timeout, handshake)
            .await
            .map_err(|_| ServerError::Timeout)??;
        // Streams of this connection whose handler still runs.
        let (streams, mut streams_rx) = watch::channel(0usize);
        let streams = Arc::new(streams);
        let mut closing = false;
        let mut close_by = None;
        loop {
            let next = tokio::select! {
                n = conn.accept() => n,
                () = watch.signaled(), if !closing => {
                    closing = true;
                    conn.graceful_shutdown();
                    continue;
                }
                () = idle_for(&mut streams_rx, self.config.idle_timeout), if !closing => {
                    tracing::debug!(%peer, %local, timeout = ?self.config.idle_timeout, "HBONE connection idle; closing");
                    closing = true;
                    close_by = Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                    conn.graceful_shutdown();
                    continue;
                }
                () = sleep_until_some(close_by) => return Ok(()),
            };
            let Some(next) = next else { return Ok(()) };
            let (request, respond) = match next {
                Ok(r) => r,
                // Peers going away abruptly is routine; the streams see it.
                Err(e) if e.is_io() || e.is_go_away() => return Ok(()),
                Err(e) => return Err(ServerError::H2(e)),
            };
            self.dispatch(request, respond, &peer_id, peer, local, &streams);
        }
    }

    fn dispatch(
        &self,
        request: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        peer_id: &SpiffeId,
        peer: SocketAddr,
        local: SocketAddr,
        streams: &Arc<watch::Sender<usize>>,
    ) {
        let authority = match parse_connect(&request) {
            Ok(a) => a,
            Err(status) => {
                let _ = respond.send_response(response(status), true);
                return;
            }
        };
        let (parts, recv) = request.into_parts();
        let inbound = InboundRequest {
            peer: peer_id.clone(),
            peer_addr: peer,
            local_addr: local,
            authority,
            meta: ConnectMeta::from_headers(&parts.headers),
            headers: parts.headers,
            respond: Some(respond),
            recv: Some(recv),
        };
        let stats = self.stats.clone();
        let fut = self.handler.handle(inbound);
        stats.active_streams.fetch_add(1, Ordering::AcqRel);
        streams.send_modify(|n| *n += 1);
        let streams = streams.clone();
        tokio::spawn(async move {
            fut.await;
            stats.active_streams.fetch_sub(1, Ordering::AcqRel);
            streams.send_modify(|n| *n -= 1);
        });
    }
}

/// Resolves once the connection has had no stream running for `timeout`
/// straight.
async fn idle_for(streams: &mut watch::Receiver<usize>, timeout: Duration) {
    loop {
        let idle = *streams.borrow_and_update() == 0;
        let changed = if idle {
            match tokio::time::timeout(timeout, streams.changed()).await {
                Err(_) => return,
                Ok(r) => r,
            }
        } else {
            streams.changed().await
        };
        if changed.is_err() {
            // The connection is gone: nothing to time out.
            std::future::pending::<()>().await;
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Validate a request as an HBONE CONNECT; the error is the status to send.
fn parse_connect<B>(request: &Request<B>) -> Result<SocketAddr, StatusCode> {
    if request.method() != Method::CONNECT {
        return Err(StatusCode::METHOD_NOT_ALLOWED);
    }
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .ok_or(StatusCode::BAD_REQUEST)?;
    parse_authority(authority).map_err(|e: AuthorityError| {
        tracing::debug!(error = %e, "bad CONNECT authority");
        StatusCode::BAD_REQUEST
    })
}

/// Serves one fixed identity's certificate on every address (tests, the
/// waypoint).
pub struct FixedIdentity {
    pub certs: Arc<crate::cert::CertStore>,
    pub id: SpiffeId,
}

impl ServerIdentity for FixedIdentity {
    fn tls_config(
        &self,
        _local: SocketAddr,
    ) -> BoxFuture<'static, Result<Arc<rustls::ServerConfig>, ServerError>> {
        let certs = self.certs.clone();
        let id = self.id.clone();
        Box::pin(async move {
            let cert = certs.get(&id).await.map_err(ServerError::Certificate)?;
            tls::server_config(&cert).map_err(ServerError::TlsConfig)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Istio's flag for each failure, and the finer reason where it says
    /// less.
    #[test]
    fn flags_are_istios_and_reasons_finer() {
        let cases = [
            (
                ServerError::Timeout,
                ResponseFlag::TlsFailure,
                "TLS_FAILURE",
            ),
            (
                ServerError::Tls(std::io::Error::other("alert")),
                ResponseFlag::TlsFailure,
                "TLS_FAILURE",
            ),
            (
                ServerError::UnknownDestination("10.1.1.1:15008".parse().unwrap()),
                ResponseFlag::Connect,
                "UNKNOWN_DESTINATION",
            ),
            (
                ServerError::Certificate(CertError::Parse),
                ResponseFlag::TlsFailure,
                "NO_CERT",
            ),
        ];
        for (err, flag, reason) in cases {
            assert_eq!((err.flag(), err.reason()), (flag, reason), "{err:?}");
        }
    }
}
