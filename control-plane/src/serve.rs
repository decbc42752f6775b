//! Wiring: the source feeds a publisher; xDS and the CA share one TLS port
//! (15012), behind [`crate::accept`] (caps, handshake deadline, accept
//! back-off) and with HTTP/2 keepalive; metrics and readiness are plain
//! HTTP on another (15014, [`mesh_runtime::admin::serve`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hbone::ca::{DevCa, ROOT_KEY_FILE};
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
use crate::ca::keys::{self, CaMaterial, KeysError, Signer};
use crate::ca::secret::{self as ca_secret, SecretError};
use crate::ca::CaService;
use crate::delta::History;
use crate::kube_auth::{KubeAuthConfig, TokenReviewer};
use crate::leader::{Elector, LeaderConfig};
use crate::metrics::Metrics;
use crate::resources::ResourceSet;
use crate::source::kube::{KubeConfig, KubeError, KubeSource, SourceMetrics};
use crate::source::{FileSource, Source, DEFAULT_POLL_INTERVAL};
use crate::tls::{server_config, service_names, ServingCertError};
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
    /// Extra DNS names and IP addresses for the serving certificate.
    pub serving_names: Vec<String>,
    /// Kubernetes mode: the control plane's Service (in the root
    /// namespace), whose DNS names the serving certificate carries.
    pub service_name: String,
    /// Kubernetes mode: this replica's name in the leader Lease (default:
    /// the host name and process id).
    pub leader_identity: Option<String>,
}

/// The control plane's Service name in a cluster (the chart's).
pub const DEFAULT_SERVICE_NAME: &str = "control-plane";

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
            serving_names: Vec::new(),
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            leader_identity: None,
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
    #[error("loading the CA from {path}")]
    CaDir {
        path: PathBuf,
        #[source]
        source: KeysError,
    },
    #[error("loading the CA from the cluster")]
    CaSecret(#[source] Box<SecretError>),
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
    /// The mesh roots (the trust bundle), PEM: clients verify the serving
    /// certificate with it.
    pub root_pem: String,
    /// Kubernetes mode: whether this replica leads (writers such as the
    /// waypoint controller act only while it is true).
    pub leading: Option<watch::Receiver<bool>>,
    elector: Option<Elector>,
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
        if let Some(e) = self.elector.take() {
            e.release().await;
        }
    }
}

/// Starts everything. Returns once the listeners are bound.
pub async fn start(cfg: &Config) -> Result<Running, ServeError> {
    let metrics = Arc::new(Metrics::new());
    let mut tasks = Vec::new();
    // Kubernetes mode: the CA from the cluster's Secret, callers' tokens
    // reviewed by the API server, a leader writing the root ConfigMaps.
    let kube = match &cfg.kubernetes {
        Some(k) => Some((
            crate::source::kube::client(k)
                .await
                .map_err(ServeError::Kube)?,
            k,
        )),
        None => None,
    };
    let signer = match &kube {
        None => load_ca_dir(&cfg.ca_dir)?,
        Some((client, k)) => ca_secret::load_or_create(client, &k.root_namespace)
            .await
            .map_err(|e| ServeError::CaSecret(Box::new(e)))?,
    };
    let root_pem = signer.roots_pem();
    let (signer_tx, signer_rx) = watch::channel(Arc::new(signer));
    // A cluster need not have a tokens file: its callers present
    // service-account tokens.
    let tokens = match Tokens::load(&cfg.tokens_file) {
        Err(TokensError::Read { source, .. })
            if kube.is_some() && source.kind() == std::io::ErrorKind::NotFound =>
        {
            Tokens::default()
        }
        t => t.map_err(ServeError::Tokens)?,
    };
    let mut names = cfg.serving_names.clone();
    let mut auth = Authenticator::new(tokens, metrics.clone());
    let mut elector = None;
    if let Some((client, k)) = &kube {
        names.extend(service_names(&cfg.service_name, &k.root_namespace));
        auth = auth.with_token_review(TokenReviewer::new(
            client.clone(),
            KubeAuthConfig::new(&k.root_namespace, &k.trust_domain),
        ));
        tasks.push(ca_secret::follow(
            client.clone(),
            k.root_namespace.clone(),
            signer_tx,
            metrics.ca_secret_rejected.clone(),
        ));
        let identity = cfg.leader_identity.clone().unwrap_or_else(default_identity);
        let e = Elector::spawn(
            client.clone(),
            LeaderConfig::new(&k.root_namespace, &identity),
        );
        tasks.push(ca_secret::publish_roots(
            client.clone(),
            signer_rx.clone(),
            e.leading(),
        ));
        tasks.push(leader_gauge(e.leading(), metrics.leader.clone()));
        elector = Some(e);
    }
    let (tls, reissue) =
        server_config(signer_rx.clone(), &names).map_err(ServeError::ServingCert)?;
    tasks.push(reissue);
    let auth = Arc::new(auth);
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
    tasks.push(tokio::spawn(publish(source, snap_tx, feed_tx)));

    let xds = XdsService {
        feed: feed_rx.clone(),
        auth: auth.clone(),
        metrics: metrics.clone(),
    };
    let ca_svc = CaService {
        signer: signer_rx,
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
        root_pem,
        leading: elector.as_ref().map(Elector::leading),
        elector,
        metrics,
        drain,
        shutdown: Some(shutdown_tx),
        tasks,
    })
}

