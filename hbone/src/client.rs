//! The pooled HBONE client.
//!
//! Connections are pooled per (source identity, source IP, expected
//! destination identities, destination address). Each carries at most
//! [`CLIENT_MAX_STREAMS`] streams; a full pool dials another. A dead or stale
//! connection (GOAWAY, reset, failed keepalive, a server that restarted) is
//! retired, and a stream refused before any byte was sent is retried once on
//! a fresh connection. The idle and keepalive clocks are in [`timers`].

mod timers;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use mesh_model::ResponseFlag;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cert::{CertError, CertStore, WorkloadCert};
use crate::headers::{format_authority, ConnectMeta};
use crate::identity::SpiffeId;
use crate::socket::{dial, DialError, DialOptions};
use crate::stream::H2Stream;
use crate::tls::{self, TlsConfigError};
use crate::{CLIENT_MAX_STREAMS, CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Per-stream cap on data queued in h2 ahead of the socket.
const MAX_SEND_BUFFER: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    /// TLS plus HTTP/2 handshake, and waiting for the CONNECT response.
    pub handshake_timeout: Duration,
    pub max_streams_per_connection: usize,
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// `SO_MARK` on every socket the client opens.
    pub mark: Option<u32>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_streams_per_connection: CLIENT_MAX_STREAMS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            mark: None,
        }
    }
}

