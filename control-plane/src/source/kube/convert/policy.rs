//! Istio's `AuthorizationPolicy` and `PeerAuthentication` → the mesh's
//! L4 policies and namespace mTLS modes, as Istio converts them for
//! ztunnel.
//!
//! - A policy with `targetRef(s)` attaches to a waypoint (Gateway or
//!   Service): it is the waypoint's, not ztunnel's, and becomes an L7
//!   policy ([`super::waypoint::l7_policy`]) with every field it has.
//! - `selector` → `WORKLOAD_SELECTOR`; no selector in the root namespace →
//!   `GLOBAL`; otherwise `NAMESPACE`.
//! - What ztunnel cannot enforce (HTTP methods, paths, hosts, request
//!   principals, remote IPs, non-L4 `when` keys) splits as in Istio: a rule
//!   of an ALLOW policy that needs any of it never matches (so it allows
//!   nothing it cannot check), and in a DENY policy that part is dropped
//!   and the rest still denies (more, never less). A value that does not
//!   parse (a port, a CIDR) is treated the same way: fail closed.
//! - `AUDIT` and `CUSTOM` are not ztunnel actions: skipped, as Istio does.

use mesh_model::l7policy::L7Policy;
use mesh_model::state::{
    Cidr, Clause, Labels, Match, MtlsMode, Policy, PolicyAction, PolicyScope, Rule,
    ServiceAccountMatch, StringMatch,
};

use super::super::istio::{
    AuthorizationPolicy, Condition, OperationSpec, PeerAuthentication, PortValue, RuleSpec,
    SourceSpec,
};
use super::ObjectName;

/// The conversion of one AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converted {
    /// A ztunnel policy; `dropped` names what could not be enforced
    /// (for the log).
    Policy {
        policy: Policy,
        dropped: Vec<String>,
    },
    /// The waypoint's (it has `targetRefs`); `problem` says why it was
    /// failed closed (an ALLOW without rules on its targets), if it was.
    Waypoint {
        policy: L7Policy,
        problem: Option<String>,
    },
    /// Not ztunnel's (the reason, for the log).
    Skipped(&'static str),
}

/// Converts `ap`; `None` when it has no name or namespace.
pub fn authorization_policy(ap: &AuthorizationPolicy, root_namespace: &str) -> Option<Converted> {
    let namespace = ap.metadata.namespace.clone()?;
    let name = ap.metadata.name.clone()?;
    let spec = &ap.spec;
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        // Attached to a Gateway or Service: enforced by the waypoint.
        return Some(match super::waypoint::l7_policy(ap) {
            None => Converted::Skipped("targetRefs to neither a Gateway nor a Service"),
            Some(Ok(policy)) => Converted::Waypoint {
                policy,
                problem: None,
            },
            Some(Err((policy, why))) => Converted::Waypoint {
                policy,
                problem: Some(why),
            },
        });
    }
    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => PolicyAction::Allow,
        Some("DENY") => PolicyAction::Deny,
        Some("AUDIT") => return Some(Converted::Skipped("AUDIT is not enforced by ztunnel")),
        Some("CUSTOM") => return Some(Converted::Skipped("CUSTOM is not enforced by ztunnel")),
        Some(_) => return Some(Converted::Skipped("unknown action")),
    };
    let scope = match &spec.selector {
        Some(sel) if !sel.match_labels.is_empty() => PolicyScope::WorkloadSelector {
            match_labels: sel.match_labels.clone(),
        },
        _ if namespace == root_namespace => PolicyScope::Global,
        _ => PolicyScope::Namespace,
    };
    let mut dropped = Vec::new();
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let mut cut = Cut {
                action,
                at: format!("rules[{i}]"),
                dropped: Vec::new(),
                unenforceable: false,
            };
            let rule = cut.rule(r);
            dropped.append(&mut cut.dropped);
            (!cut.unenforceable).then_some(rule)
        })
        .collect();
    Some(Converted::Policy {
        policy: Policy {
            name,
            namespace,
            scope,
            action,
            rules,
        },
        dropped,
    })
}

/// The `when` keys ztunnel can check.
const L4_WHEN_KEYS: [&str; 4] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.port",
];

/// One rule's conversion: what it dropped, and whether an ALLOW rule
/// needed something that cannot be enforced.
struct Cut {
    action: PolicyAction,
    at: String,
    dropped: Vec<String>,
    unenforceable: bool,
}

