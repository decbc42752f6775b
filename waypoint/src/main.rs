//! `waypoint`: the ambient-mesh L7 proxy. See `waypoint --help`.

/// mimalloc, as ztunnel: glibc malloc returns and re-faults the TLS and
/// HTTP/2 buffers on every burst (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use waypoint::app::{self, AccessLogTarget, Config, ConfigSource, Listeners, XdsSource};
use waypoint::lb::LbPolicy;
use waypoint::proxy::Tuning;

/// The waypoint of ambient mesh: terminates HBONE on 15008 for the Services
/// and pods bound to it, applies L7 (HTTP/1.1, HTTP/2) or forwards opaque
/// TCP, balances each request over the ready endpoints, and re-tunnels to
/// them over HBONE under its own identity.
#[derive(Debug, Parser)]
#[command(name = "waypoint", version)]
struct Args {
    /// The waypoint's name (its Gateway, and its service account).
    #[arg(long, env = "WAYPOINT_NAME")]
    name: String,
    /// The waypoint's own namespace. Its identity is
    /// spiffe://<trust domain>/ns/<namespace>/sa/<name>.
    #[arg(long, env = "WAYPOINT_NAMESPACE")]
    namespace: String,
    /// The trust domain of the waypoint's identity. Default: the config
    /// file's, or cluster.local over xDS.
    #[arg(long, env = "WAYPOINT_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// The local config file (as ztunnel's). Watched and applied live.
    /// Needs --ca-dir.
    #[arg(
        long,
        env = "WAYPOINT_CONFIG_FILE",
        required_unless_present = "xds_address",
        conflicts_with = "xds_address"
    )]
    config_file: Option<PathBuf>,
    /// Directory of the dev CA (root-cert.pem, root-key.pem), with
    /// --config-file: the same CA as the mesh's ztunnels.
    #[arg(long, env = "WAYPOINT_CA_DIR", required_unless_present = "xds_address")]
    ca_dir: Option<PathBuf>,
    /// The control plane (delta xDS and CA), e.g. https://10.0.0.100:15012.
    /// Needs --root-cert and --token-file.
    #[arg(
        long,
        env = "WAYPOINT_XDS_ADDRESS",
        requires = "root_cert",
        requires = "token_file"
    )]
    xds_address: Option<String>,
    /// The mesh root certificate (PEM) that signs the control plane's.
    #[arg(long, env = "WAYPOINT_ROOT_CERT")]
    root_cert: Option<PathBuf>,
    /// The waypoint's own token: bound to its identity in the control
    /// plane's tokens file, or in Kubernetes its projected service-account
    /// token (audience `istio-ca`). Read again on each use.
    #[arg(long, env = "WAYPOINT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The name to verify in the control plane's certificate.
    #[arg(long, default_value = app::sources::DEFAULT_XDS_SERVER_NAME)]
    xds_server_name: String,
    /// Lifetime of the waypoint's certificate (rotated at half-life).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Per-request load balancing over a Service's ready endpoints.
    #[arg(long, value_enum, default_value = "least-request")]
    lb: LbPolicy,
    /// Access log: `-` for stdout, `off`, or a file path (appended).
    #[arg(long, default_value = "-")]
    access_log: String,
    /// How long SIGTERM waits for open connections and requests.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How often the config file is checked for changes.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    poll_interval: Duration,
    /// How long a client may take to send a whole HTTP/1.1 request head,
    /// from its first byte (slowloris); answered 408.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_header_timeout: Duration,
    /// How long a port with no declared protocol waits for the client's
    /// first bytes before forwarding the stream as opaque TCP (a protocol
    /// whose server speaks first pays this once per connection).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    protocol_detect_timeout: Duration,
    /// Data-path worker threads (default: one per CPU).
    #[arg(long, env = "WAYPOINT_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[arg(long, default_value = app::HBONE_ADDR)]
    hbone_addr: std::net::SocketAddr,
    #[arg(long, default_value = app::ADMIN_ADDR)]
    admin_addr: std::net::SocketAddr,
    #[arg(long, default_value = app::METRICS_ADDR)]
    metrics_addr: std::net::SocketAddr,
    #[arg(long, default_value = app::READINESS_ADDR)]
    readiness_addr: std::net::SocketAddr,
}

