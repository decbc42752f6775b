//! `control-plane`: serves delta ADS and the CA to ztunnels on 15012 (TLS),
//! from the local YAML config file or a Kubernetes cluster's watches, with
//! node bootstrap tokens.

/// mimalloc instead of glibc malloc: glibc returned the TLS record and
/// HTTP/2 buffers to the kernel and faulted them back in on every burst
/// (about one minor fault per 4 KiB carried), which cost a quarter of the
/// bulk-transfer CPU in ztunnel (benches/README.md); the control plane
/// shares the same TLS and gRPC stack.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use control_plane::accept::DEFAULT_MAX_CONNECTIONS_PER_IP;
use control_plane::serve::{
    self, Config, DEFAULT_CA_DIR, DEFAULT_CONFIG_FILE, DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN,
    DEFAULT_TOKENS_FILE,
};
use control_plane::source::kube::{
    client, KubeConfig, DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN,
};
use control_plane::source::DEFAULT_POLL_INTERVAL;
use control_plane::waypoint_controller::{self, objects::Settings as WaypointSettings};

/// Where the mesh's state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SourceFlag {
    /// The local YAML file (`--config-file`).
    File,
    /// A Kubernetes cluster's Namespaces, Pods, Services, EndpointSlices
    /// and Istio security policies.
    Kubernetes,
}

#[derive(Debug, Parser)]
#[command(
    name = "control-plane",
    about = "ambient-mesh control plane: delta xDS and CA"
)]
struct Flags {
    /// Where the mesh's state comes from.
    #[arg(long, env = "CONTROL_PLANE_SOURCE", value_enum, default_value = "file")]
    source: SourceFlag,
    /// Kubernetes source: the kubeconfig to use (default: $KUBECONFIG or
    /// ~/.kube/config if there is one, else the in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes source: the SPIFFE trust domain of workload identities
    /// (the file source reads it from the file).
    #[arg(long, env = "TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Kubernetes source: Istio's root namespace (its policies are global,
    /// its PeerAuthentication is the mesh-wide default).
    #[arg(long, env = "ROOT_NAMESPACE", default_value = DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    /// Kubernetes source: reconcile `istio-waypoint` Gateways into waypoint
    /// Deployments, Services and ServiceAccounts.
    #[arg(long, env = "CONTROL_PLANE_WAYPOINT_CONTROLLER", default_value_t = true, action = clap::ArgAction::Set)]
    waypoint_controller: bool,
    /// The image of the waypoints the controller deploys.
    #[arg(long, env = "CONTROL_PLANE_WAYPOINT_IMAGE", default_value_t = WaypointSettings::default().image)]
    waypoint_image: String,
    /// Image pull secrets (names, comma-separated) of the waypoint pods.
    #[arg(
        long,
        env = "CONTROL_PLANE_WAYPOINT_PULL_SECRETS",
        value_delimiter = ','
    )]
    waypoint_pull_secrets: Vec<String>,
    /// The control plane's address as the waypoints reach it.
    #[arg(long, env = "CONTROL_PLANE_XDS_ADDRESS", default_value_t = WaypointSettings::default().xds_address)]
    waypoint_xds_address: String,
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
    /// Connections open at once on `--listen` (default: 16384, kept under
    /// the open-file limit).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections one source IP may hold on `--listen`.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// Extra names for the serving certificate: DNS names or IP addresses
    /// clients dial (comma-separated; in Kubernetes mode the Service's
    /// names are added: `<service>.<root ns>.svc[.cluster.local]`).
    #[arg(long, env = "CONTROL_PLANE_SERVING_NAMES", value_delimiter = ',')]
    serving_names: Vec<String>,
    /// Kubernetes mode: the control plane's Service in the root namespace.
    #[arg(long, env = "CONTROL_PLANE_SERVICE", default_value = serve::DEFAULT_SERVICE_NAME)]
    service_name: String,
    /// Kubernetes mode: this replica's name in the leader Lease (default:
    /// `$POD_NAME`, else the host name and process id).
    #[arg(long, env = "POD_NAME")]
    leader_identity: Option<String>,
    /// Deadline for a client's TLS handshake and HTTP/2 preface.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// How often each client is pinged (HTTP/2 PING).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    keepalive_interval: Duration,
    /// A client that does not answer a ping within this is dropped.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    keepalive_timeout: Duration,
    /// The shortest certificate lifetime issued, whatever a client asks
    /// for (tests of expiry and rotation set a few seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    min_cert_ttl: Duration,
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let f = Flags::parse();
    // One descriptor per connected node, and more while a flood of
    // handshakes is cut off by its deadline.
    match mesh_runtime::limits::raise_fd_limit() {
        Some(l) => tracing::info!(soft = l.soft, hard = l.hard, "open-file limit"),
        None => tracing::warn!("the open-file limit is unknown"),
    }
    let waypoints =
        (f.source == SourceFlag::Kubernetes && f.waypoint_controller).then(|| WaypointSettings {
            image: f.waypoint_image.clone(),
            xds_address: f.waypoint_xds_address.clone(),
            trust_domain: f.trust_domain.clone(),
            image_pull_secrets: f
                .waypoint_pull_secrets
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            ..WaypointSettings::default()
        });
    let cfg = Config {
        config_file: f.config_file,
        ca_dir: f.ca_dir,
        tokens_file: f.tokens_file,
        listen: f.listen,
        metrics_listen: f.metrics_listen,
        poll_interval: DEFAULT_POLL_INTERVAL,
        max_connections: f.max_connections,
        max_connections_per_ip: f.max_connections_per_ip,
        handshake_timeout: f.handshake_timeout,
        keepalive_interval: f.keepalive_interval,
        keepalive_timeout: f.keepalive_timeout,
        min_cert_ttl: f.min_cert_ttl,
        kubernetes: (f.source == SourceFlag::Kubernetes).then_some(KubeConfig {
            kubeconfig: f.kubeconfig,
            trust_domain: f.trust_domain,
            root_namespace: f.root_namespace,
        }),
        serving_names: f.serving_names,
        service_name: f.service_name,
        leader_identity: f.leader_identity,
    };
    let running = match serve::start(&cfg).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("control-plane: {}", mesh_runtime::Chain(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    let controller = match (waypoints, &cfg.kubernetes) {
        (Some(settings), Some(kube)) => match client(kube).await {
            Ok(client) => {
                // Writes only while this replica holds the leader Lease.
                let leader = running
                    .leading
                    .clone()
                    .expect("Kubernetes mode elects a leader");
                Some(tokio::spawn(waypoint_controller::run(
                    client, settings, leader,
                )))
            }
            Err(e) => {
                eprintln!("control-plane: {}", mesh_runtime::Chain(&e));
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    if let Some(task) = controller {
        task.abort();
    }
    running.shutdown().await;
    std::process::ExitCode::SUCCESS
}
