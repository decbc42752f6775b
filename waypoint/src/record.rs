//! One record per request (and per opaque TCP connection): Istio's metrics
//! and one JSON access-log line, written when the response ends, fails, or
//! is abandoned (a dropped record still writes, so a cancelled request is
//! never missing from the log).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_model::state::{Service, Workload};
use mesh_model::{ResponseFlag, SpiffeId};
use mesh_runtime::accesslog::AccessLog;
use serde::Serialize;
use tokio::time::Instant;

use crate::metrics::{grpc_status_label, Metrics, RequestLabels, UNKNOWN};

/// Where records go.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub access_log: Arc<AccessLog>,
}

/// The client side of a CONNECT stream, the same for each of its requests.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// The original client (from `forwarded`), else the tunnel's peer.
    pub addr: SocketAddr,
    pub identity: SpiffeId,
    pub workload: Option<Arc<Workload>>,
    /// The Service dialled, when a VIP was.
    pub service: Option<Arc<Service>>,
}

/// One access-log line (seconds for `duration`, as ztunnel's).
#[derive(Debug, Clone, Serialize, Default)]
pub struct RequestEvent {
    #[serde(rename = "src.addr")]
    pub src_addr: String,
    #[serde(rename = "src.workload", skip_serializing_if = "Option::is_none")]
    pub src_workload: Option<String>,
    #[serde(rename = "src.identity")]
    pub src_identity: String,
    #[serde(rename = "dst.service", skip_serializing_if = "Option::is_none")]
    pub dst_service: Option<String>,
    #[serde(rename = "dst.workload", skip_serializing_if = "Option::is_none")]
    pub dst_workload: Option<String>,
    #[serde(rename = "dst.identity", skip_serializing_if = "Option::is_none")]
    pub dst_identity: Option<String>,
    /// The route that matched (`<kind>/<namespace>/<name>`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The endpoint that served the request (`podIP:targetPort`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// `HTTP/1.1`, `HTTP/2` or `TCP`; `HBONE` for a CONNECT refused at
    /// admission.
    pub protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 0 when no response was sent.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    pub response_flags: &'static str,
    /// A finer, bounded reason beside `response_flags`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Upstream attempts (connect failures retried on another endpoint).
    pub attempts: u32,
    /// Request body bytes from the client.
    pub bytes_recv: u64,
    /// Response body bytes to the client.
    pub bytes_sent: u64,
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e6)
}

/// The longest path kept in the access log.
const MAX_LOGGED_PATH: usize = 1024;

/// A request (or TCP connection) being served; written once when
/// finished or dropped.
pub struct Record {
    telemetry: Telemetry,
    start: Instant,
    down: Arc<Downstream>,
    pub event: RequestEvent,
    /// The endpoint workload, once chosen.
    pub upstream_workload: Option<Arc<Workload>>,
    pub flag: ResponseFlag,
    grpc: bool,
    tcp: bool,
    /// An opaque TCP connection was counted opened.
    opened: bool,
    done: bool,
}

impl Record {
    pub fn start(telemetry: &Telemetry, down: &Arc<Downstream>, protocol: &'static str) -> Self {
        Record {
            telemetry: telemetry.clone(),
            start: Instant::now(),
            event: RequestEvent {
                src_addr: down.addr.to_string(),
                src_workload: down.workload.as_ref().map(|w| w.key()),
                src_identity: down.identity.to_string(),
                dst_service: down.service.as_ref().map(|s| s.hostname.clone()),
                protocol,
                ..RequestEvent::default()
            },
            down: down.clone(),
            upstream_workload: None,
            flag: ResponseFlag::None,
            grpc: false,
            tcp: protocol == "TCP",
            opened: false,
            done: false,
        }
    }

    /// Fills in the request line.
    pub fn request(
        &mut self,
        method: &http::Method,
        uri: &http::Uri,
        authority: Option<&str>,
        grpc: bool,
    ) {
        self.event.method = Some(method.as_str().to_owned());
        // A URI is ASCII (anything else is percent-encoded).
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        self.event.path = Some(path[..path.len().min(MAX_LOGGED_PATH)].to_owned());
        self.event.authority = authority.map(|a| a.chars().take(256).collect());
        self.grpc = grpc;
    }

    /// A failure: the flag for metrics, the reason and error for the log.
    pub fn fail(
        &mut self,
        flag: ResponseFlag,
        reason: &'static str,
        error: impl std::fmt::Display,
    ) {
        self.flag = flag;
        self.event.reason = Some(reason);
        self.event.error = Some(error.to_string());
    }

    /// Writes the metrics and the access-log line.
    pub fn finish(mut self) {
        self.write();
    }

