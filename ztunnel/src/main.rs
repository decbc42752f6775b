//! `ztunnel`: the ambient-mesh node proxy. See `ztunnel --help`.

/// mimalloc instead of glibc malloc: glibc returned the TLS record and
/// HTTP/2 buffers to the kernel and faulted them back in on every burst
/// (about one minor fault per 4 KiB carried), which cost a quarter of the
/// bulk-transfer CPU (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_model::state::WorkloadName;
use ztunnel::app::{self, AccessLogTarget, Config, ConfigSource, Listeners, Mode, XdsSource};

/// Node proxy for ambient mesh: captures pod traffic with TPROXY and carries
/// it over HBONE (mutual TLS 1.3 + HTTP/2 CONNECT). With `--mode sidecar`,
/// one proxy per pod inside the pod's network namespace (nat REDIRECT).
#[derive(Debug, Parser)]
#[command(
    name = "ztunnel",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Option<Args>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Remove capture from the current network namespace (a node's: the
    /// `inet ambient` nft table, the `fwmark 0x400/0xfff lookup 100` ip rule
    /// and the local route in table 100; a pod's: the sidecar's `ip
    /// ambient_sidecar` and `ip6 ambient_sidecar6` tables), then exit. ztunnel keeps them across
    /// SIGTERM so a restart or an upgrade never opens the node or the pod:
    /// run this where ztunnel is being removed, not upgraded. Idempotent.
    Uninstall,
}

