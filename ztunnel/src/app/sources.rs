//! Where config and certificates come from: the local file with the dev CA,
//! or the control plane (delta xDS plus its CA service, so ztunnel holds no
//! CA key). Either way startup yields a first snapshot, a certificate store
//! and a stream of later updates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hbone::ca::DevCa;
use hbone::cert::{CertStore, FETCH_DEADLINE};
use hbone::drain::Drain;
use proto::discovery::Node;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::{AppError, Config};
use crate::metrics::Metrics;
use mesh_model::config;
use mesh_model::state::Snapshot;
use mesh_model::xds::store::XdsStore;
use mesh_runtime::source::FileSource;
use mesh_runtime::xds::ca::RemoteCa;
use mesh_runtime::xds::client::XdsClient;
use mesh_runtime::xds::token::BearerToken;

/// The TLS name the control plane's serving certificate carries.
pub const DEFAULT_XDS_SERVER_NAME: &str = "control-plane";
/// How often a ztunnel waiting for its first xDS sync says so.
const SYNC_WAIT_LOG: Duration = Duration::from_secs(10);

/// The config source named on the command line.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The local YAML file, and the dev CA in `ca_dir`.
    File {
        config_file: PathBuf,
        ca_dir: PathBuf,
    },
    /// The control plane.
    Xds(XdsSource),
}

#[derive(Debug, Clone)]
pub struct XdsSource {
    /// `https://host:15012`.
    pub address: String,
    /// The name to verify in the control plane's certificate.
    pub server_name: String,
    /// The mesh root (PEM): it signs the control plane's certificate and
    /// every workload certificate.
    pub root_cert: PathBuf,
    /// This node's bootstrap token, or its projected service-account
    /// token (audience `istio-ca`): read again on each use.
    pub token_file: Option<PathBuf>,
}

/// What the control thread follows after startup.
pub enum Updates {
    File(FileSource),
    Xds(mpsc::Receiver<Arc<Snapshot>>),
}

pub struct Started {
    pub snapshot: Arc<Snapshot>,
    pub certs: Arc<CertStore>,
    pub updates: Updates,
}

/// Loads the first snapshot and sets up certificates. For xDS this waits
/// for the first complete sync: ztunnel must not capture traffic before it
/// knows the policies.
pub async fn start(cfg: &Config, drain: &Drain, metrics: &Metrics) -> Result<Started, AppError> {
    match &cfg.source {
        ConfigSource::File {
            config_file,
            ca_dir,
        } => {
            let snapshot = config::load(config_file).map_err(AppError::Config)?;
            if snapshot.node(&cfg.node).is_none() {
                return Err(AppError::UnknownNode(cfg.node.clone()));
            }
            check_served(cfg, &snapshot)?;
            let ca = DevCa::load_or_create(ca_dir)
                .map_err(AppError::Ca)?
                .with_leaf_ttl(cfg.cert_ttl);
            Ok(Started {
                snapshot: Arc::new(snapshot),
                certs: CertStore::with_stats(Arc::new(ca), FETCH_DEADLINE, metrics.certs.clone()),
                updates: Updates::File(FileSource::new(config_file)),
            })
        }
        ConfigSource::Xds(x) => start_xds(cfg, x, drain, metrics).await,
    }
}

/// In file mode a sidecar's `--workload` must be in the config, on
/// `--node` (its certificate is issued for a pod of that node). Over xDS
/// the sidecar instead stays not-ready until the workload appears on its
/// node.
fn check_served(cfg: &Config, snap: &Snapshot) -> Result<(), AppError> {
    let super::Mode::Sidecar(name) = &cfg.mode else {
        return Ok(());
    };
    // By name only, to tell "elsewhere" from "missing"; the scope itself
    // never matches a pod on another node.
    let w = snap
        .workload_by_name(&name.namespace, &name.name)
        .ok_or_else(|| AppError::UnknownWorkload(name.clone()))?;
    if w.node != cfg.node {
        return Err(AppError::WorkloadElsewhere {
            workload: name.clone(),
            actual: w.node.clone(),
            node: cfg.node.clone(),
        });
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, AppError> {
    std::fs::read_to_string(path).map_err(|source| AppError::Read {
        path: path.to_owned(),
        source,
    })
}

async fn start_xds(
    cfg: &Config,
    x: &XdsSource,
    drain: &Drain,
    metrics: &Metrics,
) -> Result<Started, AppError> {
    let root_pem = read(&x.root_cert)?;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(root_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| AppError::BadRoot(x.root_cert.clone()))?;
    if roots.is_empty() {
        return Err(AppError::BadRoot(x.root_cert.clone()));
    }
    // Read again on each use: a projected service-account token rotates.
    let token = match &x.token_file {
        Some(path) => Some(BearerToken::file(path).map_err(|source| AppError::Read {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&root_pem))
        .domain_name(x.server_name.clone());
    let endpoint = Endpoint::from_shared(x.address.clone())
        .and_then(|e| e.tls_config(tls))
        .map_err(AppError::XdsEndpoint)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    // A sidecar's own control-plane sockets must escape its pod's REDIRECT.
    let mark = (cfg.capture && matches!(cfg.mode, super::Mode::Sidecar(_)))
        .then_some(crate::capture::rules::ZTUNNEL_MARK);
    let ca = RemoteCa::new(
        mesh_runtime::xds::connector::connect_lazy(&endpoint, mark),
        token.clone(),
        roots,
        cfg.cert_ttl,
    )
    .with_roots_file(&x.root_cert);
    let (publish, mut updates) = mpsc::channel(8);
    let client = XdsClient {
        endpoint,
        mark,
        node: Node {
            id: format!("ztunnel~{}", cfg.node),
            ..Default::default()
        },
        token,
        store: XdsStore::default(),
        stats: metrics.xds.clone(),
        publish,
        synced: Default::default(),
        types: &mesh_runtime::xds::client::TYPE_URLS,
    };
    tokio::spawn(client.run(drain.clone()));
    let snapshot = loop {
        tokio::select! {
            s = updates.recv() => break s.ok_or(AppError::XdsStopped)?,
            () = tokio::time::sleep(SYNC_WAIT_LOG) => {
                tracing::warn!(address = %x.address, "still waiting for the first xDS sync; not ready");
            }
        }
    };
    tracing::info!(workloads = snapshot.workloads().count(), "first xDS sync");
    Ok(Started {
        snapshot,
        certs: CertStore::with_stats(Arc::new(ca), FETCH_DEADLINE, metrics.certs.clone()),
        updates: Updates::Xds(updates),
    })
}
