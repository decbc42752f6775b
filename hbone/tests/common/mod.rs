//! Shared fixtures for the HBONE integration tests: a dev CA and cert
//! stores, a real HBONE server whose handler forwards each CONNECT to a real
//! upstream TCP server on loopback, a client builder, deterministic byte
//! patterns, and helpers that dig TLS errors out of the error chains.
//!
//! Everything runs over real sockets on 127.0.0.1 with real rustls and h2.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use hbone::ca::DevCa;
use hbone::cert::CertStore;
use hbone::client::{ClientConfig, ConnectRequest, HboneClient};
use hbone::copy::{copy_bidirectional, Counters};
use hbone::drain::Drain;
use hbone::headers::ConnectMeta;
use hbone::limit::LimitReason;
use hbone::server::{
    FixedIdentity, Handler, HboneServer, InboundRequest, ServerConfig, ServerError, ServerStats,
};
use hbone::tls::PeerError;
use hbone::SpiffeId;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const TD: &str = "cluster.local";
/// How long cleanup (sockets closed, tasks finished) may take.
pub const CLEANUP: Duration = Duration::from_secs(5);

pub fn id(trust_domain: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "default", sa).unwrap()
}

/// A CA plus one cert store each for the client and the server workloads.
pub struct Mesh {
    pub ca: DevCa,
    pub client_certs: Arc<CertStore>,
    pub server_certs: Arc<CertStore>,
    pub client_id: SpiffeId,
    pub server_id: SpiffeId,
}

impl Mesh {
    pub fn new() -> Self {
        Self::with_ca(DevCa::generate().unwrap())
    }

    pub fn with_ca(ca: DevCa) -> Self {
        Mesh {
            client_certs: CertStore::new(Arc::new(ca.clone())),
            server_certs: CertStore::new(Arc::new(ca.clone())),
            ca,
            client_id: id(TD, "client"),
            server_id: id(TD, "server"),
        }
    }

    pub fn client(&self) -> Arc<HboneClient> {
        HboneClient::new(self.client_certs.clone(), ClientConfig::default())
    }

    /// A CONNECT through `server` to `authority`, expecting the server's identity.
    pub fn request(&self, server: &TestServer, authority: SocketAddr) -> ConnectRequest {
        ConnectRequest {
            source: self.client_id.clone(),
            source_ip: None,
            expected: vec![self.server_id.clone()],
            via: server.addr,
            authority,
            meta: ConnectMeta::default(),
        }
    }
}

/// A TCP server on loopback running `serve` for every accepted connection.
pub async fn spawn_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve(sock));
        }
    });
    addr
}

/// Echoes every byte, then half-closes once the peer half-closed.
pub async fn echo_upstream() -> SocketAddr {
    spawn_upstream(|mut sock| async move {
        let (mut r, mut w) = sock.split();
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    })
    .await
}

/// A loopback address where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// What the server told its handler about a connection that failed before
/// any request.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: &'static str,
    pub timeout: bool,
    /// The rustls error behind a TLS failure, if there was one.
    pub tls: Option<rustls::Error>,
    /// The identity error, when the client certificate was refused by policy.
    pub peer: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub enum Behavior {
    /// Dial the CONNECT authority, answer 200, and copy both ways.
    Forward,
    /// Answer with this status.
    Reject(StatusCode),
    /// Drop the request unanswered.
    Drop,
}

pub struct TestHandler {
    behavior: Behavior,
    pub requests: AtomicUsize,
    /// (peer identity, authority, metadata) of every CONNECT handled.
    pub seen: Mutex<Vec<(SpiffeId, SocketAddr, ConnectMeta)>>,
    pub failures: Mutex<Vec<Failure>>,
    /// Why each connection reset at accept was refused.
    pub refused: Mutex<Vec<LimitReason>>,
}

impl TestHandler {
    pub fn failures(&self) -> Vec<Failure> {
        self.failures.lock().unwrap().clone()
    }
}

