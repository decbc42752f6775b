//! Which rule a request takes: [`select_route`], with the Gateway API's
//! precedence. Pure.
//!
//! Among every rule of every route attached (HTTPRoute rules), precedence
//! goes to the match with, in order, continuing on ties:
//! 1. an `Exact` path, then a `PathPrefix` (the longer prefix first), then
//!    a `RegularExpression` path (the API leaves regular expressions'
//!    place to the implementation; ours is last);
//! 2. a method match;
//! 3. the most header matches;
//! 4. the most query-parameter matches;
//!
//! then, across routes, the oldest route (creation timestamp; a route
//! without one counts as the youngest), then the first by
//! `namespace/name`; within a route, the first rule in list order.
//!
//! GRPCRoute rules go by the characters of the matching service, then of
//! the matching method (exact matches; a regular expression counts as
//! none), then the most header matches, with the same tie-breaks. gRPC and
//! HTTP routes are never merged: a gRPC call (`content-type:
//! application/grpc…`) takes the best GRPCRoute rule and, only if none
//! matches, the best HTTPRoute rule; other requests see HTTPRoutes only.
//!
//! Hostnames are not consulted: in mesh mode the Service a request was
//! addressed to selects the routes (`Snapshot::routes_for`).

use std::borrow::Cow;
use std::cmp::Ordering;

use http::{HeaderMap, Method};

use super::types::{
    GrpcMethodMatch, GrpcRouteMatch, HeaderMatch, HttpRouteMatch, PathMatch, QueryParamMatch,
    Route, RouteKind, RouteRule, ValueMatch,
};

/// What the route decision reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The path, without the query (as received: not decoded).
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// The view of a request head.
    pub fn new(parts: &'a http::request::Parts) -> Self {
        RequestView {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
        }
    }

    /// A gRPC call: `content-type` is `application/grpc` or
    /// `application/grpc+<codec>` (`;` parameters allowed).
    pub fn is_grpc(&self) -> bool {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.strip_prefix("application/grpc")
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
            })
    }

    /// `(service, method)` of a gRPC path `/<service>/<method>`.
    pub fn grpc_method(&self) -> Option<(&'a str, &'a str)> {
        let (service, method) = self.path.strip_prefix('/')?.split_once('/')?;
        (!service.is_empty() && !method.is_empty() && !method.contains('/'))
            .then_some((service, method))
    }
}

/// The outcome of [`select_route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection<'a> {
    /// No route is attached: send to the Service itself (all its ready
    /// endpoints), as without a waypoint.
    Default,
    /// Routes are attached but no rule matches: 404 (gRPC: UNIMPLEMENTED),
    /// as the API requires.
    NotFound,
    Matched(Matched<'a>),
}

/// The chosen rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched<'a> {
    pub route: &'a Route,
    pub rule: &'a RouteRule,
    /// The rule's index in `route.rules`.
    pub rule_index: usize,
    /// The index of the match that held, in `rule.matches` (HTTP) or
    /// `rule.grpc_matches` (gRPC).
    pub match_index: usize,
}

impl Matched<'_> {
    /// The `PathPrefix` value of the match that held, if it is one (what
    /// `ReplacePrefixMatch` replaces).
    pub fn matched_prefix(&self) -> Option<&str> {
        match self.route.kind {
            RouteKind::Http => match &self.rule.matches.get(self.match_index)?.path {
                PathMatch::Prefix(p) => Some(p),
                _ => None,
            },
            RouteKind::Grpc => None,
        }
    }
}

/// How specific a match is: compared field by field, larger first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    /// HTTP: 2 exact, 1 prefix, 0 regex. gRPC: service characters.
    primary: usize,
    /// HTTP: prefix characters. gRPC: method characters.
    secondary: usize,
    method: bool,
    headers: usize,
    query_params: usize,
}

/// A candidate with everything precedence compares.
#[derive(Clone, Copy)]
struct Candidate<'a> {
    specificity: Specificity,
    matched: Matched<'a>,
}

/// Whether `a` takes precedence over `b`.
fn precedes(a: &Candidate<'_>, b: &Candidate<'_>) -> bool {
    let by_route = || {
        let (ra, rb) = (a.matched.route, b.matched.route);
        // Oldest first; no timestamp is the youngest.
        let age = match (ra.created, rb.created) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        age.then_with(|| {
            (ra.namespace.as_str(), ra.name.as_str())
                .cmp(&(rb.namespace.as_str(), rb.name.as_str()))
        })
        .then(a.matched.rule_index.cmp(&b.matched.rule_index))
    };
    match a.specificity.cmp(&b.specificity) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => by_route() == Ordering::Less,
    }
}

/// The rule `req` takes among `routes` (those attached to the Service and
/// port it was addressed to), with the Gateway API's precedence: an
/// `Exact` path, then the longest `PathPrefix`, then a regular expression;
/// then a method match, the most header matches, the most query-parameter
/// matches; then the oldest route, then `namespace/name`; then rule order.
/// GRPCRoute rules (for gRPC calls) go first by service, method and
/// header matches.
pub fn select_route<'a>(
    routes: impl IntoIterator<Item = &'a Route>,
    req: &RequestView<'_>,
) -> Selection<'a> {
    let grpc = req.is_grpc();
    let grpc_method = req.grpc_method();
    let query = Query::parse(req.query);
    let mut any = false;
    let mut best_http: Option<Candidate<'a>> = None;
    let mut best_grpc: Option<Candidate<'a>> = None;
    for route in routes {
        any = true;
        let (best, is_grpc_route) = match route.kind {
            RouteKind::Http => (&mut best_http, false),
            RouteKind::Grpc if grpc => (&mut best_grpc, true),
            RouteKind::Grpc => continue,
        };
        for (rule_index, rule) in route.rules.iter().enumerate() {
            let found = if is_grpc_route {
                best_grpc_match(rule, grpc_method, req.headers)
            } else {
                best_http_match(rule, req, &query)
            };
            let Some((specificity, match_index)) = found else {
                continue;
            };
            let c = Candidate {
                specificity,
                matched: Matched {
                    route,
                    rule,
                    rule_index,
                    match_index,
                },
            };
            if best.as_ref().is_none_or(|b| precedes(&c, b)) {
                *best = Some(c);
            }
        }
    }
    match best_grpc.or(best_http) {
        Some(c) => Selection::Matched(c.matched),
        None if any => Selection::NotFound,
        None => Selection::Default,
    }
}

