//! The ztunnel process: loads config and the CA, installs capture, serves
//! the data path, and drains on SIGTERM (keeping node capture in place:
//! see [`Config::uninstall_on_exit`]).
//!
//! A node ztunnel started while another serves takes the listening sockets
//! over from it ([`handoff`]), then tells it to drain: an upgrade refuses no
//! connection, and the old process finishes its own before it exits.
//!
//! Two runtimes, so neither side can starve the other (STYLE rule 7): the
//! data path runs on a multi-thread runtime; admin endpoints, the config
//! watcher and certificate rotation run on a current-thread runtime on their
//! own OS thread.

pub mod control;
pub mod dump;
mod endpoints;
pub mod handoff;
mod listen;
pub mod sources;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone::ca::CaError;
use hbone::cert::CertStore;
use hbone::client::{ClientConfig, HboneClient};
use hbone::drain::Drain;
use hbone::server::{HboneServer, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::capture::{sidecar, Capture, CaptureError, ListenerPorts};
use crate::metrics::Metrics;
use crate::proxy::inbound::{serve_plaintext, HboneInbound, LocalIdentities};
use crate::proxy::outbound::serve_outbound;
use crate::proxy::record::Telemetry;
use crate::proxy::Proxy;
use control::Controller;
use endpoints::spawn_control_thread;
use mesh_model::config::ConfigError;
use mesh_model::state::{Scope, ServedPod, Snapshot, WorkloadName};
use mesh_runtime::accesslog::AccessLog;
pub use mesh_runtime::limits::raise_fd_limit;
use sources::Updates;
pub use sources::{ConfigSource, XdsSource};

/// Ports from DESIGN §2.
pub const OUTBOUND_ADDR: &str = "0.0.0.0:15001";
pub const INBOUND_PLAINTEXT_ADDR: &str = "0.0.0.0:15006";
pub const HBONE_ADDR: &str = "0.0.0.0:15008";
pub const ADMIN_ADDR: &str = "127.0.0.1:15000";
pub const METRICS_ADDR: &str = "0.0.0.0:15020";
pub const READINESS_ADDR: &str = "0.0.0.0:15021";
/// How long SIGTERM waits for open connections before cutting them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long startup waits for the local pods' certificates.
const CERT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often certificates are checked for rotation.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

pub use mesh_runtime::accesslog::AccessLogTarget;

/// The listen addresses.
#[derive(Debug, Clone)]
pub struct Listeners {
    pub outbound: SocketAddr,
    pub inbound_plaintext: SocketAddr,
    pub hbone: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
}

impl Listeners {
    /// The ports traffic is captured to: outbound, then inbound plaintext.
    pub fn capture_ports(&self) -> Vec<u16> {
        vec![self.outbound.port(), self.inbound_plaintext.port()]
    }

    /// Node capture (TPROXY) to these listeners: the outbound, inbound
    /// plaintext and HBONE ports. Pure.
    pub fn tproxy_ports(&self) -> ListenerPorts {
        ListenerPorts {
            outbound: self.outbound.port(),
            inbound_plaintext: self.inbound_plaintext.port(),
            hbone: self.hbone.port(),
        }
    }

    /// Sidecar capture to these listeners: REDIRECT to the outbound and
    /// inbound plaintext ports; HBONE, admin, metrics and readiness
    /// delivered as is; nothing from `exempt_sources` (the node) captured;
    /// the admin port for this process's uid (and mark) only. Pure but for
    /// reading that uid.
    pub fn sidecar_rules(&self, exempt_sources: Vec<std::net::Ipv4Addr>) -> sidecar::SidecarRules {
        sidecar::SidecarRules {
            outbound_port: self.outbound.port(),
            inbound_port: self.inbound_plaintext.port(),
            mark: crate::capture::rules::ZTUNNEL_MARK,
            inbound_exclude: vec![
                self.hbone.port(),
                self.admin.port(),
                self.metrics.port(),
                self.readiness.port(),
            ],
            inbound_exempt_sources: exempt_sources,
            proxy_only_ports: vec![self.admin.port()],
            proxy_uid: sidecar::own_uid(),
        }
    }
}

impl Default for Listeners {
    fn default() -> Self {
        let p = |s: &str| s.parse().expect("constant address");
        Listeners {
            outbound: p(OUTBOUND_ADDR),
            inbound_plaintext: p(INBOUND_PLAINTEXT_ADDR),
            hbone: p(HBONE_ADDR),
            admin: p(ADMIN_ADDR),
            metrics: p(METRICS_ADDR),
            readiness: p(READINESS_ADDR),
        }
    }
}

/// Node mode serves every ambient pod of the node from the node's
/// namespace (TPROXY); sidecar mode serves one pod from inside the pod's
/// namespace (REDIRECT).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Node,
    Sidecar(WorkloadName),
}

