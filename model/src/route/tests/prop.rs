//! Fuzz-style properties of route matching: arbitrary routes and requests
//! never panic, and the path invariants of the Gateway API hold.

use proptest::prelude::*;

use super::super::select::{path_matches, prefix_matches};
use super::*;

/// Path-ish strings, with the characters that matter to matching.
fn path_text() -> impl Strategy<Value = String> {
    "(/[a-zA-Z0-9._%~-]{0,6}){0,4}/?"
}

/// Any string at all (regex sources included).
fn any_text() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn value_match() -> impl Strategy<Value = ValueMatch> {
    prop_oneof![
        "[a-z0-9]{0,4}".prop_map(ValueMatch::Exact),
        any_text().prop_filter_map("valid regex", |s| Pattern::new(&s)
            .ok()
            .map(ValueMatch::RegularExpression)),
    ]
}

fn path_match() -> impl Strategy<Value = PathMatch> {
    prop_oneof![
        path_text().prop_map(PathMatch::Exact),
        path_text().prop_map(|p| PathMatch::Prefix(if p.is_empty() { "/".into() } else { p })),
        any_text().prop_filter_map("valid regex", |s| Pattern::new(&s)
            .ok()
            .map(PathMatch::RegularExpression)),
    ]
}

prop_compose! {
    fn http_match()(
        path in path_match(),
        method in proptest::option::of(prop_oneof![Just("GET"), Just("POST"), Just("PUT")]),
        headers in proptest::collection::vec(("x-[a-c]", value_match()), 0..3),
        queries in proptest::collection::vec(("[a-c]", value_match()), 0..3),
    ) -> HttpRouteMatch {
        HttpRouteMatch {
            path,
            method: method.map(|m| http::Method::from_bytes(m.as_bytes()).unwrap()),
            headers: headers.into_iter().map(|(n, value)| HeaderMatch { name: HeaderName::from_bytes(n.as_bytes()).unwrap(), value }).collect(),
            query_params: queries.into_iter().map(|(name, value)| QueryParamMatch { name, value }).collect(),
        }
    }
}

fn grpc_match() -> impl Strategy<Value = GrpcRouteMatch> {
    let svc = proptest::option::of("[a-c]{1,3}(\\.[A-C][a-c]{0,2})?");
    let meth = proptest::option::of("[A-C][a-c]{0,2}");
    (svc, meth, any::<bool>()).prop_map(|(service, method, any)| GrpcRouteMatch {
        method: (!any).then_some(GrpcMethodMatch::Exact { service, method }),
        headers: Vec::new(),
    })
}

fn routes() -> impl Strategy<Value = Vec<Route>> {
    let http_rule = proptest::collection::vec(http_match(), 1..3).prop_map(|m| rule("h", m));
    let grpc_rule_s = proptest::collection::vec(grpc_match(), 1..3).prop_map(|m| grpc_rule("g", m));
    let route = (
        any::<bool>(),
        "[a-c]",
        proptest::option::of(0i64..3),
        proptest::collection::vec(http_rule, 1..3),
        proptest::collection::vec(grpc_rule_s, 1..3),
    )
        .prop_map(|(grpc, name, created, hr, gr)| {
            if grpc {
                grpc_route("shop", &name, gr)
            } else {
                http_route("shop", &name, created, hr)
            }
        });
    proptest::collection::vec(route, 0..4)
}

fn request_line() -> impl Strategy<Value = String> {
    let method = prop_oneof![Just("GET"), Just("POST"), Just("PUT")];
    let query = proptest::option::of("([a-c]=[a-z0-9%]{0,4}&?){0,3}");
    (method, path_text(), query).prop_map(|(m, p, q)| {
        let p = if p.is_empty() { "/".to_owned() } else { p };
        match q {
            Some(q) => format!("{m} {p}?{q}"),
            None => format!("{m} {p}"),
        }
    })
}

fn try_request(line: &str, headers: &[(&str, &str)]) -> Option<http::request::Parts> {
    let (method, uri) = line.split_once(' ')?;
    let mut b = http::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    Some(b.body(()).ok()?.into_parts().0)
}

proptest! {
    #[test]
    fn selection_never_panics_and_picks_a_holding_match(
        routes in routes(),
        line in request_line(),
        hdrs in proptest::collection::vec(("x-[a-c]", "[a-z0-9]{0,3}"), 0..3),
        grpc: bool,
    ) {
        let mut headers: Vec<(&str, &str)> = hdrs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        if grpc {
            headers.push(("content-type", "application/grpc"));
        }
        let Some(parts) = try_request(&line, &headers) else {
            return Ok(()); // not a request head http accepts: not our input
        };
        let view = RequestView::new(&parts);
        match select_route(&routes, &view) {
            Selection::Default => prop_assert!(routes.is_empty()),
            Selection::NotFound => prop_assert!(!routes.is_empty()),
            Selection::Matched(m) => {
                prop_assert!(routes.iter().any(|r| std::ptr::eq(r, m.route)));
                prop_assert!(std::ptr::eq(&m.route.rules[m.rule_index], m.rule));
                if m.route.kind == RouteKind::Http {
                    let held = &m.rule.matches[m.match_index];
                    prop_assert!(path_matches(&held.path, view.path), "chosen path match does not hold");
                    prop_assert!(held.method.as_ref().is_none_or(|mm| mm == view.method));
                } else {
                    prop_assert!(view.is_grpc());
                }
            }
        }
    }

    #[test]
    fn exact_matches_only_that_path(p in path_text(), q in path_text()) {
        prop_assert_eq!(path_matches(&PathMatch::Exact(p.clone()), &q), p == q);
        prop_assert!(path_matches(&PathMatch::Exact(p.clone()), &p));
    }

    #[test]
    fn prefix_respects_segment_boundaries(
        prefix in "(/[a-z]{1,4}){1,3}",
        rest in "[a-z/]{0,6}",
        trailing: bool,
    ) {
        let configured = if trailing { format!("{prefix}/") } else { prefix.clone() };
        let path = format!("{prefix}{rest}");
        let want = rest.is_empty() || rest.starts_with('/');
        prop_assert_eq!(prefix_matches(&configured, &path), want, "{} vs {}", configured, path);
        // A path that does not start with the prefix never matches.
        let other = format!("/x{path}");
        prop_assert!(!prefix_matches(&configured, &other) || prefix.starts_with("/x"));
    }

    #[test]
    fn root_prefix_matches_every_path(p in path_text()) {
        let p = format!("/{p}");
        prop_assert!(prefix_matches("/", &p));
    }

    #[test]
    fn patterns_never_panic(src in any_text(), value in any_text()) {
        if let Ok(p) = Pattern::new(&src) {
            let _ = p.is_match(&value);
            prop_assert_eq!(p.as_str(), src.as_str());
        }
    }
}

#[test]
fn prefix_examples_from_the_spec() {
    for (prefix, path, want) in [
        ("/abc", "/abc", true),
        ("/abc", "/abc/", true),
        ("/abc", "/abc/def", true),
        ("/abc", "/abcd", false),
        ("/abc/", "/abc", true),
        ("/foo", "/foobar", false),
        ("/foo", "/foo/bar", true),
        ("/", "/anything", true),
    ] {
        assert_eq!(prefix_matches(prefix, path), want, "{prefix} vs {path}");
    }
}
