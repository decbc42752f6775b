//! Rule selection: one table per precedence step of the Gateway API.

use super::*;

struct Case {
    what: &'static str,
    line: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: &'static str,
}

const fn case(what: &'static str, line: &'static str, want: &'static str) -> Case {
    Case {
        what,
        line,
        headers: &[],
        want,
    }
}

fn check(routes: &[Route], cases: &[Case]) {
    for c in cases {
        assert_eq!(pick(routes, c.line, c.headers), c.want, "{}", c.what);
    }
}

/// One route, `shop/r`, with these rules.
fn one(rules: Vec<RouteRule>) -> Vec<Route> {
    vec![http_route("shop", "r", None, rules)]
}

#[test]
fn path_kinds_exact_then_prefix_then_regex() {
    let routes = one(vec![
        rule("regex", vec![regex("/foo.*")]),
        rule("prefix", vec![prefix("/foo")]),
        rule("exact", vec![exact("/foo")]),
    ]);
    check(
        &routes,
        &[
            case("exact beats prefix and regex", "GET /foo", "shop/r#exact"),
            case("prefix beats regex", "GET /foo/x", "shop/r#prefix"),
            case("regex alone", "GET /foobar", "shop/r#regex"),
            case("exact needs the whole path", "GET /foo?x=1", "shop/r#exact"),
            case("nothing matches", "GET /bar", "not found"),
        ],
    );
}

#[test]
fn longer_prefix_first() {
    let routes = one(vec![
        rule("root", vec![prefix("/")]),
        rule("foo", vec![prefix("/foo")]),
        rule("foo-bar", vec![prefix("/foo/bar")]),
    ]);
    check(
        &routes,
        &[
            case("longest prefix", "GET /foo/bar/baz", "shop/r#foo-bar"),
            case("prefix equal to the path", "GET /foo/bar", "shop/r#foo-bar"),
            case("prefix ends at an element", "GET /foo/barn", "shop/r#foo"),
            case("shorter prefix", "GET /foo/x", "shop/r#foo"),
            case("not /foobar", "GET /foobar", "shop/r#root"),
            case("root", "GET /", "shop/r#root"),
        ],
    );
}

#[test]
fn method_then_headers_then_query() {
    let routes = one(vec![
        rule("plain", vec![prefix("/api")]),
        rule(
            "query2",
            vec![with(prefix("/api"), None, &[], &[("a", "1"), ("b", "2")])],
        ),
        rule(
            "header1",
            vec![with(prefix("/api"), None, &[("x-v", "2")], &[])],
        ),
        rule(
            "header2",
            vec![with(
                prefix("/api"),
                None,
                &[("x-v", "2"), ("x-w", "1")],
                &[],
            )],
        ),
        rule("get", vec![with(prefix("/api"), Some("GET"), &[], &[])]),
    ]);
    let h1: &[(&str, &str)] = &[("x-v", "2")];
    let h2: &[(&str, &str)] = &[("x-v", "2"), ("x-w", "1")];
    let cases = [
        Case {
            headers: h2,
            ..case("method beats more headers", "GET /api", "shop/r#get")
        },
        Case {
            headers: h2,
            ..case("two headers beat one", "POST /api", "shop/r#header2")
        },
        Case {
            headers: h1,
            ..case("one header", "POST /api", "shop/r#header1")
        },
        Case {
            headers: h1,
            ..case(
                "a header beats two query params",
                "POST /api?a=1&b=2",
                "shop/r#header1",
            )
        },
        case(
            "query params beat none",
            "POST /api?a=1&b=2",
            "shop/r#query2",
        ),
        case(
            "query params must all hold",
            "POST /api?a=1",
            "shop/r#plain",
        ),
        case("method mismatch", "PUT /api", "shop/r#plain"),
    ];
    check(&routes, &cases);
}

#[test]
fn path_beats_method_headers_and_query() {
    let routes = one(vec![
        rule(
            "method",
            vec![with(
                prefix("/api"),
                Some("GET"),
                &[("x", "1")],
                &[("q", "1")],
            )],
        ),
        rule("longer", vec![prefix("/api/v1")]),
    ]);
    let cases = [Case {
        headers: &[("x", "1")],
        ..case(
            "a longer prefix beats method, header and query",
            "GET /api/v1?q=1",
            "shop/r#longer",
        )
    }];
    check(&routes, &cases);
}

