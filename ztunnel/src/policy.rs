//! L4 authorization at the destination: may this connection reach this
//! workload? Pure: no I/O, no clock, no locks.
//!
//! Semantics (as Istio's ztunnel):
//! - any applicable DENY policy that matches denies;
//! - with no applicable ALLOW policy, allow;
//! - otherwise an applicable ALLOW policy must match, or the connection is
//!   denied.
//!
//! A plaintext connection has no identity: positive `namespaces`,
//! `principals` and `service_accounts` matches never hold for it, and their
//! `not_` forms always do (so `DENY notPrincipals: ["*"]` denies plaintext).
//!
//! STRICT mTLS is not a policy: check [`crate::state::Snapshot::mtls_mode`]
//! for plaintext inbound before calling [`authorize`].

use std::fmt;
use std::net::IpAddr;

use hbone::SpiffeId;

use crate::state::{
    labels_match, Clause, Match, Policies, Policy, PolicyAction, PolicyKey, PolicyScope, Rule,
    ServiceAccountMatch, Workload,
};

/// What is known about a connection when it is authorized.
#[derive(Debug, Clone)]
pub struct ConnCtx<'a> {
    /// The peer's verified identity; `None` for plaintext.
    pub src_identity: Option<SpiffeId>,
    pub src_ip: IpAddr,
    pub dst: &'a Workload,
    pub dst_port: u16,
}

/// The verdict, with the reason for a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Denial),
}

/// Why a connection was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// This DENY policy matched.
    DenyPolicy(PolicyKey),
    /// ALLOW policies apply to the workload but none matched.
    NoAllowMatch,
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::DenyPolicy(key) => write!(f, "denied by policy {key}"),
            Denial::NoAllowMatch => f.write_str("no ALLOW policy matched"),
        }
    }
}

/// Decides whether `ctx` may proceed under `policies`.
pub fn authorize(policies: &Policies, ctx: &ConnCtx<'_>) -> Decision {
    let applicable = || policies.iter().filter(|p| applies(p, ctx.dst));
    if let Some(deny) = applicable()
        .filter(|p| p.action == PolicyAction::Deny)
        .find(|p| policy_matches(p, ctx))
    {
        return Decision::Deny(Denial::DenyPolicy(deny.key()));
    }
    let mut allows = applicable()
        .filter(|p| p.action == PolicyAction::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow;
    }
    if allows.any(|p| policy_matches(p, ctx)) {
        Decision::Allow
    } else {
        Decision::Deny(Denial::NoAllowMatch)
    }
}

/// Whether `policy` governs traffic to `dst`.
pub fn applies(policy: &Policy, dst: &Workload) -> bool {
    match &policy.scope {
        PolicyScope::Global => true,
        PolicyScope::Namespace => policy.namespace == dst.namespace,
        PolicyScope::WorkloadSelector { match_labels } => {
            policy.namespace == dst.namespace && labels_match(match_labels, &dst.labels)
        }
    }
}

fn policy_matches(policy: &Policy, ctx: &ConnCtx<'_>) -> bool {
    policy.rules.iter().any(|r| rule_matches(r, ctx))
}

fn rule_matches(rule: &Rule, ctx: &ConnCtx<'_>) -> bool {
    rule.clauses.iter().all(|c| clause_matches(c, ctx))
}

fn clause_matches(clause: &Clause, ctx: &ConnCtx<'_>) -> bool {
    clause.matches.iter().any(|m| match_matches(m, ctx))
}

fn match_matches(m: &Match, ctx: &ConnCtx<'_>) -> bool {
    let id = ctx.src_identity.as_ref();
    let principal = id.map(principal_string);
    let ns = id.map(|i| i.namespace());
    let principal = principal.as_deref();
    field(&m.namespaces, &m.not_namespaces, |s| {
        ns.is_some_and(|ns| s.matches(ns))
    }) && field(&m.principals, &m.not_principals, |s| {
        principal.is_some_and(|p| s.matches(p))
    }) && field(&m.service_accounts, &m.not_service_accounts, |sa| {
        id.is_some_and(|id| sa_matches(sa, id))
    }) && field(&m.source_ips, &m.not_source_ips, |c| c.contains(ctx.src_ip))
        && field(&m.destination_ports, &m.not_destination_ports, |p| {
            *p == ctx.dst_port
        })
}

/// A positive list holds when empty or any entry matches; a `not_` list
/// holds when no entry matches.
fn field<T>(positive: &[T], negative: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&matches)) && !negative.iter().any(&matches)
}

fn sa_matches(sa: &ServiceAccountMatch, id: &SpiffeId) -> bool {
    sa.namespace == id.namespace() && sa.service_account == id.service_account()
}

/// Istio's principal form: `<td>/ns/<ns>/sa/<sa>`.
pub fn principal_string(id: &SpiffeId) -> String {
    format!(
        "{}/ns/{}/sa/{}",
        id.trust_domain(),
        id.namespace(),
        id.service_account()
    )
}
