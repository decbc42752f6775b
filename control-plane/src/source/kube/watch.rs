//! The I/O shell of the Kubernetes source: one kube-rs watcher per kind,
//! merged into one stream of converted events that [`KubeSource::next`]
//! drains in batches.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DeserializeGuard;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use mesh_model::input::{Change, MeshInput, Update};
use mesh_model::state::{Policy, PolicyAction, PolicyScope};
use mesh_runtime::xds::client::{jitter, Backoff};
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;

use super::apply::Retry;
use super::convert::policy::{self, Converted, PeerAuthInfo, PeerMode};
use super::convert::waypoint::{
    gateway_info, grpc_route_info, http_route_info, RouteInfo, RouteState,
};
use super::convert::{namespace_info, pod_info, service_info, slice_info};
use super::gateway::{Gateway, GrpcRoute, HttpRoute};
use super::index::{Index, Info, Kind, Name, Settings};
use super::istio::{AuthorizationPolicy, PeerAuthentication};
use super::{client, KubeConfig, KubeError};
use crate::source::Source;

/// Events taken into one batch at most; more wait for the next.
const MAX_BATCH: usize = 4096;
/// The watchers' retry delays: the xDS clients' (10 ms doubling to 15 s,
/// jittered), reset by any event that arrives.
#[derive(Debug, Default)]
struct WatchBackoff(Backoff);

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.0.next_delay(jitter()))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0.reset();
    }
}

/// One converted watch event.
#[derive(Debug)]
enum Event {
    Apply(Info),
    Delete(Name),
    /// A (re)list begins: the objects up to `InitDone` are all there is.
    Init,
    InitApply(Info),
    InitDone,
}

#[derive(Debug)]
enum Step {
    Event(Kind, Event),
    Error(Kind, watcher::Error),
}

/// Counters the source keeps (registered by the caller).
#[derive(Debug, Clone, Default)]
pub struct SourceMetrics {
    /// Changes the mesh input refused (each retried later).
    pub rejected: Counter,
    /// Watch and list failures, all kinds together (each is logged with
    /// its kind).
    pub watch_errors: Counter,
}

/// A [`Source`] fed by watches of a Kubernetes cluster.
pub struct KubeSource {
    events: BoxStream<'static, Step>,
    index: Index,
    input: MeshInput,
    /// Kinds listed at least once since start.
    listed: BTreeSet<Kind>,
    /// A list in progress, per kind.
    relist: HashMap<Kind, Vec<Info>>,
    retry: Retry,
    published: bool,
    metrics: SourceMetrics,
}

impl KubeSource {
    /// Connects to the cluster `cfg` names (nothing is fetched yet: the
    /// watches start on the first [`Source::next`]).
    pub async fn connect(cfg: &KubeConfig, metrics: SourceMetrics) -> Result<Self, KubeError> {
        mesh_model::identity::SpiffeId::new(&cfg.trust_domain, "ns", "sa").map_err(|source| {
            KubeError::TrustDomain {
                value: cfg.trust_domain.clone(),
                source,
            }
        })?;
        let client = client(cfg).await?;
        Ok(Self::with_client(client, cfg, metrics))
    }

    /// Watches through `client`.
    pub fn with_client(client: kube::Client, cfg: &KubeConfig, metrics: SourceMetrics) -> Self {
        let root = cfg.root_namespace.clone();
        let root2 = root.clone();
        let streams = vec![
            watch(
                Api::<Namespace>::all(client.clone()),
                Kind::Namespace,
                |o| namespace_info(o).map(Info::Namespace),
            ),
            watch(Api::<Pod>::all(client.clone()), Kind::Pod, |o| {
                pod_info(o).map(Info::Pod)
            }),
            watch(Api::<Service>::all(client.clone()), Kind::Service, |o| {
                service_info(o).map(Info::Service)
            }),
            watch(
                Api::<EndpointSlice>::all(client.clone()),
                Kind::EndpointSlice,
                |o| slice_info(o).map(Info::EndpointSlice),
            ),
            watch(
                Api::<DeserializeGuard<AuthorizationPolicy>>::all(client.clone()),
                Kind::AuthorizationPolicy,
                move |o| authorization_policy(o, &root),
            ),
            watch(
                Api::<DeserializeGuard<PeerAuthentication>>::all(client.clone()),
                Kind::PeerAuthentication,
                move |o| peer_authentication(o, &root2),
            ),
            watch(Api::<Gateway>::all(client.clone()), Kind::Gateway, |o| {
                gateway_info(o).map(Info::Gateway)
            }),
            watch(
                Api::<HttpRoute>::all(client.clone()),
                Kind::HttpRoute,
                |o| http_route_info(o).map(logged_route),
            ),
            watch(Api::<GrpcRoute>::all(client), Kind::GrpcRoute, |o| {
                grpc_route_info(o).map(logged_route)
            }),
        ];
        KubeSource {
            events: futures::stream::select_all(streams).boxed(),
            index: Index::new(Settings {
                trust_domain: cfg.trust_domain.clone(),
                root_namespace: cfg.root_namespace.clone(),
            }),
            input: MeshInput::new(&cfg.trust_domain),
            listed: BTreeSet::new(),
            relist: HashMap::new(),
            retry: Retry::default(),
            published: false,
            metrics,
        }
    }

