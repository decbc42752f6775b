//! A test Kubernetes API server that speaks the real wire format, so that
//! kube-rs and kubectl talk to it unmodified over plain HTTP (a kubeconfig
//! with `server: http://127.0.0.1:PORT`).
//!
//! What it serves (JSON only):
//! - discovery: `/version`, `/api`, `/api/v1`, `/apis`,
//!   `/apis/<group>[/<version>]` for the types in [`resources::RESOURCES`]
//!   (core Namespaces, Nodes, Pods, Services, ServiceAccounts, ConfigMaps,
//!   Secrets; Deployments; EndpointSlices; Istio's AuthorizationPolicy and
//!   PeerAuthentication; Gateway API Gateway, HTTPRoute and GRPCRoute);
//! - GET/list with `labelSelector`, `fieldSelector`, `limit`/`continue`
//!   and the collection's `metadata.resourceVersion`; POST, PUT (with
//!   `resourceVersion` conflicts), DELETE (a namespace takes its objects),
//!   PATCH as JSON merge, JSON patch, strategic merge (by a key table) and
//!   server-side apply (field managers, conflicts, `force`); the `status`
//!   subresource;
//! - `TokenReview` (POST), answered from a table of test tokens
//!   ([`tokenreview::TokenReviews`], [`ApiServer::token_reviews`]); Leases
//!   (`coordination.k8s.io/v1`) for leader election;
//! - watches (`?watch=1`): newline-delimited `ADDED`/`MODIFIED`/`DELETED`
//!   events, `BOOKMARK`s when asked (`allowWatchBookmarks`, every
//!   `bookmark_interval`), resumption from a `resourceVersion`, objects
//!   entering or leaving a selector as `ADDED`/`DELETED`, `timeoutSeconds`,
//!   and `410 Gone` as an `ERROR` event for a version compacted away
//!   ([`store::Store::compact`]), for a watch that fell behind, or on
//!   demand ([`store::Store::expire_watches`]).
//!
//! Differences from a real one, kept on purpose: no admission, defaulting
//! or validation beyond names (a Service gets a `clusterIP`); there is no
//! kubelet or controller, so the `status` in a created object's YAML is
//! kept (a real server drops a new Pod's status) and EndpointSlices are
//! written by the test; no OpenAPI (`kubectl apply` needs
//! `--validate=false`); no authentication; deletion is immediate (no
//! finalizers or grace periods); a watch from a revision newer than the
//! server's answers `410` (a real one answers `504`, too large).
//!
//! [`ApiServer::stop`] drops the listener and every connection (an outage
//! as the client sees it); [`ApiServer::restart`] binds the same port
//! again over the same [`store::Store`], as a restarted API server over
//! the same etcd.

mod apply;
mod http;
pub mod patch;
pub mod resources;
pub mod selector;
pub mod store;
pub mod tokenreview;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use store::Store;

/// How often an open watch that asked for them gets a `BOOKMARK`.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// A running test API server. It runs on a runtime of its own (one
/// worker thread), so a test that blocks its own threads (waiting on a
/// process, say) never starves it.
pub struct ApiServer {
    pub addr: SocketAddr,
    store: Arc<Store>,
    token_reviews: Arc<tokenreview::TokenReviews>,
    bookmark_interval: Duration,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ApiServer {
    /// Serves `store` on `addr` (port 0: any free port).
    pub fn start(store: Arc<Store>, addr: SocketAddr) -> std::io::Result<ApiServer> {
        Self::start_with(store, addr, DEFAULT_BOOKMARK_INTERVAL)
    }

    /// [`Self::start`], with bookmarks every `bookmark_interval`.
    pub fn start_with(
        store: Arc<Store>,
        addr: SocketAddr,
        bookmark_interval: Duration,
    ) -> std::io::Result<ApiServer> {
        Self::serve(store, std::net::TcpListener::bind(addr)?, bookmark_interval)
    }

    /// Serves `store` on `listener` (one bound in another network
    /// namespace, say). [`Self::restart`] binds its address again in the
    /// caller's own namespace.
    pub fn serve(
        store: Arc<Store>,
        listener: std::net::TcpListener,
        bookmark_interval: Duration,
    ) -> std::io::Result<ApiServer> {
        let mut s = ApiServer {
            addr: listener.local_addr()?,
            store,
            token_reviews: Arc::default(),
            bookmark_interval,
            runtime: None,
        };
        s.serve_on(listener)?;
        Ok(s)
    }

    fn serve_on(&mut self, listener: std::net::TcpListener) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kube-api")
            .enable_all()
            .build()?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        self.addr = listener.local_addr()?;
        let shared = Arc::new(http::Shared {
            store: self.store.clone(),
            token_reviews: self.token_reviews.clone(),
            server: self.addr.to_string(),
            bookmark_interval: self.bookmark_interval,
        });
        runtime.spawn(accept(listener, shared));
        self.runtime = Some(runtime);
        Ok(())
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The tokens `TokenReview` accepts (kept across [`Self::restart`]).
    pub fn token_reviews(&self) -> &Arc<tokenreview::TokenReviews> {
        &self.token_reviews
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server (no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Stops serving: the listener and every open connection (watches
    /// included) are dropped. The store stays.
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Serves again on the same address, over the same store.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        // The port is released once the old runtime has dropped its tasks.
        for _ in 0..100 {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => return self.serve_on(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
        let l = std::net::TcpListener::bind(self.addr)?;
        self.serve_on(l)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept(listener: TcpListener, shared: Arc<http::Shared>) {
    // Dropped with this task: every connection is aborted with it.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| http::handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("document {index}: not YAML")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("document {index}: {api_version}/{kind} is not served")]
    UnknownKind {
        index: usize,
        api_version: String,
        kind: String,
    },
    #[error("document {index} ({name}): {message}")]
    Rejected {
        index: usize,
        name: String,
        message: String,
    },
}

/// Creates every object of a multi-document YAML text (a `kind: List`'s
/// items too), as `kubectl create -f` would; namespaced objects without a
/// namespace go to `default`. Returns how many were created.
pub fn load_yaml(store: &Store, text: &str) -> Result<usize, LoadError> {
    let mut n = 0;
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = <Value as serde::Deserialize>::deserialize(doc)
            .map_err(|source| LoadError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        let items = if value["kind"] == "List" {
            value["items"].as_array().cloned().unwrap_or_default()
        } else {
            vec![value]
        };
        for obj in items {
            let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_owned();
            let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
            let r = resources::RESOURCES
                .iter()
                .position(|r| r.api_version() == api_version && r.kind == kind)
                .ok_or_else(|| LoadError::UnknownKind {
                    index,
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                })?;
            let ns = if resources::RESOURCES[r].namespaced {
                obj["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_owned()
            } else {
                String::new()
            };
            store
                .create(r, &ns, obj.clone())
                .map_err(|e| LoadError::Rejected {
                    index,
                    name: store::name_of(&obj).to_owned(),
                    message: e.message,
                })?;
            n += 1;
        }
    }
    Ok(n)
}
