//! The Kubernetes source: watches a cluster with kube-rs and feeds each
//! watch event into the same keyed input as the file source.
//!
//! ```text
//!  API server ──watch (list, then watch from its resourceVersion)──►
//!    Namespaces, Pods, Services, EndpointSlices,          one stream per kind,
//!    AuthorizationPolicies, PeerAuthentications,          merged (watch.rs)
//!    Gateways, HTTPRoutes, GRPCRoutes
//!      │ each object → a small info (convert)
//!      ▼
//!    Index (index/): infos by name, reverse indexes, dirty keys ─► [Change]
//!      │ one batch per wake-up: the events already queued, coalesced
//!      ▼
//!    MeshInput::apply (apply.rs; a rejected batch is split until the bad
//!    change is found, the rest applied, the bad one retried later)
//!      ▼
//!    Update { snapshot, touched } ─► the publisher, as for the file
//! ```
//!
//! Resilience comes from kube-rs's watcher: a watch that ends is resumed
//! from the last resourceVersion it saw (bookmarks keep it fresh); a
//! `410 Gone` (the version was compacted away) makes it list again, and
//! that list resyncs the index ([`index::Index::resync`]: what is no
//! longer there is deleted); an API server that cannot be reached is
//! retried with a jittered exponential backoff (10 ms to 15 s, as the xDS
//! clients) while the last good state stays published. Nothing is published until every
//! kind has been listed once, so the first snapshot is the whole cluster.
//! Istio's and the Gateway API's CRDs may be missing: a kind whose list answers `404` counts as
//! listed and empty, and is retried in the background.

mod apply;
pub mod convert;
pub mod gateway;
pub mod index;
pub mod istio;
mod watch;

use std::path::PathBuf;

pub use watch::{KubeSource, SourceMetrics};

/// The trust domain when none is given (as Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = mesh_model::state::DEFAULT_TRUST_DOMAIN;
/// Istio's root namespace: its policies are global, its namespace-wide
/// PeerAuthentication is the mesh's default.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// How to reach the cluster and read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// A kubeconfig file; `None`: `$KUBECONFIG` or `~/.kube/config` if
    /// there is one, else the in-cluster service account (kube-rs's
    /// `Config::infer`).
    pub kubeconfig: Option<PathBuf>,
    pub trust_domain: String,
    pub root_namespace: String,
}

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            kubeconfig: None,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading the kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("finding the cluster ($KUBECONFIG, ~/.kube/config or the in-cluster service account)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("making the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("trust domain {value:?}")]
    TrustDomain {
        value: String,
        #[source]
        source: mesh_model::identity::SpiffeIdError,
    },
}

/// A client for the cluster `cfg` names.
pub async fn client(cfg: &KubeConfig) -> Result<kube::Client, KubeError> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(KubeError::Infer)?,
    };
    kube::Client::try_from(config).map_err(KubeError::Client)
}
