//! Prometheus metrics with Istio's names and labels (`reporter="waypoint"`),
//! so Istio's dashboards work. Every label value comes from the snapshot
//! (workloads, services, identities), from a fixed set (`response_flags`,
//! `request_protocol`), or is a number (`response_code`,
//! `grpc_response_status`): never a raw string off the wire.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use mesh_runtime::accesslog::AccessLogCounters;

pub const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(
    non_camel_case_types,
    reason = "label values are Istio's lowercase names"
)]
pub enum Reporter {
    waypoint,
}

/// Istio's standard request labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

impl Default for RequestLabels {
    fn default() -> Self {
        RequestLabels {
            reporter: Reporter::waypoint,
            source_workload: UNKNOWN.into(),
            source_workload_namespace: UNKNOWN.into(),
            source_principal: UNKNOWN.into(),
            destination_workload: UNKNOWN.into(),
            destination_workload_namespace: UNKNOWN.into(),
            destination_principal: UNKNOWN.into(),
            destination_service: UNKNOWN.into(),
            destination_service_name: UNKNOWN.into(),
            destination_service_namespace: UNKNOWN.into(),
            request_protocol: "http",
            response_code: 0,
            grpc_response_status: String::new(),
            response_flags: "-",
            connection_security_policy: "mutual_tls",
        }
    }
}

/// Why the waypoint refused a CONNECT (the `reason` label).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Istio's request-duration buckets, in milliseconds.
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's size buckets: 1 B to 10 MB by decades... up to 100 MB.
const SIZE_BUCKETS: [f64; 9] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

type Histograms = Family<RequestLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Histograms,
    pub request_bytes: Histograms,
    pub response_bytes: Histograms,
    pub tcp_opened: Family<RequestLabels, Counter>,
    pub tcp_closed: Family<RequestLabels, Counter>,
    pub tcp_sent: Family<RequestLabels, Counter>,
    pub tcp_received: Family<RequestLabels, Counter>,
    pub connects_refused: Family<ReasonLabels, Counter>,
    pub ejections: Counter,
    pub active_streams: Gauge,
    pub config_updates: Counter,
    pub config_rejected: Counter,
    pub access_log: AccessLogCounters,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(size_histogram),
            response_bytes: Family::new_with_constructor(size_histogram),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            connects_refused: Family::default(),
            ejections: Counter::default(),
            active_streams: Gauge::default(),
            config_updates: Counter::default(),
            config_rejected: Counter::default(),
            access_log: AccessLogCounters::default(),
        };
        let mut registry = Registry::default();
        // prometheus-client appends `_total` to counters.
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register("requests", "Requests handled", m.requests.clone());
        istio.register(
            "request_duration_milliseconds",
            "Request duration, first byte in to last byte out",
            m.duration.clone(),
        );
        istio.register(
            "request_bytes",
            "Request body sizes",
            m.request_bytes.clone(),
        );
        istio.register(
            "response_bytes",
            "Response body sizes",
            m.response_bytes.clone(),
        );
        istio.register(
            "tcp_connections_opened",
            "Opaque TCP connections opened",
            m.tcp_opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "Opaque TCP connections closed",
            m.tcp_closed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent to the client on opaque TCP connections",
            m.tcp_sent.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received from the client on opaque TCP connections",
            m.tcp_received.clone(),
        );
        let ours = registry.sub_registry_with_prefix("waypoint");
        ours.register(
            "connects_refused",
            "HBONE CONNECTs refused: not bound to this waypoint (not_bound), an unknown address or port, or L4 policy (denied)",
            m.connects_refused.clone(),
        );
        ours.register(
            "outlier_ejections",
            "Endpoints ejected after consecutive connect failures or 5xx",
            m.ejections.clone(),
        );
        ours.register(
            "active_streams",
            "CONNECT streams being served",
            m.active_streams.clone(),
        );
        ours.register(
            "config_updates",
            "Configuration snapshots applied",
            m.config_updates.clone(),
        );
        ours.register(
            "config_rejected",
            "Configuration updates rejected (the last good one stays in force)",
            m.config_rejected.clone(),
        );
        ours.register(
            "access_log_lines",
            "Access-log lines written",
            m.access_log.written.clone(),
        );
        ours.register(
            "access_log_lost_lines",
            "Access-log lines dropped (queue_full, write_failed, closed, writer_died)",
            m.access_log.lost.clone(),
        );
        m.registry = registry;
        Arc::new(m)
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// One finished request.
    pub fn record_request(&self, labels: &RequestLabels, millis: f64, req: u64, resp: u64) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(millis);
        self.request_bytes.get_or_create(labels).observe(req as f64);
        self.response_bytes
            .get_or_create(labels)
            .observe(resp as f64);
    }

    pub fn refused(&self, reason: &'static str) {
        self.connects_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// The `grpc_response_status` label: the numeric code (0–16) when the
/// response carries one, `""` for HTTP that is not gRPC.
pub fn grpc_status_label(code: Option<u32>) -> String {
    match code {
        Some(c) if c <= 16 => c.to_string(),
        Some(_) => UNKNOWN.into(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_istio_names() {
        let m = Metrics::new();
        let labels = RequestLabels {
            response_code: 200,
            source_principal: "spiffe://cluster.local/ns/a/sa/b".into(),
            ..RequestLabels::default()
        };
        m.record_request(&labels, 3.0, 10, 20);
        let text = m.encode();
        for needle in [
            "istio_requests_total{reporter=\"waypoint\"",
            "istio_request_duration_milliseconds_bucket{",
            "istio_request_bytes_sum{",
            "istio_response_bytes_count{",
            "response_code=\"200\"",
            "response_flags=\"-\"",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
    }

    #[test]
    fn grpc_status_label_table() {
        for (code, want) in [
            (None, ""),
            (Some(0), "0"),
            (Some(16), "16"),
            (Some(99), "unknown"),
        ] {
            assert_eq!(grpc_status_label(code), want);
        }
    }
}
