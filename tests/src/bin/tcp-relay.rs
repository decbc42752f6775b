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
//! Once every listener is bound it prints `tcp-relay: listening ...` on
//! stderr; a failed connection prints one line there and never stops the
//! relay. SIGTERM or SIGINT ends it with status 0.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hbone::copy::{copy_bidirectional, Counters};
use hbone::socket::{dial, DialOptions};
use mesh_tests::process::Flags;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use ztunnel::proxy::inbound::error_chain;

/// ztunnel's capture listeners use the same backlog.
const LISTEN_BACKLOG: u32 = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Config {
    listen: IpAddr,
    next_hop: IpAddr,
    ports: Vec<u16>,
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("tcp-relay: {err}");
    }
    eprintln!("usage: tcp-relay --listen IP --next-hop IP --ports P1,P2,...");
    std::process::exit(2);
}

fn parse(mut flags: Flags) -> Config {
    let (mut listen, mut next_hop, mut ports) = (None, None, Vec::new());
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--listen" => listen = Some(flags.value("--listen")),
            "--next-hop" => next_hop = Some(flags.value("--next-hop")),
            "--ports" => ports = flags.list("--ports"),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if ports.is_empty() {
        usage("--ports is required");
    }
    Config {
        listen: listen.unwrap_or_else(|| usage("--listen is required")),
        next_hop: next_hop.unwrap_or_else(|| usage("--next-hop is required")),
        ports,
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

async fn run(cfg: Config) -> ExitCode {
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
        tokio::spawn(accept_loop(listener, cfg.next_hop));
    }
    eprintln!(
        "tcp-relay: listening on {} ports {:?}, forwarding to {}",
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

async fn accept_loop(listener: TcpListener, next_hop: IpAddr) {
    loop {
        match listener.accept().await {
            Ok((inbound, peer)) => {
                tokio::spawn(relay(inbound, peer, next_hop));
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("tcp-relay: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One connection: dial the next hop on the port it arrived on, then copy
/// until both directions are done. Errors end this connection only.
async fn relay(mut inbound: TcpStream, peer: SocketAddr, next_hop: IpAddr) {
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
    let mut outbound = match dial(to, DialOptions::default(), CONNECT_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcp-relay: {peer} -> {to}: {}", error_chain(&e));
            return;
        }
    };
    let counters = Arc::new(Counters::default());
    if let Err(e) = copy_bidirectional(&mut inbound, &mut outbound, &counters).await {
        let (up, down) = counters.snapshot();
        eprintln!(
            "tcp-relay: {peer} -> {to}: {} (after {up} bytes up, {down} down)",
            error_chain(&e)
        );
    }
}
