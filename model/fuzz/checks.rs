//! The checks of mesh-model's fuzz targets: run by cargo-fuzz
//! (`fuzz_targets/<target>.rs`, nightly) and on stable by
//! `model/tests/fuzz.rs` (each corpus replayed, then a bounded proptest
//! loop; see the `fuzz-replay` crate).
//!
//! `route_select`: route selection (`mesh_model::route::select_route`) on arbitrary
//! requests and routes: never panics, and picks what the Gateway API's
//! precedence says, checked against a plain re-statement of it:
//!
//! - no route attached: `Default`; routes but no holding match: `NotFound`;
//! - the chosen match holds for the request;
//! - no other holding match outranks it: Exact, then PathPrefix (longer
//!   first), then RegularExpression; then a method match, then more header matches,
//!   then more query-parameter matches; then the oldest route (one without
//!   a timestamp is the youngest), then `namespace/name`, then rule order;
//!   within a rule, the first of its most specific holding matches;
//! - a gRPC call takes a holding GRPCRoute rule over any HTTPRoute rule;
//!   other requests never take a GRPCRoute;
//! - the order routes are listed in does not change the choice;
//! - `pick_backend` on the chosen rule picks a backend of non-zero weight,
//!   or none only when every weight is zero.
//!
//! Requests and routes are drawn from small alphabets so that matches and
//! ties are common; some paths, header values and patterns are arbitrary.

use std::cmp::Reverse;

use arbitrary::{Result, Unstructured};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use mesh_model::route::{
    pick_backend, select_route, Backend, GrpcMethodMatch, GrpcRouteMatch, HeaderMatch,
    HttpRouteMatch, PathMatch, Pattern, QueryParamMatch, RequestView, Route, RouteKind, RouteRule,
    Selection, ServiceRef, Timeouts, Timestamp, ValueMatch,
};

const SEGMENTS: &[&str] = &["", "a", "ab", "api", "v1", "x%2Fy", "A", "svc.A"];
const PATTERNS: &[&str] = &[
    "/api/.*",
    ".*",
    "/a[b]?",
    "/v[0-9]+/.*",
    "/(a|ab)/?.*",
    "[^/]*",
];
const HEADERS: &[&str] = &["x-a", "x-b", "content-type"];
const VALUES: &[&str] = &[
    "1",
    "2",
    "a,b",
    "application/grpc",
    "application/grpc+proto",
];
const QUERY_NAMES: &[&str] = &["a", "b", "%61"];
const QUERY_VALUES: &[&str] = &["1", "2", "%31", ""];
const SERVICES: &[&str] = &["svc.A", "svc.B", "A"];
const GRPC_METHODS: &[&str] = &["M", "N", "v1"];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> Result<&'a str> {
    u.choose(from).copied()
}

fn path(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 8)? {
        let s: String = u.arbitrary()?;
        return Ok(format!("/{}", s.chars().take(32).collect::<String>()));
    }
    let n = u.int_in_range(0..=3)?;
    let mut p = String::new();
    for _ in 0..n {
        p.push('/');
        p.push_str(pick(u, SEGMENTS)?);
    }
    Ok(if p.is_empty() { "/".into() } else { p })
}

fn pattern(u: &mut Unstructured<'_>) -> Result<Option<Pattern>> {
    if u.ratio(1, 16)? {
        let s: String = u.arbitrary()?;
        let s: String = s.chars().take(12).collect();
        return Ok(Pattern::new(&s).ok());
    }
    Ok(Some(
        Pattern::new(pick(u, PATTERNS)?).expect("a valid pattern"),
    ))
}

fn value_match(u: &mut Unstructured<'_>, values: &[&str]) -> Result<Option<ValueMatch>> {
    Ok(if u.ratio(1, 4)? {
        pattern(u)?.map(ValueMatch::RegularExpression)
    } else {
        Some(ValueMatch::Exact(pick(u, values)?.to_owned()))
    })
}

fn method(u: &mut Unstructured<'_>) -> Result<Method> {
    Ok(u.choose(&[Method::GET, Method::POST, Method::PUT])?.clone())
}

