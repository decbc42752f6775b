//! The delta ADS client: one gRPC stream subscribing (wildcard) to
//! `istio.workload.Address` and `istio.security.Authorization`, feeding
//! [`XdsStore`] and publishing each new [`Snapshot`].
//!
//! - Every response is answered: ACK, or NACK with the rejected resources
//!   and their reasons in `error_detail`. A NACKed resource is not retried
//!   by us; the control plane decides what to send next. A policy that
//!   cannot be converted fails closed (the store installs deny-all for its
//!   scope), and is counted in `xds_policies_failed_closed{scope}`.
//! - On reconnect the client sends `initial_resource_versions`, so the
//!   server sends only what changed while we were away.
//! - A message may be at most [`MAX_MESSAGE_BYTES`] (tonic's default, made
//!   explicit); a push cut into pieces to fit is put back together before
//!   it is applied ([`pending`]), every piece ACKed.
//! - Disconnected, the last good snapshot stays in force; reconnects back
//!   off from 10 ms to 15 s, with jitter, and reset after a good response.
//! - A control plane that stops answering is noticed: connecting (TCP and
//!   TLS) and the stream's opening have deadlines, and HTTP/2 keepalive
//!   drops a connection whose PINGs go unanswered
//!   ([`super::connector::ChannelOptions`]), so the stream reconnects.
//!
//! The request building, the answer to a response and the backoff are plain
//! functions; [`reconnect`] is the timer loop that spaces the sessions (it
//! reads only tokio's clock, so tests run it on the paused clock), and
//! [`XdsClient::run`] drives it with the socket session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hbone::drain::Drain;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_AUTHORIZATION_TYPE_URL, ROUTE_TYPE_URL};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::connector::ChannelOptions;
use mesh_model::state::Snapshot;
use mesh_model::xds::store::fail_closed::scope_label;
use mesh_model::xds::store::{Applied, Rejection, XdsStore};

pub const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// The types we subscribe to, in the order we ask for them.
pub const TYPE_URLS: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];
/// A waypoint's: the node types, and its routes and L7 policies.
pub const WAYPOINT_TYPE_URLS: [&str; 4] = [
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    ROUTE_TYPE_URL,
    L7_AUTHORIZATION_TYPE_URL,
];
/// `google.rpc.Code.INVALID_ARGUMENT`, for NACKs.
const INVALID_ARGUMENT: i32 = 3;
/// The largest response we decode: tonic's default, 4 MiB. A control
/// plane must cut a larger push into pieces ([`MORE_FOLLOWS`]).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

pub use pending::MORE_FOLLOWS;

/// The delay before reconnect attempt `attempt` (0-based): doubling from
/// [`INITIAL_BACKOFF`] up to [`MAX_BACKOFF`], then scaled by `jitter` in
/// `[0.5, 1.0]` so a fleet does not reconnect in lockstep.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = INITIAL_BACKOFF.saturating_mul(1u32 << attempt.min(20));
    base.min(MAX_BACKOFF).mul_f64(jitter.clamp(0.5, 1.0))
}

/// A random jitter factor in `[0.5, 1.0)`.
pub fn jitter() -> f64 {
    0.5 + rand::random::<f64>() / 2.0
}

/// The reconnect delays: [`backoff`] of the number of sessions since the
/// last good one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay before the next session, scaled by `jitter`; each call
    /// doubles the next one, up to [`MAX_BACKOFF`].
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let delay = backoff(self.attempt, jitter);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The connection proved good (a response arrived): the next delay is
    /// [`INITIAL_BACKOFF`] again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// What [`reconnect`] runs, again and again.
pub(crate) trait Session {
    type Error;
    /// One connection, until it fails; calls [`Backoff::reset`] once the
    /// connection proved good.
    async fn run_once(&mut self, backoff: &mut Backoff) -> Result<(), Self::Error>;
    /// A session failed; the next starts in `retry_in`.
    fn disconnected(&mut self, error: &Self::Error, retry_in: Duration);
}

/// Runs `session` until `drain` signals, waiting the next [`Backoff`] delay
/// (scaled by `jitter()`) after each one ends.
pub(crate) async fn reconnect<S: Session>(
    session: &mut S,
    drain: &Drain,
    mut jitter: impl FnMut() -> f64,
) {
    let mut watch = drain.watch();
    let mut backoff = Backoff::default();
    loop {
        let result = tokio::select! {
            r = session.run_once(&mut backoff) => r,
            () = watch.signaled() => return,
        };
        let delay = backoff.next_delay(jitter());
        if let Err(e) = &result {
            session.disconnected(e, delay);
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = watch.signaled() => return,
        }
    }
}

/// The first request of a stream for `type_url`: a wildcard subscription,
/// with the versions we already hold.
pub fn subscribe(
    node: &Node,
    type_url: &str,
    versions: HashMap<String, String>,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node.clone()),
        type_url: type_url.to_owned(),
        initial_resource_versions: versions,
        ..Default::default()
    }
}