/// `90s`, `200ms`, `5m`, `24h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 200ms, 5m or 24h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?} has unit {unit:?}; use ms, s, m or h")),
    }
}

impl Args {
    fn into_config(self) -> Config {
        let access_log = AccessLogTarget::from_flag(&self.access_log);
        let source = match (self.xds_address, self.config_file, self.ca_dir) {
            (Some(address), _, _) => ConfigSource::Xds(XdsSource {
                address,
                server_name: self.xds_server_name,
                root_cert: self.root_cert.expect("clap requires --root-cert"),
                token_file: self.token_file.expect("clap requires --token-file"),
            }),
            (None, Some(config_file), Some(ca_dir)) => ConfigSource::File {
                config_file,
                ca_dir,
            },
            _ => unreachable!("clap requires --config-file and --ca-dir without --xds-address"),
        };
        Config {
            name: self.name,
            namespace: self.namespace,
            trust_domain: self.trust_domain,
            source,
            cert_ttl: self.cert_ttl,
            lb: self.lb,
            listeners: Listeners {
                hbone: self.hbone_addr,
                admin: self.admin_addr,
                metrics: self.metrics_addr,
                readiness: self.readiness_addr,
            },
            access_log,
            drain_timeout: self.drain_timeout,
            poll_interval: self.poll_interval,
            worker_threads: self.worker_threads,
            tuning: Tuning {
                head_timeout: self.request_header_timeout,
                detect_timeout: self.protocol_detect_timeout,
            },
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Args::parse().into_config();
    match app::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", mesh_runtime::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["waypoint", "--name", "wp", "--namespace", "shop"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv)
    }

    #[test]
    fn exactly_one_config_source() {
        assert!(parse(&["--config-file", "c.yaml", "--ca-dir", "ca"]).is_ok());
        let xds = [
            "--xds-address",
            "https://cp:15012",
            "--root-cert",
            "root.pem",
            "--token-file",
            "tok",
        ];
        assert!(parse(&xds).is_ok());
        assert!(parse(&xds[..4]).is_err(), "xDS needs the waypoint's token");
        assert!(parse(&xds[..2]).is_err(), "xDS needs the root");
        assert!(
            parse(&["--config-file", "c.yaml"]).is_err(),
            "needs --ca-dir"
        );
        assert!(parse(&[]).is_err(), "a source is required");
        let mut both = vec!["--config-file", "c", "--ca-dir", "ca"];
        both.extend_from_slice(&xds);
        assert!(parse(&both).is_err(), "not both");
    }

    #[test]
    fn name_and_namespace_are_required() {
        let no_ns = Args::try_parse_from(["waypoint", "--name", "wp", "--config-file", "c"]);
        assert!(no_ns.is_err());
    }

    #[test]
    fn config_from_flags() {
        let cfg = parse(&[
            "--config-file",
            "c.yaml",
            "--ca-dir",
            "ca",
            "--lb",
            "round-robin",
            "--drain-timeout",
            "3s",
        ])
        .unwrap()
        .into_config();
        assert_eq!(cfg.lb, LbPolicy::RoundRobin);
        assert_eq!(cfg.drain_timeout, Duration::from_secs(3));
        assert_eq!(cfg.listeners.hbone.port(), 15008);
        assert_eq!(cfg.listeners.admin.to_string(), "127.0.0.1:15000");
        assert!(matches!(cfg.source, ConfigSource::File { .. }));
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("200ms", Some(Duration::from_millis(200))),
            ("90s", Some(Duration::from_secs(90))),
            ("5m", Some(Duration::from_secs(300))),
            ("24h", Some(Duration::from_secs(86400))),
            ("5", None),
            ("1d", None),
        ] {
            assert_eq!(parse_duration(s).ok(), want, "{s}");
        }
    }
}
