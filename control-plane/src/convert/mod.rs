//! Pure conversion: a domain [`Snapshot`] → the xDS resources it publishes.
//!
//! - every workload → `istio.workload.Address{workload}`, named by its uid;
//! - every service → `istio.workload.Address{service}`, named
//!   `namespace/hostname`;
//! - every policy → `istio.security.Authorization`, named `namespace/name`;
//! - every route → `ambient.mesh.v1.Route`, named `<kind>/<namespace>/<name>`,
//!   and every L7 policy → `ambient.mesh.v1.L7Authorization`, named
//!   `namespace/name` (the waypoints'; not served yet);
//! - every STRICT namespace → a namespace-scoped DENY policy
//!   ([`STRICT_POLICY_NAME`]) that denies callers without a principal, which
//!   is how Istio carries a STRICT PeerAuthentication to ztunnel.
//!
//! No I/O, no clock, no locks.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;

use mesh_model::state::{
    labels_match, AppProtocol, Cidr, Match, MissingWaypoint, MtlsMode, Policy, PolicyAction,
    PolicyScope, Service, Snapshot, StringMatch, Tunnel, UseWaypoint, Workload,
};
use mesh_model::HBONE_PORT;
use proto::security as pb_sec;
use proto::workload as pb;

/// The name of the policy a STRICT namespace is converted to (Istio's).
pub const STRICT_POLICY_NAME: &str = "istio_converted_static_strict";

/// The xDS resource name of a service: `namespace/hostname`.
pub fn service_name(svc: &Service) -> String {
    format!("{}/{}", svc.namespace, svc.hostname)
}

/// The xDS resource name of a policy: `namespace/name`.
pub fn policy_name(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// All `Address` resources of a snapshot, by resource name.
pub fn addresses(snap: &Snapshot) -> BTreeMap<String, pb::Address> {
    let mut out = BTreeMap::new();
    for w in snap.workloads() {
        let workload = workload(snap, w, workload_services(snap, &w.uid));
        out.insert(
            w.uid.clone(),
            pb::Address {
                r#type: Some(pb::address::Type::Workload(workload)),
            },
        );
    }
    for s in snap.services() {
        out.insert(
            service_name(s),
            pb::Address {
                r#type: Some(pb::address::Type::Service(service(s))),
            },
        );
    }
    out
}

/// All `Authorization` resources of a snapshot, by resource name.
pub fn authorizations(snap: &Snapshot) -> BTreeMap<String, pb_sec::Authorization> {
    let mut out: BTreeMap<String, pb_sec::Authorization> = snap
        .policies()
        .iter()
        .map(|p| (policy_name(&p.namespace, &p.name), authorization(p)))
        .collect();
    for ns in snap.namespaces() {
        if ns.mtls == MtlsMode::Strict {
            out.insert(
                policy_name(&ns.name, STRICT_POLICY_NAME),
                strict_policy(&ns.name),
            );
        }
    }
    out
}

/// All `ambient.mesh.v1.Route` resources of a snapshot (the waypoints'),
/// by resource name (`<kind>/<namespace>/<name>`).
pub fn routes(snap: &Snapshot) -> BTreeMap<String, proto::mesh::Route> {
    snap.routes()
        .map(|r| (mesh_model::xds::l7convert::route_key(r), (&**r).into()))
        .collect()
}

/// All `ambient.mesh.v1.L7Authorization` resources of a snapshot (the
/// waypoints'), by resource name (`namespace/name`).
pub fn l7_authorizations(snap: &Snapshot) -> BTreeMap<String, proto::mesh::L7Authorization> {
    snap.l7_policies()
        .map(|p| (policy_name(&p.namespace, &p.name), (&**p).into()))
        .collect()
}

/// `namespace/hostname` → ports for every service the workload `uid` is an
/// endpoint of: from the snapshot's workload → services index, so it costs
/// the workload's services, not every service's endpoints.
pub fn workload_services(snap: &Snapshot, uid: &str) -> BTreeMap<String, pb::PortList> {
    snap.services_of(uid)
        .iter()
        .map(|svc| (service_name(svc), pb::PortList { ports: ports(svc) }))
        .collect()
}

fn ports(svc: &Service) -> Vec<pb::Port> {
    svc.ports
        .iter()
        .map(|p| pb::Port {
            service_port: u32::from(p.port),
            target_port: u32::from(p.target_port),
            app_protocol: app_protocol(p.app_protocol) as i32,
        })
        .collect()
}

/// The declared protocol as Istio's enum (`UNKNOWN`: undeclared).
fn app_protocol(p: Option<AppProtocol>) -> pb::AppProtocol {
    match p {
        None => pb::AppProtocol::Unknown,
        Some(AppProtocol::Http11) => pb::AppProtocol::Http11,
        Some(AppProtocol::Http2) => pb::AppProtocol::Http2,
        Some(AppProtocol::Grpc) => pb::AppProtocol::Grpc,
        Some(AppProtocol::Tcp) => pb::AppProtocol::Tcp,
        Some(AppProtocol::Tls) => pb::AppProtocol::Tls,
    }
}

/// Raw address bytes: 4 for IPv4, 16 for IPv6.
pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A ready waypoint by its address. A missing one is sent as what names
/// it, which the receiving ztunnel cannot resolve either, so it refuses the
/// traffic too (leaving the field out would let it bypass the waypoint): a
/// name becomes the hostname of the waypoint's Service, as Istio names it.
fn gateway(wp: &UseWaypoint) -> pb::GatewayAddress {
    use pb::gateway_address::Destination;
    let address = |ip: IpAddr| {
        Destination::Address(pb::NetworkAddress {
            network: String::new(),
            address: ip_bytes(ip),
        })
    };
    let hostname = |namespace: &str, hostname: String| {
        Destination::Hostname(pb::NamespacedHostname {
            namespace: namespace.to_owned(),
            hostname,
        })
    };
    let destination = match wp {
        UseWaypoint::Ready(wp) => address(wp.address),
        UseWaypoint::Missing(m) => match &**m {
            MissingWaypoint::Address(ip) => address(*ip),
            MissingWaypoint::Named { namespace, name } => {
                hostname(namespace, Service::fqdn(name, namespace))
            }
            MissingWaypoint::Service {
                namespace,
                hostname: host,
            } => hostname(namespace, host.clone()),
        },
    };
    pb::GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: u32::from(HBONE_PORT),
    }
}

