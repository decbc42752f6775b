//! The waypoint process: loads config and its certificate, serves HBONE on
//! 15008, and drains on SIGTERM.
//!
//! Two runtimes, as ztunnel (STYLE rule 7): the data path on a
//! multi-thread runtime; admin, metrics, readiness, the config watcher and
//! certificate rotation on a current-thread runtime of their own thread.
//! Ready (15021) once it has config and its own certificate.

pub mod dump;
pub mod sources;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hbone::ca::CaError;
use hbone::cert::CertStore;
use hbone::client::{ClientConfig, HboneClient};
use hbone::drain::Drain;
use hbone::server::{FixedIdentity, HboneServer, ServerConfig};
use http::{Method, StatusCode};
use mesh_model::config::ConfigError;
use mesh_model::state::Snapshot;
use mesh_model::SpiffeId;
use mesh_runtime::admin::{self, json, text, Route};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::inbound::Inbound;
use crate::lb::{LbPolicy, DEFAULT_OUTLIER, DEFAULT_RETRY_BUDGET};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Tuning};
use crate::record::Telemetry;
use crate::upstream::balancer::Balancer;
use crate::upstream::pool::HttpPool;
use sources::Updates;
pub use sources::{ConfigSource, XdsSource};

/// Ports from DESIGN §2.
pub const HBONE_ADDR: &str = "0.0.0.0:15008";
pub const ADMIN_ADDR: &str = "127.0.0.1:15000";
pub const METRICS_ADDR: &str = "0.0.0.0:15020";
pub const READINESS_ADDR: &str = "0.0.0.0:15021";
/// How often certificates are checked for rotation.
const ROTATION_CHECK: Duration = Duration::from_secs(1);
/// How long startup waits for the waypoint's certificate before serving
/// anyway (not ready until it arrives).
const CERT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle upstream connections and forgotten endpoints are reaped.
const REAP_EVERY: Duration = Duration::from_secs(30);

pub use mesh_runtime::accesslog::AccessLogTarget;

#[derive(Debug, Clone)]
pub struct Listeners {
    pub hbone: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
}

/// Everything `waypoint` is started with.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub namespace: String,
    /// `None`: the config file's trust domain, or the default over xDS.
    pub trust_domain: Option<String>,
    pub source: ConfigSource,
    pub cert_ttl: Duration,
    pub lb: LbPolicy,
    pub listeners: Listeners,
    pub access_log: AccessLogTarget,
    pub drain_timeout: Duration,
    pub poll_interval: Duration,
    pub worker_threads: Option<usize>,
    pub tuning: Tuning,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("loading config")]
    Config(#[source] ConfigError),
    #[error("the waypoint's identity (--name {name:?}, --namespace {namespace:?})")]
    Identity {
        name: String,
        namespace: String,
        #[source]
        source: mesh_model::identity::SpiffeIdError,
    },
    #[error("loading the CA")]
    Ca(#[source] CaError),
    #[error("listening on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("opening access log {path}")]
    AccessLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} holds no PEM certificate")]
    BadRoot(PathBuf),
    #[error("control plane address")]
    XdsEndpoint(#[source] tonic::transport::Error),
    #[error("the xDS client stopped before the first sync")]
    XdsStopped,
}

impl Config {
    /// `spiffe://<td>/ns/<namespace>/sa/<name>`.
    pub fn identity(&self, snap: &Snapshot) -> Result<SpiffeId, AppError> {
        let td = self.trust_domain.as_deref().unwrap_or(snap.trust_domain());
        SpiffeId::new(td, &self.namespace, &self.name).map_err(|source| AppError::Identity {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            source,
        })
    }
}

/// Runs the waypoint until SIGTERM, SIGINT or `POST /quitquitquit`.
pub fn run(cfg: Config) -> Result<(), AppError> {
    let metrics = Metrics::new();
    let counters = metrics.access_log.clone();
    let access_log =
        Arc::new(
            cfg.access_log
                .open(counters)
                .map_err(|source| AppError::AccessLog {
                    path: match &cfg.access_log {
                        AccessLogTarget::File(path) => path.clone(),
                        _ => PathBuf::from("-"),
                    },
                    source,
                })?,
        );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cfg.worker_threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder
        .enable_all()
        .thread_name("waypoint-data")
        .build()
        .map_err(AppError::Runtime)?;
    let telemetry = Telemetry {
        metrics,
        access_log: access_log.clone(),
    };
    let result = runtime.block_on(serve(cfg, telemetry));
    access_log.begin_exit(mesh_runtime::accesslog::CLOSE_TIMEOUT);
    drop(runtime);
    access_log.close();
    result
}

/// Handles shared by the data path and the control thread.
#[derive(Clone)]
struct Shared {
    proxy: Arc<Proxy>,
    certs: Arc<CertStore>,
    state: Arc<watch::Sender<Arc<Snapshot>>>,
    ready: Arc<AtomicBool>,
    shutdown: Arc<Notify>,
    lb: LbPolicy,
}

impl Shared {
    /// Config is loaded (it is, once serving) and the certificate is in.
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.certs.cached(&self.proxy.identity).is_some()
    }
}

