//! xDS resources → domain types. Generated protobuf types stop here: every
//! field is checked, and anything we cannot represent faithfully is an
//! error (the resource is NACKed) rather than silently dropped, since a
//! dropped policy field could widen an ALLOW. Pure: no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::identity::SpiffeId;
use proto::security as pb_sec;
use proto::workload as pb;

use crate::state::{
    AppProtocol, Cidr, Clause, Match, Policy, PolicyAction, PolicyKey, PolicyScope, Rule, Service,
    ServiceAccountMatch, ServicePort, StringMatch, Tunnel, Workload, DEFAULT_TRUST_DOMAIN,
};

const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Why a resource cannot be used. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{field}: {len} bytes is not an IPv4 or IPv6 address")]
    BadAddress { field: &'static str, len: usize },
    #[error("{field}: unknown enum value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("{field}: {value} is not a port")]
    BadPort { field: &'static str, value: u32 },
    #[error("{field}: prefix length {len} is out of range")]
    BadPrefix { field: &'static str, len: u32 },
    #[error("identity from namespace {namespace:?} and service account {service_account:?} is not a valid SPIFFE ID")]
    BadIdentity {
        namespace: String,
        service_account: String,
    },
    #[error("authorization_policies: {0:?} is not <namespace>/<name>")]
    BadPolicyKey(String),
    #[error("{0} is not supported by this ztunnel")]
    Unsupported(&'static str),
    #[error("string match with no value")]
    EmptyStringMatch,
}

impl ConvertError {
    /// A low-cardinality reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ConvertError::Missing(_) => "missing_field",
            ConvertError::BadAddress { .. } | ConvertError::BadPrefix { .. } => "bad_address",
            ConvertError::UnknownEnum { .. } => "unknown_enum",
            ConvertError::BadPort { .. } => "bad_port",
            ConvertError::BadIdentity { .. } => "bad_identity",
            ConvertError::BadPolicyKey(_) => "bad_policy_key",
            ConvertError::Unsupported(_) => "unsupported",
            ConvertError::EmptyStringMatch => "bad_match",
        }
    }
}

/// Where a workload's or service's waypoint is, before it is resolved to an
/// address and identity against the rest of the state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WaypointRef {
    Address(IpAddr),
    /// A Service, by `namespace/hostname`.
    Service(String),
}

/// A converted workload plus what must be resolved against other
/// resources: its waypoint and the services it backs (`namespace/hostname`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadEntry {
    pub workload: Workload,
    pub waypoint: Option<WaypointRef>,
    /// Services this workload is an endpoint of (healthy workloads only).
    pub services: Vec<String>,
}

/// A converted service plus its unresolved waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub service: Service,
    pub waypoint: Option<WaypointRef>,
}

pub fn ip_from_bytes(field: &'static str, b: &[u8]) -> Result<IpAddr, ConvertError> {
    match b.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        }
        len => Err(ConvertError::BadAddress { field, len }),
    }
}

fn required(field: &'static str, v: &str) -> Result<String, ConvertError> {
    if v.is_empty() {
        Err(ConvertError::Missing(field))
    } else {
        Ok(v.to_owned())
    }
}

fn or_default(v: String, default: &str) -> String {
    if v.is_empty() {
        default.to_owned()
    } else {
        v
    }
}

fn port(field: &'static str, value: u32) -> Result<u16, ConvertError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ConvertError::BadPort { field, value })
}

fn waypoint_ref(gw: &pb::GatewayAddress) -> Result<WaypointRef, ConvertError> {
    use pb::gateway_address::Destination;
    match &gw.destination {
        Some(Destination::Address(a)) => Ok(WaypointRef::Address(ip_from_bytes(
            "waypoint.address",
            &a.address,
        )?)),
        Some(Destination::Hostname(h)) => Ok(WaypointRef::Service(format!(
            "{}/{}",
            required("waypoint.hostname.namespace", &h.namespace)?,
            required("waypoint.hostname.hostname", &h.hostname)?
        ))),
        None => Err(ConvertError::Missing("waypoint.destination")),
    }
}

fn policy_key(s: &str) -> Result<PolicyKey, ConvertError> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(PolicyKey {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(ConvertError::BadPolicyKey(s.to_owned())),
    }
}