/// One workload. `services` is what [`workload_services`] found for it.
pub fn workload(
    snap: &Snapshot,
    w: &Workload,
    services: BTreeMap<String, pb::PortList>,
) -> pb::Workload {
    // Sorted, so the bytes do not depend on the order policies are listed in.
    let mut selected: Vec<String> = snap
        .policies()
        .iter()
        .filter(|p| selects(p, w))
        .map(|p| policy_name(&p.namespace, &p.name))
        .collect();
    selected.sort();
    pb::Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        addresses: w.ips.iter().map(|ip| ip_bytes(*ip)).collect(),
        tunnel_protocol: match w.tunnel {
            Tunnel::None => pb::TunnelProtocol::None,
            Tunnel::Hbone => pb::TunnelProtocol::Hbone,
        } as i32,
        native_tunnel: w.native_tunnel,
        trust_domain: w.trust_domain.clone(),
        service_account: w.service_account.clone(),
        waypoint: w.waypoint.as_ref().map(gateway),
        node: w.node.clone(),
        services,
        authorization_policies: selected,
        status: pb::WorkloadStatus::Healthy as i32,
        ..pb::Workload::default()
    }
}

/// A selector-scoped policy in the workload's namespace whose labels match.
fn selects(p: &Policy, w: &Workload) -> bool {
    match &p.scope {
        PolicyScope::WorkloadSelector { match_labels } => {
            p.namespace == w.namespace && labels_match(match_labels, &w.labels)
        }
        PolicyScope::Global | PolicyScope::Namespace => false,
    }
}

