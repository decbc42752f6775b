//! The benchmarks' shared code: the fixtures of the HBONE micro-benchmarks
//! and the pure core of the netns macro-benchmark. Figures and how to run
//! each: `benches/README.md`.
//!
//! HBONE fixtures, for the criterion benchmarks (`benches/hbone.rs`) and the
//! `hbone-report` (whose `--quick` mode CI runs) and `hbone-profile`
//! binaries. Everything runs on real loopback sockets:
//! - [`spawn_sink`]: a TCP server that counts bytes until EOF, then answers
//!   with the count (8 bytes, big-endian) and closes;
//! - [`spawn_echo`]: a TCP echo server;
//! - [`HboneFixture`]: a dev CA, a cert store holding a client and a server
//!   identity, and an [`HboneServer`] whose [`ForwardHandler`] connects each
//!   CONNECT to its `:authority` over loopback TCP and copies both ways with
//!   `hbone::copy::copy_bidirectional` (what a destination ztunnel does). The
//!   special authorities [`NULL_AUTHORITY`] and [`NULL_SINK_AUTHORITY`] are
//!   answered in-process without an upstream (to isolate the cost of the
//!   HBONE stream itself);
//! - [`spawn_forwarder`]: a plain TCP forwarder running that same forward
//!   path without TLS and HTTP/2 (a floor for the forwarded HBONE figures).
//!
//! [`mesh_bench`] is the pure part of `mesh-bench`, the netns
//! macro-benchmark (no mesh, ztunnel sidecars, Envoy sidecars, a TLS relay
//! floor and ambient, alternated in one run): Envoy's bootstrap, the
//! statistics, and the JSON and HTML report; the binary does the I/O.
//!
//! The other binaries stand alone: `xds-bench` (the real `control-plane`
//! and `ztunnel` at scale: push latency, control-plane CPU and RSS, memory
//! per workload), `edit-cost` (where one config edit's control-plane time
//! goes) and `seal-bench` (TLS record sealing, rustls's against
//! `hbone::seal`).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use std::future::poll_fn;

use futures::future::BoxFuture;
use hbone::ca::DevCa;
use hbone::cert::CertStore;
use hbone::client::{ClientConfig, ConnectRequest, HboneClient};
use hbone::copy::{copy_bidirectional, Counters};
use hbone::drain::Drain;
use hbone::headers::ConnectMeta;
use hbone::server::{
    FixedIdentity, Handler, HboneServer, InboundRequest, ServerConfig, ServerStats,
};
use hbone::stream::H2Stream;
use hbone::SpiffeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TRUST_DOMAIN: &str = "cluster.local";

/// A CONNECT to this authority is accepted by the server without any
/// upstream: the stream is read (and discarded) until EOF, then closed.
pub const NULL_AUTHORITY: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9));

/// A CONNECT to this authority is answered in-process like [`spawn_sink`]
/// answers a TCP connection, without any upstream: the stream's bytes are
/// counted to EOF, then the count (u64, big-endian) is sent back and the
/// stream closed. DATA frames are consumed the way the forward path consumes
/// them (`poll_recv_bytes`, then `release`), so a bulk transfer to it costs
/// the tunnel alone.
pub const NULL_SINK_AUTHORITY: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10));

/// Size of the write buffer used by the bulk senders.
pub const BULK_CHUNK: usize = 1024 * 1024;

/// A multi-threaded runtime with `workers` threads (the benchmarks use 2,
/// one per core of the reference machine).
pub fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn loopback_listener() -> io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await
}

/// A loopback TCP server that reads until EOF, then writes the number of
/// bytes it received (u64, big-endian) and closes.
pub async fn spawn_sink() -> io::Result<SocketAddr> {
    let listener = loopback_listener().await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total: u64 = 0;
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = sock.write_all(&total.to_be_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// A loopback TCP echo server (echoes until EOF, then half-closes).
pub async fn spawn_echo() -> io::Result<SocketAddr> {
    let listener = loopback_listener().await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = sock.into_split();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// A loopback plain TCP forwarder to `upstream`: each accepted connection
/// dials `upstream` and runs `hbone::copy::copy_bidirectional` between the
/// two, the same copy (and buffer sizes) as [`ForwardHandler`]'s forward
/// path, minus TLS and HTTP/2. Both sockets use `TCP_NODELAY`, like the
/// HBONE server's. A failed upstream dial drops the client connection.
pub async fn spawn_forwarder(upstream: SocketAddr) -> io::Result<SocketAddr> {
    let listener = loopback_listener().await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let _ = down.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut up) = connect_plain(upstream).await else {
                    return;
                };
                let counters = Arc::new(Counters::default());
                let _ = copy_bidirectional(&mut down, &mut up, &counters).await;
            });
        }
    });
    Ok(addr)
}

/// Plain TCP connect to a loopback upstream, with `TCP_NODELAY` like the
/// tunnel's own sockets.
pub async fn connect_plain(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Deterministic, non-repeating-looking payload (xorshift), so that
/// reordering or corruption is caught by the byte-exactness checks.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Write `total` bytes (repeating `chunk`) to a sink connection, half-close,
/// and return the byte count the sink reports.
pub async fn send_to_sink<S>(s: &mut S, chunk: &[u8], total: u64) -> io::Result<u64>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    s.flush().await?;
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    Ok(u64::from_be_bytes(count))
}

/// One request/response on an echo connection: write `req`, read back
/// `resp.len()` bytes.
pub async fn echo_roundtrip<S>(s: &mut S, req: &[u8], resp: &mut [u8]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(req).await?;
    s.read_exact(resp).await?;
    Ok(())
}