async fn serve(cfg: Config, telemetry: Telemetry) -> Result<(), AppError> {
    let drain = Drain::new();
    let started = sources::start(&cfg, &drain).await?;
    let identity = cfg.identity(&started.snapshot)?;
    let hbone_listener = TcpListener::bind(cfg.listeners.hbone)
        .await
        .map_err(|source| AppError::Bind {
            addr: cfg.listeners.hbone,
            source,
        })?;
    let (state_tx, state_rx) = watch::channel(started.snapshot);
    let client = HboneClient::new(started.certs.clone(), ClientConfig::default());
    let proxy = Arc::new(Proxy {
        identity: identity.clone(),
        gateway: crate::http::plan::Gateway {
            namespace: cfg.namespace.clone(),
            name: cfg.name.clone(),
        },
        mirrors: crate::http::mirror::limit(),
        tuning: cfg.tuning,
        state: state_rx,
        hbone: client,
        pool: HttpPool::default(),
        balancer: Balancer::new(cfg.lb, DEFAULT_OUTLIER, DEFAULT_RETRY_BUDGET),
        telemetry,
        drain: drain.clone(),
    });
    let shared = Shared {
        proxy: proxy.clone(),
        certs: started.certs.clone(),
        state: Arc::new(state_tx),
        ready: Arc::default(),
        shutdown: Arc::default(),
        lb: cfg.lb,
    };
    if tokio::time::timeout(CERT_STARTUP_TIMEOUT, started.certs.get(&identity))
        .await
        .map_or(true, |r| r.is_err())
    {
        tracing::warn!(%identity, "no certificate yet; serving, but not ready until it arrives");
    }
    let server = HboneServer::new(
        Arc::new(FixedIdentity {
            certs: started.certs.clone(),
            id: identity.clone(),
        }),
        Arc::new(Inbound(proxy.clone())),
        ServerConfig::default(),
    );
    let hbone_drain = drain.clone();
    tokio::spawn(async move { server.serve(hbone_listener, hbone_drain).await });
    let reaper = tokio::spawn(reap(proxy.clone()));
    let control = spawn_control_thread(&cfg, &shared, started.updates)?;
    shared.ready.store(true, Ordering::Release);
    tracing::info!(%identity, hbone = %cfg.listeners.hbone, "waypoint serving");

    wait_for_shutdown(&shared.shutdown).await;
    shared.ready.store(false, Ordering::Release);
    drain.signal();
    let open = proxy.telemetry.metrics.active_streams.get();
    tracing::info!(open, timeout = ?cfg.drain_timeout, "draining");
    if tokio::time::timeout(cfg.drain_timeout, drain.wait_idle())
        .await
        .is_err()
    {
        let left = proxy.telemetry.metrics.active_streams.get();
        tracing::warn!(left, "drain timed out; closing the remaining streams");
    }
    reaper.abort();
    let _ = control.join();
    Ok(())
}

async fn reap(proxy: Arc<Proxy>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    loop {
        tick.tick().await;
        proxy.pool.reap();
        proxy.balancer.reap();
    }
}

