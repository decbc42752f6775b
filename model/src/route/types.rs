//! The route domain: Gateway API v1 `HTTPRoute` / `GRPCRoute` as the
//! waypoint applies them, plus our fault-injection extension (Istio's
//! `VirtualService` `fault`, carried on a rule). Values are checked and
//! defaulted by the conversions (config file, xDS); these types hold only
//! what passed.

use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::{Serialize, Serializer};

use crate::state::serialize_display;

/// The largest backend weight the Gateway API allows.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Retries when a rule has a `retry` stanza without `attempts` (the API
/// leaves the default to the implementation; Istio's is 2).
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Compiled size bound of one regular expression from config.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Which Gateway API route kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum RouteKind {
    #[serde(rename = "HTTPRoute")]
    Http,
    #[serde(rename = "GRPCRoute")]
    Grpc,
}

impl RouteKind {
    /// `HTTPRoute` or `GRPCRoute`.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// `<kind>/<namespace>/<name>`: a route's identity (and xDS resource name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RouteKey {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// `metadata.creationTimestamp`: seconds and nanoseconds since the Unix
/// epoch (UTC). Orders routes: the oldest wins a tie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: u32,
}

/// One `HTTPRoute` or `GRPCRoute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub kind: RouteKind,
    pub name: String,
    pub namespace: String,
    /// `None` (the local config file says none): younger than any route
    /// that has one; ties then go by `namespace/name`.
    pub created: Option<Timestamp>,
    /// The Services it attaches to.
    pub parents: Vec<ParentRef>,
    /// In order: the first of equally specific matches wins.
    pub rules: Vec<RouteRule>,
}

impl Route {
    pub fn key(&self) -> RouteKey {
        RouteKey {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// `parentRefs[]` of kind Service (group ""): the route applies to traffic
/// addressed to this Service, on `port` or (none) on every port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ParentRef {
    /// Defaulted to the route's namespace.
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
}

/// A Service and port: a backend, or a mirror's destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServiceRef {
    /// Defaulted to the route's namespace.
    pub namespace: String,
    pub name: String,
    /// The Service port (required for a Service backend).
    pub port: u16,
}

/// `backendRefs[]`: a weighted Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub service: ServiceRef,
    /// 0..=[`MAX_WEIGHT`]; the API's default is 1. Zero: never chosen.
    pub weight: u32,
}

/// One rule: matches (any may match), filters, backends and policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteRule {
    /// `rules[].name`, when set.
    pub name: Option<String>,
    /// HTTPRoute rules: never empty (the default is `PathPrefix /`).
    pub matches: Vec<HttpRouteMatch>,
    /// GRPCRoute rules: never empty (the default matches every call).
    pub grpc_matches: Vec<GrpcRouteMatch>,
    /// In order.
    pub filters: Vec<Filter>,
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    /// Our extension: Istio's fault injection, per rule.
    pub fault: Option<Fault>,
}

impl RouteRule {
    /// The `RequestMirror` filters, in order.
    pub fn mirrors(&self) -> impl Iterator<Item = &Mirror> {
        self.filters.iter().filter_map(|f| match f {
            Filter::RequestMirror(m) => Some(m),
            _ => None,
        })
    }
}

/// A regular expression from config (RE2 syntax, Rust's `regex`), matched
/// against the whole value. Compiled once, when converted.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

/// A regular expression that does not compile (or is too large).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_text:?} is not a valid regular expression: {reason}")]
pub struct PatternError {
    pub source_text: String,
    pub reason: String,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, PatternError> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| PatternError {
                source_text: source.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Pattern {
            source: source.to_owned(),
            regex,
        })
    }

    /// The expression as configured.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for Pattern {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// `HTTPPathMatch`. Exact and prefix values start with `/`; a prefix is
/// held without a trailing `/` (the API ignores one), except `/` itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PathMatch {
    Exact(String),
    /// Element-wise: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not
    /// `/foobar`.
    Prefix(String),
    RegularExpression(Pattern),
}

/// A header, query-parameter, gRPC service or method value match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ValueMatch {
    Exact(String),
    RegularExpression(Pattern),
}

impl ValueMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::RegularExpression(p) => p.is_match(value),
        }
    }
}

/// `HTTPHeaderMatch`: the name is case-insensitive (held lower-case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    #[serde(serialize_with = "serialize_display")]
    pub name: HeaderName,
    pub value: ValueMatch,
}

/// `HTTPQueryParamMatch`: the name is case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryParamMatch {
    pub name: String,
    pub value: ValueMatch,
}

/// `HTTPRouteMatch`: every given condition must hold. Header and query
/// names are unique (the API considers only the first of a name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query_params: Vec<QueryParamMatch>,
    #[serde(serialize_with = "serialize_opt_display")]
    pub method: Option<Method>,
}

