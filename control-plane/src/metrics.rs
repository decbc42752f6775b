//! Control-plane metrics (prometheus-client), all with bounded labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `type` label: `address` or `authorization`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

/// `reason` label of a refused certificate: a fixed set of words.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Open `DeltaAggregatedResources` streams.
    pub connected_clients: Gauge,
    /// Delta responses sent, by resource type.
    pub pushes: Family<TypeLabel, Counter>,
    /// From a snapshot being published to a client's response being queued.
    pub push_latency: Histogram,
    /// NACKs received, by resource type.
    pub nacks: Family<TypeLabel, Counter>,
    pub certs_signed: Counter,
    pub certs_refused: Family<ReasonLabel, Counter>,
    /// Config updates rejected by the source (the last good one stays).
    pub config_rejected: Counter,
    /// Connections to the TLS port open (handshaking or serving).
    pub connections: Gauge,
    /// Connections closed before serving, by reason (`global_limit`,
    /// `source_limit`, `handshake_timeout`, `tls_error`, `bad_preface`).
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Failed `accept` calls, by reason (`fd_limit`, `memory`, `other`);
    /// each makes the accept loop back off.
    pub accept_errors: Family<ReasonLabel, Counter>,
    /// Calls refused authentication, by reason (`missing_token`,
    /// `unknown_token`, `rate_limited`).
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// Kubernetes watch and list failures (each retried with backoff).
    pub kube_watch_errors: Counter,
    /// CA Secret changes refused (the last good CA stays).
    pub ca_secret_rejected: Counter,
    /// 1 while this replica holds the leader Lease (Kubernetes mode).
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("control_plane");
        let m = Metrics {
            registry: Registry::default(),
            connected_clients: Gauge::default(),
            pushes: Family::default(),
            push_latency: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            nacks: Family::default(),
            certs_signed: Counter::default(),
            certs_refused: Family::default(),
            config_rejected: Counter::default(),
            connections: Gauge::default(),
            connections_refused: Family::default(),
            accept_errors: Family::default(),
            auth_failures: Family::default(),
            kube_watch_errors: Counter::default(),
            ca_secret_rejected: Counter::default(),
            leader: Gauge::default(),
        };
        registry.register(
            "xds_connected_clients",
            "Open delta ADS streams",
            m.connected_clients.clone(),
        );
        registry.register("xds_pushes", "Delta responses sent", m.pushes.clone());
        registry.register(
            "xds_push_duration_seconds",
            "Time from a snapshot being published to a response being queued for a client",
            m.push_latency.clone(),
        );
        registry.register("xds_nacks", "NACKs received", m.nacks.clone());
        registry.register(
            "ca_certificates_signed",
            "Certificates signed",
            m.certs_signed.clone(),
        );
        registry.register(
            "ca_certificates_refused",
            "Certificate requests refused",
            m.certs_refused.clone(),
        );
        registry.register(
            "config_rejected",
            "Config updates rejected (the last good one stays)",
            m.config_rejected.clone(),
        );
        registry.register(
            "connections",
            "Connections to the xDS/CA port open (handshaking or serving)",
            m.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections to the xDS/CA port closed before serving",
            m.connections_refused.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts on the xDS/CA port (the accept loop backs off)",
            m.accept_errors.clone(),
        );
        registry.register(
            "auth_failures",
            "Calls refused authentication",
            m.auth_failures.clone(),
        );
        registry.register(
            "kube_watch_errors",
            "Kubernetes watch and list failures, retried with backoff (the last good state stays)",
            m.kube_watch_errors.clone(),
        );
        registry.register(
            "ca_secret_rejected",
            "CA Secret changes refused as not a valid CA (the last good CA stays)",
            m.ca_secret_rejected.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn type_label(kind: crate::resources::Kind) -> TypeLabel {
        TypeLabel {
            r#type: kind.label(),
        }
    }
}
