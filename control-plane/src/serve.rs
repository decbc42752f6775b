//! Wiring: the source feeds a publisher; xDS and the CA share one TLS port
//! (15012), behind [`crate::accept`] (caps, handshake deadline, accept
//! back-off) and with HTTP/2 keepalive; metrics and readiness are plain
//! HTTP on another (15014, [`mesh_runtime::admin::serve`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hbone::ca::DevCa;
use hbone::drain::Drain;
use mesh_model::state::Snapshot;
use proto::ca::istio_certificate_service_server::IstioCertificateServiceServer;
use proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::accept::{self, Limits};
use crate::auth::{Authenticator, Tokens, TokensError};
use crate::ca::CaService;
use crate::delta::History;
use crate::metrics::Metrics;
use crate::resources::ResourceSet;
use crate::source::kube::{KubeConfig, KubeError, KubeSource, SourceMetrics};
use crate::source::{FileSource, Source, DEFAULT_POLL_INTERVAL};
use crate::tls::{server_config, ServingCertError};
use crate::xds::{Published, XdsService};

/// xDS and CA, TLS (Istio's istiod port).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:15012";
/// Prometheus `/metrics` and `/healthz/ready` (Istio's istiod monitoring port).
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:15014";
pub const DEFAULT_CONFIG_FILE: &str = "/etc/ambient-mesh/mesh.yaml";
pub const DEFAULT_CA_DIR: &str = "/var/lib/ambient-mesh/ca";
pub const DEFAULT_TOKENS_FILE: &str = "/etc/ambient-mesh/node-tokens.yaml";
/// The server pings each client this often (Istio's istiod default)...
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and drops it if the ping is not answered within this.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// gRPC calls one connection may carry at once (a ztunnel makes one ADS
/// stream, and a few CSRs on its CA connection).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// Request headers (the bearer token is the largest).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// The control plane's typed configuration (flags in `main.rs`).
#[derive(Debug, Clone)]
pub struct Config {
    pub config_file: PathBuf,
    pub ca_dir: PathBuf,
    pub tokens_file: PathBuf,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub poll_interval: Duration,
    /// Connections open at once on `listen`; `None`: the default, kept
    /// under the open-file limit ([`accept::connection_cap`]).
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: usize,
    /// TLS handshake plus the HTTP/2 preface.
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// The shortest certificate lifetime issued ([`crate::ca::MIN_VALIDITY`]
    /// by default).
    pub min_cert_ttl: Duration,
    /// Watch this cluster instead of reading `config_file`.
    pub kubernetes: Option<KubeConfig>,
}

