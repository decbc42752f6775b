//! Filters on request and response heads.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::*;

#[test]
fn replace_prefix_match_table_from_the_spec() {
    // Request path, prefix match, replacement, modified path (the table in
    // the Gateway API's HTTPPathModifier.ReplacePrefixMatch).
    let table = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        // A root prefix keeps the whole path under the replacement.
        ("/a/b", "/", "/xyz", "/xyz/a/b"),
    ];
    for (path, prefix, replacement, want) in table {
        assert_eq!(
            replace_prefix(path, prefix, replacement),
            want,
            "{path} {prefix} {replacement}"
        );
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

fn hn(s: &str) -> HeaderName {
    HeaderName::from_bytes(s.as_bytes()).unwrap()
}

fn modifier(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderModifier {
    HeaderModifier {
        set: set.iter().map(|(n, v)| (hn(n), hv(v))).collect(),
        add: add.iter().map(|(n, v)| (hn(n), hv(v))).collect(),
        remove: remove.iter().map(|n| hn(n)).collect(),
    }
}

/// Selects the one rule of one route for `line` and applies its filters.
fn run(
    filters: Vec<Filter>,
    m: HttpRouteMatch,
    line: &str,
    headers: &[(&str, &str)],
) -> (http::request::Parts, FilterOutcome) {
    let mut r = rule("r", vec![m]);
    r.filters = filters;
    let routes = vec![http_route("shop", "r", None, vec![r])];
    let mut parts = request(line, headers);
    let view_parts = parts.clone();
    let Selection::Matched(m) = select_route(&routes, &RequestView::new(&view_parts)) else {
        panic!("{line}: no match");
    };
    let out = apply_request_filters(
        &mut parts,
        &m,
        &RedirectCtx {
            scheme: "http",
            port: 9080,
        },
    );
    (parts, out)
}

fn header_list(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn request_header_modifier() {
    let f = Filter::RequestHeaderModifier(modifier(
        &[("x-set", "new")],
        &[("x-add", "b,c"), ("x-fresh", "1")],
        &["x-gone"],
    ));
    let (parts, out) = run(
        vec![f],
        prefix("/"),
        "GET /",
        &[
            ("x-set", "old"),
            ("x-set", "older"),
            ("x-add", "a"),
            ("x-gone", "1"),
            ("x-keep", "k"),
        ],
    );
    assert_eq!(out, FilterOutcome::Forward);
    assert_eq!(
        header_list(&parts.headers, "x-set"),
        ["new"],
        "set replaces every value"
    );
    assert_eq!(
        header_list(&parts.headers, "x-add"),
        ["a,b,c"],
        "add appends"
    );
    assert_eq!(header_list(&parts.headers, "x-fresh"), ["1"], "add creates");
    assert!(parts.headers.get("x-gone").is_none(), "remove");
    assert_eq!(
        header_list(&parts.headers, "x-keep"),
        ["k"],
        "others untouched"
    );
}

#[test]
fn response_header_modifier() {
    let mut r = rule("r", vec![prefix("/")]);
    r.filters = vec![
        Filter::RequestHeaderModifier(modifier(&[("x-req", "1")], &[], &[])),
        Filter::ResponseHeaderModifier(modifier(&[("x-resp", "1")], &[("vary", "x")], &["server"])),
    ];
    let mut h = HeaderMap::new();
    h.insert("server", hv("upstream"));
    h.insert("vary", hv("accept"));
    apply_response_filters(&mut h, &r);
    assert_eq!(header_list(&h, "x-resp"), ["1"]);
    assert_eq!(header_list(&h, "vary"), ["accept,x"]);
    assert!(h.get("server").is_none());
    assert!(
        h.get("x-req").is_none(),
        "request filters do not touch responses"
    );
}

#[test]
fn url_rewrite() {
    let rewrite = |hostname: Option<&str>, path: Option<PathModifier>| {
        Filter::UrlRewrite(UrlRewrite {
            hostname: hostname.map(Into::into),
            path,
        })
    };
    let prefix_rw = rewrite(None, Some(PathModifier::ReplacePrefixMatch("/v2".into())));
    let (p, out) = run(
        vec![prefix_rw.clone()],
        prefix("/v1"),
        "GET /v1/items?id=3",
        &[("host", "a")],
    );
    assert_eq!(
        (out, p.uri.to_string()),
        (FilterOutcome::Forward, "/v2/items?id=3".to_owned())
    );
    let (p, _) = run(vec![prefix_rw], prefix("/v1/"), "GET /v1", &[]);
    assert_eq!(p.uri.path(), "/v2", "prefix equal to the path");
    let full = rewrite(None, Some(PathModifier::ReplaceFullPath("/health".into())));
    let (p, _) = run(vec![full], exact("/ping"), "GET /ping?x", &[]);
    assert_eq!(p.uri.to_string(), "/health?x", "the query is kept");
    let host = rewrite(Some("new.example"), None);
    let (p, _) = run(
        vec![host.clone()],
        prefix("/"),
        "GET /a",
        &[("host", "old:80")],
    );
    assert_eq!(p.headers["host"], "new.example");
    let (p, _) = run(vec![host], prefix("/"), "GET http://old:8080/a", &[]);
    assert_eq!(
        p.uri.to_string(),
        "http://new.example/a",
        "an h2 :authority is rewritten"
    );
    assert!(
        p.headers.get("host").is_none(),
        "no host header added beside an authority"
    );
}

#[test]
fn redirects() {
    let redirect = |scheme, hostname: Option<&str>, port, path, status| {
        Filter::RequestRedirect(RequestRedirect {
            scheme,
            hostname: hostname.map(Into::into),
            path,
            port,
            status,
        })
    };
    let loc = |f: Filter, m: HttpRouteMatch, line: &str| match run(
        vec![f],
        m,
        line,
        &[("host", "shop.svc:9080")],
    )
    .1
    {
        FilterOutcome::Redirect(r) => (r.status.as_u16(), r.location),
        other => panic!("{line}: {other:?}"),
    };
    assert_eq!(
        loc(
            redirect(None, None, None, None, 302),
            prefix("/"),
            "GET /a?b=1"
        ),
        (302, "http://shop.svc:9080/a?b=1".into()),
        "defaults: the request's scheme, host and the listener port"
    );
    assert_eq!(
        loc(
            redirect(Some(RedirectScheme::Https), None, None, None, 301),
            prefix("/"),
            "GET /a"
        ),
        (301, "https://shop.svc/a".into()),
        "a scheme brings its well-known port, which is left out"
    );
    assert_eq!(
        loc(
            redirect(
                Some(RedirectScheme::Http),
                Some("x.example"),
                Some(8080),
                None,
                308
            ),
            prefix("/"),
            "GET /"
        ),
        (308, "http://x.example:8080/".into())
    );
    assert_eq!(
        loc(
            redirect(
                None,
                None,
                Some(80),
                Some(PathModifier::ReplacePrefixMatch("/new".into())),
                302
            ),
            prefix("/old"),
            "GET /old/p"
        ),
        (302, "http://shop.svc/new/p".into()),
        "port 80 over http is left out; the prefix is replaced"
    );
    assert_eq!(
        loc(
            redirect(
                None,
                None,
                None,
                Some(PathModifier::ReplaceFullPath("/x".into())),
                303
            ),
            exact("/y"),
            "GET /y"
        ),
        (303, "http://shop.svc:9080/x".into())
    );
    // A redirect stops the filters: the header set after it is not applied.
    let (parts, out) = run(
        vec![
            redirect(None, None, None, None, 302),
            Filter::RequestHeaderModifier(modifier(&[("x-after", "1")], &[], &[])),
        ],
        prefix("/"),
        "GET /",
        &[("host", "[::1]:9080")],
    );
    assert_eq!(
        out,
        FilterOutcome::Redirect(Redirect {
            status: StatusCode::FOUND,
            location: "http://[::1]:9080/".into()
        })
    );
    assert!(parts.headers.get("x-after").is_none());
}

#[test]
fn mirrors_are_listed_in_order() {
    let mirror = |name: &str| {
        Filter::RequestMirror(Mirror {
            service: svc(name, 80),
            fraction: Fraction::ALL,
        })
    };
    let mut r = rule("r", vec![prefix("/")]);
    r.filters = vec![
        mirror("m1"),
        Filter::RequestHeaderModifier(HeaderModifier::default()),
        mirror("m2"),
    ];
    let names: Vec<&str> = r.mirrors().map(|m| m.service.name.as_str()).collect();
    assert_eq!(names, ["m1", "m2"]);
}