async fn wait_for_shutdown(shutdown: &Notify) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
        () = shutdown.notified() => tracing::info!("shutdown requested"),
    }
}

/// Admin endpoints, the config watcher and certificate rotation, on their
/// own current-thread runtime.
fn spawn_control_thread(
    cfg: &Config,
    shared: &Shared,
    updates: Updates,
) -> Result<std::thread::JoinHandle<()>, AppError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    let std_listen = |addr: SocketAddr| {
        std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| AppError::Bind { addr, source })
    };
    let admin_l = std_listen(cfg.listeners.admin)?;
    let metrics_l = std_listen(cfg.listeners.metrics)?;
    let ready_l = std_listen(cfg.listeners.readiness)?;
    let shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("waypoint-control".into())
        .spawn(move || {
            runtime.block_on(async move {
                let drain = shared.proxy.drain.clone();
                let tokio_l = |l: std::net::TcpListener| {
                    TcpListener::from_std(l).expect("listener registers with the runtime")
                };
                tokio::spawn(admin::serve(
                    tokio_l(admin_l),
                    admin_route(&shared),
                    drain.clone(),
                ));
                tokio::spawn(admin::serve(
                    tokio_l(metrics_l),
                    metrics_route(&shared),
                    drain.clone(),
                ));
                tokio::spawn(admin::serve(
                    tokio_l(ready_l),
                    ready_route(&shared),
                    drain.clone(),
                ));
                let rotation = shared.certs.spawn_rotation(ROTATION_CHECK);
                follow(&shared, updates, drain).await;
                rotation.abort();
            })
        })
        .map_err(AppError::Runtime)?;
    Ok(thread)
}

/// Applies each new snapshot until drained.
async fn follow(shared: &Shared, updates: Updates, drain: Drain) {
    let mut watch = drain.watch();
    let metrics = &shared.proxy.telemetry.metrics;
    let apply = |snap: Arc<Snapshot>| {
        tracing::info!(
            services = snap.services().count(),
            workloads = snap.workloads().count(),
            "config applied"
        );
        metrics.config_updates.inc();
        shared.state.send_replace(snap);
    };
    match updates {
        Updates::Xds(mut rx) => loop {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(snap) => apply(snap),
                    None => return,
                },
                () = watch.signaled() => return,
            }
        },
        Updates::File(source) => {
            let mut source = source.count_rejections(metrics.config_rejected.clone());
            loop {
                tokio::select! {
                    u = source.next() => match u {
                        Some(update) => apply(update.snapshot.clone()),
                        None => return,
                    },
                    () = watch.signaled() => return,
                }
            }
        }
    }
}

fn ready_route(shared: &Shared) -> Route {
    let shared = shared.clone();
    Arc::new(move |_m: &Method, path: &str| match path {
        "/healthz/ready" => ready_reply(&shared),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn ready_reply(shared: &Shared) -> admin::Reply {
    if shared.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

fn metrics_route(shared: &Shared) -> Route {
    let metrics = shared.proxy.telemetry.metrics.clone();
    Arc::new(move |_m: &Method, path: &str| match path {
        "/metrics" | "/stats/prometheus" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn admin_route(shared: &Shared) -> Route {
    let shared = shared.clone();
    Arc::new(move |method: &Method, path: &str| match (method, path) {
        (_, "/config_dump") => {
            let snap = shared.proxy.snapshot();
            let cert = shared.certs.cached(&shared.proxy.identity);
            let gateway = &shared.proxy.gateway;
            let input = dump::DumpInput {
                identity: &shared.proxy.identity,
                gateway: (&gateway.namespace, &gateway.name),
                lb: shared.lb,
                outlier: DEFAULT_OUTLIER,
                retry_budget: DEFAULT_RETRY_BUDGET,
                ejected: shared.proxy.balancer.ejected(),
                pool: shared.proxy.pool.stats(),
                cert: cert.as_deref(),
            };
            json(dump::render(&snap, &input))
        }
        (_, "/healthz/ready") => ready_reply(&shared),
        (&Method::POST, "/quitquitquit") => {
            shared.shutdown.notify_one();
            text(StatusCode::OK, "shutting down\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}
