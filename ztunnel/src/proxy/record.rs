//! Telemetry for one proxied connection: the Istio metric labels, the
//! access-log event, and the open/close bookkeeping that ties them together.
//! Building labels and events is pure; [`ConnRecord`] does the counting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::SpiffeId;

use crate::metrics::{ConnLabels, HashedLabels, Metrics, Reporter, UNKNOWN};
use mesh_model::policy::principal_string;
use mesh_model::state::{Snapshot, Workload};
use mesh_model::ResponseFlag;
use mesh_runtime::accesslog::{AccessLog, ConnEvent, Direction};

/// How the bytes travelled, for `connection_security_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    MutualTls,
    None,
}

impl Security {
    fn label(self) -> &'static str {
        match self {
            Security::MutualTls => "mutual_tls",
            Security::None => "none",
        }
    }
}

/// Everything known about a connection's two ends, for labels and logs.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub direction: Direction,
    pub src_addr: SocketAddr,
    pub src: Option<Arc<Workload>>,
    /// The verified peer identity (inbound) or our own (outbound).
    pub src_identity: Option<SpiffeId>,
    /// Where the bytes finally go (`podIP:port`, or the original destination).
    pub dst_addr: SocketAddr,
    /// The HBONE peer (`ip:15008`) when tunnelled.
    pub dst_hbone_addr: Option<SocketAddr>,
    pub dst: Option<Arc<Workload>>,
    pub dst_identity: Option<SpiffeId>,
    /// The Service FQDN when a VIP was dialled: always a hostname from
    /// ztunnel's own state (see [`inbound_service`]), never one off the
    /// wire, since it becomes the `destination_service` label.
    pub service: Option<String>,
    pub security: Security,
}

impl ConnInfo {
    /// Istio's metric labels for this connection with `flag`.
    pub fn labels(&self, flag: ResponseFlag) -> ConnLabels {
        let reporter = match self.direction {
            Direction::Outbound => Reporter::source,
            Direction::Inbound => Reporter::destination,
        };
        let name = |w: &Option<Arc<Workload>>| w.as_ref().map(|w| w.name.clone());
        let ns = |w: &Option<Arc<Workload>>| w.as_ref().map(|w| w.namespace.clone());
        let principal = |id: &Option<SpiffeId>| id.as_ref().map(principal_string);
        let or_unknown = |v: Option<String>| v.unwrap_or_else(|| UNKNOWN.to_owned());
        ConnLabels {
            reporter,
            source_workload: or_unknown(name(&self.src)),
            source_workload_namespace: or_unknown(ns(&self.src)),
            source_principal: or_unknown(principal(&self.src_identity)),
            destination_workload: or_unknown(name(&self.dst)),
            destination_workload_namespace: or_unknown(ns(&self.dst)),
            destination_principal: or_unknown(principal(&self.dst_identity)),
            destination_service: or_unknown(self.service.clone()),
            request_protocol: "tcp",
            response_flags: flag.as_str(),
            connection_security_policy: self.security.label(),
        }
    }

    /// The access-log event for this connection.
    pub fn event(&self, outcome: &Outcome, duration: Duration) -> ConnEvent {
        ConnEvent {
            src_addr: self.src_addr,
            src_workload: self.src.as_ref().map(|w| w.key()),
            src_identity: self.src_identity.as_ref().map(|i| i.to_uri()),
            dst_addr: self.dst_addr,
            dst_hbone_addr: self.dst_hbone_addr,
            dst_workload: self.dst.as_ref().map(|w| w.key()),
            dst_identity: self.dst_identity.as_ref().map(|i| i.to_uri()),
            direction: self.direction,
            bytes_sent: outcome.bytes_sent,
            bytes_recv: outcome.bytes_recv,
            duration,
            response_flags: outcome.flag.as_str(),
            reason: outcome.reason,
            error: outcome.error.clone(),
        }
    }
}

/// The `destination_service` of an inbound connection whose peer said
/// (`forwarded: ...;host=`) it dialled the Service `host`: that hostname
/// only when ztunnel's own snapshot has a Service of that hostname which
/// `dst` backs; otherwise none (`unknown`). Any mesh identity can send any
/// host, so the header never becomes a label value itself: the series stay
/// bounded by the config. Pure.
pub fn inbound_service(snap: &Snapshot, host: Option<&str>, dst: &Workload) -> Option<String> {
    let host = host?;
    // `<name>.<namespace>.svc.<domain>` (Service::fqdn).
    let (name, rest) = host.split_once('.')?;
    let (namespace, _) = rest.split_once('.')?;
    let svc = snap
        .service_by_name(namespace, name)
        .filter(|s| s.hostname == host)?;
    let backs = snap
        .endpoints(svc)
        .binary_search_by(|w| w.uid.as_str().cmp(&dst.uid))
        .is_ok();
    backs.then(|| svc.hostname.clone())
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `response_flags`: `-` unless something went wrong.
    pub flag: ResponseFlag,
    /// A finer, bounded reason beside the flag (the access log's `reason`),
    /// when there is one.
    pub reason: Option<&'static str>,
    /// Bytes from the client towards the destination (request direction).
    pub bytes_sent: u64,
    /// Bytes from the destination back to the client.
    pub bytes_recv: u64,
    pub error: Option<String>,
}

