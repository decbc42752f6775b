//! Prometheus metrics with Istio's names and labels, so existing dashboards
//! keep working. Label values come from config (workload names, identities,
//! Service hostnames) or fixed enums (`reporter`, `response_flags`), never
//! from what a peer sends (a `forwarded` host names a Service only if the
//! snapshot has it and the destination backs it:
//! [`crate::proxy::record::inbound_service`]), so cardinality is bounded.

use std::sync::Arc;

use std::hash::{Hash, Hasher};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use hbone::cert::CertStats;
use mesh_runtime::accesslog::AccessLogCounters;
use mesh_runtime::counters::AtomicCounters;
use mesh_runtime::xds::client::XdsStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "Istio's label values")]
pub enum Reporter {
    source,
    destination,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

pub const UNKNOWN: &str = "unknown";

/// Labels of `ztunnel_connections_refused_total`: which listener reset a
/// connection at accept, and which cap it hit. Both from fixed sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `hbone`, `outbound` or `inbound_plaintext`.
    pub listener: &'static str,
    /// [`hbone::limit::LimitReason::as_str`]: `global_limit` or
    /// `source_limit`.
    pub reason: &'static str,
}

/// Why an outbound connection was refused before it was routed: one of
/// [`crate::classify::ClassifyError::REASONS`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundRefusedLabels {
    pub reason: &'static str,
}

/// [`ConnLabels`] with their hash computed once. A connection touches four
/// metric families (opened; closed, sent and received bytes), and each
/// lookup would otherwise hash every label value again; this hashes them
/// once and each lookup hashes 8 bytes. Equality still compares every
/// label, so a hash collision cannot merge two series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashedLabels {
    hash: u64,
    labels: ConnLabels,
}

impl HashedLabels {
    pub fn new(labels: ConnLabels) -> Self {
        let mut h = std::hash::DefaultHasher::new();
        labels.hash(&mut h);
        HashedLabels {
            hash: h.finish(),
            labels,
        }
    }

    pub fn labels(&self) -> &ConnLabels {
        &self.labels
    }
}

impl Hash for HashedLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl EncodeLabelSet for HashedLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.labels.encode(encoder)
    }
}

