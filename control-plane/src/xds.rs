//! The delta ADS gRPC service: `DeltaAggregatedResources`.
//!
//! One task per stream owns that client's [`Subscription`]s (one per type)
//! and reacts to two things: a request (subscription change, ACK or NACK)
//! and a newly published resource set. Either way it computes the delta
//! with the pure [`Subscription::diff_published`] (only the names changed
//! since the generation the client is in sync with) and sends it only if
//! non-empty (the first request of each type is always answered, so a
//! client knows it is in sync).
//!
//! A stream authenticated as a waypoint's identity gets only the `Address`,
//! `Route` and `L7Authorization` resources of what that waypoint serves
//! ([`crate::view`]). What it serves can change without any of those
//! resources changing (a Service becomes bound, and its endpoints join the
//! view), so they are diffed in full against its view on every push; the
//! view is small. Node streams do not subscribe to routes; if one did, it
//! would get them all.
//!
//! A delta larger than [`MAX_RESPONSE_BYTES`] goes out in several
//! responses ([`Delta::split`]), all but the last marked
//! [`MORE_FOLLOWS`] in `system_version_info`, so no message reaches the
//! client's limit (tonic's 4 MiB, [`MAX_MESSAGE_BYTES`]) and our client
//! applies the push whole; a client that ignores the mark applies each
//! piece as it comes, as plain delta xDS allows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryService;
use proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Authenticator, Caller};
use crate::delta::{Delta, History, Reply, Subscription};
use crate::metrics::Metrics;
use crate::resources::{Kind, ResourceSet, Resources};
use mesh_runtime::xds::client::{MAX_MESSAGE_BYTES, MORE_FOLLOWS};

/// Responses queued per stream before the task waits for the client.
const STREAM_BUFFER: usize = 16;
/// Resource bytes per response: a quarter of the client's limit, leaving
/// room for the rest of the message and for a client with a lower limit.
pub const MAX_RESPONSE_BYTES: usize = MAX_MESSAGE_BYTES / 4;

/// One published resource set and when it was published.
#[derive(Debug)]
pub struct Published {
    /// The snapshot `resources` were made from (waypoint views).
    pub snapshot: Arc<mesh_model::state::Snapshot>,
    pub resources: ResourceSet,
    pub at: Instant,
    /// One more than the set published before.
    pub generation: u64,
    /// What the last few generations changed, this one included.
    pub history: History,
}

pub type Feed = watch::Receiver<Option<Arc<Published>>>;

pub struct XdsService {
    pub feed: Feed,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let caller = self.auth.authenticate(&request).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = ClientStream {
            caller,
            requests: request.into_inner(),
            feed: self.feed.clone(),
            tx,
            metrics: self.metrics.clone(),
            subs: BTreeMap::new(),
            unanswered: BTreeSet::new(),
            nonce: 0,
        };
        tokio::spawn(stream.run());
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Keeps the connected-clients gauge right however a stream ends.
struct Connected(Arc<Metrics>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connected_clients.dec();
    }
}

struct ClientStream {
    caller: Caller,
    requests: Streaming<DeltaDiscoveryRequest>,
    feed: Feed,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    metrics: Arc<Metrics>,
    subs: BTreeMap<Kind, Subscription>,
    /// Types whose first request came before any config was published:
    /// answered with the first one, even if empty.
    unanswered: BTreeSet<Kind>,
    nonce: u64,
}