/// The ACK or NACK for `resp`, given what applying it did.
pub fn answer(
    resp: &DeltaDiscoveryResponse,
    rejected: &[Rejection],
    inconsistent: Option<&str>,
) -> DeltaDiscoveryRequest {
    let mut req = DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        ..Default::default()
    };
    let mut reasons: Vec<String> = rejected
        .iter()
        .map(|r| format!("{}: {}", r.name, r.error))
        .collect();
    if let Some(why) = inconsistent {
        reasons.push(format!("response rejected as a whole: {why}"));
    }
    if !reasons.is_empty() {
        req.error_detail = Some(proto::google::rpc::Status {
            code: INVALID_ARGUMENT,
            message: reasons.join("; "),
            details: Vec::new(),
        });
    }
    req
}

/// Encoded bytes of the resources in `resp`.
pub fn resource_bytes(resp: &DeltaDiscoveryResponse) -> usize {
    resp.resources
        .iter()
        .filter_map(|r| r.resource.as_ref())
        .map(|a| a.value.len())
        .sum()
}

/// `scope` label of a policy that failed closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ScopeLabel {
    pub scope: &'static str,
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct XdsStats {
    /// Policies that could not be converted and stand as deny-all for
    /// their scope, by scope (`global`, `namespace`, `workload_selector`).
    pub policies_failed_closed: Family<ScopeLabel, Counter>,
    pub connects: AtomicU64,
    /// Streams that ended (failed or closed) after connecting.
    pub disconnects: AtomicU64,
    pub responses: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    /// Bytes of resources received (encoded), to measure resync cost.
    pub resource_bytes: AtomicU64,
}

impl XdsStats {
    /// Registers the counters that are metrics (prometheus-client appends
    /// `_total`): `xds_policies_failed_closed{scope}`, every scope's series
    /// at 0 from the start.
    pub fn register(&self, registry: &mut Registry) {
        for scope in ["global", "namespace", "workload_selector"] {
            let _ = self
                .policies_failed_closed
                .get_or_create(&ScopeLabel { scope });
        }
        registry.register(
            "xds_policies_failed_closed",
            "xDS policies that could not be converted and stand as deny-all for their scope",
            self.policies_failed_closed.clone(),
        );
    }

    /// Registers every counter: [`XdsStats::register`]'s and
    /// `xds_connects`, `xds_disconnects`, `xds_responses`, `xds_acks`,
    /// `xds_nacks`, `xds_resource_bytes` (each `_total`).
    pub fn register_all(self: &Arc<Self>, registry: &mut Registry) {
        self.register(registry);
        let counters = crate::counters::AtomicCounters::default()
            .with("xds_connects", "ADS streams opened", self, |s| &s.connects)
            .with(
                "xds_disconnects",
                "ADS streams that ended after connecting",
                self,
                |s| &s.disconnects,
            )
            .with("xds_responses", "xDS responses received", self, |s| {
                &s.responses
            })
            .with("xds_acks", "xDS responses ACKed", self, |s| &s.acks)
            .with(
                "xds_nacks",
                "xDS responses NACKed (a resource or the response rejected)",
                self,
                |s| &s.nacks,
            )
            .with(
                "xds_resource_bytes",
                "Encoded bytes of xDS resources received",
                self,
                |s| &s.resource_bytes,
            );
        registry.register_collector(Box::new(counters));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("connecting to the control plane")]
    Connect(#[source] tonic::transport::Error),
    #[error("ADS stream")]
    Stream(#[source] tonic::Status),
    #[error("the control plane did not answer the ADS stream within {0:?}")]
    Timeout(Duration),
    #[error("the control plane closed the stream")]
    Closed,
}

/// Drives one ztunnel's subscription.
pub struct XdsClient {
    pub endpoint: tonic::transport::Endpoint,
    /// `SO_MARK` for the connection (sidecar mode), see [`super::connector`].
    pub mark: Option<u32>,
    pub node: Node,
    /// Sent as `authorization: Bearer <token>` (a file token is read
    /// again for each stream).
    pub token: Option<super::token::BearerToken>,
    pub store: XdsStore,
    pub stats: Arc<XdsStats>,
    /// Each applied snapshot goes here, from the first one that has heard
    /// from every type on (so no snapshot ever lacks the policies).
    pub publish: mpsc::Sender<Arc<Snapshot>>,
    /// Types answered at least once since start.
    pub synced: std::collections::BTreeSet<String>,
    /// The types subscribed to, in order: [`TYPE_URLS`] for a node proxy,
    /// [`WAYPOINT_TYPE_URLS`] for a waypoint.
    pub types: &'static [&'static str],
}

impl XdsClient {
    /// Runs until drained, reconnecting with backoff, with the default
    /// [`ChannelOptions`].
    pub async fn run(self, drain: Drain) {
        self.run_with(drain, ChannelOptions::default()).await
    }

    /// [`XdsClient::run`] with `opts` for the channel.
    pub async fn run_with(mut self, drain: Drain, opts: ChannelOptions) {
        let mut session = WithOptions {
            client: &mut self,
            opts,
        };
        reconnect(&mut session, &drain, jitter).await;
    }