#[test]
fn more_query_params_win() {
    let routes = one(vec![
        rule("one", vec![with(prefix("/"), None, &[], &[("a", "1")])]),
        rule(
            "two",
            vec![with(prefix("/"), None, &[], &[("a", "1"), ("b", "x y")])],
        ),
    ]);
    check(
        &routes,
        &[
            case(
                "two beat one (values %-decoded)",
                "GET /?b=x%20y&a=1",
                "shop/r#two",
            ),
            case(
                "the first value of a repeated param",
                "GET /?a=1&a=2",
                "shop/r#one",
            ),
            case("a later value does not count", "GET /?a=2&a=1", "not found"),
        ],
    );
}

#[test]
fn across_routes_oldest_then_alphabetical() {
    let same = || vec![rule("x", vec![prefix("/")])];
    let check_routes = |routes: Vec<Route>, want: &str, what: &str| {
        assert_eq!(pick(&routes, "GET /", &[]), want, "{what}");
    };
    check_routes(
        vec![
            http_route("shop", "young", Some(200), same()),
            http_route("shop", "old", Some(100), same()),
        ],
        "shop/old#x",
        "the oldest route wins",
    );
    check_routes(
        vec![
            http_route("shop", "undated", None, same()),
            http_route("shop", "dated", Some(100), same()),
        ],
        "shop/dated#x",
        "a route without a timestamp is the youngest",
    );
    check_routes(
        vec![
            http_route("shop", "b", Some(1), same()),
            http_route("shop", "a", Some(1), same()),
        ],
        "shop/a#x",
        "same age: first by name",
    );
    check_routes(
        vec![
            http_route("zoo", "a", None, same()),
            http_route("bank", "z", None, same()),
        ],
        "bank/z#x",
        "same age: first by namespace",
    );
    let older_vague = http_route(
        "shop",
        "old",
        Some(1),
        vec![rule("vague", vec![prefix("/")])],
    );
    let young_precise = http_route(
        "shop",
        "new",
        Some(9),
        vec![rule("precise", vec![exact("/")])],
    );
    check_routes(
        vec![older_vague, young_precise],
        "shop/new#precise",
        "specificity comes before age",
    );
}

#[test]
fn within_a_route_the_first_rule() {
    let routes = one(vec![
        rule("first", vec![prefix("/a")]),
        rule("second", vec![prefix("/a")]),
        rule("third", vec![prefix("/b"), prefix("/a")]),
    ]);
    check(&routes, &[case("rule order", "GET /a/x", "shop/r#first")]);
}

#[test]
fn any_match_of_a_rule_and_default() {
    let routes = one(vec![rule(
        "either",
        vec![exact("/a"), with(prefix("/b"), None, &[("v", "2")], &[])],
    )]);
    let cases = [
        case("first match", "GET /a", "shop/r#either"),
        Case {
            headers: &[("v", "2")],
            ..case("second match", "GET /b/c", "shop/r#either")
        },
        case("neither", "GET /b/c", "not found"),
    ];
    check(&routes, &cases);
    assert_eq!(pick(&[], "GET /", &[]), "default", "no route attached");
    let default_match = one(vec![rule("all", vec![HttpRouteMatch::default()])]);
    check(
        &default_match,
        &[case(
            "the default match is PathPrefix /",
            "DELETE /x/y",
            "shop/r#all",
        )],
    );
}

#[test]
fn header_matching() {
    let re = HeaderMatch {
        name: HeaderName::from_static("x-user"),
        value: ValueMatch::RegularExpression(Pattern::new("admin-[0-9]+").unwrap()),
    };
    let routes = one(vec![
        rule(
            "exact",
            vec![with(prefix("/"), None, &[("X-Version", "v2")], &[])],
        ),
        rule(
            "regex",
            vec![HttpRouteMatch {
                headers: vec![re],
                ..prefix("/")
            }],
        ),
    ]);
    let cases = [
        Case {
            headers: &[("x-version", "v2")],
            ..case("names are case-insensitive", "GET /", "shop/r#exact")
        },
        Case {
            headers: &[("x-version", "V2")],
            ..case("values are case-sensitive", "GET /", "not found")
        },
        Case {
            headers: &[("x-version", "v2"), ("x-version", "v3")],
            ..case("repeated values are joined", "GET /", "not found")
        },
        Case {
            headers: &[("x-user", "admin-42")],
            ..case("regex matches the whole value", "GET /", "shop/r#regex")
        },
        Case {
            headers: &[("x-user", "xadmin-42")],
            ..case("regex is anchored", "GET /", "not found")
        },
    ];
    check(&routes, &cases);
}

