//! The waypoint's sections of the config file: `routes:` and L7
//! `policies:` entries, their conversion and their line-numbered errors.

use super::*;
use crate::l7policy::{authorize_request, RequestCtx};
use crate::policy::Decision;
use crate::route::{select_route, PathMatch, RequestView, RouteKind, Selection};

const BASE: &str = "\
namespaces: [{name: shop}]
services:
  - {name: reviews, namespace: shop, vip: 10.96.0.20, ports: [{port: 9080, name: http}]}
  - {name: reviews-v1, namespace: shop, vip: 10.96.0.21, ports: [{port: 9080}]}
  - {name: reviews-v2, namespace: shop, vip: 10.96.0.22, ports: [{port: 9080}]}
";

const ROUTES: &str = r#"routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: reviews, namespace: shop, creationTimestamp: "2024-05-01T10:00:00Z"}
    spec:
      parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
      hostnames: [reviews.shop.svc.cluster.local]
      rules:
        - matches:
            - path: {type: PathPrefix, value: /api/}
              headers: [{name: x-canary, value: "true"}]
          backendRefs: [{name: reviews-v2, port: 9080}]
        - matches: [{path: {value: /}}]
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: x-route, value: split}]}
            - type: RequestMirror
              requestMirror: {backendRef: {name: reviews-v2, port: 9080}, percent: 10}
          backendRefs:
            - {kind: Service, name: reviews-v1, port: 9080, weight: 90}
            - {name: reviews-v2, port: 9080, weight: 10}
          timeouts: {request: 10s, backendRequest: 2s}
          retry: {attempts: 3, codes: [502, 503], backoff: 100ms}
          fault: {abort: {httpStatus: 503, percentage: {value: 0.5}}}
  - kind: GRPCRoute
    metadata: {name: reviews-grpc, namespace: shop}
    spec:
      parentRefs: [{name: reviews}]
      rules:
        - matches: [{method: {service: shop.Reviews, method: Get}}]
          backendRefs: [{name: reviews-v1, port: 9080}]
"#;

const POLICIES: &str = r#"policies:
  - name: deny-admin-writes
    namespace: shop
    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
    action: DENY
    rules:
      - to: [{operation: {methods: [POST], paths: [/admin, "/admin/*"]}}]
  - name: frontend-only
    namespace: shop
    targetRef: {kind: Service, group: "", name: reviews}
    rules:
      - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
        when: [{key: "request.headers[x-user]", notValues: [banned]}]
  - {name: l4, namespace: shop, rules: [{to: [{operation: {ports: ["9080"]}}]}]}
"#;

fn full() -> String {
    format!("{BASE}{ROUTES}{POLICIES}")
}

