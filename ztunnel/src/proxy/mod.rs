//! The data path: the I/O shell around [`crate::classify`] and
//! [`mesh_model::policy`].
//!
//! - [`outbound`]: connections captured on 15001, routed by `classify` to
//!   HBONE, the in-process inbound path, or passthrough;
//! - [`inbound`]: HBONE on 15008 and plaintext on 15006, authorized by
//!   `authorize`, then connected to the app: from the client's IP in node
//!   mode (IP_TRANSPARENT), from the pod's own address in sidecar mode;
//! - [`conns`]: live inbound connections, re-authorized on policy change;
//! - [`record`]: metrics and access-log bookkeeping per connection.
//!
//! All of it reads the current [`Snapshot`] from one `watch` channel; an
//! update swaps the `Arc` and never blocks a connection.

pub mod conns;
pub mod inbound;
pub mod outbound;
pub mod record;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hbone::cert::CertStore;
use hbone::client::HboneClient;
use hbone::drain::Drain;
use hbone::limit::{ConnLimiter, Limits};
use hbone::socket::{dial, DialError, DialOptions};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::capture::rules::ZTUNNEL_MARK;
use conns::Connections;
use mesh_model::state::{Scope, Snapshot};
use mesh_model::ResponseFlag;
use mesh_runtime::accesslog::Direction;
use record::Telemetry;

/// How long dialling an app or a passthrough destination may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections each capture listener (15001, 15006) holds at once. Each
/// costs two file descriptors (client and upstream); ztunnel lifts its soft
/// open-file limit to the hard one.
pub const DEFAULT_CAPTURE_MAX_CONNECTIONS: usize = 64 * 1024;
/// Connections one source IP (a pod) may hold on one capture listener: a
/// busy client gets thousands, and one pod alone never takes the node's
/// whole share.
pub const DEFAULT_CAPTURE_MAX_PER_SOURCE: usize = 8 * 1024;

/// Everything the data path shares.
pub struct Proxy {
    /// What this process serves: the node's ambient pods, or one pod.
    pub scope: Scope,
    pub state: watch::Receiver<Arc<Snapshot>>,
    pub certs: Arc<CertStore>,
    pub client: Arc<HboneClient>,
    pub telemetry: Telemetry,
    pub conns: Arc<Connections>,
    pub drain: Drain,
    pub connect_timeout: Duration,
    /// Marks ztunnel's own sockets so capture skips them (`None` in tests
    /// that run without capture).
    pub mark: Option<u32>,
    /// Connect from the client's IP (IP_TRANSPARENT). Off in sidecar mode
    /// (the proxy is in the pod: its own address is the pod's) and without
    /// capture.
    pub spoof_source: bool,
    /// Where a captured connection's original destination is read from.
    pub orig_dst: OrigDstSource,
    /// The ports of the capture listeners (outbound, inbound plaintext):
    /// a sidecar refuses to forward to them on its own pod
    /// ([`Scope::is_own_listener`]).
    pub listener_ports: Vec<u16>,
    /// The caps of each capture listener ([`accept_loop`]).
    pub capture_limits: Limits,
    round_robin: AtomicUsize,
}

impl Proxy {
    /// The data path for `scope`. With `capture`, sockets are marked; in
    /// node mode they are also transparent (TPROXY) and spoof the client's
    /// IP, in sidecar mode the original destination comes from conntrack
    /// (REDIRECT).
    #[allow(clippy::too_many_arguments, reason = "built once, by app::run")]
    pub fn new(
        scope: Scope,
        state: watch::Receiver<Arc<Snapshot>>,
        certs: Arc<CertStore>,
        client: Arc<HboneClient>,
        telemetry: Telemetry,
        drain: Drain,
        capture: bool,
        listener_ports: Vec<u16>,
    ) -> Arc<Self> {
        let sidecar = scope.is_sidecar();
        Arc::new(Proxy {
            scope,
            state,
            certs,
            client,
            telemetry,
            conns: Arc::default(),
            drain,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            mark: capture.then_some(ZTUNNEL_MARK),
            spoof_source: capture && !sidecar,
            orig_dst: if capture && sidecar {
                OrigDstSource::Conntrack
            } else {
                OrigDstSource::LocalAddr
            },
            listener_ports,
            capture_limits: Limits {
                max_connections: DEFAULT_CAPTURE_MAX_CONNECTIONS,
                max_per_source: DEFAULT_CAPTURE_MAX_PER_SOURCE,
            },
            round_robin: AtomicUsize::new(0),
        })
    }