impl Handler for TestHandler {
    fn handle(&self, req: InboundRequest) -> BoxFuture<'static, ()> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.seen
            .lock()
            .unwrap()
            .push((req.peer.clone(), req.authority, req.meta.clone()));
        let behavior = self.behavior;
        Box::pin(async move {
            match behavior {
                Behavior::Forward => forward(req).await,
                Behavior::Reject(status) => req.reject(status),
                Behavior::Drop => drop(req),
            }
        })
    }

    fn connection_refused(&self, _peer: SocketAddr, reason: LimitReason) {
        self.refused.lock().unwrap().push(reason);
    }

    fn connection_failed(&self, _peer: SocketAddr, _local: SocketAddr, err: &ServerError) {
        let tls = match err {
            ServerError::Tls(e) => rustls_error(e).cloned(),
            _ => None,
        };
        let peer = tls.as_ref().and_then(peer_error).map(|e| format!("{e:?}"));
        self.failures.lock().unwrap().push(Failure {
            reason: err.reason(),
            timeout: matches!(err, ServerError::Timeout),
            tls,
            peer,
        });
    }
}

async fn forward(req: InboundRequest) {
    let Ok(mut upstream) = TcpStream::connect(req.authority).await else {
        req.reject(StatusCode::SERVICE_UNAVAILABLE);
        return;
    };
    let Ok(mut stream) = req.accept() else { return };
    let counters = Arc::new(Counters::default());
    let _ = copy_bidirectional(&mut stream, &mut upstream, &counters).await;
}

/// A real HBONE server on loopback.
pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    pub handler: Arc<TestHandler>,
    drain: Drain,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(mesh: &Mesh, behavior: Behavior) -> Self {
        Self::start_with(
            mesh.server_certs.clone(),
            mesh.server_id.clone(),
            behavior,
            ServerConfig::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
    }

    pub async fn start_with(
        certs: Arc<CertStore>,
        server_id: SpiffeId,
        behavior: Behavior,
        config: ServerConfig,
        bind: SocketAddr,
    ) -> Self {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let identity = Arc::new(FixedIdentity {
            certs,
            id: server_id,
        });
        let handler = Arc::new(TestHandler {
            behavior,
            requests: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
        });
        let server = HboneServer::new(identity, handler.clone(), config);
        let stats = server.stats();
        let drain = Drain::new();
        let d = drain.clone();
        let task = tokio::spawn(async move { server.serve(listener, d).await });
        TestServer {
            addr,
            stats,
            handler,
            drain,
            task: Some(task),
        }
    }

    pub fn open_connections(&self) -> usize {
        self.stats.open_connections.load(Ordering::Acquire)
    }

    pub fn active_streams(&self) -> usize {
        self.stats.active_streams.load(Ordering::Acquire)
    }

    /// Wait (bounded) until the server holds no connection and no stream.
    pub async fn assert_idle(&self) {
        let idle = eventually(CLEANUP, || {
            self.open_connections() == 0 && self.active_streams() == 0
        })
        .await;
        assert!(
            idle,
            "server still holds {} connections and {} streams",
            self.open_connections(),
            self.active_streams()
        );
    }

    /// Wait (bounded) until every stream's handler finished.
    pub async fn assert_streams_done(&self) {
        let done = eventually(CLEANUP, || self.active_streams() == 0).await;
        assert!(done, "server still runs {} streams", self.active_streams());
    }

    /// Wait (bounded) for the first connection failure the server reports.
    pub async fn first_failure(&self) -> Failure {
        assert!(
            eventually(CLEANUP, || !self.handler.failures().is_empty()).await,
            "server reported no connection failure"
        );
        self.handler.failures().remove(0)
    }

    /// Start draining: the listener is closed when this returns, and every
    /// connection has been sent a GOAWAY but may still finish its streams.
    pub async fn stop_accepting(&mut self) {
        self.drain.signal();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(CLEANUP, task)
                .await
                .expect("serve returns once drained")
                .unwrap();
        }
    }

    /// Stop accepting, drain every connection, and wait until all finished.
    pub async fn stop(mut self) {
        self.stop_accepting().await;
        tokio::time::timeout(CLEANUP, self.drain.wait_idle())
            .await
            .expect("connections finish after drain");
        assert_eq!(self.open_connections(), 0);
    }
}