#[test]
fn routes_and_l7_policies_parse_into_the_snapshot() {
    let snap = parse(&full()).unwrap();
    let reviews = snap.service_by_name("shop", "reviews").unwrap().clone();
    let routes: Vec<_> = snap.routes_for(&reviews, 9080).collect();
    assert_eq!(routes.len(), 2);
    let http = routes.iter().find(|r| r.kind == RouteKind::Http).unwrap();
    assert_eq!(http.created.map(|t| t.seconds), Some(1_714_557_600));
    assert_eq!(
        http.rules[0].matches[0].path,
        PathMatch::Prefix("/api".into())
    );
    let split = &http.rules[1];
    assert_eq!(
        split.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [90, 10]
    );
    assert_eq!(
        split.timeouts.request(),
        Some(std::time::Duration::from_secs(10))
    );
    assert_eq!(split.retry.as_ref().map(|r| r.attempts()), Some(3));
    assert_eq!(
        split.mirrors().next().map(|m| m.fraction.numerator),
        Some(10)
    );
    let abort = split.fault.as_ref().and_then(|f| f.abort.as_ref()).unwrap();
    assert_eq!(
        (abort.fraction.numerator, abort.fraction.denominator),
        (5_000, 1_000_000)
    );

    let parts = http::Request::get("/api/x")
        .header("x-canary", "true")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let Selection::Matched(m) =
        select_route(snap.routes_for(&reviews, 9080), &RequestView::new(&parts))
    else {
        panic!("no route");
    };
    assert_eq!(m.rule.backends[0].service.name, "reviews-v2");

    // L4 and L7 policies go to their own places.
    assert_eq!(snap.policies().len(), 1);
    let l7: Vec<String> = snap
        .l7_policies_for("shop", "waypoint", Some(&reviews))
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(l7, ["deny-admin-writes", "frontend-only"]);
    let decide = |method: &str, path: &str, who: &str| {
        let id = crate::identity::SpiffeId::new("cluster.local", "shop", who).unwrap();
        let headers = http::HeaderMap::new();
        let ctx = RequestCtx {
            source_identity: Some(&id),
            source_ip: "10.1.1.10".parse().unwrap(),
            remote_ip: "10.1.1.10".parse().unwrap(),
            destination_ip: "10.96.0.20".parse().unwrap(),
            destination_port: 9080,
            host: "reviews:9080",
            method,
            path,
            headers: &headers,
        };
        authorize_request(
            snap.l7_policies_for("shop", "waypoint", Some(&reviews)),
            &ctx,
        )
    };
    assert!(matches!(
        decide("POST", "/admin", "frontend"),
        Decision::Deny(_)
    ));
    assert_eq!(decide("GET", "/admin", "frontend"), Decision::Allow);
    assert!(matches!(
        decide("GET", "/admin", "other"),
        Decision::Deny(_)
    ));
}

#[test]
fn the_incremental_parser_agrees() {
    let text = full();
    let mut inc = IncrementalParser::new();
    let a = inc.parse(&text).unwrap();
    assert!(!inc.stats().whole);
    let b = parse(&text).unwrap();
    let keys =
        |s: &crate::state::Snapshot| s.routes().map(|r| r.key().to_string()).collect::<Vec<_>>();
    assert_eq!(keys(&a), keys(&b));
    assert_eq!(a.l7_policies().count(), b.l7_policies().count());
    // An edit to one route re-parses that route only.
    let edited = text.replace("weight: 90", "weight: 80");
    let c = inc.parse(&edited).unwrap();
    assert!(inc.stats().reused > 0 && !inc.stats().whole);
    let w: Vec<u32> = c
        .routes()
        .flat_map(|r| {
            r.rules
                .iter()
                .flat_map(|x| x.backends.iter().map(|b| b.weight))
        })
        .collect();
    assert!(w.contains(&80));
}

