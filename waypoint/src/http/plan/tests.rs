use super::*;
use crate::admit::admit;

const CONFIG: &str = r#"
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces: [{name: shop, labels: {istio.io/dataplane-mode: ambient}}]
workloads:
  - {name: waypoint, namespace: shop, serviceAccount: waypoint, ip: 10.1.1.2, node: n1, labels: {istio.io/dataplane-mode: none}}
  - {name: v1, namespace: shop, serviceAccount: reviews, ip: 10.1.1.10, node: n1, labels: {app: reviews, version: v1}}
  - {name: v2, namespace: shop, serviceAccount: reviews, ip: 10.1.1.11, node: n1, labels: {app: reviews, version: v2}}
  - {name: pinned, namespace: shop, ip: 10.1.1.12, node: n1, labels: {istio.io/use-waypoint: waypoint}}
services:
  - {name: reviews, namespace: shop, vip: 10.96.0.20, ports: [{port: 9080}], selector: {app: reviews}, labels: {istio.io/use-waypoint: waypoint}}
  - {name: reviews-v1, namespace: shop, vip: 10.96.0.21, ports: [{port: 9080}], selector: {app: reviews, version: v1}}
  - {name: reviews-v2, namespace: shop, vip: 10.96.0.22, ports: [{port: 9080}], selector: {app: reviews, version: v2}}
  - {name: plain, namespace: shop, vip: 10.96.0.23, ports: [{port: 80}], selector: {app: reviews}, labels: {istio.io/use-waypoint: waypoint}}
routes:
  - kind: HTTPRoute
    metadata: {name: reviews, namespace: shop}
    spec:
      parentRefs: [{name: reviews, port: 9080}]
      rules:
        - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: "true"}]}]
          backendRefs: [{name: reviews-v2, port: 9080}]
        - matches: [{path: {type: PathPrefix, value: /old}}]
          filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}}]
        - matches: [{path: {type: PathPrefix, value: /broken}}]
          backendRefs: [{name: reviews-v1, port: 9080}]
          fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
        - matches: [{path: {type: PathPrefix, value: /api}}]
          filters:
            - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: split}]}}
            - {type: RequestMirror, requestMirror: {backendRef: {name: reviews-v2, port: 9080}, percent: 50}}
          backendRefs: [{name: reviews-v1, port: 9080, weight: 90}, {name: reviews-v2, port: 9080, weight: 10}]
policies:
  - name: deny-admin-writes
    namespace: shop
    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
    action: DENY
    rules: [{to: [{operation: {methods: [POST], paths: [/admin, "/admin/*"]}}]}]
  - name: plain-frontend-only
    namespace: shop
    targetRefs: [{kind: Service, group: "", name: plain}]
    rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]
"#;

fn snap() -> &'static Snapshot {
    static SNAP: std::sync::OnceLock<Snapshot> = std::sync::OnceLock::new();
    SNAP.get_or_init(|| mesh_model::config::parse(CONFIG).unwrap())
}

fn gateway() -> Gateway {
    Gateway {
        namespace: "shop".into(),
        name: "waypoint".into(),
    }
}

/// The plan for `method path` (with `headers`) to `authority` from `peer`,
/// with the draws given (repeated as needed).
fn run(
    authority: &str,
    peer: &str,
    req: http::request::Builder,
    draws: &[u64],
) -> (Result<String, Reply>, http::request::Parts) {
    let s = snap();
    let me: SpiffeId = "spiffe://cluster.local/ns/shop/sa/waypoint"
        .parse()
        .unwrap();
    let authority: SocketAddr = authority.parse().unwrap();
    let target = admit(s, &me, authority).unwrap();
    let peer: SpiffeId = peer.parse().unwrap();
    let gw = gateway();
    let ctx = PlanCtx {
        snap: s,
        target: &target,
        gateway: &gw,
        peer: &peer,
        source_ip: "10.1.1.30".parse().unwrap(),
        authority,
    };
    let mut parts = req.body(()).unwrap().into_parts().0;
    let mut i = 0;
    let mut draw = || {
        let d = draws[i % draws.len()];
        i += 1;
        d
    };
    let got = match plan(&ctx, &mut parts, &mut draw) {
        Plan::Reply(r) => Err(r),
        Plan::Forward(f) => Ok(format!(
            "{} via {} mirrors [{}]",
            f.backend.group,
            f.route.map_or("default".into(), |r| r.to_string()),
            f.mirrors
                .iter()
                .map(|m| m.group.as_str())
                .collect::<Vec<_>>()
                .join(",")
        )),
    };
    (got, parts)
}

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/other";

