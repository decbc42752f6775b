//! The waypoint's L7 configuration end to end (client → ztunnel → waypoint
//! → ztunnel → servers): an HTTPRoute on `echo` with a 90/10 split, a
//! header match, an Exact path listed after a prefix, a retried flaky path
//! and a timed-out slow one; L7 AuthorizationPolicies on the waypoint's
//! Gateway and on the `private` Service. Same scenario as `waypoint.rs`.

use mesh_tests::http::{get, h1_client, send_h1, HttpApp};
use mesh_tests::mesh::{metric_sum, wait_until};
use mesh_tests::require_root;
use mesh_tests::waypoint::scenario::*;

const L7: &str = r#"routes:
  - kind: HTTPRoute
    metadata: {name: echo, namespace: shop}
    spec:
      parentRefs: [{name: echo, port: 80}]
      rules:
        - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: "true"}]}]
          backendRefs: [{name: echo-v2, port: 80}]
        - matches: [{path: {type: PathPrefix, value: /api}}]
          backendRefs: [{name: echo-v1, port: 80, weight: 90}, {name: echo-v2, port: 80, weight: 10}]
        - matches: [{path: {type: Exact, value: /api/exact}}]
          backendRefs: [{name: echo-v2, port: 80}]
        - matches: [{path: {type: PathPrefix, value: /flaky}}]
          backendRefs: [{name: echo-v1, port: 80}]
          retry: {attempts: 2, codes: [503], backoff: 10ms}
        - matches: [{path: {type: PathPrefix, value: /delay}}]
          backendRefs: [{name: echo-v1, port: 80}]
          timeouts: {request: 500ms}
        - matches: [{path: {type: PathPrefix, value: /drip}}]
          backendRefs: [{name: echo-v1, port: 80}]
          timeouts: {request: 500ms}
        - matches: [{path: {type: PathPrefix, value: /mirror}}]
          backendRefs: [{name: echo-v1, port: 80}]
          filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}}}]
        - backendRefs: [{name: echo, port: 80}]
policies:
  - name: deny-admin-writes
    namespace: shop
    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
    action: DENY
    rules: [{to: [{operation: {methods: [POST], paths: [/admin, "/admin/*"]}}]}]
  - name: private-for-client-2
    namespace: shop
    targetRefs: [{kind: Service, group: "", name: private}]
    rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client-2]}}]}]
"#;

