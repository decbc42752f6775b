//! L7 `policies:` entries: an Istio `AuthorizationPolicy` with
//! `targetRefs` (to the waypoint's Gateway, or to a Service) is the
//! waypoint's, and may use the L7 fields; one with a `selector` or neither
//! is ztunnel's (L4) and may not.
//!
//! ```yaml
//! policies:
//!   - name: deny-admin-writes
//!     namespace: shop
//!     targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
//!     action: DENY
//!     rules:
//!       - to: [{operation: {methods: [POST], paths: [/admin, "/admin/*"], hosts: ["reviews.*"]}}]
//!         when: [{key: "request.headers[x-user]", notValues: [admin]}]
//! ```
//!
//! Each entry becomes the xDS message (`ambient.mesh.v1.L7Authorization`)
//! and goes through the waypoint's own conversion.

use std::collections::HashSet;
use std::net::IpAddr;

use proto::mesh as pb;
use proto::security as pb_sec;
use serde::Deserialize;

use super::model::{ActionDoc, OperationDoc, PolicyDoc, PortDoc, RuleDoc, SourceDoc};
use super::route::{camel_path, from_field, invalid};
use super::ConfigError;
use crate::l7policy::L7Policy;
use crate::state::{Cidr, StringMatch};
use crate::xds::l7convert::Problem;

/// `targetRefs[]` / `targetRef`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetRefDoc {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    /// Must be the policy's own, when given.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `rules[].when[]`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ConditionDoc {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// Whether the entry is the waypoint's (it has `targetRefs`).
pub(super) fn is_l7(p: &PolicyDoc) -> bool {
    !p.target_refs.is_empty() || p.target_ref.is_some()
}

/// An L4 (ztunnel) policy may not use the L7 fields: they need a waypoint.
pub(super) fn check_l4(i: usize, p: &PolicyDoc) -> Result<(), ConfigError> {
    for (j, r) in p.rules.iter().enumerate() {
        let at = format!("policies[{i}].rules[{j}]");
        // The first L7 field used, by its YAML name (which finds its line).
        let l7_to = r.to.iter().enumerate().find_map(|(k, t)| {
            let o = &t.operation;
            let fields = [
                ("hosts", &o.hosts),
                ("notHosts", &o.not_hosts),
                ("methods", &o.methods),
                ("notMethods", &o.not_methods),
                ("paths", &o.paths),
                ("notPaths", &o.not_paths),
            ];
            let (name, _) = fields.into_iter().find(|(_, v)| !v.is_empty())?;
            Some((format!("{at}.to[{k}].operation"), name))
        });
        let l7_from = r.from.iter().enumerate().find_map(|(k, f)| {
            let s = &f.source;
            let name = if !s.remote_ip_blocks.is_empty() {
                "remoteIpBlocks"
            } else if !s.not_remote_ip_blocks.is_empty() {
                "notRemoteIpBlocks"
            } else {
                return None;
            };
            Some((format!("{at}.from[{k}].source"), name))
        });
        let when = (!r.when.is_empty()).then(|| (format!("{at}.when"), "when"));
        let Some((key, field)) = l7_to.or(l7_from).or(when) else {
            continue;
        };
        return Err(invalid(key, field, Problem::Conflict("L7 fields (hosts, methods, paths, remoteIpBlocks, when) need targetRefs to a waypoint")));
    }
    Ok(())
}

fn l7_key_path(field: &str) -> String {
    // `from[j].x` is `from[j].source.x` in YAML; `to[j].x` is `to[j].operation.x`.
    let segments: Vec<String> = camel_path(field)
        .split('.')
        .map(|seg| match seg.split_once('[') {
            Some(("from", _)) => format!("{seg}.source"),
            Some(("to", _)) => format!("{seg}.operation"),
            _ => seg.to_owned(),
        })
        .collect();
    segments.join(".")
}

/// Converts one L7 entry (`policies[i]`).
pub(super) fn l7_policy(
    i: usize,
    p: &PolicyDoc,
    namespaces: &HashSet<&str>,
    root_ns: &str,
) -> Result<L7Policy, ConfigError> {
    let at = format!("policies[{i}]");
    if p.namespace != root_ns && !namespaces.contains(p.namespace.as_str()) {
        return Err(ConfigError::UnknownNamespace {
            key: format!("{at}.namespace"),
            value: p.namespace.clone(),
        });
    }
    if p.selector.is_some() {
        return Err(invalid(
            format!("{at}.selector"),
            &p.name,
            Problem::Conflict("a policy has a selector or targetRefs, not both"),
        ));
    }
    let refs: Vec<&TargetRefDoc> = p.target_refs.iter().chain(&p.target_ref).collect();
    let target_refs = refs
        .iter()
        .enumerate()
        .map(|(j, t)| target_ref(&format!("{at}.targetRefs[{j}]"), t, &p.namespace))
        .collect::<Result<_, _>>()?;
    let rules = p
        .rules
        .iter()
        .enumerate()
        .map(|(j, r)| rule(&format!("{at}.rules[{j}]"), r))
        .collect::<Result<_, _>>()?;
    let message = pb::L7Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        target_refs,
        action: match p.action {
            ActionDoc::Allow => pb_sec::Action::Allow,
            ActionDoc::Deny => pb_sec::Action::Deny,
        } as i32,
        rules,
    };
    L7Policy::try_from(&message).map_err(|e| from_field(&at, e, l7_key_path))
}