/// `istio.workload.Workload` → [`WorkloadEntry`].
///
/// Takes the message by value and moves its strings into the workload:
/// copying them would leave the decoded message's strings as garbage
/// between the long-lived ones (allocator fragmentation, benches/README.md).
pub fn workload(mut w: pb::Workload) -> Result<WorkloadEntry, ConvertError> {
    required("uid", &w.uid)?;
    required("namespace", &w.namespace)?;
    required("name", &w.name)?;
    let ips = w
        .addresses
        .iter()
        .map(|a| ip_from_bytes("addresses", a))
        .collect::<Result<Vec<_>, _>>()?;
    let tunnel = match pb::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(pb::TunnelProtocol::Hbone) => Tunnel::Hbone,
        Ok(_) => Tunnel::None,
        Err(_) => {
            return Err(ConvertError::UnknownEnum {
                field: "tunnel_protocol",
                value: w.tunnel_protocol,
            })
        }
    };
    let status = pb::WorkloadStatus::try_from(w.status).map_err(|_| ConvertError::UnknownEnum {
        field: "status",
        value: w.status,
    })?;
    let service_account = or_default(
        std::mem::take(&mut w.service_account),
        DEFAULT_SERVICE_ACCOUNT,
    );
    let trust_domain = or_default(std::mem::take(&mut w.trust_domain), DEFAULT_TRUST_DOMAIN);
    SpiffeId::new(&trust_domain, &w.namespace, &service_account).map_err(|_| {
        ConvertError::BadIdentity {
            namespace: w.namespace.clone(),
            service_account: service_account.clone(),
        }
    })?;
    let mut authorization_policies = w
        .authorization_policies
        .iter()
        .map(|k| policy_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    authorization_policies.sort();
    let mut services: Vec<String> = match status {
        pb::WorkloadStatus::Healthy => std::mem::take(&mut w.services).into_keys().collect(),
        pb::WorkloadStatus::Unhealthy => Vec::new(),
    };
    services.sort();
    Ok(WorkloadEntry {
        waypoint: w.waypoint.as_ref().map(waypoint_ref).transpose()?,
        services,
        workload: Workload {
            uid: w.uid,
            name: w.name,
            namespace: w.namespace,
            service_account,
            trust_domain,
            ips,
            node: w.node,
            tunnel,
            native_tunnel: w.native_tunnel,
            labels: Default::default(),
            waypoint: None,
            authorization_policies,
        },
    })
}