    fn labels(&self) -> RequestLabels {
        let name =
            |w: &Option<Arc<Workload>>| w.as_ref().map_or(UNKNOWN.into(), |w| w.name.clone());
        let ns =
            |w: &Option<Arc<Workload>>| w.as_ref().map_or(UNKNOWN.into(), |w| w.namespace.clone());
        let svc = self.down.service.as_ref();
        RequestLabels {
            source_workload: name(&self.down.workload),
            // A client the waypoint was not told about still has a
            // verified namespace: its identity's.
            source_workload_namespace: self.down.workload.as_ref().map_or_else(
                || self.down.identity.namespace().to_owned(),
                |w| w.namespace.clone(),
            ),
            source_principal: self.down.identity.to_string(),
            destination_workload: name(&self.upstream_workload),
            destination_workload_namespace: ns(&self.upstream_workload),
            destination_principal: self
                .upstream_workload
                .as_ref()
                .map_or(UNKNOWN.into(), |w| w.identity().to_string()),
            destination_service: svc.map_or(UNKNOWN.into(), |s| s.hostname.clone()),
            destination_service_name: svc.map_or(UNKNOWN.into(), |s| s.name.clone()),
            destination_service_namespace: svc.map_or(UNKNOWN.into(), |s| s.namespace.clone()),
            request_protocol: match (self.tcp, self.grpc) {
                (true, _) => "tcp",
                (_, true) => "grpc",
                _ => "http",
            },
            response_code: self.event.status,
            grpc_response_status: grpc_status_label(self.event.grpc_status),
            response_flags: self.flag.as_str(),
            ..RequestLabels::default()
        }
    }

    fn write(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed();
        self.event.duration = elapsed;
        self.event.response_flags = self.flag.as_str();
        if let Some(w) = &self.upstream_workload {
            self.event.dst_workload = Some(w.key());
            self.event.dst_identity = Some(w.identity().to_string());
        }
        let labels = self.labels();
        let m = &self.telemetry.metrics;
        if self.tcp {
            if !self.opened {
                // Refused before it was forwarded: opened and closed at once.
                m.tcp_opened.get_or_create(&labels).inc();
            }
            m.tcp_closed.get_or_create(&labels).inc();
            m.tcp_sent
                .get_or_create(&labels)
                .inc_by(self.event.bytes_sent);
            m.tcp_received
                .get_or_create(&labels)
                .inc_by(self.event.bytes_recv);
        } else {
            m.record_request(
                &labels,
                elapsed.as_secs_f64() * 1000.0,
                self.event.bytes_recv,
                self.event.bytes_sent,
            );
        }
        self.telemetry.access_log.log_event(&self.event);
    }

    /// An opaque TCP connection opened (its close is [`Record::finish`]).
    pub fn tcp_opened(&mut self) {
        self.opened = true;
        self.telemetry
            .metrics
            .tcp_opened
            .get_or_create(&self.labels())
            .inc();
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.done {
            if self.event.reason.is_none() && self.event.status == 0 {
                self.event.reason = Some("downstream_closed");
            }
            self.write();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry() -> Telemetry {
        Telemetry {
            metrics: Metrics::new(),
            access_log: Arc::new(AccessLog::sink()),
        }
    }

    fn down(workload: Option<Arc<Workload>>) -> Arc<Downstream> {
        Arc::new(Downstream {
            addr: "10.1.1.10:4000".parse().unwrap(),
            identity: "spiffe://cluster.local/ns/shop/sa/client".parse().unwrap(),
            workload,
            service: None,
        })
    }

    #[test]
    fn labels_come_from_the_snapshot_or_the_verified_identity() {
        let t = telemetry();
        let mut rec = Record::start(&t, &down(None), "HTTP/2");
        rec.request(
            &http::Method::POST,
            &"/pkg.Svc/Call".parse().unwrap(),
            Some("svc"),
            true,
        );
        rec.event.status = 200;
        rec.event.grpc_status = Some(14);
        let l = rec.labels();
        assert_eq!(l.source_workload, UNKNOWN, "not in the snapshot");
        assert_eq!(l.source_workload_namespace, "shop", "the identity's");
        assert_eq!(
            l.source_principal,
            "spiffe://cluster.local/ns/shop/sa/client"
        );
        assert_eq!(l.request_protocol, "grpc");
        assert_eq!(l.grpc_response_status, "14");
        assert_eq!(l.destination_service, UNKNOWN);
        rec.finish();
        let text = t.metrics.encode();
        assert!(text.contains("grpc_response_status=\"14\""), "{text}");
    }

    #[test]
    fn a_dropped_record_still_writes_its_line() {
        let t = telemetry();
        drop(Record::start(&t, &down(None), "HTTP/1.1"));
        let text = t.metrics.encode();
        assert!(text.contains("istio_requests_total{"), "{text}");
        assert!(text.contains("response_code=\"0\""), "{text}");
    }

    #[test]
    fn long_paths_are_cut() {
        let t = telemetry();
        let mut rec = Record::start(&t, &down(None), "HTTP/1.1");
        let uri: http::Uri = format!("/{}", "a".repeat(3 * MAX_LOGGED_PATH))
            .parse()
            .unwrap();
        rec.request(&http::Method::GET, &uri, None, false);
        assert_eq!(rec.event.path.as_ref().unwrap().len(), MAX_LOGGED_PATH);
    }
}