/// Header matches with distinct names, as the conversion leaves them.
fn header_matches(u: &mut Unstructured<'_>) -> Result<Vec<HeaderMatch>> {
    let mut out: Vec<HeaderMatch> = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        let name = HeaderName::from_static(pick(u, HEADERS)?);
        if let Some(value) = value_match(u, VALUES)? {
            if out.iter().all(|h| h.name != name) {
                out.push(HeaderMatch { name, value });
            }
        }
    }
    Ok(out)
}

fn http_match(u: &mut Unstructured<'_>) -> Result<HttpRouteMatch> {
    let path = match u.int_in_range(0..=2)? {
        0 => PathMatch::Exact(path(u)?),
        1 => {
            // Held without a trailing `/`, except `/` itself, as the
            // conversions leave it.
            let p = path(u)?.trim_end_matches('/').to_owned();
            PathMatch::Prefix(if p.is_empty() { "/".into() } else { p })
        }
        _ => match pattern(u)? {
            Some(p) => PathMatch::RegularExpression(p),
            None => PathMatch::Prefix("/".into()),
        },
    };
    let mut query_params: Vec<QueryParamMatch> = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        let name = pick(u, QUERY_NAMES)?.to_owned();
        if let Some(value) = value_match(u, QUERY_VALUES)? {
            if query_params.iter().all(|q| q.name != name) {
                query_params.push(QueryParamMatch { name, value });
            }
        }
    }
    Ok(HttpRouteMatch {
        path,
        headers: header_matches(u)?,
        query_params,
        method: if u.arbitrary()? {
            Some(method(u)?)
        } else {
            None
        },
    })
}

fn grpc_match(u: &mut Unstructured<'_>) -> Result<GrpcRouteMatch> {
    let method = match u.int_in_range(0..=2)? {
        0 => None,
        1 => {
            let service = u
                .arbitrary::<bool>()?
                .then(|| pick(u, SERVICES))
                .transpose()?;
            let method = match u.arbitrary::<bool>()? || service.is_none() {
                true => Some(pick(u, GRPC_METHODS)?),
                false => None,
            };
            Some(GrpcMethodMatch::Exact {
                service: service.map(str::to_owned),
                method: method.map(str::to_owned),
            })
        }
        _ => Some(GrpcMethodMatch::RegularExpression {
            service: pattern(u)?,
            method: pattern(u)?,
        }),
    };
    Ok(GrpcRouteMatch {
        method,
        headers: header_matches(u)?,
    })
}

fn route(u: &mut Unstructured<'_>, i: usize) -> Result<Route> {
    let kind = if u.ratio(1, 3)? {
        RouteKind::Grpc
    } else {
        RouteKind::Http
    };
    let mut rules = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let n = u.int_in_range(1..=3)?;
        let (mut matches, mut grpc_matches) = (Vec::new(), Vec::new());
        for _ in 0..n {
            match kind {
                RouteKind::Http => matches.push(http_match(u)?),
                RouteKind::Grpc => grpc_matches.push(grpc_match(u)?),
            }
        }
        let mut backends = Vec::new();
        for b in 0..u.int_in_range(0..=3)? {
            backends.push(Backend {
                service: ServiceRef {
                    namespace: "ns".into(),
                    name: format!("b{b}"),
                    port: 80,
                },
                weight: u.int_in_range(0..=3)?,
            });
        }
        rules.push(RouteRule {
            name: None,
            matches,
            grpc_matches,
            filters: Vec::new(),
            backends,
            timeouts: Timeouts::default(),
            retry: None,
            fault: None,
        });
    }
    Ok(Route {
        kind,
        // Unique namespace/name per route: the order is then total.
        name: format!("r{i}"),
        namespace: pick(u, &["ns1", "ns2"])?.to_owned(),
        created: if u.arbitrary()? {
            Some(Timestamp {
                seconds: u.int_in_range(0..=2)?,
                nanos: u.int_in_range(0..=1)?,
            })
        } else {
            None
        },
        parents: Vec::new(),
        rules,
    })
}