    fn handle(&mut self, step: Step) {
        match step {
            Step::Event(_, Event::Apply(info)) => self.index.upsert(info),
            Step::Event(_, Event::Delete(name)) => self.index.delete(&name),
            Step::Event(kind, Event::Init) => {
                tracing::debug!(kind = kind.as_str(), "listing");
                self.relist.insert(kind, Vec::new());
            }
            Step::Event(kind, Event::InitApply(info)) => {
                self.relist.entry(kind).or_default().push(info);
            }
            Step::Event(kind, Event::InitDone) => {
                let infos = self.relist.remove(&kind).unwrap_or_default();
                tracing::info!(kind = kind.as_str(), objects = infos.len(), "listed");
                self.index.resync(kind, infos);
                self.listed.insert(kind);
            }
            Step::Error(kind, e) => {
                self.metrics.watch_errors.inc();
                if is_crd(kind) && is_not_found(&e) {
                    // Istio's CRDs are not installed: nothing of this
                    // kind exists (retried in the background).
                    if self.listed.insert(kind) {
                        tracing::warn!(
                            kind = kind.as_str(),
                            "not served by the API server (CRD not installed?); treated as empty"
                        );
                        self.index.resync(kind, Vec::new());
                    }
                    return;
                }
                tracing::warn!(kind = kind.as_str(), error = %e, cause = ?std::error::Error::source(&e).map(ToString::to_string), "watch failed; retrying with backoff, the last good state stays");
            }
        }
    }

    /// Applies what the index says changed; `None` when nothing did.
    fn apply(&mut self) -> Option<Update> {
        let started = std::time::Instant::now();
        let changes = self.index.take_changes();
        let indexed = started.elapsed();
        let n = changes.len();
        if changes.is_empty() && self.retry.len() == 0 && self.published {
            return None;
        }
        let index = &self.index;
        let wanted = |k: &mesh_model::input::Key| match index.emitted(k) {
            Some(o) => Change::Upsert(o.clone()),
            None => Change::Delete(k.clone()),
        };
        let applied = self.retry.apply(&mut self.input, changes, wanted);
        for (change, e) in &applied.rejected {
            self.metrics.rejected.inc();
            tracing::warn!(change = ?change_key(change), error = %e, "change refused by the mesh input; retried with the next event");
        }
        tracing::debug!(
            changes = n,
            index_ms = indexed.as_secs_f64() * 1e3,
            apply_ms = (started.elapsed() - indexed).as_secs_f64() * 1e3,
            "applied"
        );
        if applied.touched.is_empty() && self.published {
            return None;
        }
        self.published = true;
        Some(Update {
            snapshot: self.input.snapshot().clone(),
            touched: applied.touched,
        })
    }
}

fn change_key(c: &Change) -> mesh_model::input::Key {
    match c {
        Change::Upsert(o) => o.key(),
        Change::Delete(k) => k.clone(),
    }
}

impl Source for KubeSource {
    fn next(&mut self) -> BoxFuture<'_, Option<Arc<Update>>> {
        Box::pin(async move {
            loop {
                let step = self.events.next().await?;
                self.handle(step);
                // Whatever else is already queued joins this batch.
                for _ in 1..MAX_BATCH {
                    match self.events.next().now_or_never() {
                        Some(Some(step)) => self.handle(step),
                        Some(None) => return None,
                        None => break,
                    }
                }
                if self.listed.len() < Kind::ALL.len() {
                    continue;
                }
                if let Some(update) = self.apply() {
                    return Some(Arc::new(update));
                }
            }
        })
    }
}

fn is_crd(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::AuthorizationPolicy
            | Kind::PeerAuthentication
            | Kind::Gateway
            | Kind::HttpRoute
            | Kind::GrpcRoute
    )
}