/// `istio.workload.Service` → [`ServiceEntry`].
pub fn service(s: &pb::Service) -> Result<ServiceEntry, ConvertError> {
    let vips = s
        .addresses
        .iter()
        .map(|a| ip_from_bytes("addresses", &a.address))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = s
        .ports
        .iter()
        .map(|p| {
            let port = port("ports.service_port", p.service_port)?;
            let target_port = match p.target_port {
                0 => port,
                t => self::port("ports.target_port", t)?,
            };
            Ok(ServicePort {
                port,
                target_port,
                app_protocol: app_protocol(p.app_protocol),
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;
    Ok(ServiceEntry {
        waypoint: s.waypoint.as_ref().map(waypoint_ref).transpose()?,
        service: Service {
            name: required("name", &s.name)?,
            namespace: required("namespace", &s.namespace)?,
            hostname: required("hostname", &s.hostname)?,
            vips,
            ports,
            selector: Default::default(),
            endpoint_uids: Vec::new(),
            labels: Default::default(),
            waypoint: None,
        },
    })
}

/// `istio.workload.AppProtocol` → the declared protocol. `UNKNOWN`, and a
/// value newer than ours, are "undeclared": the waypoint detects the
/// protocol, which widens nothing.
fn app_protocol(value: i32) -> Option<AppProtocol> {
    match pb::AppProtocol::try_from(value).ok()? {
        pb::AppProtocol::Unknown => None,
        pb::AppProtocol::Http11 => Some(AppProtocol::Http11),
        pb::AppProtocol::Http2 => Some(AppProtocol::Http2),
        pb::AppProtocol::Grpc => Some(AppProtocol::Grpc),
        pb::AppProtocol::Tcp => Some(AppProtocol::Tcp),
        pb::AppProtocol::Tls => Some(AppProtocol::Tls),
    }
}

/// `istio.security.Authorization` → [`Policy`].
pub fn authorization(a: &pb_sec::Authorization) -> Result<Policy, ConvertError> {
    let scope = match pb_sec::Scope::try_from(a.scope) {
        Ok(pb_sec::Scope::Global) => PolicyScope::Global,
        Ok(pb_sec::Scope::Namespace) => PolicyScope::Namespace,
        Ok(pb_sec::Scope::WorkloadSelector) => PolicyScope::WorkloadSelector {
            match_labels: Default::default(),
        },
        Err(_) => {
            return Err(ConvertError::UnknownEnum {
                field: "scope",
                value: a.scope,
            })
        }
    };
    let action = match pb_sec::Action::try_from(a.action) {
        Ok(pb_sec::Action::Allow) => PolicyAction::Allow,
        Ok(pb_sec::Action::Deny) => PolicyAction::Deny,
        Err(_) => {
            return Err(ConvertError::UnknownEnum {
                field: "action",
                value: a.action,
            })
        }
    };
    let rules = a
        .rules
        .iter()
        .map(|r| {
            let clauses = r
                .clauses
                .iter()
                .map(|c| {
                    let matches = c.matches.iter().map(match_).collect::<Result<_, _>>()?;
                    Ok(Clause { matches })
                })
                .collect::<Result<_, ConvertError>>()?;
            Ok(Rule { clauses })
        })
        .collect::<Result<_, ConvertError>>()?;
    Ok(Policy {
        name: required("name", &a.name)?,
        namespace: required("namespace", &a.namespace)?,
        scope,
        action,
        rules,
    })
}

fn match_(m: &pb_sec::Match) -> Result<Match, ConvertError> {
    if !m.destination_ips.is_empty() || !m.not_destination_ips.is_empty() {
        return Err(ConvertError::Unsupported("destination_ips"));
    }
    let strings = |v: &[pb_sec::StringMatch]| -> Result<Vec<StringMatch>, ConvertError> {
        v.iter().map(string_match).collect()
    };
    let cidrs = |field, v: &[pb_sec::Address]| -> Result<Vec<Cidr>, ConvertError> {
        v.iter().map(|a| cidr(field, a)).collect()
    };
    let ports = |field, v: &[u32]| -> Result<Vec<u16>, ConvertError> {
        v.iter().map(|p| port(field, *p)).collect()
    };
    let sas = |v: &[pb_sec::ServiceAccountMatch]| {
        v.iter()
            .map(|s| ServiceAccountMatch {
                namespace: s.namespace.clone(),
                service_account: s.service_account.clone(),
            })
            .collect()
    };
    Ok(Match {
        namespaces: strings(&m.namespaces)?,
        not_namespaces: strings(&m.not_namespaces)?,
        principals: strings(&m.principals)?,
        not_principals: strings(&m.not_principals)?,
        service_accounts: sas(&m.service_accounts),
        not_service_accounts: sas(&m.not_service_accounts),
        source_ips: cidrs("source_ips", &m.source_ips)?,
        not_source_ips: cidrs("not_source_ips", &m.not_source_ips)?,
        destination_ports: ports("destination_ports", &m.destination_ports)?,
        not_destination_ports: ports("not_destination_ports", &m.not_destination_ports)?,
    })
}

pub(crate) fn string_match(s: &pb_sec::StringMatch) -> Result<StringMatch, ConvertError> {
    use pb_sec::string_match::MatchType;
    match &s.match_type {
        Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v.clone())),
        Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v.clone())),
        Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v.clone())),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
        None => Err(ConvertError::EmptyStringMatch),
    }
}

pub(crate) fn cidr(field: &'static str, a: &pb_sec::Address) -> Result<Cidr, ConvertError> {
    let ip = ip_from_bytes(field, &a.address)?;
    let len = u8::try_from(a.length).map_err(|_| ConvertError::BadPrefix {
        field,
        len: a.length,
    })?;
    Cidr::new(ip, len).map_err(|_| ConvertError::BadPrefix {
        field,
        len: a.length,
    })
}

#[cfg(test)]
mod tests;