fn grpc_exact(service: Option<&str>, method: Option<&str>) -> GrpcRouteMatch {
    GrpcRouteMatch {
        method: Some(GrpcMethodMatch::Exact {
            service: service.map(Into::into),
            method: method.map(Into::into),
        }),
        headers: Vec::new(),
    }
}

#[test]
fn grpc_precedence_and_fallback() {
    const GRPC: &[(&str, &str)] = &[("content-type", "application/grpc")];
    let routes = vec![
        grpc_route(
            "shop",
            "g",
            vec![
                grpc_rule("any", vec![GrpcRouteMatch::default()]),
                grpc_rule("method-only", vec![grpc_exact(None, Some("Get"))]),
                grpc_rule("service", vec![grpc_exact(Some("shop.Cart"), None)]),
                grpc_rule("both", vec![grpc_exact(Some("shop.Cart"), Some("Get"))]),
                grpc_rule(
                    "regex",
                    vec![GrpcRouteMatch {
                        method: Some(GrpcMethodMatch::RegularExpression {
                            service: Some(Pattern::new("shop\\..*").unwrap()),
                            method: None,
                        }),
                        headers: vec![header("x-a", "1")],
                    }],
                ),
            ],
        ),
        http_route("shop", "h", None, vec![rule("http", vec![prefix("/")])]),
    ];
    let grpc = |what, line, want| Case {
        headers: GRPC,
        ..case(what, line, want)
    };
    let cases = [
        grpc("service and method", "POST /shop.Cart/Get", "shop/g#both"),
        grpc(
            "service beats method",
            "POST /shop.Cart/Put",
            "shop/g#service",
        ),
        grpc("method only", "POST /shop.Other/Get", "shop/g#method-only"),
        grpc(
            "no method match: the match-all rule",
            "POST /x.Y/Z",
            "shop/g#any",
        ),
        case(
            "not gRPC: HTTPRoutes only",
            "POST /shop.Cart/Get",
            "shop/h#http",
        ),
        Case {
            headers: &[("content-type", "application/grpc+proto"), ("x-a", "1")],
            ..case(
                "a header beats a regular expression",
                "POST /shop.Pay/Do",
                "shop/g#regex",
            )
        },
    ];
    check(&routes, &cases);
    let only_service = vec![
        grpc_route(
            "shop",
            "g",
            vec![grpc_rule("cart", vec![grpc_exact(Some("shop.Cart"), None)])],
        ),
        http_route("shop", "h", None, vec![rule("http", vec![prefix("/")])]),
    ];
    check(
        &only_service,
        &[grpc(
            "no gRPC rule matches: the HTTPRoute",
            "POST /shop.Pay/Do",
            "shop/h#http",
        )],
    );
    let grpc_alone = vec![grpc_route(
        "shop",
        "g",
        vec![grpc_rule("cart", vec![grpc_exact(Some("shop.Cart"), None)])],
    )];
    check(
        &grpc_alone,
        &[
            grpc("no rule at all matches", "POST /shop.Pay/Do", "not found"),
            case("plain HTTP to a gRPC-only service", "GET /", "not found"),
        ],
    );
}

#[test]
fn grpc_content_types_and_paths() {
    let view = |ct: &str, uri: &str| {
        let parts = request(&format!("POST {uri}"), &[("content-type", ct)]);
        let v = RequestView::new(&parts);
        (
            v.is_grpc(),
            v.grpc_method().map(|(s, m)| format!("{s}/{m}")),
        )
    };
    assert_eq!(
        view("application/grpc", "/a.B/C"),
        (true, Some("a.B/C".into()))
    );
    assert_eq!(
        view("application/grpc+json", "/a.B/C"),
        (true, Some("a.B/C".into()))
    );
    assert_eq!(
        view("application/grpc;charset=utf-8", "/a/b/c"),
        (true, None)
    );
    assert_eq!(
        view("application/grpcx", "/a.B/C"),
        (false, Some("a.B/C".into()))
    );
    assert_eq!(view("application/json", "//C"), (false, None));
}

#[test]
fn matched_prefix_is_the_match_that_held() {
    let routes = one(vec![rule("r", vec![exact("/a"), prefix("/b")])]);
    let parts = request("GET /b/c", &[]);
    let Selection::Matched(m) = select_route(&routes, &RequestView::new(&parts)) else {
        panic!("no match");
    };
    assert_eq!((m.match_index, m.matched_prefix()), (1, Some("/b")));
    let parts = request("GET /a", &[]);
    let Selection::Matched(m) = select_route(&routes, &RequestView::new(&parts)) else {
        panic!("no match");
    };
    assert_eq!((m.match_index, m.matched_prefix()), (0, None));
}