/// A route, its refusal logged (the last good form stays).
fn logged_route(r: RouteInfo) -> Info {
    if let RouteState::Invalid(why) = &r.state {
        tracing::error!(route = %r.key, error = %why, "route refused; its last good form (if any) stays");
    }
    Info::Route(r)
}

fn is_not_found(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(r))
            | watcher::Error::WatchStartFailed(kube::Error::Api(r))
            if r.code == 404
    )
}

/// One kind's watcher, with backoff, its objects converted by `convert`.
fn watch<K, F>(api: Api<K>, kind: Kind, convert: F) -> BoxStream<'static, Step>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    F: Fn(&K) -> Option<Info> + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default())
        .backoff(WatchBackoff::default())
        .filter_map(move |r| {
            let step = match r {
                Ok(watcher::Event::Apply(o)) => convert(&o).map(Event::Apply),
                Ok(watcher::Event::Delete(o)) => convert(&o).map(|i| Event::Delete(i.name())),
                Ok(watcher::Event::Init) => Some(Event::Init),
                Ok(watcher::Event::InitApply(o)) => convert(&o).map(Event::InitApply),
                Ok(watcher::Event::InitDone) => Some(Event::InitDone),
                Err(e) => return std::future::ready(Some(Step::Error(kind, e))),
            };
            std::future::ready(step.map(|e| Step::Event(kind, e)))
        })
        .boxed()
}

/// An AuthorizationPolicy; one that does not parse fails closed (an
/// ALLOW with no rules over its namespace: nothing there is allowed until
/// it is fixed), since what it meant to deny cannot be known.
fn authorization_policy(o: &DeserializeGuard<AuthorizationPolicy>, root: &str) -> Option<Info> {
    match &o.0 {
        Ok(ap) => {
            let converted = policy::authorization_policy(ap, root)?;
            let name = (ap.metadata.namespace.clone()?, ap.metadata.name.clone()?);
            match &converted {
                Converted::Policy { dropped, .. } if !dropped.is_empty() => {
                    tracing::info!(policy = %format!("{}/{}", name.0, name.1), ?dropped, "not enforceable by ztunnel: an ALLOW rule needing it never matches, a DENY rule goes on without it");
                }
                Converted::Waypoint {
                    problem: Some(why), ..
                } => {
                    tracing::error!(policy = %format!("{}/{}", name.0, name.1), error = %why, "waypoint policy cannot be enforced as written; allowing nothing through its targets until it is fixed");
                }
                Converted::Skipped(why) => {
                    tracing::debug!(policy = %format!("{}/{}", name.0, name.1), why, "not a ztunnel policy");
                }
                Converted::Policy { .. } | Converted::Waypoint { .. } => {}
            }
            Some(Info::AuthorizationPolicy(name, converted))
        }
        Err(invalid) => {
            let namespace = invalid.metadata.namespace.clone()?;
            let name = invalid.metadata.name.clone()?;
            tracing::error!(policy = %format!("{namespace}/{name}"), error = %invalid.error, "AuthorizationPolicy does not parse; allowing nothing in its namespace until it does");
            let policy = Policy {
                name: name.clone(),
                namespace: namespace.clone(),
                scope: if namespace == root {
                    PolicyScope::Global
                } else {
                    PolicyScope::Namespace
                },
                action: PolicyAction::Allow,
                rules: Vec::new(),
            };
            Some(Info::AuthorizationPolicy(
                (namespace, name),
                Converted::Policy {
                    policy,
                    dropped: vec!["(the whole policy: it does not parse)".to_owned()],
                },
            ))
        }
    }
}

/// A PeerAuthentication; one that does not parse fails closed (STRICT
/// over its namespace).
fn peer_authentication(o: &DeserializeGuard<PeerAuthentication>, _root: &str) -> Option<Info> {
    match &o.0 {
        Ok(pa) => policy::peer_authentication_info(pa).map(Info::PeerAuthentication),
        Err(invalid) => {
            let m = &invalid.metadata;
            tracing::error!(peer_authentication = %format!("{}/{}", m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default()), error = %invalid.error, "PeerAuthentication does not parse; STRICT in its namespace until it does");
            Some(Info::PeerAuthentication(PeerAuthInfo {
                namespace: m.namespace.clone()?,
                name: m.name.clone()?,
                created: m
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
                selector: Default::default(),
                mode: PeerMode::Strict,
            }))
        }
    }
}