struct Request {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

fn request(u: &mut Unstructured<'_>) -> Result<Request> {
    let path = if u.ratio(1, 3)? {
        format!("/{}/{}", pick(u, SERVICES)?, pick(u, GRPC_METHODS)?)
    } else {
        path(u)?
    };
    let query = if u.arbitrary()? {
        let mut q = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            q.push(format!(
                "{}={}",
                pick(u, QUERY_NAMES)?,
                pick(u, QUERY_VALUES)?
            ));
        }
        Some(q.join("&"))
    } else {
        None
    };
    let mut headers = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let name = HeaderName::from_static(pick(u, HEADERS)?);
        let value = if u.ratio(1, 8)? {
            let raw: Vec<u8> = u.arbitrary()?;
            match HeaderValue::from_bytes(&raw) {
                Ok(v) => v,
                Err(_) => continue,
            }
        } else {
            HeaderValue::from_static(pick(u, VALUES)?)
        };
        headers.append(name, value);
    }
    Ok(Request {
        method: method(u)?,
        path,
        query,
        headers,
    })
}

// --- The precedence, re-stated plainly (the oracle) ---

/// Element-wise: `/a` holds for `/a`, `/a/` and `/a/b`, not `/ab`.
fn prefix_holds(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_first(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| decode(k) == name)
        .map(|(_, v)| decode(v))
}

