//! What stands in for an authorization policy that cannot be converted.
//!
//! Dropping it would fail open: a new DENY would never apply, a new sole
//! ALLOW would leave its workloads allow-all, and an update would leave the
//! old version in force. Instead the store installs a policy that denies
//! everything in the scope the resource names, under the same key, so the
//! next good version (or a removal) replaces it.
//!
//! What the scope is, is read only from what the body itself states:
//!
//! | the body | stand-in scope |
//! |---|---|
//! | `GLOBAL` | GLOBAL |
//! | `NAMESPACE` with its namespace | NAMESPACE of that namespace |
//! | `WORKLOAD_SELECTOR` with namespace and name | the workloads that list `namespace/name` (the control plane resolved the selector into their lists) |
//! | anything missing or unknown, a body that does not decode, or of another type | GLOBAL: the widest reading |
//!
//! The resource name is never used to narrow a scope.

use prost::Message;
use proto::discovery::Resource;
use proto::{security as pb_sec, AUTHORIZATION_TYPE_URL};

use crate::state::{Policy, PolicyAction, PolicyScope, Rule};

/// Pure: the deny-all policy standing in for `resource`, which failed to
/// decode or convert.
pub fn deny_all(resource: &Resource) -> Policy {
    let body = resource
        .resource
        .as_ref()
        .filter(|any| any.type_url == AUTHORIZATION_TYPE_URL)
        .and_then(|any| pb_sec::Authorization::decode(any.value.as_slice()).ok());
    let stated = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let (namespace, name) = match &body {
        Some(a) => (stated(&a.namespace), stated(&a.name)),
        None => (None, None),
    };
    let scope = match (
        body.as_ref().map(|a| pb_sec::Scope::try_from(a.scope)),
        &namespace,
        &name,
    ) {
        (Some(Ok(pb_sec::Scope::Namespace)), Some(_), _) => PolicyScope::Namespace,
        (Some(Ok(pb_sec::Scope::WorkloadSelector)), Some(_), Some(_)) => {
            PolicyScope::WorkloadSelector {
                match_labels: Default::default(),
            }
        }
        _ => PolicyScope::Global,
    };
    // For display and the denial's key: what the body says, else the
    // resource name (`namespace/name` when it has that shape).
    let (name_ns, name_name) = match resource.name.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() => (ns.to_owned(), n.to_owned()),
        _ => (String::new(), resource.name.clone()),
    };
    Policy {
        name: name.unwrap_or(name_name),
        namespace: namespace.unwrap_or(name_ns),
        scope,
        action: PolicyAction::Deny,
        // One rule with no clauses matches every connection.
        rules: vec![Rule::default()],
    }
}

/// A bounded label for a scope (metrics, logs).
pub fn scope_label(scope: &PolicyScope) -> &'static str {
    match scope {
        PolicyScope::Global => "global",
        PolicyScope::Namespace => "namespace",
        PolicyScope::WorkloadSelector { .. } => "workload_selector",
    }
}