/// One tunnel to open.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// Our identity: the certificate presented to the server.
    pub source: SpiffeId,
    /// Leave from this IP (a pod's address, with `IP_TRANSPARENT`).
    pub source_ip: Option<IpAddr>,
    /// Identities the server may present.
    pub expected: Vec<SpiffeId>,
    /// Where the TCP connection goes (`ip:15008`).
    pub via: SocketAddr,
    /// The CONNECT `:authority`.
    pub authority: SocketAddr,
    pub meta: ConnectMeta,
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("no certificate for {id}")]
    Certificate {
        id: SpiffeId,
        #[source]
        source: CertError,
    },
    #[error("TCP connection for the tunnel")]
    Dial(#[source] DialError),
    #[error("TLS configuration")]
    TlsConfig(#[source] TlsConfigError),
    #[error("TLS handshake with {addr}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/2 on the tunnel to {addr}")]
    H2 {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("handshake with {addr} timed out")]
    Timeout { addr: SocketAddr },
    #[error("tunnel to {addr} refused CONNECT {authority} with {status}")]
    Status {
        addr: SocketAddr,
        authority: SocketAddr,
        status: StatusCode,
    },
    /// A failed dial, as every request that waited for it sees it (the one
    /// that dialled and the others for the same pool key alike).
    #[error(transparent)]
    Shared(Arc<TunnelError>),
}

impl TunnelError {
    /// Istio's `response_flags` value for this failure (DESIGN §7): a
    /// missing certificate or a failed handshake is `TLS_FAILURE`, a 401
    /// `DENY`, anything else `CONNECT`.
    pub fn flag(&self) -> ResponseFlag {
        match self {
            TunnelError::Certificate { .. }
            | TunnelError::TlsConfig(_)
            | TunnelError::Tls { .. } => ResponseFlag::TlsFailure,
            TunnelError::Status { status, .. } if *status == StatusCode::UNAUTHORIZED => {
                ResponseFlag::Deny
            }
            TunnelError::Shared(e) => e.flag(),
            TunnelError::Dial(_)
            | TunnelError::H2 { .. }
            | TunnelError::Timeout { .. }
            | TunnelError::Status { .. } => ResponseFlag::Connect,
        }
    }

    /// A low-cardinality reason for logs: the [`TunnelError::flag`] value,
    /// or `NO_CERT` where the flag says less (no certificate to present).
    pub fn reason(&self) -> &'static str {
        match self {
            TunnelError::Certificate { .. } | TunnelError::TlsConfig(_) => "NO_CERT",
            TunnelError::Shared(e) => e.reason(),
            _ => self.flag().as_str(),
        }
    }

    /// An HTTP/2 error on the tunnel's connection, or the TLS error behind
    /// it when the TLS layer failed (see [`tls::ErrorTap`]): in TLS 1.3 the
    /// server's refusal of our certificate (untrusted root, expired, wrong
    /// trust domain) arrives as a fatal alert after our handshake completed.
    fn from_h2(addr: SocketAddr, source: h2::Error, tls: &TlsSlot) -> Self {
        match tls.get() {
            Some(e) if source.is_io() => TunnelError::Tls {
                addr,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.clone()),
            },
            _ => TunnelError::H2 { addr, source },
        }
    }

    /// The connection this error came from cannot carry more streams.
    fn kills_connection(&self) -> bool {
        self.retriable() || matches!(self, TunnelError::Tls { .. })
    }

    /// Safe to retry on a fresh connection: nothing reached the upstream.
    fn retriable(&self) -> bool {
        match self {
            TunnelError::H2 { source, .. } => {
                source.is_io()
                    || source.is_go_away()
                    || source.reason() == Some(h2::Reason::REFUSED_STREAM)
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: SpiffeId,
    source_ip: Option<IpAddr>,
    expected: Vec<SpiffeId>,
    via: SocketAddr,
}

/// The first rustls error on a connection, kept by [`tls::ErrorTap`].
type TlsSlot = Arc<std::sync::OnceLock<rustls::Error>>;

struct PooledConn {
    send: h2::client::SendRequest<Bytes>,
    tls_error: TlsSlot,
    active: AtomicUsize,
    max: usize,
    dead: AtomicBool,
    cert_generation: u64,
    last_used: Mutex<Instant>,
}

impl PooledConn {
    fn try_reserve(self: &Arc<Self>) -> Option<StreamGuard> {
        if self.dead.load(Ordering::Acquire) {
            return None;
        }
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(StreamGuard(self.clone()))
    }

    fn idle_since(&self) -> Option<Instant> {
        (self.active.load(Ordering::Acquire) == 0)
            .then(|| *self.last_used.lock().expect("pool poisoned"))
    }
}

/// One reserved stream slot; released when the stream is dropped.
struct StreamGuard(Arc<PooledConn>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        *self.0.last_used.lock().expect("pool poisoned") = Instant::now();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a dial tells the requests that waited for it: `None` while it
/// runs; then done (the connection is in the pool) or its error.
type DialOutcome = Option<Result<(), Arc<TunnelError>>>;

#[derive(Default)]
struct KeyPool {
    conns: Mutex<Vec<Arc<PooledConn>>>,
    /// The dial in progress for this key, if any. One dial at a time, so a
    /// burst shares new connections, and every request waiting for it gets
    /// its outcome: with a dead destination, N waiters fail after one
    /// dial's timeout, not N.
    dialing: Mutex<Option<watch::Receiver<DialOutcome>>>,
}

/// This request's part in the dial for its key.
enum DialRole {
    /// No dial was running: this request dials, and publishes the outcome.
    Lead(watch::Sender<DialOutcome>),
    /// Another request is dialling: wait for its outcome.
    Wait(watch::Receiver<DialOutcome>),
}

/// Clears the pool's dial slot when the dialling request finishes or is
/// cancelled (its waiters then see the channel close and one of them
/// dials).
struct DialSlot<'a> {
    pool: &'a KeyPool,
    tx: watch::Sender<DialOutcome>,
}

impl Drop for DialSlot<'_> {
    fn drop(&mut self) {
        // Only the request that filled the slot empties it.
        *self.pool.dialing.lock().expect("pool poisoned") = None;
    }
}

impl KeyPool {
    /// Join the dial in progress, or become the one that dials.
    fn dial_role(&self) -> DialRole {
        let mut dialing = self.dialing.lock().expect("pool poisoned");
        match &*dialing {
            Some(rx) => DialRole::Wait(rx.clone()),
            None => {
                let (tx, rx) = watch::channel(None);
                *dialing = Some(rx);
                DialRole::Lead(tx)
            }
        }
    }

    fn checkout(&self, generation: u64) -> Option<StreamGuard> {
        let mut conns = self.conns.lock().expect("pool poisoned");
        conns.retain(|c| !c.dead.load(Ordering::Acquire));
        conns
            .iter()
            .filter(|c| c.cert_generation == generation)
            .find_map(|c| c.try_reserve())
    }
}

/// Pool statistics, for tests, metrics and the config dump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub connections: usize,
    pub active_streams: usize,
    pub connections_opened: usize,
}

pub struct HboneClient {
    certs: Arc<CertStore>,
    config: ClientConfig,
    pools: Mutex<HashMap<PoolKey, Arc<KeyPool>>>,
    opened: AtomicUsize,
}