fn header_holds(h: &HeaderMatch, headers: &HeaderMap) -> bool {
    let values: Option<Vec<&str>> = headers
        .get_all(&h.name)
        .iter()
        .map(|v| v.to_str().ok())
        .collect();
    match values {
        Some(v) if !v.is_empty() => h.value.matches(&v.join(",")),
        _ => false,
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    matches!(ct, Some(ct) if ct == "application/grpc"
        || ct.starts_with("application/grpc+")
        || ct.starts_with("application/grpc;"))
}

/// (service, method) of `/<service>/<method>`.
fn grpc_call(path: &str) -> Option<(&str, &str)> {
    let (s, m) = path.strip_prefix('/')?.split_once('/')?;
    (!s.is_empty() && !m.is_empty() && !m.contains('/')).then_some((s, m))
}

/// How specific a holding match is (larger is more specific), or `None`
/// when it does not hold.
type Rank = (usize, usize, bool, usize, usize);

fn http_rank(m: &HttpRouteMatch, r: &Request) -> Option<Rank> {
    let (holds, class, len) = match &m.path {
        PathMatch::Exact(p) => (*p == r.path, 2, p.len()),
        PathMatch::Prefix(p) => (prefix_holds(p, &r.path), 1, p.len()),
        PathMatch::RegularExpression(re) => (re.is_match(&r.path), 0, 0),
    };
    let holds = holds
        && m.method.as_ref().is_none_or(|want| *want == r.method)
        && m.headers.iter().all(|h| header_holds(h, &r.headers))
        && m.query_params
            .iter()
            .all(|q| query_first(r.query.as_deref(), &q.name).is_some_and(|v| q.value.matches(&v)));
    holds.then_some((
        class,
        len,
        m.method.is_some(),
        m.headers.len(),
        m.query_params.len(),
    ))
}

fn grpc_rank(m: &GrpcRouteMatch, r: &Request) -> Option<Rank> {
    let call = grpc_call(&r.path);
    let (holds, svc_len, method_len) = match &m.method {
        None => (true, 0, 0),
        Some(GrpcMethodMatch::Exact { service, method }) => (
            call.is_some_and(|(s, me)| {
                service.as_deref().is_none_or(|w| w == s)
                    && method.as_deref().is_none_or(|w| w == me)
            }),
            service.as_ref().map_or(0, String::len),
            method.as_ref().map_or(0, String::len),
        ),
        Some(GrpcMethodMatch::RegularExpression { service, method }) => (
            call.is_some_and(|(s, me)| {
                service.as_ref().is_none_or(|p| p.is_match(s))
                    && method.as_ref().is_none_or(|p| p.is_match(me))
            }),
            0,
            0,
        ),
    };
    let holds = holds && m.headers.iter().all(|h| header_holds(h, &r.headers));
    holds.then_some((svc_len, method_len, false, m.headers.len(), 0))
}

/// (route index, rule index, match index) of the rule the spec picks.
fn expected(routes: &[Route], r: &Request) -> Option<(usize, usize, usize)> {
    let grpc = is_grpc(&r.headers);
    let mut best: Vec<(bool, Rank, usize, usize, usize)> = Vec::new();
    for (ri, route) in routes.iter().enumerate() {
        if route.kind == RouteKind::Grpc && !grpc {
            continue;
        }
        for (li, rule) in route.rules.iter().enumerate() {
            let ranks: Vec<Option<Rank>> = match route.kind {
                RouteKind::Http => rule.matches.iter().map(|m| http_rank(m, r)).collect(),
                RouteKind::Grpc => rule.grpc_matches.iter().map(|m| grpc_rank(m, r)).collect(),
            };
            let Some(top) = ranks.iter().flatten().max().copied() else {
                continue;
            };
            let mi = ranks.iter().position(|x| *x == Some(top)).unwrap();
            best.push((route.kind == RouteKind::Grpc, top, ri, li, mi));
        }
    }
    // gRPC routes first, then rank (descending), then age (no timestamp
    // last), then namespace/name, then rule order.
    best.sort_by(|a, b| {
        let (ra, rb) = (&routes[a.2], &routes[b.2]);
        let age = |x: &Route| (x.created.is_none(), x.created);
        Reverse(a.0)
            .cmp(&Reverse(b.0))
            .then(Reverse(a.1).cmp(&Reverse(b.1)))
            .then(age(ra).cmp(&age(rb)))
            .then((&ra.namespace, &ra.name).cmp(&(&rb.namespace, &rb.name)))
            .then(a.3.cmp(&b.3))
    });
    best.first().map(|&(_, _, ri, li, mi)| (ri, li, mi))
}

fn chosen(sel: &Selection<'_>) -> Option<(String, String, usize, usize)> {
    match sel {
        Selection::Matched(m) => Some((
            m.route.namespace.clone(),
            m.route.name.clone(),
            m.rule_index,
            m.match_index,
        )),
        _ => None,
    }
}

/// The check: never panics; the choice is the spec's.
pub fn route_select(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(n) = u.int_in_range(0..=4) else { return };
    let mut routes = Vec::new();
    for i in 0..n {
        match route(&mut u, i) {
            Ok(r) => routes.push(r),
            Err(_) => return,
        }
    }
    let Ok(req) = request(&mut u) else { return };
    let draw: u64 = u.arbitrary().unwrap_or(0);

    let view = RequestView {
        method: &req.method,
        path: &req.path,
        query: req.query.as_deref(),
        headers: &req.headers,
    };
    let sel = select_route(&routes, &view);
    let want = expected(&routes, &req);
    match (&sel, want) {
        (Selection::Default, _) => assert!(routes.is_empty()),
        (Selection::NotFound, None) => assert!(!routes.is_empty()),
        (Selection::NotFound, Some(w)) => panic!("NotFound, but {w:?} holds"),
        (Selection::Matched(_), None) => panic!("{sel:?}, but nothing holds"),
        (Selection::Matched(m), Some((ri, li, mi))) => {
            let want = &routes[ri];
            assert_eq!(
                (
                    m.route.kind,
                    &m.route.namespace,
                    &m.route.name,
                    m.rule_index,
                    m.match_index
                ),
                (want.kind, &want.namespace, &want.name, li, mi),
                "precedence"
            );
            if m.route.kind == RouteKind::Grpc {
                assert!(is_grpc(&req.headers), "a GRPCRoute for a non-gRPC request");
            }
            // A backend of non-zero weight, or none only when all are zero.
            match pick_backend(&m.rule.backends, draw) {
                Some(b) => assert!(b.weight > 0),
                None => assert!(m.rule.backends.iter().all(|b| b.weight == 0)),
            }
        }
    }
    // The order the routes are listed in does not matter.
    let reversed: Vec<Route> = routes.iter().rev().cloned().collect();
    let again = select_route(&reversed, &view);
    assert_eq!(
        chosen(&sel),
        chosen(&again),
        "route order changed the choice"
    );
    assert_eq!(std::mem::discriminant(&sel), std::mem::discriminant(&again));
}