impl Default for ConnLabels {
    fn default() -> Self {
        ConnLabels {
            reporter: Reporter::source,
            source_workload: UNKNOWN.into(),
            source_workload_namespace: UNKNOWN.into(),
            source_principal: UNKNOWN.into(),
            destination_workload: UNKNOWN.into(),
            destination_workload_namespace: UNKNOWN.into(),
            destination_principal: UNKNOWN.into(),
            destination_service: UNKNOWN.into(),
            request_protocol: "tcp",
            response_flags: mesh_model::ResponseFlag::None.as_str(),
            connection_security_policy: "unknown",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub opened: Family<HashedLabels, Counter>,
    pub closed: Family<HashedLabels, Counter>,
    pub sent_bytes: Family<HashedLabels, Counter>,
    pub received_bytes: Family<HashedLabels, Counter>,
    pub active_connections: Gauge,
    pub config_updates: Counter,
    pub config_rejected: Counter,
    pub capture_errors: Counter,
    pub connections_refused: Family<RefusedLabels, Counter>,
    /// Outbound connections no route was found for, by reason.
    pub outbound_refused: Family<OutboundRefusedLabels, Counter>,
    pub access_log: AccessLogCounters,
    /// The xDS client's counters (`ztunnel_xds_*`).
    pub xds: Arc<XdsStats>,
    /// The certificate store's counters (`ztunnel_certificate*`).
    pub certs: Arc<CertStats>,
    /// Refusals on the admin, metrics and readiness ports, by port and
    /// reason (`ztunnel_admin_connections_refused`).
    pub admin_refused: mesh_runtime::admin::Refusals,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Metrics {
            opened: Family::default(),
            closed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            active_connections: Gauge::default(),
            config_updates: Counter::default(),
            config_rejected: Counter::default(),
            capture_errors: Counter::default(),
            connections_refused: Family::default(),
            outbound_refused: Family::default(),
            access_log: AccessLogCounters::default(),
            xds: Arc::default(),
            certs: Arc::default(),
            admin_refused: Default::default(),
            registry: Registry::default(),
        };
        // prometheus-client appends `_total` to counters.
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "tcp_connections_opened",
            "TCP connections opened",
            m.opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "TCP connections closed",
            m.closed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent by the destination on TCP connections (response direction)",
            m.sent_bytes.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received by the destination on TCP connections (request direction)",
            m.received_bytes.clone(),
        );
        let ours = registry.sub_registry_with_prefix("ztunnel");
        ours.register(
            "active_connections",
            "Proxied connections currently open",
            m.active_connections.clone(),
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
            "capture_errors",
            "Failures applying nftables capture rules",
            m.capture_errors.clone(),
        );
        ours.register(
            "connections_refused",
            "Connections reset at accept because the listener (global_limit) or their source IP (source_limit) held as many as allowed",
            m.connections_refused.clone(),
        );
        ours.register(
            "outbound_refused",
            "Outbound connections refused before routing (response_flags CONNECT), by reason: unknown_source, source_not_local, unknown_service_port, no_endpoints, own_listener, waypoint_missing",
            m.outbound_refused.clone(),
        );
        // Every reason is a series from the start, at 0.
        for reason in crate::classify::ClassifyError::REASONS {
            let _ = m
                .outbound_refused
                .get_or_create(&OutboundRefusedLabels { reason });
        }
        ours.register(
            "access_log_lines",
            "Access-log lines written",
            m.access_log.written.clone(),
        );
        ours.register(
            "access_log_lost_lines",
            "Access-log lines dropped: the writer was behind (queue_full), the write failed (write_failed), logged after exit began (closed), or the writer thread died (writer_died)",
            m.access_log.lost.clone(),
        );
        let ours = registry.sub_registry_with_prefix("ztunnel");
        ours.register(
            "admin_connections_refused",
            "Connections to the admin (15000), metrics (15020) and readiness (15021) ports reset at accept at their caps (global_limit, source_limit), or closed because no request head arrived in time (header_read_timeout)",
            m.admin_refused.clone(),
        );
        m.xds.register_all(ours);
        ours.register_collector(Box::new(
            AtomicCounters::default()
                .with(
                    "certificates_installed",
                    "Workload certificates installed (first fetches and renewals)",
                    &m.certs,
                    |s| &s.installed,
                )
                .with(
                    "certificate_fetch_failures",
                    "Certificate fetches (renewals included) that failed or timed out",
                    &m.certs,
                    |s| &s.fetch_failures,
                )
                .with(
                    "certificates_expired",
                    "Requests for a certificate refused because the one held expired and could not be renewed (the connection fails closed, TLS_FAILURE)",
                    &m.certs,
                    |s| &s.expired,
                ),
        ));
        Arc::new(Metrics { registry, ..m })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Record a connection reset at accept by `listener`'s caps.
    pub fn record_refused(&self, listener: &'static str, reason: hbone::limit::LimitReason) {
        self.connections_refused
            .get_or_create(&RefusedLabels {
                listener,
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Count an outbound connection refused for `reason`.
    pub fn record_outbound_refused(&self, reason: &'static str) {
        self.outbound_refused
            .get_or_create(&OutboundRefusedLabels { reason })
            .inc();
    }

    /// Record an opened connection.
    pub fn record_open(&self, labels: &HashedLabels) {
        self.opened.get_or_create(labels).inc();
    }

    /// Record a finished connection: bytes in each direction and the close.
    pub fn record_close(&self, labels: &HashedLabels, request_bytes: u64, response_bytes: u64) {
        self.received_bytes
            .get_or_create(labels)
            .inc_by(request_bytes);
        self.sent_bytes.get_or_create(labels).inc_by(response_bytes);
        self.closed.get_or_create(labels).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn xds_and_certificate_counters_are_exposed() {
        let m = Metrics::new();
        m.xds.nacks.fetch_add(2, Ordering::Relaxed);
        m.xds.connects.fetch_add(1, Ordering::Relaxed);
        m.certs.expired.fetch_add(1, Ordering::Relaxed);
        m.certs.fetch_failures.fetch_add(3, Ordering::Relaxed);
        let text = m.encode();
        for series in [
            "ztunnel_xds_nacks_total 2",
            "ztunnel_xds_connects_total 1",
            "ztunnel_xds_acks_total 0",
            "ztunnel_xds_policies_failed_closed_total{scope=\"global\"} 0",
            "ztunnel_xds_policies_failed_closed_total{scope=\"workload_selector\"} 0",
            "ztunnel_certificates_expired_total 1",
            "ztunnel_certificate_fetch_failures_total 3",
            "ztunnel_certificates_installed_total 0",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn istio_names_are_exposed() {
        let m = Metrics::new();
        let labels = HashedLabels::new(ConnLabels {
            reporter: Reporter::destination,
            response_flags: mesh_model::ResponseFlag::Deny.as_str(),
            ..Default::default()
        });
        m.record_open(&labels);
        m.record_close(&labels, 10, 20);
        let text = m.encode();
        for name in [
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
            "istio_tcp_sent_bytes_total",
            "istio_tcp_received_bytes_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.contains("reporter=\"destination\""));
        assert!(text.contains("response_flags=\"DENY\""));
        assert!(text.contains("istio_tcp_sent_bytes_total{") && text.contains("} 20"));
    }

    #[test]
    fn outbound_refusals_by_reason() {
        let m = Metrics::new();
        let text = m.encode();
        for reason in crate::classify::ClassifyError::REASONS {
            let series = format!("ztunnel_outbound_refused_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&series), "{series} missing from:\n{text}");
        }
        m.record_outbound_refused("no_endpoints");
        m.record_outbound_refused("no_endpoints");
        let text = m.encode();
        assert!(
            text.contains("ztunnel_outbound_refused_total{reason=\"no_endpoints\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn hashed_labels_keep_series_apart_and_together() {
        let m = Metrics::new();
        let ok = || {
            HashedLabels::new(ConnLabels {
                source_workload: "a".into(),
                ..Default::default()
            })
        };
        let other = HashedLabels::new(ConnLabels {
            source_workload: "b".into(),
            ..Default::default()
        });
        assert_eq!(ok(), ok());
        assert_ne!(ok(), other);
        m.record_open(&ok());
        m.record_open(&ok());
        m.record_open(&other);
        let text = m.encode();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .collect();
        assert_eq!(series.len(), 2, "{text}");
        assert!(series
            .iter()
            .any(|l| l.contains("source_workload=\"a\"") && l.ends_with(" 2")));
        assert!(series
            .iter()
            .any(|l| l.contains("source_workload=\"b\"") && l.ends_with(" 1")));
    }
}
