//! L7 authorization at the waypoint: Istio `AuthorizationPolicy` bound to
//! a waypoint with `targetRefs` (to its Gateway: all its traffic; or to a
//! Service: traffic to that Service), and [`authorize_request`]. Pure.
//!
//! ```text
//!  [L7Policy] ─targets─► Gateway <ns>/<name> | Service <ns>/<name>
//!      └─ rules ─► L7Rule { from: [Source], to: [Operation], when: [Condition] }
//! ```
//!
//! Semantics, as Istio's (and DESIGN §5's order):
//! - a rule matches when every section it has holds: `from` (any source
//!   matches), `to` (any operation matches) and every `when` condition;
//!   a rule with none of them (`{}`) matches every request;
//! - a policy matches when any rule matches; no rules: never;
//! - any matching DENY denies; with no ALLOW, allow; otherwise a matching
//!   ALLOW is needed (so an ALLOW without rules allows nothing).
//!
//! Within a source, operation or condition, each non-empty field must
//! hold: a positive list when any entry matches, a `not` list when none
//! does. String fields use Istio's patterns ([`StringMatch::from_pattern`]:
//! exact, `prefix*`, `*suffix`, `*` for any non-empty value). A request
//! without a peer identity (plaintext) matches no positive `principals`
//! or `namespaces` entry, and every `not` one.
//!
//! Paths are matched after [`normalize_path`] (dot segments removed,
//! unreserved `%XX` decoded, the query cut off), so `/./admin` and
//! `/x/../admin` are `/admin` to a policy. Hosts match case-insensitively.

mod authorize;
#[cfg(test)]
mod tests;

use std::fmt;

use http::HeaderName;

use crate::state::{serialize_display, Cidr, PolicyAction, PolicyKey, StringMatch};

pub use authorize::{authorize_request, normalize_path, RequestCtx};

/// What an L7 policy is bound to, in its own namespace (Istio's
/// `targetRefs` carry no namespace).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum PolicyTarget {
    /// `{group: gateway.networking.k8s.io, kind: Gateway, name}`: every
    /// request through that waypoint.
    Gateway(String),
    /// `{group: "", kind: Service, name}`: requests to that Service.
    Service(String),
}

impl fmt::Display for PolicyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyTarget::Gateway(n) => write!(f, "Gateway/{n}"),
            PolicyTarget::Service(n) => write!(f, "Service/{n}"),
        }
    }
}

/// One `AuthorizationPolicy` with `targetRefs`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct L7Policy {
    pub name: String,
    pub namespace: String,
    /// Never empty.
    pub targets: Vec<PolicyTarget>,
    pub action: PolicyAction,
    pub rules: Vec<L7Rule>,
}

impl L7Policy {
    pub fn key(&self) -> PolicyKey {
        PolicyKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// `rules[]`: `from` and `to` lists and `when` conditions.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct L7Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// `rules[].from[].source`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Source {
    /// Matched against `<td>/ns/<ns>/sa/<sa>` of the tunnel's peer.
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    /// The source address of the tunnel (the client pod).
    pub ip_blocks: Vec<Cidr>,
    pub not_ip_blocks: Vec<Cidr>,
    /// The original client address (`X-Forwarded-For`, as the waypoint
    /// trusts it; the source address otherwise).
    pub remote_ip_blocks: Vec<Cidr>,
    pub not_remote_ip_blocks: Vec<Cidr>,
}

/// `rules[].to[].operation`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Operation {
    /// Matched case-insensitively (the patterns are held lower-case)
    /// against the request's `Host` / `:authority` as sent.
    pub hosts: Vec<StringMatch>,
    pub not_hosts: Vec<StringMatch>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<StringMatch>,
    pub not_methods: Vec<StringMatch>,
    pub paths: Vec<StringMatch>,
    pub not_paths: Vec<StringMatch>,
}

/// `values` / `notValues` of a condition: the first holds when empty or
/// any entry matches, the second when no entry matches.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ValueSet<T> {
    pub values: Vec<T>,
    pub not_values: Vec<T>,
}

impl<T> ValueSet<T> {
    /// Whether a value satisfies the set, `matches` telling which entries
    /// it matches (an absent value matches none).
    pub(crate) fn holds(&self, matches: impl Fn(&T) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(&matches))
            && !self.not_values.iter().any(&matches)
    }
}

/// `rules[].when[]`, by key (the keys Istio supports that a waypoint
/// knows without JWTs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Condition {
    /// `request.headers[<name>]`, Istio patterns. An absent header
    /// matches no value (so it satisfies `notValues`).
    RequestHeader(
        #[serde(serialize_with = "serialize_display")] HeaderName,
        ValueSet<StringMatch>,
    ),
    /// `source.ip`: CIDRs or addresses.
    SourceIp(ValueSet<Cidr>),
    /// `remote.ip`.
    RemoteIp(ValueSet<Cidr>),
    /// `destination.ip`.
    DestinationIp(ValueSet<Cidr>),
    /// `destination.port`.
    DestinationPort(ValueSet<u16>),
    /// `source.namespace`.
    SourceNamespace(ValueSet<StringMatch>),
    /// `source.principal`.
    SourcePrincipal(ValueSet<StringMatch>),
}

impl Condition {
    /// Istio's key for this condition.
    pub fn key(&self) -> String {
        match self {
            Condition::RequestHeader(h, _) => format!("request.headers[{h}]"),
            Condition::SourceIp(_) => "source.ip".into(),
            Condition::RemoteIp(_) => "remote.ip".into(),
            Condition::DestinationIp(_) => "destination.ip".into(),
            Condition::DestinationPort(_) => "destination.port".into(),
            Condition::SourceNamespace(_) => "source.namespace".into(),
            Condition::SourcePrincipal(_) => "source.principal".into(),
        }
    }
}

/// A `when` key this waypoint cannot evaluate, or a malformed one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionKeyError {
    #[error("{0:?} is not a condition key this waypoint supports")]
    Unsupported(String),
    #[error("{0:?} does not name a valid header")]
    BadHeader(String),
}

/// The kind of value a condition key takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    RequestHeader(HeaderName),
    SourceIp,
    RemoteIp,
    DestinationIp,
    DestinationPort,
    SourceNamespace,
    SourcePrincipal,
}

impl ConditionKey {
    /// Parses Istio's key syntax (`request.headers[x-user]`, `source.ip`…).
    pub fn parse(key: &str) -> Result<ConditionKey, ConditionKeyError> {
        if let Some(name) = key
            .strip_prefix("request.headers[")
            .and_then(|r| r.strip_suffix(']'))
        {
            return HeaderName::from_bytes(name.as_bytes())
                .map(ConditionKey::RequestHeader)
                .map_err(|_| ConditionKeyError::BadHeader(key.to_owned()));
        }
        Ok(match key {
            "source.ip" => ConditionKey::SourceIp,
            "remote.ip" => ConditionKey::RemoteIp,
            "destination.ip" => ConditionKey::DestinationIp,
            "destination.port" => ConditionKey::DestinationPort,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.principal" => ConditionKey::SourcePrincipal,
            other => return Err(ConditionKeyError::Unsupported(other.to_owned())),
        })
    }
}