    /// One ADS stream, until it fails. Resets the backoff once a response
    /// arrives (the connection is good).
    async fn session(
        &mut self,
        backoff: &mut Backoff,
        opts: &ChannelOptions,
    ) -> Result<(), XdsError> {
        let channel: Channel = super::connector::connect_with(&self.endpoint, self.mark, opts)
            .await
            .map_err(XdsError::Connect)?;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let result = self.stream(channel, backoff, opts).await;
        self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// The ADS stream on a connected channel.
    async fn stream(
        &mut self,
        channel: Channel,
        backoff: &mut Backoff,
        opts: &ChannelOptions,
    ) -> Result<(), XdsError> {
        let (tx, mut rx) = mpsc::channel::<DeltaDiscoveryRequest>(8);
        for &type_url in self.types {
            let req = subscribe(&self.node, type_url, self.store.versions(type_url));
            tx.try_send(req)
                .expect("channel has room for the subscriptions");
        }
        let requests = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut request = tonic::Request::new(requests);
        if let Some(v) = self.token.as_ref().and_then(|t| t.header()) {
            request.metadata_mut().insert("authorization", v);
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let opened = tokio::time::timeout(
            opts.request_timeout,
            client.delta_aggregated_resources(request),
        );
        let mut responses = opened
            .await
            .map_err(|_| XdsError::Timeout(opts.request_timeout))?
            .map_err(XdsError::Stream)?
            .into_inner();
        let mut pending = pending::Pending::default();
        loop {
            let resp = responses
                .message()
                .await
                .map_err(XdsError::Stream)?
                .ok_or(XdsError::Closed)?;
            backoff.reset();
            let ack = answer(&resp, &[], None);
            let Some(resp) = pending.offer(resp) else {
                // A piece of a push: held, and ACKed now.
                self.stats.responses.fetch_add(1, Ordering::Relaxed);
                self.stats.acks.fetch_add(1, Ordering::Relaxed);
                tx.send(ack).await.map_err(|_| XdsError::Closed)?;
                continue;
            };
            let was_synced = self.is_synced();
            let bulk = resource_bytes(&resp) >= crate::allocator::BULK_UPDATE_BYTES;
            let reply = self.handle(resp).await;
            if bulk || (!was_synced && self.is_synced()) {
                // The response and the store's transient state are freed:
                // return their pages now rather than keep them resident.
                crate::allocator::release_free_memory();
            }
            if tx.send(reply).await.is_err() {
                return Err(XdsError::Closed);
            }
        }
    }

    /// Every type has been answered at least once.
    fn is_synced(&self) -> bool {
        self.types.iter().all(|t| self.synced.contains(*t))
    }

    async fn handle(&mut self, mut resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let s = &self.stats;
        s.responses.fetch_add(1, Ordering::Relaxed);
        s.resource_bytes
            .fetch_add(resource_bytes(&resp) as u64, Ordering::Relaxed);
        let resources = std::mem::take(&mut resp.resources);
        let applied = self
            .store
            .apply_owned(&resp.type_url, resources, &resp.removed_resources);
        let (snapshot, reply) = match applied {
            Applied::Ok(snap) => (Some(snap), answer(&resp, &[], None)),
            Applied::Partial(snap, rejected) => {
                for r in &rejected {
                    match &r.fail_closed {
                        Some(p) => {
                            let scope = scope_label(&p.scope);
                            s.policies_failed_closed
                                .get_or_create(&ScopeLabel { scope })
                                .inc();
                            tracing::error!(resource = %r.name, reason = r.error.reason(), error = %r.error, scope, namespace = %p.namespace, "xDS policy rejected; denying everything in its scope until a good version arrives");
                        }
                        None => {
                            tracing::warn!(resource = %r.name, reason = r.error.reason(), error = %r.error, "xDS resource rejected")
                        }
                    }
                }
                (Some(snap), answer(&resp, &rejected, None))
            }
            Applied::Inconsistent(e) => {
                tracing::error!(error = %e, type_url = %resp.type_url, "xDS response rejected; keeping the last good config");
                (None, answer(&resp, &[], Some(&e.to_string())))
            }
        };
        if reply.error_detail.is_some() {
            s.nacks.fetch_add(1, Ordering::Relaxed);
        } else {
            s.acks.fetch_add(1, Ordering::Relaxed);
        }
        self.synced.insert(resp.type_url.clone());
        if let Some(snap) = snapshot.filter(|_| self.is_synced()) {
            // The receiver applies snapshots in order; if it is gone we are
            // shutting down.
            let _ = self.publish.send(snap).await;
        }
        reply
    }
}

/// The client with the options of its channel: what [`reconnect`] runs.
struct WithOptions<'a> {
    client: &'a mut XdsClient,
    opts: ChannelOptions,
}

impl Session for WithOptions<'_> {
    type Error = XdsError;

    async fn run_once(&mut self, backoff: &mut Backoff) -> Result<(), XdsError> {
        self.client.session(backoff, &self.opts).await
    }

    fn disconnected(&mut self, e: &XdsError, retry_in: Duration) {
        tracing::warn!(error = %e, cause = ?std::error::Error::source(e), ?retry_in, held = self.client.store.len(), "xDS disconnected; keeping the last good config");
    }
}

pub mod pending;
#[cfg(test)]
mod tests;