impl ClientStream {
    async fn run(mut self) {
        self.metrics.connected_clients.inc();
        let _connected = Connected(self.metrics.clone());
        tracing::info!(caller = %self.caller, "xds client connected");
        // Everything published before now is sent on subscription.
        self.feed.mark_unchanged();
        loop {
            tokio::select! {
                msg = self.requests.message() => match msg {
                    Ok(Some(req)) => {
                        if self.on_request(req).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(caller = %self.caller, %status, "xds stream error");
                        break;
                    }
                },
                changed = self.feed.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let published = self.feed.borrow_and_update().clone();
                    if let Some(p) = published {
                        if self.push_all(&p).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        tracing::info!(caller = %self.caller, "xds client disconnected");
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Closed> {
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            tracing::warn!(caller = %self.caller, type_url = %req.type_url, "unknown xDS type; ignored");
            return Ok(());
        };
        let sub = self.subs.entry(kind).or_default();
        let first = !sub.started();
        match sub.on_request(&req) {
            Reply::Nack { nonce, message } => {
                self.metrics
                    .nacks
                    .get_or_create(&Metrics::type_label(kind))
                    .inc();
                tracing::warn!(caller = %self.caller, r#type = kind.label(), %nonce, %message, "NACK");
            }
            Reply::Ack { nonce } => {
                tracing::debug!(caller = %self.caller, r#type = kind.label(), %nonce, "ACK");
            }
            Reply::None => {}
        }
        let published = self.feed.borrow().clone();
        let Some(p) = published else {
            if first {
                self.unanswered.insert(kind);
            }
            return Ok(());
        };
        self.push(kind, &p, first, None).await
    }

    async fn push_all(&mut self, p: &Published) -> Result<(), Closed> {
        let kinds: Vec<Kind> = self.subs.keys().copied().collect();
        for kind in kinds {
            let always = self.unanswered.remove(&kind);
            self.push(kind, p, always, Some(p.at)).await?;
        }
        Ok(())
    }

    /// Sends `kind`'s delta if there is one (or `always`).
    async fn push(
        &mut self,
        kind: Kind,
        p: &Published,
        always: bool,
        published_at: Option<Instant>,
    ) -> Result<(), Closed> {
        let sub = self.subs.get_mut(&kind).expect("subscribed kind");
        let delta = match &self.caller {
            Caller::Identity(id) if kind != Kind::Authorization => {
                sub.diff(&waypoint_view(p, kind, id))
            }
            _ => sub.diff_published(p.resources.of(kind), p.generation, &p.history, kind),
        };
        if delta.is_empty() && !always {
            sub.commit_at(&delta, p.generation);
            return Ok(());
        }
        sub.commit_at(&delta, p.generation);
        let pieces = delta.split(kind, MAX_RESPONSE_BYTES);
        let last = pieces.len() - 1;
        for (i, piece) in pieces.iter().enumerate() {
            self.nonce += 1;
            let mut resp = response(kind, piece, self.nonce.to_string());
            if i < last {
                resp.system_version_info = MORE_FOLLOWS.to_owned();
            }
            self.tx.send(Ok(resp)).await.map_err(|_| Closed)?;
            self.metrics
                .pushes
                .get_or_create(&Metrics::type_label(kind))
                .inc();
        }
        if let Some(at) = published_at {
            self.metrics
                .push_latency
                .observe(at.elapsed().as_secs_f64());
        }
        tracing::debug!(
            caller = %self.caller,
            r#type = kind.label(),
            updated = delta.updated.len(),
            removed = delta.removed.len(),
            responses = pieces.len(),
            "pushed"
        );
        Ok(())
    }
}

/// The client went away.
struct Closed;

/// The resources of `kind` the waypoint `id` is sent.
fn waypoint_view(p: &Published, kind: Kind, id: &mesh_model::SpiffeId) -> Resources {
    let names = match kind {
        Kind::Route => crate::view::waypoint_routes(&p.snapshot, id),
        Kind::L7Authorization => crate::view::waypoint_l7_policies(&p.snapshot, id),
        _ => crate::view::waypoint_addresses(&p.snapshot, id),
    };
    p.resources
        .of(kind)
        .iter()
        .filter(|(n, _)| names.contains(n.as_str()))
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect()
}

/// The wire form of a delta.
pub fn response(kind: Kind, delta: &Delta, nonce: String) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: kind.type_url().to_owned(),
        resources: delta.updated.iter().map(|r| r.to_resource(kind)).collect(),
        removed_resources: delta.removed.clone(),
        nonce,
        ..Default::default()
    }
}