/// The CA of file mode: `dir` in Istio's plug-in layout if it holds
/// `ca-cert.pem`, else the development root there (created on first start).
pub fn load_ca_dir(dir: &Path) -> Result<Signer, ServeError> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let material = if dir.join(keys::CA_CERT).exists() {
        let io = |source| ServeError::Ca {
            path: dir.to_owned(),
            source: hbone::ca::CaError::Read {
                path: dir.to_owned(),
                source,
            },
        };
        CaMaterial {
            ca_cert: read(keys::CA_CERT).map_err(io)?,
            ca_key: read(keys::CA_KEY).map_err(io)?,
            cert_chain: read(keys::CERT_CHAIN).unwrap_or_default(),
            root_cert: read(keys::ROOT_CERT).map_err(io)?,
        }
    } else {
        let ca = DevCa::load_or_create(dir).map_err(|source| ServeError::Ca {
            path: dir.to_owned(),
            source,
        })?;
        let key = read(ROOT_KEY_FILE).map_err(|source| ServeError::Ca {
            path: dir.to_owned(),
            source: hbone::ca::CaError::Read {
                path: dir.join(ROOT_KEY_FILE),
                source,
            },
        })?;
        CaMaterial {
            ca_cert: ca.root_pem().to_owned(),
            ca_key: key,
            cert_chain: String::new(),
            root_cert: ca.root_pem().to_owned(),
        }
    };
    Signer::new(&material).map_err(|source| ServeError::CaDir {
        path: dir.to_owned(),
        source,
    })
}

/// `<host name>-<pid>`: unique among replicas (pods have distinct names).
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "control-plane".to_owned());
    format!("{host}-{}", std::process::id())
}

fn leader_gauge(
    mut leading: watch::Receiver<bool>,
    gauge: prometheus_client::metrics::gauge::Gauge,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            gauge.set(i64::from(*leading.borrow_and_update()));
            if leading.changed().await.is_err() {
                return;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_dir_takes_the_plug_in_layout_or_the_dev_root() {
        let dir = tempfile::tempdir().unwrap();
        // Empty: the dev root is created, and is the same on the next start.
        let dev = load_ca_dir(dir.path()).unwrap();
        assert_eq!(load_ca_dir(dir.path()).unwrap().roots(), dev.roots());
        assert_eq!(dev.roots().len(), 1);
        // Istio's plug-in files win over the dev root.
        let plugged = dir.path().join("plugged");
        std::fs::create_dir_all(&plugged).unwrap();
        let m = CaMaterial::generate().unwrap();
        let two = keys::merge_bundles(&m.root_cert, &CaMaterial::generate().unwrap().root_cert);
        for (name, text) in [
            (keys::CA_CERT, &m.ca_cert),
            (keys::CA_KEY, &m.ca_key),
            (keys::ROOT_CERT, &two),
        ] {
            std::fs::write(plugged.join(name), text).unwrap();
        }
        let s = load_ca_dir(&plugged).unwrap();
        assert_eq!(s.roots_pem(), two, "cert-chain.pem may be missing");
        std::fs::write(plugged.join(keys::CA_KEY), dev_key(dir.path())).unwrap();
        assert!(matches!(
            load_ca_dir(&plugged),
            Err(ServeError::CaDir {
                source: KeysError::KeyMismatch,
                ..
            })
        ));
    }

    fn dev_key(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(ROOT_KEY_FILE)).unwrap()
    }
}