/// Serving flags (no subcommand).
#[derive(Debug, clap::Args)]
struct Args {
    /// This node's name, as it appears in the config's node list.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// `node`: serve every ambient pod of the node, from the node's network
    /// namespace. `sidecar`: serve only --workload, from its pod's namespace.
    #[arg(long, value_enum, default_value = "node")]
    mode: ModeArg,
    /// The pod a sidecar serves, as <namespace>/<name>; must run on --node.
    #[arg(long, required_if_eq("mode", "sidecar"))]
    workload: Option<WorkloadName>,
    /// The node's address (Kubernetes: status.hostIP). A sidecar leaves
    /// connections from it (kubelet probes) uncaptured; by default the
    /// address comes from the config's node list, which xDS does not carry.
    /// Its capture is IPv4: an IPv6 address is ignored with a warning.
    #[arg(long, env = "ZTUNNEL_NODE_IP")]
    node_ip: Option<std::net::IpAddr>,
    /// The local config file (nodes, namespaces, workloads, services,
    /// policies). Watched and applied live. Needs --ca-dir.
    #[arg(
        long,
        env = "ZTUNNEL_CONFIG_FILE",
        required_unless_present = "xds_address",
        conflicts_with = "xds_address"
    )]
    config_file: Option<PathBuf>,
    /// Directory of the dev CA (root-cert.pem, root-key.pem), with
    /// --config-file; created on first start. Every ztunnel of a mesh must
    /// share the same root.
    #[arg(long, env = "ZTUNNEL_CA_DIR", required_unless_present = "xds_address")]
    ca_dir: Option<PathBuf>,
    /// The control plane (delta xDS and CA), e.g. https://10.0.0.100:15012.
    /// Needs --xds-root-cert.
    #[arg(long, env = "ZTUNNEL_XDS_ADDRESS", requires = "xds_root_cert")]
    xds_address: Option<String>,
    /// The mesh root certificate (PEM) that signs the control plane's.
    #[arg(long, env = "ZTUNNEL_XDS_ROOT_CERT")]
    xds_root_cert: Option<PathBuf>,
    /// The name to verify in the control plane's certificate.
    #[arg(long, default_value = ztunnel::app::sources::DEFAULT_XDS_SERVER_NAME)]
    xds_server_name: String,
    /// This node's bearer token for the control plane: a bootstrap token,
    /// or in Kubernetes its projected service-account token (audience
    /// `istio-ca`). Read again on each use, as the kubelet rotates it.
    #[arg(long, env = "ZTUNNEL_XDS_TOKEN_FILE")]
    xds_token_file: Option<PathBuf>,
    /// Create the CA in --ca-dir if missing, print the root's path, and exit.
    #[arg(long)]
    init_ca: bool,
    /// Lifetime of workload certificates (rotated at half-life), e.g. 24h, 90s.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Run without nftables capture or transparent sockets (for trying the
    /// proxy on loopback without root).
    #[arg(long)]
    no_capture: bool,
    /// Access log: `-` for stdout, `off`, or a file path (appended).
    #[arg(long, default_value = "-")]
    access_log: String,
    /// Remove capture (node or sidecar) at SIGTERM, as `ztunnel uninstall`
    /// does. Off by default: the rules stay across a restart or an upgrade,
    /// and captured traffic is refused (fails closed) until a ztunnel serves
    /// again. Set
    /// it when ztunnel is being removed from the node: in Kubernetes, when
    /// its DaemonSet is being deleted (it carries a deletionTimestamp), which
    /// a rollout never does; Istio's CNI node agent decides the same way.
    #[arg(long, env = "ZTUNNEL_UNINSTALL_ON_EXIT")]
    uninstall_on_exit: bool,
    /// Where a node ztunnel keeps its handoff socket (created 0700; one per
    /// node). A ztunnel started while another serves with the same flags
    /// takes over its listening sockets through it, so an upgrade refuses
    /// no connection; the old one then drains and exits.
    #[arg(long, env = "ZTUNNEL_STATE_DIR", default_value = app::handoff::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// How long SIGTERM (or a handoff to a new ztunnel) waits for open
    /// connections, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How often the config file is checked for changes, e.g. 200ms.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    poll_interval: Duration,
    #[arg(long, default_value = app::OUTBOUND_ADDR)]
    outbound_addr: std::net::SocketAddr,
    #[arg(long, default_value = app::INBOUND_PLAINTEXT_ADDR)]
    inbound_plaintext_addr: std::net::SocketAddr,
    #[arg(long, default_value = app::HBONE_ADDR)]
    hbone_addr: std::net::SocketAddr,
    #[arg(long, default_value = app::ADMIN_ADDR)]
    admin_addr: std::net::SocketAddr,
    #[arg(long, default_value = app::METRICS_ADDR)]
    metrics_addr: std::net::SocketAddr,
    #[arg(long, default_value = app::READINESS_ADDR)]
    readiness_addr: std::net::SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Node,
    Sidecar,
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let args = match (cli.command, cli.run) {
        (Some(Command::Uninstall), _) => return uninstall(),
        (None, Some(args)) => args,
        (None, None) => unreachable!("clap requires --node without a subcommand"),
    };
    app::raise_fd_limit();
    if args.init_ca {
        let Some(ca_dir) = &args.ca_dir else {
            eprintln!("error: --init-ca needs --ca-dir");
            return ExitCode::FAILURE;
        };
        return match hbone::ca::DevCa::load_or_create(ca_dir) {
            Ok(_) => {
                println!("{}", ca_dir.join(hbone::ca::ROOT_CERT_FILE).display());
                ExitCode::SUCCESS
            }
            Err(e) => report(&e),
        };
    }
    let access_log = AccessLogTarget::from_flag(&args.access_log);
    let mode = match (args.mode, args.workload) {
        (ModeArg::Node, None) => Mode::Node,
        (ModeArg::Sidecar, Some(w)) => Mode::Sidecar(w),
        (ModeArg::Node, Some(_)) => {
            eprintln!("error: --workload needs --mode sidecar");
            return ExitCode::FAILURE;
        }
        (ModeArg::Sidecar, None) => unreachable!("clap requires --workload"),
    };
    let config = Config {
        node: args.node,
        mode,
        source: match (args.xds_address, args.config_file, args.ca_dir) {
            (Some(address), _, _) => ConfigSource::Xds(XdsSource {
                address,
                server_name: args.xds_server_name,
                root_cert: args.xds_root_cert.expect("clap requires it"),
                token_file: args.xds_token_file,
            }),
            (None, Some(config_file), Some(ca_dir)) => ConfigSource::File {
                config_file,
                ca_dir,
            },
            _ => unreachable!("clap requires --config-file and --ca-dir without --xds-address"),
        },
        cert_ttl: args.cert_ttl,
        capture: !args.no_capture,
        listeners: Listeners {
            outbound: args.outbound_addr,
            inbound_plaintext: args.inbound_plaintext_addr,
            hbone: args.hbone_addr,
            admin: args.admin_addr,
            metrics: args.metrics_addr,
            readiness: args.readiness_addr,
        },
        access_log,
        uninstall_on_exit: args.uninstall_on_exit,
        drain_timeout: args.drain_timeout,
        poll_interval: args.poll_interval,
        state_dir: args.state_dir,
        node_ip: args.node_ip,
    };
    match app::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// `ztunnel uninstall`: removes capture from this network namespace: a
