//! `tcp-relay`: a plain user-space TCP relay, the floor `netns-bench`
//! measures ambient mode against (tests/NETNS-BENCH.md, "Floor: a plain
//! relay").
//!
//! `tcp-relay --listen IP --next-hop IP --ports P1,P2,...` listens on
//! `IP:P` for each port; each accepted connection is dialled on to
//! `next-hop:P` (same port) and copied both ways, with half-close
//! propagated, until both directions are done. No TLS, no HTTP/2, no
//! policy, no telemetry: only what any node proxy must do per byte and per
//! connection. To be comparable with ztunnel it uses the same pieces: a
//! multi-thread tokio runtime with the default worker count, mimalloc,
//! TCP_NODELAY on accepted and dialled sockets (`hbone::socket`), a listen
//! backlog of 1024 and ztunnel's copy loop (`hbone::copy`, buffers growing
//! from 4 KiB to 256 KiB).
//!
//! With `--tls connect|accept --ca DIR` one hop is mutual TLS 1.3 instead:
//! `connect` dials the next hop with TLS, `accept` takes TLS from its peers.
//! Both load the dev CA in `DIR` (creating it if absent), issue themselves a
//! certificate for `spiffe://cluster.local/ns/bench/sa/tcp-relay`, and use
//! HBONE's own rustls configurations and record sealing (`hbone::tls`) with
//! the same SPIFFE checks: a chain of a `connect` relay and an `accept`
//! relay is a TLS-only tunnel, the data path of a sidecar mesh (Envoy's
//! mutual TLS between sidecars), with no HTTP/2.
//!
//! `--hbone connect|accept --ca DIR` makes that hop HBONE instead, through
//! the `hbone` library ztunnel uses: the `connect` relay opens a CONNECT
//! stream per connection over its pooled HBONE connections to
//! `next-hop:15008` (authority `next-hop:P`), and the `accept` relay serves
//! HBONE on `listen:15008` and dials its next hop on the authority's port
//! (one of `--ports`; others get 503). That is ambient's tunnel without
//! capture, policy or telemetry.
//!
//! Once every listener is bound it prints `tcp-relay: listening ...` on
//! stderr; a failed connection prints one line there and never stops the
//! relay. SIGTERM or SIGINT ends it with status 0.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hbone::ca::DevCa;
use hbone::cert::CertStore;
use hbone::client::{ConnectRequest, HboneClient};
use hbone::copy::{copy_bidirectional, CopyIo, Counters};
use hbone::drain::Drain;
use hbone::headers::ConnectMeta;
use hbone::server::{
    FixedIdentity, Handler, HboneServer, InboundRequest, ServerConfig, ServerError,
};
use hbone::socket::{dial, DialOptions};
use hbone::SpiffeId;
use mesh_runtime::error_chain;
use mesh_tests::process::Flags;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// ztunnel's capture listeners use the same backlog.
const LISTEN_BACKLOG: u32 = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The TLS handshake, like ztunnel's HBONE handshake, is bounded.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Config {
    listen: IpAddr,
    next_hop: IpAddr,
    ports: Vec<u16>,
    secure: Option<Secure>,
}

/// The node-to-node hop, when it is not plain TCP.
#[derive(Debug)]
struct Secure {
    tunnel: Tunnel,
    side: Side,
    ca: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tunnel {
    /// Mutual TLS 1.3 around the raw bytes.
    Tls,
    /// HBONE: HTTP/2 CONNECT inside mutual TLS 1.3.
    Hbone,
}

/// Which end of the secured hop this relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Dial the next hop through the tunnel.
    Connect,
    /// Accept the tunnel from peers.
    Accept,
}

impl std::str::FromStr for Side {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "connect" => Ok(Side::Connect),
            "accept" => Ok(Side::Accept),
            other => Err(format!("takes connect or accept, not {other:?}")),
        }
    }
}

/// What a relay hands each connection it accepts on `--ports`.
enum Hop {
    Plain,
    TlsConnect(tokio_rustls::TlsConnector),
    TlsAccept(tokio_rustls::TlsAcceptor),
    HboneConnect {
        client: Arc<HboneClient>,
        id: SpiffeId,
    },
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("tcp-relay: {err}");
    }
    eprintln!("usage: tcp-relay --listen IP --next-hop IP --ports P1,P2,... [--tls|--hbone connect|accept --ca DIR]");
    std::process::exit(2);
}