/// Everything `ztunnel` is started with.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub mode: Mode,
    pub source: ConfigSource,
    pub cert_ttl: Duration,
    /// Install nftables capture and use marked sockets: TPROXY with
    /// transparent sockets in node mode, nat REDIRECT in the pod in sidecar
    /// mode.
    pub capture: bool,
    pub listeners: Listeners,
    pub access_log: AccessLogTarget,
    /// Remove capture at exit, as `ztunnel uninstall` does. Without it the
    /// rules stay across SIGTERM, in node mode and in sidecar mode alike (a
    /// restart or an upgrade must never open the node or the pod), and
    /// captured traffic fails closed until a ztunnel serves again: reset by
    /// the fail-closed chain in node mode, and in sidecar mode by the
    /// kernel, as the REDIRECT finds no listener.
    pub uninstall_on_exit: bool,
    pub drain_timeout: Duration,
    pub poll_interval: Duration,
    /// Node mode with capture: where the handoff socket lives
    /// ([`handoff::DEFAULT_STATE_DIR`]); one per node.
    pub state_dir: PathBuf,
    /// The node's IPv4 address, whence kubelet probes come: a sidecar
    /// leaves connections from it uncaptured. Without it, the config's node
    /// list is asked (over xDS nodes carry no address).
    pub node_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("loading config")]
    Config(#[source] ConfigError),
    #[error("node {0:?} is not in the config's node list")]
    UnknownNode(String),
    #[error("workload {0} (--workload) is not in the config")]
    UnknownWorkload(WorkloadName),
    #[error("workload {workload} runs on node {actual:?}, not on --node {node:?}")]
    WorkloadElsewhere {
        workload: WorkloadName,
        actual: String,
        node: String,
    },
    #[error("loading the CA")]
    Ca(#[source] CaError),
    #[error("installing capture")]
    Capture(#[source] CaptureError),
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
    #[error("taking over from the running ztunnel")]
    Handoff(#[source] handoff::HandoffError),
    #[error("reading this process's network namespace")]
    Netns(#[source] std::io::Error),
    #[error("duplicating a listener for the handoff")]
    Dup(#[source] std::io::Error),
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

/// Runs ztunnel until SIGTERM, SIGINT or `POST /quitquitquit`.
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ztunnel-data")
        .build()
        .map_err(AppError::Runtime)?;
    let log = access_log.clone();
    let result = runtime.block_on(async move {
        let drain = Drain::new();
        let started = sources::start(&cfg, &drain, &metrics).await?;
        let shared = Shared {
            certs: started.certs,
            metrics,
            drain,
            ready: Arc::new(AtomicBool::new(false)),
            shutdown: Arc::new(Notify::new()),
        };
        let run = Run {
            cfg,
            shared,
            access_log,
            updates: started.updates,
        };
        serve(run, started.snapshot).await
    });
    // Connections still open after the drain are cancelled with the
    // runtime; their access-log lines are written before ztunnel exits,
    // however many there are (waiting for the disk, within a bound).
    log.begin_exit(mesh_runtime::accesslog::CLOSE_TIMEOUT);
    drop(runtime);
    log.close();
    result
}

/// Everything `serve` needs besides the first snapshot.
struct Run {
    cfg: Config,
    shared: Shared,
    access_log: Arc<AccessLog>,
    updates: Updates,
}

/// Handles shared by the data path and the control thread.
#[derive(Clone)]
struct Shared {
    certs: Arc<CertStore>,
    metrics: Arc<Metrics>,
    drain: Drain,
    ready: Arc<AtomicBool>,
    shutdown: Arc<Notify>,
}

impl Config {
    /// What this process serves.
    pub fn scope(&self) -> Scope {
        match &self.mode {
            Mode::Node => Scope::Node(self.node.clone()),
            Mode::Sidecar(pod) => Scope::Pod(ServedPod {
                workload: pod.clone(),
                node: self.node.clone(),
            }),
        }
    }
}

async fn serve(run: Run, snap: Arc<Snapshot>) -> Result<(), AppError> {
    let cfg = &run.cfg;
    let sidecar_mode = matches!(cfg.mode, Mode::Sidecar(_));
    let captures = cfg.capture;
    let capture = match (cfg.capture, sidecar_mode) {
        (false, _) => None,
        (true, false) => {
            let pods = control::capture_set(&snap, &cfg.node);
            warn_about_bridges(&pods).await;
            let ports = cfg.listeners.tproxy_ports();
            let installed = tokio::task::spawn_blocking(move || Capture::install(&pods, ports))
                .await
                .expect("capture install task panicked")
                .map_err(AppError::Capture)?;
            Some(Arc::new(Mutex::new(installed)))
        }
        (true, true) => {
            let rules = cfg
                .listeners
                .sidecar_rules(probe_sources(cfg.node_ip, &snap, &cfg.node));
            tokio::task::spawn_blocking(move || sidecar::install(&rules))
                .await
                .expect("capture install task panicked")
                .map_err(AppError::Capture)?;
            None
        }
    };
    let uninstall = captures && cfg.uninstall_on_exit;
    let exit = serve_captured(run, snap, capture.clone()).await?;
    if exit.handed_off {
        tracing::info!("capture rules left to the new ztunnel");
    } else if uninstall {
        let remove = if sidecar_mode {
            sidecar::remove
        } else {
            Capture::remove
        };
        match tokio::task::spawn_blocking(remove).await {
            Ok(Ok(())) => tracing::info!("capture rules removed"),
            Ok(Err(e)) => tracing::error!(error = %e, "removing capture rules failed"),
            Err(e) => tracing::error!(error = %e, "capture removal task failed"),
        }
    } else if captures {
        tracing::info!("capture rules kept: captured traffic is refused until a ztunnel serves again (`ztunnel uninstall` removes them)");
    }
    Ok(())
}

/// Where kubelet probes come from, which a sidecar leaves uncaptured:
/// `--node-ip` if IPv4, else the node's IPv4 address in the config's node
/// list.
/// Over xDS nodes carry no address: without `--node-ip` nothing is exempt,
/// and a warning says so.
pub fn probe_sources(
    node_ip: Option<std::net::IpAddr>,
    snap: &Snapshot,
    node: &str,
) -> Vec<std::net::Ipv4Addr> {
    match node_ip {
        Some(std::net::IpAddr::V4(ip)) => return vec![ip],
        Some(ip) => {
            tracing::warn!(%ip, "--node-ip is not IPv4 and the sidecar's capture is; ignored")
        }
        None => {}
    }
    match snap.node(node).map(|n| n.ip) {
        Some(std::net::IpAddr::V4(ip)) => vec![ip],
        other => {
            tracing::warn!(node, ip = ?other, "no IPv4 address known for this node (set --node-ip); probes from it will be captured (and refused in STRICT namespaces)");
            Vec::new()
        }
    }
}

async fn serve_captured(
    run: Run,
    snap: Arc<Snapshot>,
    capture: Option<Arc<Mutex<Capture>>>,
) -> Result<Exit, AppError> {
    let Run {
        cfg,
        shared,
        access_log,
        updates,
    } = run;
    let scope = cfg.scope();
    let initial_ids = control::local_identities(&snap, &scope);
    let (state_tx, state_rx) = watch::channel(snap);
    let client = HboneClient::new(
        shared.certs.clone(),
        ClientConfig {
            mark: cfg.capture.then_some(crate::capture::rules::ZTUNNEL_MARK),
            ..ClientConfig::default()
        },
    );
    let telemetry = Telemetry {
        metrics: shared.metrics.clone(),
        access_log,
    };
    let proxy = Proxy::new(
        scope.clone(),
        state_rx,
        shared.certs.clone(),
        client,
        telemetry,
        shared.drain.clone(),
        cfg.capture,
        cfg.listeners.capture_ports(),
    );
    let controller = Arc::new(Controller {
        node: cfg.node.clone(),
        scope: scope.clone(),
        state: state_tx,
        certs: shared.certs.clone(),
        conns: proxy.conns.clone(),
        metrics: shared.metrics.clone(),
        capture,
        capture_failed: Default::default(),
        capture_retry: Default::default(),
    });
    prefetch(&shared.certs, initial_ids).await;

    // Taken over from the running ztunnel, if any (it still accepts on the
    // same sockets until told to drain), else bound.
    let bound = listen::open(&cfg).await?;
    let tokio_l = |l: std::net::TcpListener| {
        let addr = l.local_addr().unwrap_or(cfg.listeners.outbound);
        TcpListener::from_std(l).map_err(|source| AppError::Bind { addr, source })
    };
    tokio::spawn(serve_outbound(proxy.clone(), tokio_l(bound.outbound)?));
    tokio::spawn(serve_plaintext(
        proxy.clone(),
        tokio_l(bound.inbound_plaintext)?,
    ));
    let server = HboneServer::new(
        Arc::new(LocalIdentities(proxy.clone())),
        Arc::new(HboneInbound(proxy.clone())),
        ServerConfig::default(),
    );
    let (hbone, hbone_drain) = (tokio_l(bound.hbone)?, shared.drain.clone());
    tokio::spawn(async move { server.serve(hbone, hbone_drain).await });

    let control = spawn_control_thread(&cfg, &shared, controller.clone(), updates, bound.control)?;
    shared.ready.store(true, Ordering::Release);
    if controller.serving_ready() {
        tracing::info!(node = %cfg.node, %scope, "ztunnel ready");
    } else {
        tracing::warn!(node = %cfg.node, %scope, "serving, but not ready until the workload and its certificate are known");
    }
    if let Some(old) = bound.predecessor {
        let pid = old.pid;
        match old.drain().await {
            Ok(open) => {
                tracing::info!(
                    old_pid = pid,
                    open,
                    "took over the listeners; the old ztunnel drains its connections and exits"
                )
            }
            Err(e) => {
                tracing::warn!(old_pid = pid, error = %e, "took over the listeners, but the old ztunnel did not confirm its drain")
            }
        }
    }
    let handoff = bound.handoff.map(|server| {
        let (drain, shutdown) = (shared.drain.clone(), shared.shutdown.clone());
        let metrics = shared.metrics.clone();
        tokio::spawn(async move {
            let open = move || u64::try_from(metrics.active_connections.get()).unwrap_or(0);
            let served = server.serve(&drain, open).await;
            if let handoff::Served::HandedOff { pid } = served {
                tracing::info!(
                    new_pid = pid,
                    "handed the listeners to a new ztunnel; draining"
                );
                shutdown.notify_one();
            }
            served
        })
    });

    wait_for_shutdown(&shared.shutdown).await;
    shared.ready.store(false, Ordering::Release);
    shared.drain.signal();
    let open = proxy.telemetry.metrics.active_connections.get();
    tracing::info!(open, timeout = ?cfg.drain_timeout, "draining");
    if tokio::time::timeout(cfg.drain_timeout, shared.drain.wait_idle())
        .await
        .is_err()
    {
        let left = proxy.telemetry.metrics.active_connections.get();
        tracing::warn!(left, "drain timed out; closing the remaining connections");
    }
    let _ = control.join();
    let handed_off = match handoff {
        Some(task) => matches!(task.await, Ok(handoff::Served::HandedOff { .. })),
        None => false,
    };
    Ok(Exit { handed_off })
}

/// How serving ended.
struct Exit {
    /// A new ztunnel took the listeners over (and owns capture now).
    handed_off: bool,
}

/// Fetches the local pods' certificates before declaring readiness.
async fn prefetch(certs: &Arc<CertStore>, ids: std::collections::BTreeSet<hbone::SpiffeId>) {
    let fetches = ids.into_iter().map(|id| {
        let certs = certs.clone();
        async move {
            if let Err(e) = certs.get(&id).await {
                tracing::warn!(identity = %id, error = %e, "certificate fetch failed");
            }
        }
    });
    let all = futures::future::join_all(fetches);
    if tokio::time::timeout(CERT_STARTUP_TIMEOUT, all)
        .await
        .is_err()
    {
        tracing::warn!("certificates still loading; continuing");
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

#[cfg(test)]
mod tests;

/// Says at start what capture cannot cover on a bridge CNI (see
/// [`crate::capture::bridge`]): one warning per finding.
async fn warn_about_bridges(pods: &std::collections::BTreeSet<std::net::IpAddr>) {
    let pods = pods.clone();
    let view = tokio::task::spawn_blocking(move || crate::capture::bridge::detect(&pods, 16))
        .await
        .unwrap_or_default();
    for finding in crate::capture::bridge::assess(&view) {
        tracing::warn!(reason = finding.reason, "{}", finding.message);
    }
}