impl HboneClient {
    pub fn new(certs: Arc<CertStore>, config: ClientConfig) -> Arc<Self> {
        let client = Arc::new(HboneClient {
            certs,
            config,
            pools: Mutex::new(HashMap::new()),
            opened: AtomicUsize::new(0),
        });
        client.spawn_reaper();
        client
    }

    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// Open a tunnel: returns once the server answered 200.
    pub async fn connect(&self, req: &ConnectRequest) -> Result<H2Stream, TunnelError> {
        let cert =
            self.certs
                .get(&req.source)
                .await
                .map_err(|source| TunnelError::Certificate {
                    id: req.source.clone(),
                    source,
                })?;
        let mut expected = req.expected.clone();
        expected.sort();
        expected.dedup();
        let key = PoolKey {
            source: req.source.clone(),
            source_ip: req.source_ip,
            expected,
            via: req.via,
        };
        let pool = self.key_pool(&key);
        // Waiting for dials (ours or others') ends by one deadline: the
        // time one dial may take.
        let deadline = Instant::now() + self.config.connect_timeout + self.config.handshake_timeout;
        let mut retried = false;
        loop {
            let guard = self.checkout(&pool, &key, &cert, deadline).await?;
            let conn = guard.0.clone();
            match self.open_stream(guard, req).await {
                Ok(stream) => return Ok(stream),
                Err(e) if e.retriable() && !retried => {
                    tracing::debug!(via = %req.via, error = %e, "stale pooled connection; retrying on a fresh one");
                    conn.dead.store(true, Ordering::Release);
                    retried = true;
                }
                Err(e) => {
                    if e.kills_connection() {
                        conn.dead.store(true, Ordering::Release);
                    }
                    return Err(e);
                }
            }
        }
    }

    fn key_pool(&self, key: &PoolKey) -> Arc<KeyPool> {
        let mut pools = self.pools.lock().expect("pool poisoned");
        pools.entry(key.clone()).or_default().clone()
    }