impl Outcome {
    pub fn ok(bytes_sent: u64, bytes_recv: u64) -> Self {
        Outcome {
            flag: ResponseFlag::None,
            reason: None,
            bytes_sent,
            bytes_recv,
            error: None,
        }
    }

    pub fn failed(flag: ResponseFlag, error: impl std::fmt::Display) -> Self {
        Outcome {
            flag,
            reason: None,
            bytes_sent: 0,
            bytes_recv: 0,
            error: Some(error.to_string()),
        }
    }

    /// The same, with the finer `reason` beside its flag.
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The same, with `reason` when it says more than the flag does (hbone
    /// errors' `reason()` is their flag's value unless it is finer).
    pub fn with_finer_reason(self, reason: &'static str) -> Self {
        if reason == self.flag.as_str() {
            self
        } else {
            self.with_reason(reason)
        }
    }
}

/// Where finished connections are reported.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub access_log: Arc<AccessLog>,
}

/// One open connection: counted as opened on creation, and closed (with
/// bytes, flags and an access-log line) by [`ConnRecord::finish`]. Dropping
/// an unfinished record reports it closed with `CONNECT` and no bytes, so a
/// cancelled task never leaks the active-connection gauge.
pub struct ConnRecord {
    telemetry: Telemetry,
    info: ConnInfo,
    /// The labels it was opened with (`-`), reused when it closes
    /// normally.
    labels: HashedLabels,
    started: Instant,
    finished: bool,
}

impl ConnRecord {
    pub fn open(telemetry: &Telemetry, info: ConnInfo) -> Self {
        let labels = HashedLabels::new(info.labels(ResponseFlag::None));
        telemetry.metrics.record_open(&labels);
        telemetry.metrics.active_connections.inc();
        ConnRecord {
            telemetry: telemetry.clone(),
            info,
            labels,
            started: Instant::now(),
            finished: false,
        }
    }

