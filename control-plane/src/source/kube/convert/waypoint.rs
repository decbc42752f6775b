//! Gateway API and waypoint-bound Istio objects → the waypoint's part of
//! the mesh input. Pure.
//!
//! - `Gateway` of class `istio-waypoint` → [`GatewayInfo`]: it makes the
//!   ready pods that carry its name in `gateway.networking.k8s.io/gateway-name`
//!   (as the controller's Deployment labels them) and run as its service
//!   account answer for it:
//!   `istio.io/use-waypoint: <gateway>` on a namespace, Service or pod
//!   resolves to one of them ([`waypoint_alias`]);
//! - `HTTPRoute` / `GRPCRoute` with Service `parentRefs` → a
//!   [`Route`](mesh_model::route::Route), through the config file's own
//!   schema and checks ([`mesh_model::config::route_from_spec`]);
//! - `AuthorizationPolicy` with `targetRefs` (a Gateway or a Service) →
//!   an [`L7Policy`], through the xDS message and its checked conversion
//!   (the same the waypoint applies). One that cannot be converted fails
//!   closed: an ALLOW without rules on its targets, so nothing passes
//!   through them until it is fixed.

use mesh_model::l7policy::{L7Policy, PolicyTarget};
use mesh_model::route::{Route, RouteKey, RouteKind};
use mesh_model::state::{Cidr, PolicyAction, StringMatch};
use proto::mesh as pb;
use proto::security as pb_sec;

use super::super::gateway::{Gateway, GrpcRoute, HttpRoute, GATEWAY_NAME_LABEL, WAYPOINT_CLASS};
use super::super::istio::{AuthorizationPolicy, OperationSpec, PortValue, SourceSpec};
use super::{namespaced, PodInfo};

/// What the mesh reads of a Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInfo {
    pub namespace: String,
    pub name: String,
    /// `gatewayClassName: istio-waypoint`.
    pub waypoint: bool,
}

pub fn gateway_info(g: &Gateway) -> Option<GatewayInfo> {
    let (namespace, name) = namespaced(&g.metadata)?;
    Some(GatewayInfo {
        namespace,
        name,
        waypoint: g.spec.gateway_class_name == WAYPOINT_CLASS,
    })
}

/// A route as converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteState {
    /// A mesh route (it has Service parents).
    Route(Route),
    /// No Service parent: an ingress route, not the mesh's.
    NotMesh,
    /// Refused (the reason): the last good form stays.
    Invalid(String),
}

/// What the mesh reads of an HTTPRoute or GRPCRoute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub key: RouteKey,
    pub state: RouteState,
}

fn route_info(
    kind: RouteKind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: &serde_json::Value,
) -> Option<RouteInfo> {
    let (namespace, name) = namespaced(meta)?;
    let created = meta.creation_timestamp.as_ref().map(|t| t.0.to_rfc3339());
    let state = match mesh_model::config::route_from_spec(
        kind,
        &namespace,
        &name,
        created.as_deref(),
        spec.clone(),
    ) {
        Ok(Some(r)) => RouteState::Route(r),
        Ok(None) => RouteState::NotMesh,
        Err(e) => RouteState::Invalid(mesh_runtime::error::error_chain(&e)),
    };
    Some(RouteInfo {
        key: RouteKey {
            kind,
            namespace,
            name,
        },
        state,
    })
}

pub fn http_route_info(r: &HttpRoute) -> Option<RouteInfo> {
    route_info(RouteKind::Http, &r.metadata, &r.spec)
}

pub fn grpc_route_info(r: &GrpcRoute) -> Option<RouteInfo> {
    route_info(RouteKind::Grpc, &r.metadata, &r.spec)
}

/// The waypoint a pod answers for: the Gateway named by its
/// `gateway.networking.k8s.io/gateway-name` label, when `is_waypoint`
/// says that Gateway (in the pod's namespace) is an `istio-waypoint` one,
/// the pod is ready, and it runs as the Gateway's own service account (as
/// the controller's Deployment does; the waypoint's identity is what the
/// control plane finds the Gateway's policies by, and a label alone must
/// not let another workload take the waypoint's traffic). Its workload
/// then carries the Gateway's name, which `istio.io/use-waypoint` labels
/// name.
pub fn waypoint_alias(pod: &PodInfo, is_waypoint: impl Fn(&str) -> bool) -> Option<&str> {
    let gw = pod.labels.get(GATEWAY_NAME_LABEL)?;
    (pod.ready && pod.service_account == *gw && is_waypoint(gw)).then_some(gw.as_str())
}