impl Cut {
    /// Notes that `field` cannot be enforced: an ALLOW rule then never
    /// matches; a DENY rule goes on without it.
    fn cannot(&mut self, field: String) {
        if self.action == PolicyAction::Allow {
            self.unenforceable = true;
        }
        self.dropped.push(field);
    }

    fn rule(&mut self, r: &RuleSpec) -> Rule {
        let mut clauses = Vec::new();
        if !r.from.is_empty() {
            let matches = (r.from.iter().enumerate())
                .map(|(j, f)| self.source(&format!("from[{j}].source"), &f.source))
                .collect();
            clauses.push(Clause { matches });
        }
        if !r.to.is_empty() {
            let matches = (r.to.iter().enumerate())
                .map(|(j, t)| self.operation(&format!("to[{j}].operation"), &t.operation))
                .collect();
            clauses.push(Clause { matches });
        }
        // Every condition must hold: one clause each.
        for (j, c) in r.when.iter().enumerate() {
            let m = self.condition(&format!("when[{j}]"), c);
            clauses.push(Clause { matches: vec![m] });
        }
        Rule { clauses }
    }

    fn source(&mut self, at: &str, s: &SourceSpec) -> Match {
        for (field, v) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            if !v.is_empty() {
                self.cannot(format!("{}.{at}.{field}", self.at));
            }
        }
        Match {
            principals: patterns(&s.principals),
            not_principals: patterns(&s.not_principals),
            namespaces: patterns(&s.namespaces),
            not_namespaces: patterns(&s.not_namespaces),
            service_accounts: self.service_accounts(at, "serviceAccounts", &s.service_accounts),
            not_service_accounts: self.service_accounts(
                at,
                "notServiceAccounts",
                &s.not_service_accounts,
            ),
            source_ips: self.cidrs(at, "ipBlocks", &s.ip_blocks),
            not_source_ips: self.cidrs(at, "notIpBlocks", &s.not_ip_blocks),
            ..Match::default()
        }
    }

    fn operation(&mut self, at: &str, o: &OperationSpec) -> Match {
        for (field, v) in [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ] {
            if !v.is_empty() {
                self.cannot(format!("{}.{at}.{field}", self.at));
            }
        }
        let ports = |cut: &mut Cut, field: &str, v: &[PortValue]| {
            let texts: Vec<String> = v.iter().map(port_text).collect();
            cut.ports(at, field, &texts)
        };
        Match {
            destination_ports: ports(self, "ports", &o.ports),
            not_destination_ports: ports(self, "notPorts", &o.not_ports),
            ..Match::default()
        }
    }

    fn condition(&mut self, at: &str, c: &Condition) -> Match {
        if !L4_WHEN_KEYS.contains(&c.key.as_str()) {
            self.cannot(format!("{}.{at} ({})", self.at, c.key));
            return Match::default();
        }
        let mut m = Match::default();
        match c.key.as_str() {
            "source.ip" => {
                m.source_ips = self.cidrs(at, "values", &c.values);
                m.not_source_ips = self.cidrs(at, "notValues", &c.not_values);
            }
            "source.namespace" => {
                m.namespaces = patterns(&c.values);
                m.not_namespaces = patterns(&c.not_values);
            }
            "source.principal" => {
                m.principals = patterns(&c.values);
                m.not_principals = patterns(&c.not_values);
            }
            _ => {
                m.destination_ports = self.ports(at, "values", &c.values);
                m.not_destination_ports = self.ports(at, "notValues", &c.not_values);
            }
        }
        m
    }

    fn cidrs(&mut self, at: &str, field: &str, v: &[String]) -> Vec<Cidr> {
        let mut out = Vec::with_capacity(v.len());
        for (k, c) in v.iter().enumerate() {
            match c.parse() {
                Ok(c) => out.push(c),
                Err(_) => self.cannot(format!("{}.{at}.{field}[{k}] ({c:?})", self.at)),
            }
        }
        out
    }

    fn ports(&mut self, at: &str, field: &str, v: &[String]) -> Vec<u16> {
        let mut out = Vec::with_capacity(v.len());
        for (k, p) in v.iter().enumerate() {
            match p.trim().parse::<u16>() {
                Ok(n) if n != 0 => out.push(n),
                _ => self.cannot(format!("{}.{at}.{field}[{k}] ({p:?})", self.at)),
            }
        }
        out
    }

    /// `<namespace>/<serviceaccount>`, Istio's form.
    fn service_accounts(
        &mut self,
        at: &str,
        field: &str,
        v: &[String],
    ) -> Vec<ServiceAccountMatch> {
        let mut out = Vec::with_capacity(v.len());
        for (k, s) in v.iter().enumerate() {
            match s.split_once('/') {
                Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => out
                    .push(ServiceAccountMatch {
                        namespace: ns.to_owned(),
                        service_account: sa.to_owned(),
                    }),
                _ => self.cannot(format!("{}.{at}.{field}[{k}] ({s:?})", self.at)),
            }
        }
        out
    }
}

