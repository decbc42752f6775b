//! Table tests of the route decisions, and builders they share.

mod choice;
mod filter;
mod prop;
mod select;

use http::{HeaderName, Method};

use super::*;

pub(super) fn svc(name: &str, port: u16) -> ServiceRef {
    ServiceRef {
        namespace: "shop".into(),
        name: name.into(),
        port,
    }
}

pub(super) fn backend(name: &str, weight: u32) -> Backend {
    Backend {
        service: svc(name, 80),
        weight,
    }
}

/// A rule named `tag` (what the tables assert on) with these matches.
pub(super) fn rule(tag: &str, matches: Vec<HttpRouteMatch>) -> RouteRule {
    RouteRule {
        name: Some(tag.into()),
        matches,
        grpc_matches: Vec::new(),
        filters: Vec::new(),
        backends: vec![backend(tag, 1)],
        timeouts: Timeouts::default(),
        retry: None,
        fault: None,
    }
}

pub(super) fn grpc_rule(tag: &str, grpc_matches: Vec<GrpcRouteMatch>) -> RouteRule {
    RouteRule {
        matches: Vec::new(),
        grpc_matches,
        ..rule(tag, Vec::new())
    }
}

pub(super) fn http_route(
    ns: &str,
    name: &str,
    created: Option<i64>,
    rules: Vec<RouteRule>,
) -> Route {
    Route {
        kind: RouteKind::Http,
        name: name.into(),
        namespace: ns.into(),
        created: created.map(|seconds| Timestamp { seconds, nanos: 0 }),
        parents: vec![ParentRef {
            namespace: ns.into(),
            name: "reviews".into(),
            port: None,
        }],
        rules,
    }
}

pub(super) fn grpc_route(ns: &str, name: &str, rules: Vec<RouteRule>) -> Route {
    Route {
        kind: RouteKind::Grpc,
        ..http_route(ns, name, None, rules)
    }
}

pub(super) fn path(m: PathMatch) -> HttpRouteMatch {
    HttpRouteMatch {
        path: m,
        ..HttpRouteMatch::default()
    }
}

pub(super) fn exact(p: &str) -> HttpRouteMatch {
    path(PathMatch::Exact(p.into()))
}

pub(super) fn prefix(p: &str) -> HttpRouteMatch {
    path(PathMatch::Prefix(p.into()))
}

pub(super) fn regex(p: &str) -> HttpRouteMatch {
    path(PathMatch::RegularExpression(Pattern::new(p).unwrap()))
}

pub(super) fn header(name: &str, value: &str) -> HeaderMatch {
    HeaderMatch {
        name: HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value: ValueMatch::Exact(value.into()),
    }
}

pub(super) fn query(name: &str, value: &str) -> QueryParamMatch {
    QueryParamMatch {
        name: name.into(),
        value: ValueMatch::Exact(value.into()),
    }
}

/// `m` with a method, headers and query matches added.
pub(super) fn with(
    mut m: HttpRouteMatch,
    method: Option<&str>,
    headers: &[(&str, &str)],
    queries: &[(&str, &str)],
) -> HttpRouteMatch {
    m.method = method.map(|s| Method::from_bytes(s.as_bytes()).unwrap());
    m.headers = headers.iter().map(|(n, v)| header(n, v)).collect();
    m.query_params = queries.iter().map(|(n, v)| query(n, v)).collect();
    m
}

/// A request head: `METHOD /path?query`, with headers.
pub(super) fn request(line: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let (method, uri) = line.split_once(' ').unwrap();
    let mut b = http::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// `ns/name#rule` of the selection, or `default` / `not found`.
pub(super) fn pick(routes: &[Route], line: &str, headers: &[(&str, &str)]) -> String {
    let parts = request(line, headers);
    match select_route(routes, &RequestView::new(&parts)) {
        Selection::Default => "default".into(),
        Selection::NotFound => "not found".into(),
        Selection::Matched(m) => format!(
            "{}/{}#{}",
            m.route.namespace,
            m.route.name,
            m.rule.name.as_deref().unwrap_or("?")
        ),
    }
}
