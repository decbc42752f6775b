//! Where config and the waypoint's certificate come from: the local file
//! with the dev CA, or the control plane (delta xDS, and its CA signing
//! the waypoint's own identity, authenticated by the waypoint's token).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hbone::ca::DevCa;
use hbone::cert::CertStore;
use hbone::drain::Drain;
use mesh_model::config;
use mesh_model::state::Snapshot;
use mesh_model::xds::store::XdsStore;
use mesh_runtime::source::WatchedFile;
use mesh_runtime::xds::ca::RemoteCa;
use mesh_runtime::xds::client::{XdsClient, XdsStats};
use mesh_runtime::xds::token::BearerToken;
use proto::discovery::Node;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::{AppError, Config};

/// The TLS name the control plane's serving certificate carries.
pub const DEFAULT_XDS_SERVER_NAME: &str = "control-plane";
/// How often a waypoint waiting for its first xDS sync says so.
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
    /// The mesh root (PEM).
    pub root_cert: PathBuf,
    /// The waypoint's own token, bound to its identity (a tokens-file
    /// entry, or its projected service-account token): read on each use.
    pub token_file: PathBuf,
}

/// What the control thread follows after startup.
pub enum Updates {
    /// The file, re-read on inotify and at least every poll interval.
    File(WatchedFile),
    Xds(mpsc::Receiver<Arc<Snapshot>>),
}

pub struct Started {
    pub snapshot: Arc<Snapshot>,
    pub certs: Arc<CertStore>,
    pub updates: Updates,
}

/// Loads the first snapshot and sets up the certificate store. Over xDS
/// this waits for the first complete sync: the waypoint must not refuse
/// (or serve) traffic on a partial view.
pub async fn start(cfg: &Config, drain: &Drain) -> Result<Started, AppError> {
    match &cfg.source {
        ConfigSource::File {
            config_file,
            ca_dir,
        } => {
            let snapshot = config::load(config_file).map_err(AppError::Config)?;
            let ca = DevCa::load_or_create(ca_dir)
                .map_err(AppError::Ca)?
                .with_leaf_ttl(cfg.cert_ttl);
            Ok(Started {
                snapshot: Arc::new(snapshot),
                certs: CertStore::new(Arc::new(ca)),
                updates: Updates::File(WatchedFile::new(config_file, cfg.poll_interval)),
            })
        }
        ConfigSource::Xds(x) => start_xds(cfg, x, drain).await,
    }
}

fn read(path: &Path) -> Result<String, AppError> {
    std::fs::read_to_string(path).map_err(|source| AppError::Read {
        path: path.to_owned(),
        source,
    })
}

async fn start_xds(cfg: &Config, x: &XdsSource, drain: &Drain) -> Result<Started, AppError> {
    let root_pem = read(&x.root_cert)?;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(root_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| AppError::BadRoot(x.root_cert.clone()))?;
    if roots.is_empty() {
        return Err(AppError::BadRoot(x.root_cert.clone()));
    }
    // Read again on each use: a projected service-account token rotates.
    let token = BearerToken::file(&x.token_file).map_err(|source| AppError::Read {
        path: x.token_file.clone(),
        source,
    })?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&root_pem))
        .domain_name(x.server_name.clone());
    let endpoint = Endpoint::from_shared(x.address.clone())
        .and_then(|e| e.tls_config(tls))
        .map_err(AppError::XdsEndpoint)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let ca = RemoteCa::new(
        mesh_runtime::xds::connector::connect_lazy(&endpoint, None),
        Some(token.clone()),
        roots,
        cfg.cert_ttl,
    )
    .own_identity()
    .with_roots_file(&x.root_cert);
    let (publish, mut updates) = mpsc::channel(8);
    let client = XdsClient {
        endpoint,
        mark: None,
        node: Node {
            id: format!("waypoint~{}/{}", cfg.namespace, cfg.name),
            ..Default::default()
        },
        token: Some(token),
        store: XdsStore::default(),
        stats: Arc::new(XdsStats::default()),
        publish,
        synced: Default::default(),
        types: &mesh_runtime::xds::client::WAYPOINT_TYPE_URLS,
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
    tracing::info!(
        services = snapshot.services().count(),
        workloads = snapshot.workloads().count(),
        "first xDS sync"
    );
    Ok(Started {
        snapshot,
        certs: CertStore::new(Arc::new(ca)),
        updates: Updates::Xds(updates),
    })
}