    /// The original destination of a captured connection.
    pub fn orig_dst(&self, sock: &TcpStream) -> std::io::Result<SocketAddr> {
        match &self.orig_dst {
            OrigDstSource::LocalAddr => crate::capture::orig_dst(sock),
            OrigDstSource::Conntrack => crate::capture::redirected_orig_dst(sock),
            OrigDstSource::Forwarded(table) => forwarded_dst(table, sock.local_addr()?),
        }
    }

    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.borrow().clone()
    }

    /// The next endpoint index for Service VIPs (round robin).
    pub fn next_pick(&self) -> usize {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }

    /// Dial `dst` on behalf of a client at `src`: marked, and leaving from
    /// `src` when spoofing is on. Port 0 picks an ephemeral port.
    ///
    /// A non-zero port is the client's own: the app then sees exactly the
    /// 4-tuple it would without the mesh, and the port stays owned by the
    /// client pod's port allocator rather than the node's. If that tuple is
    /// still taken here, for example by our own TIME_WAIT from the previous
    /// connection on that port, the dial falls back to an ephemeral port.
    pub async fn dial_as(&self, src: SocketAddr, dst: SocketAddr) -> Result<TcpStream, DialError> {
        let opts = |source: SocketAddr| DialOptions {
            mark: self.mark,
            source: self.spoof_source.then_some(source),
            transparent: self.spoof_source,
        };
        if self.spoof_source && src.port() != 0 {
            match dial(dst, opts(src), self.connect_timeout).await {
                Err(e) if e.io_kind().is_some_and(port_taken) => {
                    tracing::debug!(%src, %dst, error = %e, "client port taken here; dialling from an ephemeral port");
                }
                done => return done,
            }
        }
        dial(
            dst,
            opts(SocketAddr::new(src.ip(), 0)),
            self.connect_timeout,
        )
        .await
    }

    /// The source IP outbound tunnels leave from.
    pub fn tunnel_source(&self, src_ip: IpAddr) -> Option<IpAddr> {
        self.spoof_source.then_some(src_ip)
    }
}

/// Where the original destination of a captured connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrigDstSource {
    /// The accepted socket's local address: TPROXY (node mode), or no
    /// capture at all.
    LocalAddr,
    /// `SO_ORIGINAL_DST` from conntrack: nat REDIRECT (sidecar mode).
    Conntrack,
    /// No capture: each listener stands for one destination, looked up by
    /// the address the client connected to (listener → destination, as
    /// `ssh -L` forwards a port). This runs the data path on loopback with
    /// no capture and no privileges (`ztunnel/tests/datapath.rs`); the app
    /// never sets it.
    Forwarded(Arc<HashMap<SocketAddr, SocketAddr>>),
}

/// The destination a [`OrigDstSource::Forwarded`] listener at `listener`
/// stands for. Pure.
pub fn forwarded_dst(
    table: &HashMap<SocketAddr, SocketAddr>,
    listener: SocketAddr,
) -> std::io::Result<SocketAddr> {
    table.get(&listener).copied().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no destination forwarded from {listener}"),
        )
    })
}

/// The errors that mean "this source address and port are in use here".
fn port_taken(kind: std::io::ErrorKind) -> bool {
    matches!(
        kind,
        std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
    )
}

