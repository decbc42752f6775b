//! `control-plane`: serves delta ADS and the CA to ztunnels on 15012 (TLS),
//! from the local YAML config file, with node bootstrap tokens.

/// mimalloc instead of glibc malloc: glibc returned the TLS record and
/// HTTP/2 buffers to the kernel and faulted them back in on every burst
/// (about one minor fault per 4 KiB carried), which cost a quarter of the
/// bulk-transfer CPU in ztunnel (benches/README.md); the control plane
/// shares the same TLS and gRPC stack.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use control_plane::serve::{
    self, Config, DEFAULT_CA_DIR, DEFAULT_CONFIG_FILE, DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN,
    DEFAULT_TOKENS_FILE,
};
use control_plane::source::DEFAULT_POLL_INTERVAL;

#[derive(Debug, Parser)]
#[command(
    name = "control-plane",
    about = "ambient-mesh control plane: delta xDS and CA"
)]
struct Flags {
    /// The mesh config (the ztunnel local YAML format), watched for changes.
    #[arg(long, env = "CONTROL_PLANE_CONFIG_FILE", default_value = DEFAULT_CONFIG_FILE)]
    config_file: PathBuf,
    /// Where the root key and certificate live (created on first start).
    #[arg(long, env = "CONTROL_PLANE_CA_DIR", default_value = DEFAULT_CA_DIR)]
    ca_dir: PathBuf,
    /// YAML map of node name to bootstrap token.
    #[arg(long, env = "CONTROL_PLANE_TOKENS_FILE", default_value = DEFAULT_TOKENS_FILE)]
    tokens_file: PathBuf,
    /// xDS and CA (TLS).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// `/metrics` and `/healthz/ready` (plain HTTP).
    #[arg(long, default_value = DEFAULT_METRICS_LISTEN)]
    metrics_listen: SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let f = Flags::parse();
    let cfg = Config {
        config_file: f.config_file,
        ca_dir: f.ca_dir,
        tokens_file: f.tokens_file,
        listen: f.listen,
        metrics_listen: f.metrics_listen,
        poll_interval: DEFAULT_POLL_INTERVAL,
    };
    let running = match serve::start(&cfg).await {
        Ok(r) => r,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("control-plane: {msg}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    std::process::ExitCode::SUCCESS
}