fn patterns(v: &[String]) -> Vec<StringMatch> {
    v.iter().map(|p| StringMatch::from_pattern(p)).collect()
}

fn port_text(p: &PortValue) -> String {
    match p {
        PortValue::Number(n) => n.to_string(),
        PortValue::Text(s) => s.clone(),
    }
}

/// A PeerAuthentication's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMode {
    /// Inherit (the namespace's, then the mesh's).
    Unset,
    /// No mTLS required: for ztunnel, as PERMISSIVE.
    Disable,
    Permissive,
    Strict,
}

/// What the mesh reads of a PeerAuthentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthInfo {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339): with several
    /// namespace-wide ones, the oldest wins, as in Istio.
    pub created: String,
    /// Its `selector.matchLabels`; empty for a namespace-wide one.
    pub selector: Labels,
    pub mode: PeerMode,
}

pub fn peer_authentication_info(pa: &PeerAuthentication) -> Option<PeerAuthInfo> {
    let mode = match pa.spec.mtls.as_ref().and_then(|m| m.mode.as_deref()) {
        None | Some("UNSET") => PeerMode::Unset,
        Some("DISABLE") => PeerMode::Disable,
        Some("PERMISSIVE") => PeerMode::Permissive,
        // STRICT, and (fail closed) anything unknown.
        Some(_) => PeerMode::Strict,
    };
    Some(PeerAuthInfo {
        namespace: pa.metadata.namespace.clone()?,
        name: pa.metadata.name.clone()?,
        created: pa
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        selector: pa
            .spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .unwrap_or_default(),
        mode,
    })
}

/// The namespace-wide mode among `pas` (one namespace's): the oldest
/// namespace-wide PeerAuthentication that sets one.
fn namespace_wide<'a>(pas: impl IntoIterator<Item = &'a PeerAuthInfo>) -> Option<PeerMode> {
    pas.into_iter()
        .filter(|p| p.selector.is_empty())
        .min_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)))
        .map(|p| p.mode)
        .filter(|m| *m != PeerMode::Unset)
}

/// A namespace's mode: its own namespace-wide PeerAuthentication, else the
/// mesh-wide one (namespace-wide in the root namespace), else PERMISSIVE.
pub fn namespace_mtls<'a>(
    own: impl IntoIterator<Item = &'a PeerAuthInfo>,
    mesh: impl IntoIterator<Item = &'a PeerAuthInfo>,
) -> MtlsMode {
    match namespace_wide(own).or_else(|| namespace_wide(mesh)) {
        Some(PeerMode::Strict) => MtlsMode::Strict,
        _ => MtlsMode::Permissive,
    }
}

/// The name prefix of the policy a workload-level STRICT PeerAuthentication
/// becomes (Istio's form).
pub const PEER_AUTHN_POLICY_PREFIX: &str = "converted_peer_authentication_";

/// A PeerAuthentication with a selector and STRICT becomes, as Istio sends
/// it to ztunnel, a `WORKLOAD_SELECTOR` DENY of callers without a
/// principal (plaintext). A workload-level PERMISSIVE or DISABLE cannot
/// loosen a STRICT namespace here: the namespace's mode stays (fail
/// closed).
pub fn peer_authentication_policy(pa: &PeerAuthInfo) -> Option<Policy> {
    if pa.selector.is_empty() || pa.mode != PeerMode::Strict {
        return None;
    }
    Some(Policy {
        name: format!("{PEER_AUTHN_POLICY_PREFIX}{}", pa.name),
        namespace: pa.namespace.clone(),
        scope: PolicyScope::WorkloadSelector {
            match_labels: pa.selector.clone(),
        },
        action: PolicyAction::Deny,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    not_principals: vec![StringMatch::Presence],
                    ..Match::default()
                }],
            }],
        }],
    })
}

/// The key of the policy [`peer_authentication_policy`] makes.
pub fn peer_authentication_policy_key(pa: &ObjectName) -> mesh_model::state::PolicyKey {
    mesh_model::state::PolicyKey {
        namespace: pa.0.clone(),
        name: format!("{PEER_AUTHN_POLICY_PREFIX}{}", pa.1),
    }
}