/// A captured connection whose original destination cannot be read (say,
/// no conntrack entry for a REDIRECT): logged, reset, and recorded as
/// refused (`CONNECT`) with the listener's own address as its destination,
/// so it never vanishes silently.
pub fn refuse_unknown_orig_dst(
    proxy: &Proxy,
    sock: &TcpStream,
    direction: Direction,
    peer: SocketAddr,
    err: &std::io::Error,
) {
    let local = sock.local_addr().unwrap_or(peer);
    tracing::info!(src = %peer, listener = %local, ?direction, error = %err, "original destination unknown; connection refused");
    reset_on_close(sock);
    let snap = proxy.snapshot();
    let info = record::ConnInfo {
        direction,
        src_addr: peer,
        src: snap.workload_by_ip(peer.ip()).cloned(),
        src_identity: None,
        dst_addr: local,
        dst_hbone_addr: None,
        dst: None,
        dst_identity: None,
        service: None,
        security: record::Security::None,
    };
    let outcome =
        record::Outcome::failed(ResponseFlag::Connect, format!("{ORIG_DST_UNKNOWN}: {err}"))
            .with_reason("orig_dst_unknown");
    record::ConnRecord::refused(&proxy.telemetry, info, outcome);
}

/// The access-log `error` of a connection whose original destination could
/// not be read.
pub const ORIG_DST_UNKNOWN: &str = "original destination unknown";

/// Makes closing `sock` send a RST instead of a FIN, so a refused client
/// learns at once instead of seeing a clean (and misleading) EOF.
pub fn reset_on_close(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// Accepts connections on `listener` until the proxy drains, handing each
/// (with a drain watch that keeps the drain waiting for it) to `handle` on
/// its own task. Past [`Proxy::capture_limits`] (in all, or from the
/// connection's source IP) a connection is reset at once and counted in
/// `ztunnel_connections_refused_total{listener=what}`.
pub async fn accept_loop<F, Fut>(
    proxy: Arc<Proxy>,
    listener: tokio::net::TcpListener,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<Proxy>, TcpStream, SocketAddr, hbone::drain::Watch) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let drain = proxy.drain.clone();
    let limiter = ConnLimiter::new(what, proxy.capture_limits);
    hbone::drain::accept_until_drained(&listener, &drain, what, |sock, peer, watch| {
        let permit = match limiter.try_acquire(peer.ip()) {
            Ok(p) => p,
            Err(reason) => {
                proxy.telemetry.metrics.record_refused(what, reason);
                hbone::limit::refuse(sock);
                return;
            }
        };
        let conn = handle(proxy.clone(), sock, peer, watch);
        tokio::spawn(async move {
            conn.await;
            drop(permit);
        });
    })
    .await;
}

/// Copies `client` ↔ `upstream` until both sides close, or until `revoked`
/// resolves (a policy change: the outcome is `DENY` with the reason). The
/// outcome carries the bytes each way and any copy error.
pub async fn pipe<A, B, R>(client: &mut A, upstream: &mut B, revoked: R) -> record::Outcome
where
    A: hbone::copy::CopyIo,
    B: hbone::copy::CopyIo,
    R: std::future::Future<Output = conns::Revoked>,
{
    let counters = Arc::new(hbone::copy::Counters::default());
    let result = tokio::select! {
        r = hbone::copy::copy_bidirectional(client, upstream, &counters) => Ok(r),
        why = revoked => Err(why),
    };
    let (sent, recv) = counters.snapshot();
    let mut outcome = record::Outcome::ok(sent, recv);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => outcome.error = Some(inbound::error_chain(&e)),
        Err(why) => {
            outcome.flag = ResponseFlag::Deny;
            outcome.reason = Some(why.0.reason());
            outcome.error = Some(why.to_string());
        }
    }
    outcome
}

#[cfg(test)]
mod tests;