fn get(path: &str) -> http::request::Builder {
    http::Request::get(path).header("host", "reviews")
}

#[test]
fn routing_table() {
    let route = "HTTPRoute/shop/reviews";
    type Case = (
        &'static str,
        http::request::Builder,
        Vec<u64>,
        Result<String, u16>,
    );
    let cases: Vec<Case> = vec![
        (
            "a header match goes to v2",
            get("/api/x").header("x-canary", "true"),
            vec![0],
            Ok(format!("shop/reviews-v2 via {route} mirrors []")),
        ),
        (
            "a draw under 90 of 100 is v1, with the mirror",
            get("/api/x"),
            vec![89, 0],
            Ok(format!(
                "shop/reviews-v1 via {route} mirrors [shop/reviews-v2]"
            )),
        ),
        (
            "a draw of 90 or more is v2, without the mirror",
            get("/api/x"),
            vec![90, 99],
            Ok(format!("shop/reviews-v2 via {route} mirrors []")),
        ),
        ("no rule matches: 404", get("/elsewhere"), vec![0], Err(404)),
        ("the fault aborts", get("/broken/1"), vec![0], Err(503)),
        ("a redirect", get("/old/page"), vec![0], Err(301)),
        (
            "DENY POST /admin on the Gateway",
            http::Request::post("/admin").header("host", "reviews"),
            vec![0],
            Err(403),
        ),
    ];
    for (what, req, draws, want) in cases {
        let (got, _) = run("10.96.0.20:9080", FRONTEND, req, &draws);
        assert_eq!(got.map_err(|r| r.status.as_u16()), want, "{what}");
    }
}

#[test]
fn get_admin_passes_and_post_admin_is_denied_with_istios_body() {
    let (got, _) = run("10.96.0.23:80", FRONTEND, get("/admin"), &[0]);
    assert_eq!(
        got.unwrap(),
        "shop/plain via default mirrors []",
        "no route: the default"
    );
    let post = http::Request::post("/admin/users").header("host", "plain");
    let Err(r) = run("10.96.0.23:80", FRONTEND, post, &[0]).0 else {
        panic!("POST /admin/users passed")
    };
    assert_eq!(
        (r.status.as_u16(), r.body, r.flag),
        (403, DENIED_BODY, ResponseFlag::Deny)
    );
    assert_eq!(r.reason, "deny_policy");
}

#[test]
fn a_principal_allow_admits_only_its_client() {
    assert!(run("10.96.0.23:80", FRONTEND, get("/"), &[0]).0.is_ok());
    let Err(r) = run("10.96.0.23:80", OTHER, get("/"), &[0]).0 else {
        panic!("another principal passed")
    };
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[test]
fn filters_change_the_request_and_redirects_say_where() {
    let (_, parts) = run("10.96.0.20:9080", FRONTEND, get("/api/x"), &[0]);
    assert_eq!(parts.headers["x-route"], "split");
    let Err(r) = run("10.96.0.20:9080", FRONTEND, get("/old/page?q=1"), &[0]).0 else {
        panic!("no redirect")
    };
    assert_eq!(r.location.unwrap(), "http://reviews:9080/new/page?q=1");
}

#[test]
fn a_pod_dialled_directly_gets_the_default_route() {
    let (got, _) = run("10.1.1.12:8080", FRONTEND, get("/api/x"), &[0]);
    assert_eq!(got.unwrap(), "shop/pinned via default mirrors []");
}

#[test]
fn a_ninety_ten_split_lands_within_a_point_of_its_weights() {
    let mut v2 = 0;
    for i in 0..10_000u64 {
        // A pseudo-random sequence, as rand would give.
        let d = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
        let (got, _) = run("10.96.0.20:9080", FRONTEND, get("/api/x"), &[d, 1]);
        if got.unwrap().starts_with("shop/reviews-v2") {
            v2 += 1;
        }
    }
    assert!((900..=1100).contains(&v2), "{v2} of 10000 went to v2");
}