fn parse(mut flags: Flags) -> Config {
    let (mut listen, mut next_hop, mut ports) = (None, None, Vec::new());
    let (mut tunnel, mut ca) = (None, None);
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--listen" => listen = Some(flags.value("--listen")),
            "--next-hop" => next_hop = Some(flags.value("--next-hop")),
            "--ports" => ports = flags.list("--ports"),
            "--tls" => tunnel = Some((Tunnel::Tls, flags.value::<Side>("--tls"))),
            "--hbone" => tunnel = Some((Tunnel::Hbone, flags.value::<Side>("--hbone"))),
            "--ca" => ca = Some(PathBuf::from(flags.string("--ca"))),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if ports.is_empty() {
        usage("--ports is required");
    }
    let secure = match (tunnel, ca) {
        (Some((tunnel, side)), Some(ca)) => Some(Secure { tunnel, side, ca }),
        (None, None) => None,
        _ => usage("--tls or --hbone goes with --ca"),
    };
    Config {
        listen: listen.unwrap_or_else(|| usage("--listen is required")),
        next_hop: next_hop.unwrap_or_else(|| usage("--next-hop is required")),
        ports,
        secure,
    }
}

fn main() -> ExitCode {
    let cfg = parse(Flags::from_env(usage));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tcp-relay")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tcp-relay: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cfg))
}

/// This relay's identity (both relays share it).
fn relay_id() -> SpiffeId {
    SpiffeId::new("cluster.local", "bench", "tcp-relay").expect("a valid identity")
}

/// A certificate store over the dev CA in `ca`.
fn cert_store(ca: &Path) -> Result<Arc<CertStore>, String> {
    let ca = DevCa::load_or_create(ca).map_err(|e| format!("the CA in {}: {e}", ca.display()))?;
    Ok(CertStore::new(Arc::new(ca)))
}

/// How this relay takes its connections.
enum Serve {
    /// A listener on each of `--ports`; each connection goes through `Hop`.
    Ports(Arc<Hop>),
    /// One HBONE server on the HBONE port (an HBONE accept relay).
    Hbone(Arc<CertStore>),
}

/// What this relay does with its connections. TLS uses HBONE's own
/// configurations, ALPN `h2` included although the relays send raw bytes:
/// the handshake is byte for byte the one ztunnels make.
async fn serve(secure: Option<&Secure>) -> Result<Serve, String> {
    let Some(secure) = secure else {
        return Ok(Serve::Ports(Arc::new(Hop::Plain)));
    };
    let certs = cert_store(&secure.ca)?;
    let id = relay_id();
    let hop = match (secure.tunnel, secure.side) {
        (Tunnel::Hbone, Side::Accept) => return Ok(Serve::Hbone(certs)),
        (Tunnel::Hbone, Side::Connect) => {
            let client = HboneClient::new(certs, hbone::client::ClientConfig::default());
            Hop::HboneConnect { client, id }
        }
        (Tunnel::Tls, side) => {
            let cert = certs
                .get(&id)
                .await
                .map_err(|e| format!("issuing {id}: {e}"))?;
            match side {
                Side::Connect => Hop::TlsConnect(
                    hbone::tls::client_config(&cert, &[id])
                        .map_err(|e| format!("TLS client config: {e}"))?
                        .into(),
                ),
                Side::Accept => Hop::TlsAccept(
                    hbone::tls::server_config(&cert)
                        .map_err(|e| format!("TLS server config: {e}"))?
                        .into(),
                ),
            }
        }
    };
    Ok(Serve::Ports(Arc::new(hop)))
}

/// The accepting end of an HBONE hop: each CONNECT to one of `ports` is
/// dialled on to `next_hop` on the same port and copied.
struct RelayHandler {
    next_hop: IpAddr,
    ports: Vec<u16>,
}

impl Handler for RelayHandler {
    fn handle(&self, req: InboundRequest) -> BoxFuture<'static, ()> {
        let to = SocketAddr::new(self.next_hop, req.authority.port());
        let known = self.ports.contains(&to.port());
        Box::pin(async move {
            let peer = req.peer_addr;
            if !known {
                eprintln!(
                    "tcp-relay: {peer}: CONNECT to {} is not relayed",
                    req.authority
                );
                req.reject(http::StatusCode::SERVICE_UNAVAILABLE);
                return;
            }
            let outbound = match dial(to, DialOptions::default(), CONNECT_TIMEOUT).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tcp-relay: {peer} -> {to}: {}", error_chain(&e));
                    req.reject(http::StatusCode::SERVICE_UNAVAILABLE);
                    return;
                }
            };
            let result = match req.accept() {
                Ok(inbound) => copy(inbound, outbound).await,
                Err(e) => Err(format!("answering the CONNECT: {e}")),
            };
            if let Err(e) = result {
                eprintln!("tcp-relay: {peer} -> {to}: {e}");
            }
        })
    }

    fn connection_failed(&self, peer: SocketAddr, _local: SocketAddr, err: &ServerError) {
        eprintln!("tcp-relay: {peer}: HBONE connection: {}", error_chain(err));
    }
}