/// Send `data` through an echo connection while reading it back
/// concurrently; returns whether every byte came back in order.
pub async fn echo_bulk_verify<S>(s: S, data: Arc<Vec<u8>>) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(s);
    let d = data.clone();
    let writer = tokio::spawn(async move {
        for c in d.chunks(64 * 1024) {
            w.write_all(c).await?;
        }
        w.shutdown().await?;
        Ok::<_, io::Error>(w)
    });
    let mut got = Vec::with_capacity(data.len());
    r.read_to_end(&mut got).await?;
    writer.await.map_err(io::Error::other)??;
    Ok(got == *data)
}

/// Close a stream politely (half-close, then wait for the peer's EOF), so
/// that teardown does not look like a reset storm to the server.
pub async fn close_gracefully<S>(mut s: S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.shutdown().await?;
    let mut buf = [0u8; 1024];
    while s.read(&mut buf).await? > 0 {}
    Ok(())
}

/// The destination side: connects each CONNECT to its `:authority` and
/// copies both ways. Upstream failure drops the request (503). The two null
/// authorities are answered in-process instead.
pub struct ForwardHandler;

impl Handler for ForwardHandler {
    fn handle(&self, req: InboundRequest) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            match req.authority {
                NULL_AUTHORITY => {
                    let Ok(down) = req.accept() else { return };
                    discard(down).await;
                }
                NULL_SINK_AUTHORITY => {
                    let Ok(mut down) = req.accept() else { return };
                    let Ok(total) = count_to_eof(&mut down).await else {
                        return;
                    };
                    let _ = down.write_all(&total.to_be_bytes()).await;
                    let _ = down.shutdown().await;
                }
                authority => {
                    let Ok(mut up) = TcpStream::connect(authority).await else {
                        return; // dropped unanswered: 503
                    };
                    let _ = up.set_nodelay(true);
                    let Ok(mut down) = req.accept() else { return };
                    let counters = Arc::new(Counters::default());
                    let _ = copy_bidirectional(&mut down, &mut up, &counters).await;
                }
            }
        })
    }
}

/// [`NULL_AUTHORITY`]: read and drop until EOF, then close.
async fn discard(mut down: H2Stream) {
    let mut buf = [0u8; 512];
    while let Ok(n) = down.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    let _ = down.shutdown().await;
}

/// [`NULL_SINK_AUTHORITY`]: count the stream's bytes to EOF, taking each
/// DATA frame without copying and returning its flow-control credit at once
/// (what `copy_bidirectional` does once the bytes are written upstream).
async fn count_to_eof(down: &mut H2Stream) -> io::Result<u64> {
    let mut total: u64 = 0;
    while let Some(data) = poll_fn(|cx| down.poll_recv_bytes(cx)).await? {
        total += data.len() as u64;
        down.release(data.len());
    }
    Ok(total)
}

/// A running HBONE server on loopback plus the certificates a client needs.
pub struct HboneFixture {
    pub ca: DevCa,
    pub certs: Arc<CertStore>,
    pub client_id: SpiffeId,
    pub server_id: SpiffeId,
    /// Where the HBONE server listens (`127.0.0.1:<ephemeral>`).
    pub addr: SocketAddr,
    pub server_stats: Arc<ServerStats>,
    drain: Drain,
}

impl HboneFixture {
    /// Generate a CA, issue both certificates, and start the server. Must be
    /// called inside a Tokio runtime.
    pub async fn start() -> Self {
        let ca = DevCa::generate().expect("dev CA");
        let certs = CertStore::new(Arc::new(ca.clone()));
        let client_id = SpiffeId::new(TRUST_DOMAIN, "bench", "client").expect("client id");
        let server_id = SpiffeId::new(TRUST_DOMAIN, "bench", "server").expect("server id");
        certs.get(&client_id).await.expect("client cert");
        certs.get(&server_id).await.expect("server cert");
        let identity = Arc::new(FixedIdentity {
            certs: certs.clone(),
            id: server_id.clone(),
        });
        let server = HboneServer::new(identity, Arc::new(ForwardHandler), ServerConfig::default());
        let server_stats = server.stats();
        let listener = loopback_listener().await.expect("bind HBONE listener");
        let addr = listener.local_addr().expect("local addr");
        let drain = Drain::new();
        let d = drain.clone();
        tokio::spawn(async move { server.serve(listener, d).await });
        HboneFixture {
            ca,
            certs,
            client_id,
            server_id,
            addr,
            server_stats,
            drain,
        }
    }

    /// A new client (its own, empty connection pool) sharing the cert store.
    pub fn client(&self) -> Arc<HboneClient> {
        HboneClient::new(self.certs.clone(), ClientConfig::default())
    }

    /// A CONNECT to `authority` through this fixture's server.
    pub fn request(&self, authority: SocketAddr) -> ConnectRequest {
        ConnectRequest {
            source: self.client_id.clone(),
            source_ip: None,
            expected: vec![self.server_id.clone()],
            via: self.addr,
            authority,
            meta: ConnectMeta::default(),
        }
    }
}

impl Drop for HboneFixture {
    fn drop(&mut self) {
        self.drain.signal();
    }
}

/// Resident set size of this process in bytes, from `/proc/self/status`.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Return freed heap memory to the kernel (glibc `malloc_trim`), so that
/// RSS deltas reflect live allocations rather than allocator caching.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Percentile (0.0..=100.0) of sorted samples, nearest-rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub mod mesh_bench;
pub mod waypoint_bench;