fn target_ref(key: &str, t: &TargetRefDoc, ns: &str) -> Result<pb::PolicyTargetRef, ConfigError> {
    use pb::policy_target_ref::Kind;
    let group = t.group.as_deref();
    let kind = match (t.kind.as_str(), group) {
        ("Gateway", None | Some("gateway.networking.k8s.io")) => Kind::Gateway,
        ("Service", None | Some("")) => Kind::Service,
        (k, _) => {
            return Err(invalid(
                format!("{key}.kind"),
                k,
                Problem::NotOneOf {
                    value: format!("{}/{k}", group.unwrap_or("")),
                    allowed: "gateway.networking.k8s.io/Gateway, /Service",
                },
            ))
        }
    };
    if t.namespace.as_deref().is_some_and(|n| n != ns) {
        return Err(invalid(
            format!("{key}.namespace"),
            t.namespace.as_deref().unwrap_or(""),
            Problem::Unsupported("a target in another namespace"),
        ));
    }
    Ok(pb::PolicyTargetRef {
        kind: kind as i32,
        name: t.name.clone(),
    })
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

fn cidrs(key: &str, v: &[String]) -> Result<Vec<pb_sec::Address>, ConfigError> {
    v.iter()
        .enumerate()
        .map(|(k, c)| {
            let cidr: Cidr = c.parse().map_err(|source| ConfigError::BadCidr {
                key: format!("{key}[{k}]"),
                value: c.clone(),
                source,
            })?;
            Ok(pb_sec::Address {
                address: match cidr.addr() {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                },
                length: u32::from(cidr.prefix_len()),
            })
        })
        .collect()
}

fn ports(key: &str, v: &[PortDoc]) -> Result<Vec<u32>, ConfigError> {
    v.iter()
        .enumerate()
        .map(|(k, p)| {
            let n = match p {
                PortDoc::Number(n) => u32::try_from(*n).ok(),
                PortDoc::Text(s) => s.trim().parse().ok(),
            };
            n.ok_or_else(|| ConfigError::BadPort {
                key: format!("{key}[{k}]"),
                value: p.to_string(),
            })
        })
        .collect()
}

fn source(key: &str, s: &SourceDoc) -> Result<pb::L7Source, ConfigError> {
    Ok(pb::L7Source {
        principals: patterns(&s.principals),
        not_principals: patterns(&s.not_principals),
        namespaces: patterns(&s.namespaces),
        not_namespaces: patterns(&s.not_namespaces),
        ip_blocks: cidrs(&format!("{key}.ipBlocks"), &s.ip_blocks)?,
        not_ip_blocks: cidrs(&format!("{key}.notIpBlocks"), &s.not_ip_blocks)?,
        remote_ip_blocks: cidrs(&format!("{key}.remoteIpBlocks"), &s.remote_ip_blocks)?,
        not_remote_ip_blocks: cidrs(&format!("{key}.notRemoteIpBlocks"), &s.not_remote_ip_blocks)?,
    })
}

fn operation(key: &str, o: &OperationDoc) -> Result<pb::L7Operation, ConfigError> {
    Ok(pb::L7Operation {
        hosts: patterns(&o.hosts),
        not_hosts: patterns(&o.not_hosts),
        ports: ports(&format!("{key}.ports"), &o.ports)?,
        not_ports: ports(&format!("{key}.notPorts"), &o.not_ports)?,
        methods: patterns(&o.methods),
        not_methods: patterns(&o.not_methods),
        paths: patterns(&o.paths),
        not_paths: patterns(&o.not_paths),
    })
}

fn rule(key: &str, r: &RuleDoc) -> Result<pb::L7Rule, ConfigError> {
    Ok(pb::L7Rule {
        from: r
            .from
            .iter()
            .enumerate()
            .map(|(k, f)| source(&format!("{key}.from[{k}].source"), &f.source))
            .collect::<Result<_, _>>()?,
        to: r
            .to
            .iter()
            .enumerate()
            .map(|(k, t)| operation(&format!("{key}.to[{k}].operation"), &t.operation))
            .collect::<Result<_, _>>()?,
        when: r
            .when
            .iter()
            .map(|c| pb::L7Condition {
                key: c.key.clone(),
                values: c.values.clone(),
                not_values: c.not_values.clone(),
            })
            .collect(),
    })
}