async fn run(cfg: Config) -> ExitCode {
    let serve = match serve(cfg.secure.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcp-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    // An HBONE accept relay listens on the HBONE port only.
    let ports = match serve {
        Serve::Hbone(_) => vec![hbone::HBONE_PORT],
        Serve::Ports(_) => cfg.ports.clone(),
    };
    let mut listeners = Vec::with_capacity(ports.len());
    for port in &ports {
        let addr = SocketAddr::new(cfg.listen, *port);
        match listen(addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("tcp-relay: listening on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // The signal handlers exist before the ready line, so a SIGTERM sent as
    // soon as it appears still ends the relay cleanly.
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("tcp-relay: installing the SIGTERM/SIGINT handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    match serve {
        Serve::Hbone(certs) => {
            let identity = Arc::new(FixedIdentity {
                certs,
                id: relay_id(),
            });
            let handler = Arc::new(RelayHandler {
                next_hop: cfg.next_hop,
                ports: cfg.ports.clone(),
            });
            let server = HboneServer::new(identity, handler, ServerConfig::default());
            // The one listener: the HBONE port.
            let listener = listeners.pop().expect("the HBONE listener");
            tokio::spawn(async move { server.serve(listener, Drain::new()).await });
        }
        Serve::Ports(hop) => {
            for listener in listeners {
                tokio::spawn(accept_loop(listener, cfg.next_hop, hop.clone()));
            }
        }
    }
    let how = match &cfg.secure {
        None => String::new(),
        Some(s) => format!(
            " ({} {:?})",
            match s.side {
                Side::Connect => "dialling",
                Side::Accept => "accepting",
            },
            s.tunnel
        ),
    };
    eprintln!(
        "tcp-relay: listening on {} ports {ports:?}, forwarding to {}{how}",
        cfg.listen, cfg.next_hop
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    ExitCode::SUCCESS
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(listener: TcpListener, next_hop: IpAddr, hop: Arc<Hop>) {
    loop {
        match listener.accept().await {
            Ok((inbound, peer)) => {
                tokio::spawn(relay(inbound, peer, next_hop, hop.clone()));
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("tcp-relay: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One connection: dial the next hop on the port it arrived on (through the
/// tunnel where configured), then copy until both directions are done.
/// Errors end this connection only.
async fn relay(inbound: TcpStream, peer: SocketAddr, next_hop: IpAddr, hop: Arc<Hop>) {
    let local = match inbound.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tcp-relay: {peer}: reading the local address: {e}");
            return;
        }
    };
    let to = SocketAddr::new(next_hop, local.port());
    if let Err(e) = inbound.set_nodelay(true) {
        eprintln!("tcp-relay: {peer} -> {local}: TCP_NODELAY: {e}");
    }
    if let Err(e) = forward(inbound, to, &hop).await {
        eprintln!("tcp-relay: {peer} -> {to}: {e}");
    }
}

/// Dials `to`, through the tunnel on whichever side has it, and copies.
async fn forward(inbound: TcpStream, to: SocketAddr, hop: &Hop) -> Result<(), String> {
    let dial_next = || async {
        dial(to, DialOptions::default(), CONNECT_TIMEOUT)
            .await
            .map_err(|e| error_chain(&e))
    };
    match hop {
        Hop::Plain => copy(inbound, dial_next().await?).await,
        Hop::TlsConnect(connector) => {
            let name = hbone::tls::server_name(to);
            let outbound = handshake(connector.connect(name, dial_next().await?)).await?;
            copy(inbound, outbound).await
        }
        Hop::TlsAccept(acceptor) => {
            let inbound = handshake(acceptor.accept(inbound)).await?;
            copy(inbound, dial_next().await?).await
        }
        Hop::HboneConnect { client, id } => {
            let req = ConnectRequest {
                source: id.clone(),
                source_ip: None,
                expected: vec![id.clone()],
                via: SocketAddr::new(to.ip(), hbone::HBONE_PORT),
                authority: to,
                meta: ConnectMeta::default(),
            };
            let stream = client
                .connect(&req)
                .await
                .map_err(|e| format!("HBONE CONNECT: {}", error_chain(&e)))?;
            copy(inbound, stream).await
        }
    }
}

/// A TLS handshake, bounded by [`HANDSHAKE_TIMEOUT`].
async fn handshake<S>(
    hs: impl std::future::Future<Output = std::io::Result<S>>,
) -> Result<S, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, hs).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("TLS handshake: {}", error_chain(&e))),
        Err(_) => Err(format!(
            "TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}"
        )),
    }
}

/// Copies both ways until both directions are done; an error names the
/// bytes moved before it.
async fn copy(mut a: impl CopyIo, mut b: impl CopyIo) -> Result<(), String> {
    let counters = Arc::new(Counters::default());
    copy_bidirectional(&mut a, &mut b, &counters)
        .await
        .map_err(|e| {
            let (up, down) = counters.snapshot();
            format!("{} (after {up} bytes up, {down} down)", error_chain(&e))
        })
}