/// An AuthorizationPolicy with `targetRefs` as the waypoint's policy;
/// `Err` carries the fail-closed form and the reason.
pub fn l7_policy(ap: &AuthorizationPolicy) -> Option<Result<L7Policy, (L7Policy, String)>> {
    let namespace = ap.metadata.namespace.clone()?;
    let name = ap.metadata.name.clone()?;
    let spec = &ap.spec;
    let refs: Vec<_> = spec.target_refs.iter().chain(&spec.target_ref).collect();
    // The targets we know; any other fails the policy closed on those.
    let mut targets = Vec::new();
    let mut problems = Vec::new();
    for (i, t) in refs.iter().enumerate() {
        let kind = match (t.group.as_str(), t.kind.as_str()) {
            ("gateway.networking.k8s.io", "Gateway") => pb::policy_target_ref::Kind::Gateway,
            ("", "Service") => pb::policy_target_ref::Kind::Service,
            (g, k) => {
                problems.push(format!(
                    "targetRefs[{i}]: {g}/{k} is not a Gateway or a Service"
                ));
                continue;
            }
        };
        if t.namespace.as_deref().is_some_and(|n| n != namespace) {
            problems.push(format!("targetRefs[{i}]: a target in another namespace"));
            continue;
        }
        targets.push(pb::PolicyTargetRef {
            kind: kind as i32,
            name: t.name.clone(),
        });
    }
    let closed = |targets: &[pb::PolicyTargetRef], why: String| {
        let policy = L7Policy {
            name: name.clone(),
            namespace: namespace.clone(),
            targets: targets
                .iter()
                .map(|t| {
                    if t.kind == pb::policy_target_ref::Kind::Gateway as i32 {
                        PolicyTarget::Gateway(t.name.clone())
                    } else {
                        PolicyTarget::Service(t.name.clone())
                    }
                })
                .collect(),
            action: PolicyAction::Allow,
            rules: Vec::new(),
        };
        (policy, why)
    };
    if targets.is_empty() {
        // Nothing of ours to bind it to.
        return None;
    }
    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => pb_sec::Action::Allow,
        Some("DENY") => pb_sec::Action::Deny,
        Some(other) => {
            return Some(Err(closed(
                &targets,
                format!("action {other} is not enforced by the waypoint"),
            )))
        }
    };
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, r) in spec.rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        let mut from = Vec::new();
        for (j, f) in r.from.iter().enumerate() {
            match source(&f.source) {
                Ok(s) => from.push(s),
                Err(e) => problems.push(format!("{at}.from[{j}].source.{e}")),
            }
        }
        let mut to = Vec::new();
        for (j, t) in r.to.iter().enumerate() {
            match operation(&t.operation) {
                Ok(o) => to.push(o),
                Err(e) => problems.push(format!("{at}.to[{j}].operation.{e}")),
            }
        }
        let when = r
            .when
            .iter()
            .map(|c| pb::L7Condition {
                key: c.key.clone(),
                values: c.values.clone(),
                not_values: c.not_values.clone(),
            })
            .collect();
        rules.push(pb::L7Rule { from, to, when });
    }
    if !problems.is_empty() {
        return Some(Err(closed(&targets, problems.join("; "))));
    }
    let message = pb::L7Authorization {
        name: name.clone(),
        namespace: namespace.clone(),
        target_refs: targets.clone(),
        action: action as i32,
        rules,
    };
    Some(L7Policy::try_from(&message).map_err(|e| closed(&targets, e.to_string())))
}

fn patterns(v: &[String]) -> Vec<pb_sec::StringMatch> {
    use pb_sec::string_match::MatchType;
    v.iter()
        .map(|p| pb_sec::StringMatch {
            match_type: Some(match StringMatch::from_pattern(p) {
                StringMatch::Exact(s) => MatchType::Exact(s),
                StringMatch::Prefix(s) => MatchType::Prefix(s),
                StringMatch::Suffix(s) => MatchType::Suffix(s),
                StringMatch::Presence => MatchType::Presence(()),
            }),
        })
        .collect()
}

fn cidrs(field: &str, v: &[String]) -> Result<Vec<pb_sec::Address>, String> {
    v.iter()
        .enumerate()
        .map(|(k, c)| {
            let cidr: Cidr = c
                .parse()
                .map_err(|_| format!("{field}[{k}]: {c:?} is not a CIDR block"))?;
            Ok(pb_sec::Address {
                address: match cidr.addr() {
                    std::net::IpAddr::V4(a) => a.octets().to_vec(),
                    std::net::IpAddr::V6(a) => a.octets().to_vec(),
                },
                length: u32::from(cidr.prefix_len()),
            })
        })
        .collect()
}

fn ports(field: &str, v: &[PortValue]) -> Result<Vec<u32>, String> {
    v.iter()
        .enumerate()
        .map(|(k, p)| {
            let n = match p {
                PortValue::Number(n) => u16::try_from(*n).ok(),
                PortValue::Text(s) => s.trim().parse::<u16>().ok(),
            };
            n.filter(|n| *n != 0)
                .map(u32::from)
                .ok_or_else(|| format!("{field}[{k}]: {p:?} is not a port"))
        })
        .collect()
}

/// `from[].source`; request principals (JWTs) and service accounts are
/// not known to the waypoint.
fn source(s: &SourceSpec) -> Result<pb::L7Source, String> {
    for (field, v) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        if !v.is_empty() {
            return Err(format!("{field}: not supported by the waypoint"));
        }
    }
    Ok(pb::L7Source {
        principals: patterns(&s.principals),
        not_principals: patterns(&s.not_principals),
        namespaces: patterns(&s.namespaces),
        not_namespaces: patterns(&s.not_namespaces),
        ip_blocks: cidrs("ipBlocks", &s.ip_blocks)?,
        not_ip_blocks: cidrs("notIpBlocks", &s.not_ip_blocks)?,
        remote_ip_blocks: cidrs("remoteIpBlocks", &s.remote_ip_blocks)?,
        not_remote_ip_blocks: cidrs("notRemoteIpBlocks", &s.not_remote_ip_blocks)?,
    })
}

fn operation(o: &OperationSpec) -> Result<pb::L7Operation, String> {
    Ok(pb::L7Operation {
        hosts: patterns(&o.hosts),
        not_hosts: patterns(&o.not_hosts),
        ports: ports("ports", &o.ports)?,
        not_ports: ports("notPorts", &o.not_ports)?,
        methods: patterns(&o.methods),
        not_methods: patterns(&o.not_methods),
        paths: patterns(&o.paths),
        not_paths: patterns(&o.not_paths),
    })
}