    /// A stream slot on a pooled connection for `key`: a free one, or one
    /// on the connection the dial in progress opens, or on one this request
    /// dials itself; by `deadline`.
    async fn checkout(
        &self,
        pool: &KeyPool,
        key: &PoolKey,
        cert: &Arc<WorkloadCert>,
        deadline: Instant,
    ) -> Result<StreamGuard, TunnelError> {
        let addr = key.via;
        loop {
            if let Some(g) = pool.checkout(cert.generation()) {
                return Ok(g);
            }
            match pool.dial_role() {
                DialRole::Lead(tx) => {
                    let slot = DialSlot { pool, tx };
                    let dialed = tokio::time::timeout_at(deadline, self.dial(key, cert))
                        .await
                        .unwrap_or(Err(TunnelError::Timeout { addr }));
                    return match dialed {
                        Ok(conn) => {
                            let guard = conn.try_reserve().expect("fresh connection has room");
                            pool.conns.lock().expect("pool poisoned").push(conn);
                            slot.tx.send_replace(Some(Ok(())));
                            Ok(guard)
                        }
                        Err(e) => {
                            let e = Arc::new(e);
                            slot.tx.send_replace(Some(Err(e.clone())));
                            Err(TunnelError::Shared(e))
                        }
                    };
                }
                DialRole::Wait(mut rx) => {
                    let outcome = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some))
                        .await
                        .map_err(|_| TunnelError::Timeout { addr })?;
                    // Closed without an outcome: the dialling request was
                    // cancelled, so look again (and maybe dial).
                    if let Ok(done) = outcome {
                        if let Some(Err(e)) = &*done {
                            return Err(TunnelError::Shared(e.clone()));
                        }
                    }
                }
            }
        }
    }

    async fn dial(
        &self,
        key: &PoolKey,
        cert: &Arc<WorkloadCert>,
    ) -> Result<Arc<PooledConn>, TunnelError> {
        let addr = key.via;
        let opts = DialOptions {
            mark: self.config.mark,
            source: key.source_ip.map(|ip| SocketAddr::new(ip, 0)),
            transparent: key.source_ip.is_some(),
        };
        let tcp = dial(addr, opts, self.config.connect_timeout)
            .await
            .map_err(TunnelError::Dial)?;
        let tls_config = tls::client_config(cert, &key.expected).map_err(TunnelError::TlsConfig)?;
        let handshake = async {
            let tls = tokio_rustls::TlsConnector::from(tls_config)
                .connect(tls::server_name(addr), tcp)
                .await
                .map_err(|source| TunnelError::Tls { addr, source })?;
            let (tls, tls_error) = tls::ErrorTap::new(tls);
            let h2 = h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME_SIZE)
                .max_send_buffer_size(MAX_SEND_BUFFER)
                .enable_push(false)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|source| TunnelError::from_h2(addr, source, &tls_error))?;
            Ok((h2, tls_error))
        };
        let ((send, connection), tls_error) =
            tokio::time::timeout(self.config.handshake_timeout, handshake)
                .await
                .map_err(|_| TunnelError::Timeout { addr })??;
        let conn = Arc::new(PooledConn {
            send,
            tls_error,
            active: AtomicUsize::new(0),
            max: self.config.max_streams_per_connection,
            dead: AtomicBool::new(false),
            cert_generation: cert.generation(),
            last_used: Mutex::new(Instant::now()),
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        let (interval, timeout) = (
            self.config.keepalive_interval,
            self.config.keepalive_timeout,
        );
        let weak = Arc::downgrade(&conn);
        tokio::spawn(async move {
            let ended = timers::drive(connection, interval, timeout).await;
            if let Some(c) = weak.upgrade() {
                c.dead.store(true, Ordering::Release);
            }
            tracing::debug!(%addr, %ended, "HBONE connection closed");
        });
        Ok(conn)
    }

    async fn open_stream(
        &self,
        guard: StreamGuard,
        req: &ConnectRequest,
    ) -> Result<H2Stream, TunnelError> {
        let addr = req.via;
        let h2err = |source| TunnelError::from_h2(addr, source, &guard.0.tls_error);
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(format_authority(req.authority))
            .body(())
            .expect("CONNECT request is well-formed");
        req.meta.to_headers(request.headers_mut());
        let exchange = async {
            let mut send = guard.0.send.clone().ready().await.map_err(h2err)?;
            let (response, stream) = send.send_request(request, false).map_err(h2err)?;
            let response = response.await.map_err(h2err)?;
            Ok::<_, TunnelError>((response, stream))
        };
        let (response, send_stream) = tokio::time::timeout(self.config.handshake_timeout, exchange)
            .await
            .map_err(|_| TunnelError::Timeout { addr })??;
        if response.status() != StatusCode::OK {
            return Err(TunnelError::Status {
                addr,
                authority: req.authority,
                status: response.status(),
            });
        }
        let recv = response.into_body();
        Ok(H2Stream::new(send_stream, recv, Some(Box::new(guard))))
    }

    pub fn stats(&self) -> PoolStats {
        let pools: Vec<Arc<KeyPool>> = self
            .pools
            .lock()
            .expect("pool poisoned")
            .values()
            .cloned()
            .collect();
        let mut stats = PoolStats {
            connections_opened: self.opened.load(Ordering::Relaxed),
            ..Default::default()
        };
        for p in pools {
            let conns = p.conns.lock().expect("pool poisoned");
            for c in conns.iter().filter(|c| !c.dead.load(Ordering::Acquire)) {
                stats.connections += 1;
                stats.active_streams += c.active.load(Ordering::Acquire);
            }
        }
        stats
    }

    /// Retire idle, dead and rotated-out connections. Returns how many.
    pub fn reap(&self, now: Instant) -> usize {
        let mut pools = self.pools.lock().expect("pool poisoned");
        let mut reaped = 0;
        pools.retain(|key, pool| {
            let current = self.certs.cached(&key.source).map(|c| c.generation());
            let mut conns = pool.conns.lock().expect("pool poisoned");
            let before = conns.len();
            conns.retain(|c| {
                let idle = c.idle_since();
                let stale_cert = Some(c.cert_generation) != current && idle.is_some();
                let expired = timers::idle_expired(idle, now, self.config.idle_timeout);
                !(c.dead.load(Ordering::Acquire) || stale_cert || expired)
            });
            reaped += before - conns.len();
            !conns.is_empty() || Arc::strong_count(pool) > 1
        });
        reaped
    }

    fn spawn_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let period = timers::reaper_period(self.config.idle_timeout);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(client) = weak.upgrade() else { return };
                client.reap(Instant::now());
            }
        });
    }
}

#[cfg(test)]
mod tests;