    /// Reports a connection refused before it was opened (denied, or no
    /// route): counted as opened and closed with `outcome.flag`.
    pub fn refused(telemetry: &Telemetry, info: ConnInfo, outcome: Outcome) {
        let labels = HashedLabels::new(info.labels(outcome.flag));
        telemetry.metrics.record_open(&labels);
        telemetry.metrics.record_close(&labels, 0, 0);
        telemetry
            .access_log
            .log(&info.event(&outcome, Duration::ZERO));
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    pub fn finish(mut self, outcome: Outcome) {
        self.report(&outcome);
    }

    fn report(&mut self, outcome: &Outcome) {
        self.finished = true;
        let m = &self.telemetry.metrics;
        if outcome.flag.as_str() == self.labels.labels().response_flags {
            m.record_close(&self.labels, outcome.bytes_sent, outcome.bytes_recv);
        } else {
            let labels = HashedLabels::new(self.info.labels(outcome.flag));
            m.record_close(&labels, outcome.bytes_sent, outcome.bytes_recv);
        }
        m.active_connections.dec();
        let event = self.info.event(outcome, self.started.elapsed());
        self.telemetry.access_log.log(&event);
    }
}

impl Drop for ConnRecord {
    fn drop(&mut self) {
        if !self.finished {
            self.report(&Outcome::failed(
                ResponseFlag::Connect,
                "connection task ended early",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_model::state::Tunnel;

    fn pod(name: &str, ns: &str, sa: &str) -> Arc<Workload> {
        Arc::new(Workload {
            uid: format!("{ns}/{name}"),
            name: name.into(),
            namespace: ns.into(),
            service_account: sa.into(),
            trust_domain: "cluster.local".into(),
            ips: vec!["10.1.1.10".parse().unwrap()],
            node: "node1".into(),
            tunnel: Tunnel::Hbone,
            native_tunnel: false,
            labels: Default::default(),
            waypoint: None,
            authorization_policies: Vec::new(),
        })
    }

    fn info(direction: Direction) -> ConnInfo {
        let client = pod("client", "shop", "client");
        let server = pod("server", "bank", "server");
        ConnInfo {
            direction,
            src_addr: "10.1.1.10:40000".parse().unwrap(),
            src_identity: Some(client.identity()),
            src: Some(client),
            dst_addr: "10.1.2.10:8080".parse().unwrap(),
            dst_hbone_addr: Some("10.1.2.10:15008".parse().unwrap()),
            dst_identity: Some(server.identity()),
            dst: Some(server),
            service: None,
            security: Security::MutualTls,
        }
    }

    #[test]
    fn labels_name_both_ends_and_the_reporter() {
        let l = info(Direction::Outbound).labels(ResponseFlag::None);
        assert_eq!(l.reporter, Reporter::source);
        assert_eq!(l.source_workload, "client");
        assert_eq!(l.source_workload_namespace, "shop");
        assert_eq!(l.source_principal, "cluster.local/ns/shop/sa/client");
        assert_eq!(l.destination_workload, "server");
        assert_eq!(l.destination_principal, "cluster.local/ns/bank/sa/server");
        assert_eq!(l.connection_security_policy, "mutual_tls");
        let l = info(Direction::Inbound).labels(ResponseFlag::Deny);
        assert_eq!(l.reporter, Reporter::destination);
        assert_eq!(l.response_flags, "DENY");
    }

    #[test]
    fn unknown_ends_are_labelled_unknown() {
        let mut i = info(Direction::Inbound);
        i.src = None;
        i.src_identity = None;
        i.security = Security::None;
        let l = i.labels(ResponseFlag::None);
        assert_eq!(l.source_workload, UNKNOWN);
        assert_eq!(l.source_principal, UNKNOWN);
        assert_eq!(l.connection_security_policy, "none");
    }

    #[test]
    fn inbound_service_comes_from_state_not_the_wire() {
        let snap = mesh_model::config::parse(
            "nodes: [{name: n1, ip: 10.0.0.1}]\n\
             namespaces: [{name: bank}]\n\
             workloads:\n\
             - {name: server, namespace: bank, ip: 10.1.2.10, node: n1, labels: {app: server}}\n\
             - {name: other, namespace: bank, ip: 10.1.2.11, node: n1, labels: {app: other}}\n\
             services:\n\
             - {name: server, namespace: bank, vip: 10.96.0.10, ports: [{port: 80, targetPort: 8080}], selector: {app: server}}\n",
        )
        .unwrap();
        let server = snap.workload_by_name("bank", "server").unwrap().clone();
        let other = snap.workload_by_name("bank", "other").unwrap().clone();
        let fqdn = "server.bank.svc.cluster.local";
        let cases: [(&str, Option<&str>, &Workload, Option<&str>); 7] = [
            (
                "a Service the destination backs",
                Some(fqdn),
                &server,
                Some(fqdn),
            ),
            ("no forwarded host", None, &server, None),
            (
                "a Service the destination does not back",
                Some(fqdn),
                &other,
                None,
            ),
            (
                "no such Service",
                Some("x.bank.svc.cluster.local"),
                &server,
                None,
            ),
            (
                "a Service's name in another domain",
                Some("server.bank.svc.evil"),
                &server,
                None,
            ),
            ("not a Service hostname", Some("random-1234"), &server, None),
            ("empty", Some(""), &server, None),
        ];
        for (what, host, dst, want) in cases {
            assert_eq!(inbound_service(&snap, host, dst).as_deref(), want, "{what}");
        }
    }

    #[test]
    fn event_carries_identities_bytes_and_error() {
        let ev = info(Direction::Outbound).event(
            &Outcome {
                flag: ResponseFlag::Connect,
                reason: Some("no_endpoints"),
                bytes_sent: 3,
                bytes_recv: 4,
                error: Some("boom".into()),
            },
            Duration::from_millis(5),
        );
        assert_eq!(
            ev.src_identity.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/client")
        );
        assert_eq!(ev.dst_workload.as_deref(), Some("bank/server"));
        assert_eq!((ev.bytes_sent, ev.bytes_recv), (3, 4));
        assert_eq!(ev.response_flags, "CONNECT");
        assert_eq!(ev.reason, Some("no_endpoints"));
        assert_eq!(ev.error.as_deref(), Some("boom"));
    }

    #[test]
    fn a_finer_reason_only_when_it_says_more() {
        let failed = || Outcome::failed(ResponseFlag::TlsFailure, "x");
        assert_eq!(failed().with_finer_reason("TLS_FAILURE").reason, None);
        assert_eq!(
            failed().with_finer_reason("NO_CERT").reason,
            Some("NO_CERT")
        );
        assert_eq!(
            Outcome::ok(1, 2).with_reason("r").reason,
            Some("r"),
            "explicit"
        );
    }

    #[test]
    fn dropping_an_unfinished_record_closes_it() {
        let telemetry = Telemetry {
            metrics: Metrics::new(),
            access_log: Arc::new(AccessLog::sink()),
        };
        let rec = ConnRecord::open(&telemetry, info(Direction::Outbound));
        assert_eq!(telemetry.metrics.active_connections.get(), 1);
        drop(rec);
        assert_eq!(telemetry.metrics.active_connections.get(), 0);
        let text = telemetry.metrics.encode();
        assert!(text.contains("response_flags=\"CONNECT\""), "{text}");
    }
}