impl Default for HttpRouteMatch {
    /// The API's default: `PathPrefix /`, which matches every request.
    fn default() -> Self {
        HttpRouteMatch {
            path: PathMatch::Prefix("/".to_owned()),
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
        }
    }
}

/// `GRPCMethodMatch`: at least one of service and method is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum GrpcMethodMatch {
    Exact {
        service: Option<String>,
        method: Option<String>,
    },
    RegularExpression {
        service: Option<Pattern>,
        method: Option<Pattern>,
    },
}

/// `GRPCRouteMatch`: `method: None` matches every call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct GrpcRouteMatch {
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<HeaderMatch>,
}

/// `HTTPHeaderFilter`: each header name appears in at most one action.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HeaderModifier {
    #[serde(serialize_with = "serialize_headers")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "serialize_headers")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "serialize_names")]
    pub remove: Vec<HeaderName>,
}

/// `HTTPPathModifier`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Only on a rule whose one match is a `PathPrefix`; may be empty.
    ReplacePrefixMatch(String),
}

/// `HTTPURLRewriteFilter`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

/// The scheme of a redirect's `Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RedirectScheme {
    Http,
    Https,
}

impl RedirectScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectScheme::Http => "http",
            RedirectScheme::Https => "https",
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            RedirectScheme::Http => 80,
            RedirectScheme::Https => 443,
        }
    }
}

/// `HTTPRequestRedirectFilter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRedirect {
    pub scheme: Option<RedirectScheme>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301, 302 (the default), 303, 307 or 308.
    pub status: u16,
}

/// `HTTPRequestMirrorFilter`: a copy of `fraction` of the requests goes
/// to `service`; its responses are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mirror {
    pub service: ServiceRef,
    /// `percent` or `fraction`; all requests when neither is given.
    pub fraction: Fraction,
}

/// `HTTPRouteFilter` (the core and extended kinds we apply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestMirror(Mirror),
    RequestRedirect(RequestRedirect),
    UrlRewrite(UrlRewrite),
}

/// `numerator / denominator`, at most 1 (Gateway API `Fraction`; a
/// percentage is `n / 100`; Istio's fault percentage is held per million).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fraction {
    pub numerator: u32,
    /// Never zero; `numerator <= denominator`.
    pub denominator: u32,
}

impl Fraction {
    /// Every request.
    pub const ALL: Fraction = Fraction {
        numerator: 1,
        denominator: 1,
    };
}

/// `HTTPRouteTimeouts`. A zero duration disables that timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

impl Timeouts {
    /// The whole request's deadline, if any ("0s" disables it).
    pub fn request(&self) -> Option<Duration> {
        self.request.filter(|d| !d.is_zero())
    }

    /// Each backend attempt's deadline, if any ("0s" disables it).
    pub fn backend_request(&self) -> Option<Duration> {
        self.backend_request.filter(|d| !d.is_zero())
    }
}

/// `HTTPRouteRetry` (the Gateway API retry extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retry {
    /// Retries after the first attempt; `None`: [`DEFAULT_RETRY_ATTEMPTS`].
    /// Zero disables retries.
    pub attempts: Option<u32>,
    /// Response statuses (400..=599) that are retried. Empty: only
    /// failures to connect (and refused streams) are.
    pub codes: Vec<u16>,
    /// The base interval between attempts; `None`: the waypoint's default.
    pub backoff: Option<Duration>,
}

impl Retry {
    /// Retries allowed after the first attempt.
    pub fn attempts(&self) -> u32 {
        self.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS)
    }

    /// Whether a response with `status` is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.codes.contains(&status)
    }
}

/// Our extension (Istio's `HTTPFaultInjection`): delay and/or abort a
/// fraction of the requests a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

/// Wait `delay` before forwarding, for `fraction` of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultDelay {
    pub delay: Duration,
    pub fraction: Fraction,
}

/// Answer `status` without forwarding, for `fraction` of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultAbort {
    pub status: AbortStatus,
    pub fraction: Fraction,
}

/// What an aborted request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AbortStatus {
    /// An HTTP status, 200..=599.
    Http(u16),
    /// A gRPC status code, 1..=16 (answered with HTTP 200 and
    /// `grpc-status`).
    Grpc(u32),
}

/// The canonical gRPC status names (Istio's `grpcStatus` values), by code.
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code of a gRPC status name, other than `OK`.
pub fn grpc_status_code(name: &str) -> Option<u32> {
    GRPC_STATUS_NAMES
        .iter()
        .position(|n| *n == name)
        .filter(|c| *c != 0)
        .map(|c| c as u32)
}

fn serialize_opt_display<T: fmt::Display, S: Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn serialize_headers<S: Serializer>(
    v: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        v.iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("<binary>"))),
    )
}

fn serialize_names<S: Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(HeaderName::as_str))
}