impl Config {
    /// Defaults, with the three paths given (tests pass temp dirs).
    pub fn with_paths(config_file: &Path, ca_dir: &Path, tokens_file: &Path) -> Self {
        Config {
            config_file: config_file.to_owned(),
            ca_dir: ca_dir.to_owned(),
            tokens_file: tokens_file.to_owned(),
            listen: DEFAULT_LISTEN.parse().expect("constant address"),
            metrics_listen: DEFAULT_METRICS_LISTEN.parse().expect("constant address"),
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_connections: None,
            max_connections_per_ip: accept::DEFAULT_MAX_CONNECTIONS_PER_IP,
            handshake_timeout: accept::DEFAULT_HANDSHAKE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            min_cert_ttl: crate::ca::MIN_VALIDITY,
            kubernetes: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("loading the CA from {path}")]
    Ca {
        path: PathBuf,
        #[source]
        source: hbone::ca::CaError,
    },
    #[error("loading node tokens")]
    Tokens(#[source] TokensError),
    #[error("connecting to Kubernetes")]
    Kube(#[source] KubeError),
    #[error("issuing the serving certificate")]
    ServingCert(#[source] ServingCertError),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running control plane. Dropping it does not stop it; call
/// [`Running::shutdown`].
pub struct Running {
    /// Where xDS and the CA listen (TLS).
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The mesh root, PEM: clients verify the serving certificate with it.
    pub root_pem: String,
    pub metrics: Arc<Metrics>,
    drain: Drain,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, ends every stream, and waits for the tasks.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.drain.signal();
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Starts everything. Returns once the listeners are bound.
pub async fn start(cfg: &Config) -> Result<Running, ServeError> {
    let ca = DevCa::load_or_create(&cfg.ca_dir).map_err(|source| ServeError::Ca {
        path: cfg.ca_dir.clone(),
        source,
    })?;
    let tokens = Tokens::load(&cfg.tokens_file).map_err(ServeError::Tokens)?;
    let tls = server_config(&ca, &cfg.ca_dir).map_err(ServeError::ServingCert)?;
    let metrics = Arc::new(Metrics::new());
    let auth = Arc::new(Authenticator::new(tokens, metrics.clone()));
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })
    };
    let listener = bind(cfg.listen).await?;
    let metrics_listener = bind(cfg.metrics_listen).await?;
    let addr = listener.local_addr().expect("bound socket has an address");
    let metrics_addr = metrics_listener.local_addr().expect("bound");

    let (snap_tx, snap_rx) = watch::channel(None);
    let (feed_tx, feed_rx) = watch::channel(None);
    let source: Box<dyn Source> = match &cfg.kubernetes {
        None => Box::new(
            FileSource::new(&cfg.config_file, cfg.poll_interval)
                .count_rejections(metrics.config_rejected.clone()),
        ),
        Some(kube) => {
            let counters = SourceMetrics {
                rejected: metrics.config_rejected.clone(),
                watch_errors: metrics.kube_watch_errors.clone(),
            };
            let source = KubeSource::connect(kube, counters)
                .await
                .map_err(ServeError::Kube)?;
            Box::new(source)
        }
    };
    let mut tasks = vec![tokio::spawn(publish(source, snap_tx, feed_tx))];

    let xds = XdsService {
        feed: feed_rx.clone(),
        auth: auth.clone(),
        metrics: metrics.clone(),
    };
    let ca_svc = CaService {
        ca: ca.clone(),
        auth,
        snapshots: snap_rx,
        metrics: metrics.clone(),
        min_validity: cfg.min_cert_ttl,
    };
    let limits = Limits {
        max_connections: accept::connection_cap(
            cfg.max_connections,
            mesh_runtime::limits::fd_limit().map(|l| l.soft),
        ),
        max_connections_per_ip: cfg.max_connections_per_ip.max(1),
        handshake_timeout: cfg.handshake_timeout,
    };
    tracing::info!(?limits, "serving limits");
    let (incoming, accepting) = accept::spawn(listener, tls, limits, metrics.clone());
    tasks.push(accepting);
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .http2_keepalive_interval(Some(cfg.keepalive_interval))
        .http2_keepalive_timeout(Some(cfg.keepalive_timeout))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .add_service(AggregatedDiscoveryServiceServer::new(xds))
        .add_service(IstioCertificateServiceServer::new(ca_svc))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = shutdown_rx.await;
        });
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }));

    let drain = Drain::new();
    let route = monitoring_route(metrics.clone(), feed_rx);
    tasks.push(tokio::spawn(mesh_runtime::admin::serve(
        metrics_listener,
        route,
        drain.clone(),
    )));
    tracing::info!(%addr, %metrics_addr, "control plane listening");
    Ok(Running {
        addr,
        metrics_addr,
        root_pem: ca.root_pem().to_owned(),
        metrics,
        drain,
        shutdown: Some(shutdown_tx),
        tasks,
    })
}

/// `/metrics`, and `/healthz/ready` once a config has been published.
fn monitoring_route(
    metrics: Arc<Metrics>,
    feed: watch::Receiver<Option<Arc<Published>>>,
) -> mesh_runtime::admin::Route {
    use http::{Method, StatusCode};
    use mesh_runtime::admin::text;
    Arc::new(move |method: &Method, path: &str| match (method, path) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (&Method::GET, "/healthz/ready") if feed.borrow().is_some() => {
            text(StatusCode::OK, "ready\n")
        }
        (&Method::GET, "/healthz/ready") => {
            text(StatusCode::SERVICE_UNAVAILABLE, "no config loaded yet\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// Converts each snapshot off the async threads and publishes it. Each set
/// is made from the previous one ([`ResourceSet::update`]): only what the
/// edit touched is converted again, and the changed names go out with it
/// so each client diffs only those.
async fn publish(
    mut source: impl Source,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    feed: watch::Sender<Option<Arc<Published>>>,
) {
    let mut last: Option<(Arc<Snapshot>, Arc<Published>)> = None;
    while let Some(update) = source.next().await {
        let at = tokio::time::Instant::now();
        let prev = last.clone();
        let snap = update.snapshot.clone();
        let converted = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let next = match &prev {
                Some((old, p)) => {
                    let (resources, changes) =
                        p.resources.update(old, &update.snapshot, &update.touched);
                    let mut history = p.history.clone();
                    history.push(p.generation + 1, Arc::new(changes));
                    (resources, p.generation + 1, history)
                }
                None => {
                    let resources = ResourceSet::from_snapshot(&update.snapshot);
                    (resources, 1, History::default())
                }
            };
            (next, started.elapsed())
        })
        .await;
        let ((resources, generation, history), took) = match converted {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "converting the snapshot failed");
                continue;
            }
        };
        tracing::info!(
            generation,
            addresses = resources.addresses.len(),
            authorizations = resources.authorizations.len(),
            changed = history.last_len(),
            convert_ms = took.as_secs_f64() * 1e3,
            "publishing config"
        );
        let published = Arc::new(Published {
            snapshot: snap.clone(),
            resources,
            at,
            generation,
            history,
        });
        snapshots.send_replace(Some(snap.clone()));
        feed.send_replace(Some(published.clone()));
        last = Some((snap, published));
    }
}
