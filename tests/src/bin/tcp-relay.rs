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

use hbone::ca::DevCa;
use hbone::copy::{copy_bidirectional, CopyIo, Counters};
use hbone::socket::{dial, DialOptions};
use hbone::SpiffeId;
use mesh_tests::process::Flags;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use ztunnel::proxy::inbound::error_chain;

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
    tls: Option<(TlsSide, PathBuf)>,
}

/// Which hop of this relay is TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsSide {
    /// Dial the next hop with TLS.
    Connect,
    /// Accept TLS from peers.
    Accept,
}

impl std::str::FromStr for TlsSide {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "connect" => Ok(TlsSide::Connect),
            "accept" => Ok(TlsSide::Accept),
            other => Err(format!("--tls takes connect or accept, not {other:?}")),
        }
    }
}

/// What a TLS relay hands each connection.
enum Tls {
    Connect(tokio_rustls::TlsConnector),
    Accept(tokio_rustls::TlsAcceptor),
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("tcp-relay: {err}");
    }
    eprintln!("usage: tcp-relay --listen IP --next-hop IP --ports P1,P2,... [--tls connect|accept --ca DIR]");
    std::process::exit(2);
}

fn parse(mut flags: Flags) -> Config {
    let (mut listen, mut next_hop, mut ports) = (None, None, Vec::new());
    let (mut side, mut ca) = (None, None);
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--listen" => listen = Some(flags.value("--listen")),
            "--next-hop" => next_hop = Some(flags.value("--next-hop")),
            "--ports" => ports = flags.list("--ports"),
            "--tls" => side = Some(flags.value::<TlsSide>("--tls")),
            "--ca" => ca = Some(PathBuf::from(flags.string("--ca"))),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if ports.is_empty() {
        usage("--ports is required");
    }
    let tls = match (side, ca) {
        (Some(side), Some(ca)) => Some((side, ca)),
        (None, None) => None,
        _ => usage("--tls and --ca go together"),
    };
    Config {
        listen: listen.unwrap_or_else(|| usage("--listen is required")),
        next_hop: next_hop.unwrap_or_else(|| usage("--next-hop is required")),
        ports,
        tls,
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

/// The TLS side of this relay, with a fresh certificate from the dev CA.
/// HBONE's own configurations, ALPN `h2` included although the relays send
/// raw bytes: the handshake is byte for byte the one ztunnels make.
fn tls(side: TlsSide, ca: &Path) -> Result<Tls, String> {
    let ca = DevCa::load_or_create(ca).map_err(|e| format!("the CA in {}: {e}", ca.display()))?;
    let id = SpiffeId::new("cluster.local", "bench", "tcp-relay").expect("a valid identity");
    let cert = ca.issue(&id).map_err(|e| format!("issuing {id}: {e}"))?;
    Ok(match side {
        TlsSide::Connect => Tls::Connect(
            hbone::tls::client_config(&cert, &[id])
                .map_err(|e| format!("TLS client config: {e}"))?
                .into(),
        ),
        TlsSide::Accept => Tls::Accept(
            hbone::tls::server_config(&cert)
                .map_err(|e| format!("TLS server config: {e}"))?
                .into(),
        ),
    })
}

async fn run(cfg: Config) -> ExitCode {
    let tls = match &cfg.tls {
        None => None,
        Some((side, ca)) => match tls(*side, ca) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                eprintln!("tcp-relay: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut listeners = Vec::with_capacity(cfg.ports.len());
    for port in &cfg.ports {
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
    for listener in listeners {
        tokio::spawn(accept_loop(listener, cfg.next_hop, tls.clone()));
    }
    let hop = match &cfg.tls {
        None => "",
        Some((TlsSide::Connect, _)) => " over TLS",
        Some((TlsSide::Accept, _)) => " (accepting TLS)",
    };
    eprintln!(
        "tcp-relay: listening on {} ports {:?}, forwarding to {}{hop}",
        cfg.listen, cfg.ports, cfg.next_hop
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

async fn accept_loop(listener: TcpListener, next_hop: IpAddr, tls: Option<Arc<Tls>>) {
    loop {
        match listener.accept().await {
            Ok((inbound, peer)) => {
                tokio::spawn(relay(inbound, peer, next_hop, tls.clone()));
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("tcp-relay: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One connection: dial the next hop on the port it arrived on (each hop
/// TLS where configured), then copy until both directions are done. Errors
/// end this connection only.
async fn relay(inbound: TcpStream, peer: SocketAddr, next_hop: IpAddr, tls: Option<Arc<Tls>>) {
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
    if let Err(e) = forward(inbound, to, tls.as_deref()).await {
        eprintln!("tcp-relay: {peer} -> {to}: {e}");
    }
}

/// Dials `to`, with the TLS handshake on whichever side has it, and copies.
async fn forward(inbound: TcpStream, to: SocketAddr, tls: Option<&Tls>) -> Result<(), String> {
    let dial_next = || async {
        dial(to, DialOptions::default(), CONNECT_TIMEOUT)
            .await
            .map_err(|e| error_chain(&e))
    };
    match tls {
        None => copy(inbound, dial_next().await?).await,
        Some(Tls::Connect(connector)) => {
            let name = hbone::tls::server_name(to);
            let outbound = handshake(connector.connect(name, dial_next().await?)).await?;
            copy(inbound, outbound).await
        }
        Some(Tls::Accept(acceptor)) => {
            let inbound = handshake(acceptor.accept(inbound)).await?;
            copy(inbound, dial_next().await?).await
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