/// node's, and a sidecar's (in a pod's namespace).
fn uninstall() -> ExitCode {
    if let Err(e) = ztunnel::capture::Capture::remove() {
        return report(&e);
    }
    if let Err(e) = ztunnel::capture::sidecar::remove() {
        return report(&e);
    }
    println!("capture removed: tables inet ambient, ip ambient_sidecar and ip6 ambient_sidecar6, ip rule, local route");
    ExitCode::SUCCESS
}

/// Prints `error: <err>: <cause>: ...` and fails.
fn report(err: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {}", mesh_runtime::Chain(err));
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_config_source() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["ztunnel", "--node", "n1"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv)
        };
        assert!(parse(&["--config-file", "c.yaml", "--ca-dir", "ca"]).is_ok());
        assert!(parse(&[
            "--xds-address",
            "https://cp:15012",
            "--xds-root-cert",
            "root.pem"
        ])
        .is_ok());
        assert!(
            parse(&["--config-file", "c.yaml"]).is_err(),
            "file mode needs the CA dir"
        );
        assert!(
            parse(&["--xds-address", "https://cp:15012"]).is_err(),
            "xDS needs the root"
        );
        assert!(parse(&[]).is_err(), "a source is required");
        assert!(
            parse(&[
                "--config-file",
                "c",
                "--ca-dir",
                "ca",
                "--xds-address",
                "a",
                "--xds-root-cert",
                "r"
            ])
            .is_err(),
            "not both"
        );
    }

    #[test]
    fn sidecar_mode_needs_a_workload() {
        let parse = |args: &[&str]| {
            let mut argv = vec![
                "ztunnel",
                "--node",
                "n1",
                "--config-file",
                "c",
                "--ca-dir",
                "ca",
            ];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|c| c.run.expect("serving flags"))
        };
        let node = parse(&[]).unwrap();
        assert_eq!(node.mode, ModeArg::Node);
        let side = parse(&["--mode", "sidecar", "--workload", "shop/a"]).unwrap();
        assert_eq!(side.mode, ModeArg::Sidecar);
        assert_eq!(side.workload.unwrap().to_string(), "shop/a");
        assert!(parse(&["--mode", "sidecar"]).is_err(), "needs --workload");
        assert!(
            parse(&["--mode", "sidecar", "--workload", "a"]).is_err(),
            "<namespace>/<name>"
        );
        assert!(parse(&["--mode", "pod"]).is_err());
    }

    #[test]
    fn uninstall_is_a_subcommand_without_serving_flags() {
        let cli = Cli::try_parse_from(["ztunnel", "uninstall"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Uninstall)));
        assert!(cli.run.is_none());
        assert!(
            Cli::try_parse_from(["ztunnel", "--node", "n1", "uninstall"]).is_err(),
            "serving flags and a subcommand conflict"
        );
        let serve = |extra: &[&str]| {
            let mut argv = vec![
                "ztunnel",
                "--node",
                "n1",
                "--config-file",
                "c",
                "--ca-dir",
                "ca",
            ];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().run.unwrap()
        };
        assert!(
            !serve(&[]).uninstall_on_exit,
            "SIGTERM keeps the rules by default"
        );
        assert!(serve(&["--uninstall-on-exit"]).uninstall_on_exit);
        assert!(
            Cli::try_parse_from(["ztunnel"]).is_err(),
            "--node is required"
        );
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("200ms", Some(Duration::from_millis(200))),
            ("90s", Some(Duration::from_secs(90))),
            ("5m", Some(Duration::from_secs(300))),
            ("24h", Some(Duration::from_secs(86400))),
            ("5", None),
            ("s", None),
            ("1d", None),
        ] {
            assert_eq!(parse_duration(s).ok(), want, "{s}");
        }
    }
}