/// `n` GETs of `path` (with `header`, if any) on one connection from
/// `pod`: how many each endpoint answered, and every status.
async fn hits(
    s: &Scenario,
    pod: &str,
    vip: &str,
    path: &str,
    header: Option<(&'static str, &str)>,
    n: usize,
) -> (std::collections::BTreeMap<String, usize>, Vec<u16>) {
    let mut h1 = h1_client(s.connect_from(pod, vip).await).await.unwrap();
    let (mut answers, mut statuses) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let mut req = get("echo.shop", path);
        if let Some((k, v)) = header {
            req.headers_mut().insert(k, v.parse().unwrap());
        }
        let a = send_h1(&mut h1, req).await.expect("a response");
        statuses.push(a.status);
        answers.push(a.body);
    }
    (bodies(&answers), statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ninety_ten_split_a_header_match_and_path_precedence() {
    if !require_root() {
        return;
    }
    let s = Scenario::start_with(L7, &[]);
    let _apps: [HttpApp; 2] = s.echo_apps();
    // 2,000 requests on the 90/10 rule: within ±3 points of 10%.
    let (per, statuses) = hits(&s, "client", ECHO_VIP, "/api/x", None, 2000).await;
    assert!(statuses.iter().all(|&c| c == 200), "{statuses:?}");
    let v2 = per.get("echo-2").copied().unwrap_or(0);
    assert!(
        (140..=260).contains(&v2),
        "{v2} of 2000 went to v2: {per:?}"
    );
    // A header match sends all to v2.
    let (per, _) = hits(
        &s,
        "client",
        ECHO_VIP,
        "/api/x",
        Some(("x-canary", "true")),
        20,
    )
    .await;
    assert_eq!(per.get("echo-2"), Some(&20), "{per:?}");
    // An Exact path beats a prefix, though listed after it.
    let (per, _) = hits(&s, "client", ECHO_VIP, "/api/exact", None, 20).await;
    assert_eq!(per.get("echo-2"), Some(&20), "{per:?}");
    // The catch-all rule: the Service itself.
    let (per, _) = hits(&s, "client", ECHO_VIP, "/other", None, 20).await;
    assert_eq!(per.len(), 2, "{per:?}");
    let ev = s
        .waypoint
        .wait_event("a routed request", |e| e["path"] == "/api/exact");
    assert_eq!(ev["route"], "HTTPRoute/shop/echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_hides_a_flaky_upstream_and_a_timeout_cuts_a_slow_one() {
    if !require_root() {
        return;
    }
    let s = Scenario::start_with(L7, &[]);
    let apps = s.echo_apps();
    // echo-1 fails every third request; the rule retries 503.
    let (_, statuses) = hits(&s, "client", ECHO_VIP, "/flaky/x", None, 30).await;
    assert!(statuses.iter().all(|&c| c == 200), "{statuses:?}");
    let tries = apps[0]
        .seen()
        .iter()
        .filter(|r| r.path == "/flaky/x")
        .count();
    // Requests 3, 6, ..., 42 of the 44 it saw failed and were retried.
    assert_eq!(tries, 44, "30 answers, 14 of them after a retry");
    let ev = s.waypoint.wait_event("a retried request", |e| {
        e["path"] == "/flaky/x" && e["attempts"] == 2
    });
    assert_eq!(ev["status"], 200);
    // A request timeout of 500 ms cuts a 3 s upstream.
    let (_, statuses) = hits(&s, "client", ECHO_VIP, "/delay/3000", None, 1).await;
    assert_eq!(statuses, [504]);
    s.waypoint
        .wait_event("the timeout", |e| e["reason"] == "request_timeout");
    // The timeout covers the whole response, not only its head: a body
    // still streaming at 500 ms is cut.
    let mut h1 = h1_client(s.connect(ECHO_VIP).await).await.unwrap();
    let cut = send_h1(&mut h1, get("echo.shop", "/drip/3000")).await;
    assert!(cut.is_err(), "the body was not cut: {cut:?}");
    let ev = s.waypoint.wait_event("the cut body", |e| {
        e["path"] == "/drip/3000" && e["reason"] == "request_timeout"
    });
    assert_eq!(ev["status"], 200, "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_policies_deny_post_admin_and_admit_only_the_allowed_principal() {
    if !require_root() {
        return;
    }
    let s = Scenario::start_with(L7, &[]);
    let apps = s.echo_apps();
    let mut h1 = h1_client(s.connect(ECHO_VIP).await).await.unwrap();
    let post = |path: &str| {
        http::Request::post(path)
            .header("host", "echo.shop")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap()
    };
    for path in ["/admin", "/admin/users"] {
        let a = send_h1(&mut h1, post(path)).await.unwrap();
        assert_eq!(
            (a.status, a.body.as_str()),
            (403, "RBAC: access denied"),
            "POST {path}"
        );
    }
    let a = send_h1(&mut h1, get("echo.shop", "/admin")).await.unwrap();
    assert_eq!(a.status, 200, "GET /admin passes");
    let posted: usize = apps
        .iter()
        .flat_map(|a| a.seen())
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posted, 0, "a denied request reaches no upstream");
    // `private` admits client-2 only.
    let (_, statuses) = hits(&s, "client", PRIVATE_VIP, "/", None, 3).await;
    assert_eq!(statuses, [403, 403, 403]);
    let (_, statuses) = hits(&s, "client-2", PRIVATE_VIP, "/", None, 3).await;
    assert_eq!(statuses, [200, 200, 200]);
    let metrics = s.waypoint.metrics();
    assert!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            Some("response_flags=\"DENY\"")
        ) >= 5,
        "{metrics}"
    );
    let ev = s.waypoint.wait_event("a denial", |e| e["status"] == 403);
    assert_eq!(ev["response_flags"], "DENY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_a_copy_of_the_request_with_its_body() {
    if !require_root() {
        return;
    }
    let s = Scenario::start_with(L7, &[]);
    let apps = s.echo_apps();
    let mut h1 = h1_client(s.connect(ECHO_VIP).await).await.unwrap();
    let post = http::Request::post("/mirror/x")
        .header("host", "echo.shop")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"mirror-me-please",
        )))
        .unwrap();
    let a = send_h1(&mut h1, post).await.unwrap();
    assert_eq!((a.status, a.body.trim()), (200, "echo-1"));
    // The copy reaches the mirror (echo-v2) with the whole body.
    wait_until("the mirror's copy", || apps[1].seen_path("/mirror/x") == 1);
    let copy = apps[1]
        .seen()
        .into_iter()
        .find(|r| r.path == "/mirror/x")
        .unwrap();
    assert_eq!(copy.method, "POST");
    assert_eq!(&copy.body[..], b"mirror-me-please", "{copy:?}");
    assert_eq!(copy.headers["host"], "echo.shop-shadow");
    // The request itself went to echo-v1 once.
    let orig: Vec<_> = apps[0]
        .seen()
        .into_iter()
        .filter(|r| r.path == "/mirror/x")
        .collect();
    assert_eq!(orig.len(), 1);
    assert_eq!(&orig[0].body[..], b"mirror-me-please");
}

/// An L4 policy at the echo pods: only the waypoint may connect.
const ONLY_THE_WAYPOINT: &str = r#"  - name: echo-only-via-waypoint
    namespace: shop
    selector: {matchLabels: {app: echo}}
    action: ALLOW
    rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/waypoint]}}]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l4_policy_allowing_only_the_waypoint_blocks_a_bypass() {
    if !require_root() {
        return;
    }
    let s = Scenario::start_with(&format!("{L7}{ONLY_THE_WAYPOINT}"), &[]);
    let apps = s.echo_apps();
    // Through the waypoint: served.
    let (per, statuses) = hits(&s, "client", ECHO_VIP, "/via", None, 6).await;
    assert_eq!(statuses, [200; 6], "{per:?}");
    // Around it: the Service without a waypoint (same pods), and a pod.
    let pod = format!("{}:8080", s.topo.pod("echo-1").ip);
    for to in [DIRECT_VIP, pod.as_str()] {
        let io = s.connect(to).await;
        let answer = tokio::time::timeout(WAIT, async {
            let mut h1 = h1_client(io).await?;
            send_h1(&mut h1, get("echo.shop", "/bypass")).await
        })
        .await
        .expect("refused, not hung");
        assert!(answer.is_err(), "{to}: the bypass was answered: {answer:?}");
    }
    assert!(apps.iter().all(|a| a.seen_path("/bypass") == 0));
    assert!(apps.iter().map(|a| a.seen_path("/via")).sum::<usize>() == 6);
    // The destination ztunnel denied the client's own identity.
    wait_until("the destination's DENY of the client", || {
        let metrics = s.mesh.metrics(2);
        let denied: u64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("istio_tcp_connections_closed_total{reporter=\"destination\"")
                    && l.contains("source_principal=\"cluster.local/ns/shop/sa/client\"")
                    && l.contains("response_flags=\"DENY\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
        denied >= 2
    });
}