/// (YAML appended to BASE, the error without its line, the line).
#[test]
fn errors_name_the_key_and_line() {
    let route = |rule: &str| {
        format!(
            "routes:\n  - kind: HTTPRoute\n    metadata: {{name: r, namespace: shop}}\n    spec:\n      parentRefs: [{{name: reviews}}]\n      rules:\n{rule}"
        )
    };
    let cases: Vec<(String, &str, Option<usize>)> = vec![
        (route("        - backendRefs: [{name: reviews-v1, port: 0}]\n"), "routes[0].spec.rules[0].backendRefs[0].port: 0 is out of range 1..=65535", Some(12)),
        (route("        - backendRefs: [{name: nope, port: 80}]\n"), "routes[0].spec.rules[0].backendRefs[0].name: unknown service \"shop/nope\"", Some(12)),
        (route("        - timeouts: {request: 10x}\n"), "routes[0].spec.rules[0].timeouts.request: not a Gateway API duration (such as 10s, 1m30s or 250ms)", Some(12)),
        (route("        - matches: [{path: {type: Exact, value: api}}]\n"), "routes[0].spec.rules[0].matches[0].path.value: \"api\" is not an absolute path", Some(12)),
        (route("        - matches: [{path: {type: Prefix}}]\n"), "routes[0].spec.rules[0].matches[0].path.type: \"Prefix\" is not one of PathPrefix, Exact, RegularExpression", Some(12)),
        (route("        - filters: [{type: URLRewrite}]\n"), "routes[0].spec.rules[0].filters[0].type: the field this type names is missing", Some(12)),
        (
            route("        - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, value: b}], remove: [x-a]}}]\n"),
            "routes[0].spec.rules[0].filters[0].requestHeaderModifier: header \"x-a\" appears in more than one action",
            Some(12),
        ),
        ("routes:\n  - kind: HTTPRoute\n    metadata: {name: r, namespace: shop}\n    spec: {parentRefs: [{name: ghost}], rules: [{}]}\n".into(), "routes[0].spec.parentRefs[0].name: unknown service \"shop/ghost\"", Some(9)),
        ("routes:\n  - kind: TCPRoute\n    metadata: {name: r, namespace: shop}\n    spec: {}\n".into(), "malformed config at line 7, column 11", None),
        (
            "policies:\n  - {name: p, namespace: shop, rules: [{to: [{operation: {paths: [/admin]}}]}]}\n".into(),
            "policies[0].rules[0].to[0].operation: L7 fields (hosts, methods, paths, remoteIpBlocks, when) need targetRefs to a waypoint",
            Some(7),
        ),
        (
            "policies:\n  - name: p\n    namespace: shop\n    targetRefs: [{kind: Gateway, name: waypoint}]\n    rules: [{when: [{key: request.auth.claims, values: [x]}]}]\n".into(),
            "policies[0].rules[0].when[0].key: \"request.auth.claims\" is not a condition key this waypoint supports",
            Some(10),
        ),
        (
            "policies:\n  - name: p\n    namespace: shop\n    targetRefs: [{kind: Pod, name: x}]\n".into(),
            "policies[0].targetRefs[0].kind: \"/Pod\" is not one of gateway.networking.k8s.io/Gateway, /Service",
            Some(9),
        ),
        (
            "policies:\n  - name: p\n    namespace: shop\n    targetRefs: [{kind: Gateway, name: w}]\n    rules: [{to: [{operation: {paths: [\"/a/{*}\"]}}]}]\n".into(),
            "policies[0].rules[0].to[0].operation.paths[0]: a path template ({*}, {**}) is not supported",
            Some(7),
        ),
    ];
    for (extra, want, line) in cases {
        let doc = format!("{BASE}{extra}");
        let err = parse(&doc).expect_err(&extra);
        let (got, got_line) = match &err {
            ConfigError::At { line, error } => (error.to_string(), Some(*line)),
            other => (other.to_string(), None),
        };
        assert_eq!(got, want, "{extra}");
        assert_eq!(got_line, line, "line of {want}");
    }
}

#[test]
fn keyed_input_carries_routes_and_l7_policies() {
    use crate::input::MeshInput;
    let objects = parse_objects(&full()).unwrap();
    let mut input = MeshInput::new(&objects.trust_domain);
    let first = input
        .replace(&objects.trust_domain, objects.objects)
        .unwrap();
    assert_eq!(first.snapshot.routes().count(), 2);
    assert_eq!(first.snapshot.l7_policies().count(), 2);
    assert_eq!(first.touched.routes.len(), 2);
    // An edit of one route touches that route alone.
    let edited = parse_objects(&full().replace("weight: 90", "weight: 80")).unwrap();
    let next = input.replace(&edited.trust_domain, edited.objects).unwrap();
    let touched: Vec<String> = next.touched.routes.iter().map(|k| k.to_string()).collect();
    assert_eq!(touched, ["HTTPRoute/shop/reviews"]);
    assert!(next.touched.l7_policies.is_empty() && next.touched.workloads.is_empty());
    let weights: Vec<u32> = next
        .snapshot
        .routes()
        .flat_map(|r| {
            r.rules
                .iter()
                .flat_map(|x| x.backends.iter().map(|b| b.weight))
        })
        .collect();
    assert!(weights.contains(&80));
    // Removing the policies section deletes the L7 policies.
    let without = parse_objects(&format!("{BASE}{ROUTES}")).unwrap();
    let last = input
        .replace(&without.trust_domain, without.objects)
        .unwrap();
    assert_eq!(last.snapshot.l7_policies().count(), 0);
    assert_eq!(last.touched.l7_policies.len(), 2);
}
