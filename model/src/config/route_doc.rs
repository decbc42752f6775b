//! The `routes:` section: Gateway API `HTTPRoute` and `GRPCRoute` objects
//! as Kubernetes YAML writes them (`kind`, `metadata`, `spec`), plus our
//! `fault` extension on a rule. Unknown keys are rejected.
//!
//! ```yaml
//! routes:
//!   - kind: HTTPRoute                  # or GRPCRoute; apiVersion is optional
//!     metadata: {name: reviews, namespace: shop, creationTimestamp: "2024-05-01T10:00:00Z"}
//!     spec:
//!       parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
//!       rules:
//!         - matches:
//!             - path: {type: PathPrefix, value: /api}
//!               headers: [{name: x-canary, value: "true"}]
//!               queryParams: [{type: RegularExpression, name: v, value: "2|3"}]
//!               method: GET            # GRPCRoute: method: {service: shop.Cart, method: Get}
//!           filters:
//!             - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: b}]}}
//!             - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
//!             - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 9080}, percent: 10}}
//!           backendRefs: [{name: reviews-v1, port: 9080, weight: 90}, {name: reviews-v2, port: 9080, weight: 10}]
//!           timeouts: {request: 10s, backendRequest: 2s}
//!           retry: {attempts: 3, codes: [503], backoff: 100ms}
//!           fault: {abort: {httpStatus: 503, percentage: {value: 5}}}   # ours (Istio's shape)
//! ```

use serde::Deserialize;

/// `kind`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq)]
pub(super) enum RouteKindDoc {
    #[serde(rename = "HTTPRoute")]
    Http,
    #[serde(rename = "GRPCRoute")]
    Grpc,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RouteDoc {
    #[serde(default)]
    pub api_version: Option<String>,
    pub kind: RouteKindDoc,
    pub metadata: MetadataDoc,
    pub spec: RouteSpecDoc,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct MetadataDoc {
    pub name: String,
    pub namespace: String,
    /// RFC 3339, as Kubernetes writes it.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub labels: crate::state::Labels,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RouteSpecDoc {
    #[serde(default)]
    pub parent_refs: Vec<RefDoc>,
    /// Accepted and ignored: in mesh mode the Service selects the routes.
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RuleDoc>,
}

/// `parentRefs[]`, `backendRefs[]` and a mirror's `backendRef`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RefDoc {
    /// `""` (core) when given.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service` when given.
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    /// Backends only.
    #[serde(default)]
    pub weight: Option<u32>,
    /// parentRefs only: not supported (a Service has no sections).
    #[serde(default)]
    pub section_name: Option<String>,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RuleDoc {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<MatchDoc>,
    #[serde(default)]
    pub filters: Vec<FilterDoc>,
    #[serde(default)]
    pub backend_refs: Vec<RefDoc>,
    #[serde(default)]
    pub timeouts: Option<TimeoutsDoc>,
    #[serde(default)]
    pub retry: Option<RetryDoc>,
    #[serde(default)]
    pub fault: Option<FaultDoc>,
}

/// An HTTPRoute match (`path`, `headers`, `queryParams`, `method` as a
/// string) or a GRPCRoute match (`method` as an object, `headers`).
#[derive(Debug, Deserialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct MatchDoc {
    #[serde(default)]
    pub path: Option<ValueDoc>,
    #[serde(default)]
    pub headers: Vec<NamedValueDoc>,
    #[serde(default)]
    pub query_params: Vec<NamedValueDoc>,
    #[serde(default)]
    pub method: Option<MethodDoc>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(untagged)]
pub(super) enum MethodDoc {
    Http(String),
    Grpc(GrpcMethodDoc),
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct GrpcMethodDoc {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

/// `path: {type, value}`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct ValueDoc {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// A header or query-parameter match: `{type, name, value}`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct NamedValueDoc {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct FilterDoc {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifierDoc>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifierDoc>,
    #[serde(default)]
    pub request_mirror: Option<MirrorDoc>,
    #[serde(default)]
    pub request_redirect: Option<RedirectDoc>,
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<RewriteDoc>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderDoc {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderModifierDoc {
    #[serde(default)]
    pub set: Vec<HeaderDoc>,
    #[serde(default)]
    pub add: Vec<HeaderDoc>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct MirrorDoc {
    pub backend_ref: RefDoc,
    #[serde(default)]
    pub percent: Option<u32>,
    #[serde(default)]
    pub fraction: Option<FractionDoc>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct FractionDoc {
    pub numerator: u32,
    #[serde(default)]
    pub denominator: Option<u32>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PathModifierDoc {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RedirectDoc {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifierDoc>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub status_code: Option<u32>,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RewriteDoc {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifierDoc>,
}

/// Gateway API durations (GEP-2257): `10s`, `1m30s`, `250ms`.
#[derive(Debug, Deserialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct TimeoutsDoc {
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub backend_request: Option<String>,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryDoc {
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub codes: Vec<u32>,
    #[serde(default)]
    pub backoff: Option<String>,
}

/// Istio's `HTTPFaultInjection`.
#[derive(Debug, Deserialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FaultDoc {
    #[serde(default)]
    pub delay: Option<DelayDoc>,
    #[serde(default)]
    pub abort: Option<AbortDoc>,
}

/// Istio's `percentage: {value: 12.5}`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct PercentDoc {
    pub value: f64,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct DelayDoc {
    pub fixed_delay: String,
    /// Unset: every request (as Istio).
    #[serde(default)]
    pub percentage: Option<PercentDoc>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AbortDoc {
    #[serde(default)]
    pub http_status: Option<u32>,
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub percentage: Option<PercentDoc>,
}