/// The most specific of `rule`'s HTTP matches that holds (the first of
/// equals), with its index.
fn best_http_match(
    rule: &RouteRule,
    req: &RequestView<'_>,
    query: &Query<'_>,
) -> Option<(Specificity, usize)> {
    let mut best: Option<(Specificity, usize)> = None;
    for (i, m) in rule.matches.iter().enumerate() {
        if !http_match(m, req, query) {
            continue;
        }
        let s = http_specificity(m);
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, i));
        }
    }
    best
}

fn best_grpc_match(
    rule: &RouteRule,
    method: Option<(&str, &str)>,
    headers: &HeaderMap,
) -> Option<(Specificity, usize)> {
    let mut best: Option<(Specificity, usize)> = None;
    for (i, m) in rule.grpc_matches.iter().enumerate() {
        if !grpc_match(m, method, headers) {
            continue;
        }
        let s = grpc_specificity(m);
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, i));
        }
    }
    best
}

fn http_specificity(m: &HttpRouteMatch) -> Specificity {
    let (primary, secondary) = match &m.path {
        PathMatch::Exact(p) => (2, p.len()),
        PathMatch::Prefix(p) => (1, p.len()),
        PathMatch::RegularExpression(_) => (0, 0),
    };
    Specificity {
        primary,
        secondary,
        method: m.method.is_some(),
        headers: m.headers.len(),
        query_params: m.query_params.len(),
    }
}

fn grpc_specificity(m: &GrpcRouteMatch) -> Specificity {
    let len = |v: &Option<String>| v.as_ref().map_or(0, String::len);
    let (primary, secondary) = match &m.method {
        Some(GrpcMethodMatch::Exact { service, method }) => (len(service), len(method)),
        _ => (0, 0),
    };
    Specificity {
        primary,
        secondary,
        method: false,
        headers: m.headers.len(),
        query_params: 0,
    }
}

/// Whether `m` holds for `req`.
pub(super) fn http_match(m: &HttpRouteMatch, req: &RequestView<'_>, query: &Query<'_>) -> bool {
    path_matches(&m.path, req.path)
        && m.method.as_ref().is_none_or(|want| want == req.method)
        && headers_match(&m.headers, req.headers)
        && m.query_params.iter().all(|q| query_matches(q, query))
}

fn grpc_match(m: &GrpcRouteMatch, method: Option<(&str, &str)>, headers: &HeaderMap) -> bool {
    let method_ok = match &m.method {
        None => true,
        Some(want) => method.is_some_and(|(svc, meth)| match want {
            GrpcMethodMatch::Exact { service, method } => {
                service.as_deref().is_none_or(|s| s == svc)
                    && method.as_deref().is_none_or(|m| m == meth)
            }
            GrpcMethodMatch::RegularExpression { service, method } => {
                service.as_ref().is_none_or(|p| p.is_match(svc))
                    && method.as_ref().is_none_or(|p| p.is_match(meth))
            }
        }),
    };
    method_ok && headers_match(&m.headers, headers)
}

/// Gateway API path matching on the undecoded path.
pub fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => prefix_matches(p, path),
        PathMatch::RegularExpression(re) => re.is_match(path),
    }
}

/// Element-wise prefix: `prefix` (no trailing `/`, or `/`) matches `path`
/// when equal, or followed in `path` by a `/`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Every header match holds. A header sent several times is matched as
/// its values joined with `,` (as Envoy does).
fn headers_match(matches: &[HeaderMatch], headers: &HeaderMap) -> bool {
    matches.iter().all(|h| {
        let mut values = headers.get_all(&h.name).iter();
        let Some(first) = values.next() else {
            return false;
        };
        let Ok(first) = first.to_str() else {
            return false;
        };
        let mut joined = Cow::Borrowed(first);
        for v in values {
            let Ok(v) = v.to_str() else {
                return false;
            };
            let s = joined.to_mut();
            s.push(',');
            s.push_str(v);
        }
        h.value.matches(&joined)
    })
}

fn query_matches(q: &QueryParamMatch, query: &Query<'_>) -> bool {
    query.first(&q.name).is_some_and(|v| match &q.value {
        ValueMatch::Exact(want) => *want == v,
        ValueMatch::RegularExpression(p) => p.is_match(&v),
    })
}

/// A request's query parameters, `%XX`-decoded (`+` is kept as is).
#[derive(Debug, Default)]
pub(super) struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    pub(super) fn parse(raw: Option<&'a str>) -> Self {
        let pairs = raw
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Query { pairs }
    }

    /// The first value of `name` (what the API recommends matching).
    fn first(&self, name: &str) -> Option<Cow<'_, str>> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Cow::Borrowed(v.as_ref()))
    }
}

/// `%XX` sequences decoded; a malformed one is kept literally, and bytes
/// that are not UTF-8 become U+FFFD.
pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