/// Poll `cond` every 10 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Tasks alive on the current runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Wait (bounded) until no more tasks are alive than `baseline`: every task
/// a failed connection spawned (server connection, client h2 driver) ended.
pub async fn assert_tasks_back_to(baseline: usize) {
    let ok = eventually(CLEANUP, || alive_tasks() <= baseline).await;
    assert!(ok, "{} tasks alive, {baseline} before", alive_tasks());
}

/// The client pool has no live connection left (bounded wait).
pub async fn assert_pool_empty(client: &HboneClient) {
    let empty = eventually(CLEANUP, || client.stats().connections == 0).await;
    assert!(empty, "client pool still live: {:?}", client.stats());
}

/// A deterministic byte stream: byte `i` is `block[i % block.len()]`, with a
/// block length that never lines up with buffer sizes.
#[derive(Clone)]
pub struct Pattern {
    block: Arc<Vec<u8>>,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        const LEN: usize = 65_521; // prime
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let block = (0..LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        Pattern {
            block: Arc::new(block),
        }
    }

    /// The `len` bytes starting at stream offset `at`.
    pub fn chunk(&self, at: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut pos = (at % self.block.len() as u64) as usize;
        while out.len() < len {
            let take = (len - out.len()).min(self.block.len() - pos);
            out.extend_from_slice(&self.block[pos..pos + take]);
            pos = 0;
        }
        out
    }

    /// Whether `data` is exactly the stream's bytes at offset `at`.
    pub fn matches(&self, at: u64, data: &[u8]) -> bool {
        let mut pos = (at % self.block.len() as u64) as usize;
        let mut rest = data;
        while !rest.is_empty() {
            let take = rest.len().min(self.block.len() - pos);
            if rest[..take] != self.block[pos..pos + take] {
                return false;
            }
            rest = &rest[take..];
            pos = 0;
        }
        true
    }

    /// Write `total` pattern bytes in chunks of up to `chunk` bytes.
    pub async fn write<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        total: u64,
        chunk: usize,
    ) -> io::Result<()> {
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(chunk as u64) as usize;
            w.write_all(&self.chunk(sent, n)).await?;
            sent += n as u64;
        }
        Ok(())
    }

    /// Read until EOF, checking every byte; returns how many bytes matched,
    /// or an error at the first mismatch.
    pub async fn read_to_end<R: AsyncRead + Unpin>(&self, r: &mut R) -> io::Result<u64> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok(got);
            }
            if !self.matches(got, &buf[..n]) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("byte mismatch in the {n} bytes at offset {got}"),
                ));
            }
            got += n as u64;
        }
    }
}

/// Send `total` pattern bytes through `stream` while reading the echo back
/// concurrently; half-closes after writing. Returns the bytes read back.
pub async fn echo_roundtrip<S>(stream: S, pattern: &Pattern, total: u64) -> io::Result<u64>
where
    S: AsyncRead + AsyncWrite + Send,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        pattern.write(&mut w, total, 128 * 1024).await?;
        w.shutdown().await
    };
    let read = pattern.read_to_end(&mut r);
    let ((), got) = tokio::try_join!(write, read)?;
    Ok(got)
}

/// The rustls error inside an I/O error from tokio-rustls, if any.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The identity-policy error inside a certificate error, if any.
pub fn peer_error(e: &rustls::Error) -> Option<&PeerError> {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
            o.0.downcast_ref::<PeerError>()
        }
        _ => None,
    }
}