/// One service.
pub fn service(svc: &Service) -> pb::Service {
    pb::Service {
        name: svc.name.clone(),
        namespace: svc.namespace.clone(),
        hostname: svc.hostname.clone(),
        addresses: svc
            .vips
            .iter()
            .map(|ip| pb::NetworkAddress {
                network: String::new(),
                address: ip_bytes(*ip),
            })
            .collect(),
        ports: ports(svc),
        waypoint: svc.waypoint.as_ref().map(gateway),
        ..pb::Service::default()
    }
}

/// One policy.
pub fn authorization(p: &Policy) -> pb_sec::Authorization {
    pb_sec::Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope: match p.scope {
            PolicyScope::Global => pb_sec::Scope::Global,
            PolicyScope::Namespace => pb_sec::Scope::Namespace,
            PolicyScope::WorkloadSelector { .. } => pb_sec::Scope::WorkloadSelector,
        } as i32,
        action: match p.action {
            PolicyAction::Allow => pb_sec::Action::Allow,
            PolicyAction::Deny => pb_sec::Action::Deny,
        } as i32,
        rules: p
            .rules
            .iter()
            .map(|r| pb_sec::Rule {
                clauses: r
                    .clauses
                    .iter()
                    .map(|c| pb_sec::Clause {
                        matches: c.matches.iter().map(match_).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn match_(m: &Match) -> pb_sec::Match {
    let strings = |v: &[StringMatch]| v.iter().map(string_match).collect::<Vec<_>>();
    let cidrs = |v: &[Cidr]| v.iter().map(cidr).collect::<Vec<_>>();
    let ports = |v: &[u16]| v.iter().map(|p| u32::from(*p)).collect::<Vec<_>>();
    // Service accounts travel as principal suffixes (`/ns/<ns>/sa/<sa>`, any
    // trust domain): the same peers, using only fields verified upstream.
    let sa = |v: &[mesh_model::state::ServiceAccountMatch]| {
        v.iter()
            .map(|s| StringMatch::Suffix(format!("/ns/{}/sa/{}", s.namespace, s.service_account)))
            .collect::<Vec<_>>()
    };
    let mut principals = strings(&m.principals);
    principals.extend(sa(&m.service_accounts).iter().map(string_match));
    let mut not_principals = strings(&m.not_principals);
    not_principals.extend(sa(&m.not_service_accounts).iter().map(string_match));
    pb_sec::Match {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        principals,
        not_principals,
        source_ips: cidrs(&m.source_ips),
        not_source_ips: cidrs(&m.not_source_ips),
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
        ..pb_sec::Match::default()
    }
}

fn string_match(s: &StringMatch) -> pb_sec::StringMatch {
    use pb_sec::string_match::MatchType;
    let t = match s {
        StringMatch::Exact(v) => MatchType::Exact(v.clone()),
        StringMatch::Prefix(v) => MatchType::Prefix(v.clone()),
        StringMatch::Suffix(v) => MatchType::Suffix(v.clone()),
        StringMatch::Presence => MatchType::Presence(()),
    };
    pb_sec::StringMatch {
        match_type: Some(t),
    }
}

fn cidr(c: &Cidr) -> pb_sec::Address {
    // `Cidr` exposes its parts only through Display (`addr/len`).
    let text = c.to_string();
    let (addr, len) = text.split_once('/').expect("Cidr displays as addr/len");
    let ip: IpAddr = addr.parse().expect("Cidr displays a valid address");
    pb_sec::Address {
        address: ip_bytes(ip),
        length: len.parse().expect("Cidr displays a numeric prefix"),
    }
}

/// STRICT mTLS for `namespace`: deny any caller without a principal
/// (plaintext), in every workload of the namespace.
pub fn strict_policy(namespace: &str) -> pb_sec::Authorization {
    pb_sec::Authorization {
        name: STRICT_POLICY_NAME.to_owned(),
        namespace: namespace.to_owned(),
        scope: pb_sec::Scope::Namespace as i32,
        action: pb_sec::Action::Deny as i32,
        rules: vec![pb_sec::Rule {
            clauses: vec![pb_sec::Clause {
                matches: vec![pb_sec::Match {
                    not_principals: vec![string_match(&StringMatch::Presence)],
                    ..pb_sec::Match::default()
                }],
            }],
        }],
    }
}
