//! The demo's L7 part: `shop/waypoint` (its own pod on node 1, config and
//! certificate over xDS from the control plane) serves the `reviews`
//! Service, labelled `istio.io/use-waypoint: waypoint`. An HTTPRoute splits
//! it 90/10 between `reviews-v1` and `reviews-v2`, an L7
//! AuthorizationPolicy on the waypoint denies `POST /admin`, and the reviews
//! pods' L4 policy admits only the waypoint's identity, so a client going
//! straight to a pod is refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::Full;
use mesh_tests::http::{get, h1_client, send_h1, Answer, HttpApp};
use mesh_tests::mesh::{metric_sum, Mesh, CONTROL_PLANE_ADDR};
use mesh_tests::waypoint::{Source, WaypointProc};
use mesh_tests::Topology;

use super::WAIT;

pub const REVIEWS_VIP: &str = "10.96.0.30";
pub const REVIEWS_PORT: u16 = 9080;
const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";
/// GETs sent through the 90/10 split.
const REQUESTS: usize = 200;

/// The demo config's Services, routes and policies of the L7 part
/// (`services`, then `routes` and L7 `policies` entries).
pub fn services() -> String {
    format!(
        r#"  - name: reviews
    namespace: shop
    vip: {REVIEWS_VIP}
    ports: [{{port: 80, targetPort: {REVIEWS_PORT}, appProtocol: http}}]
    selector: {{app: reviews}}
    labels: {{istio.io/use-waypoint: waypoint}}
  - {{name: reviews-v1, namespace: shop, vip: 10.96.0.31, ports: [{{port: 80, targetPort: {REVIEWS_PORT}}}], selector: {{app: reviews, version: v1}}}}
  - {{name: reviews-v2, namespace: shop, vip: 10.96.0.32, ports: [{{port: 80, targetPort: {REVIEWS_PORT}}}], selector: {{app: reviews, version: v2}}}}
"#
    )
}

pub const ROUTES: &str = r#"routes:
  - kind: HTTPRoute
    metadata: {name: reviews, namespace: shop}
    spec:
      parentRefs: [{name: reviews, port: 80}]
      rules:
        - backendRefs: [{name: reviews-v1, port: 80, weight: 90}, {name: reviews-v2, port: 80, weight: 10}]
"#;

pub const POLICIES: &str = r#"  - name: deny-admin-writes
    namespace: shop
    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
    action: DENY
    rules: [{to: [{operation: {methods: [POST], paths: [/admin, "/admin/*"]}}]}]
  - name: reviews-allow-waypoint
    namespace: shop
    selector: {matchLabels: {app: reviews}}
    action: ALLOW
    rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/waypoint]}}]}]
"#;

/// Binds a token to the waypoint's identity in the control plane's tokens
/// file (the control plane reads it at start: restart it afterwards).
pub fn add_token(mesh: &Mesh) -> PathBuf {
    mesh.add_token(
        WAYPOINT_ID,
        &format!(
            "demo-waypoint-{}-0123456789abcdef0123456789",
            std::process::id()
        ),
    )
}

/// The waypoint process (over xDS) and the two reviews apps.
pub struct L7 {
    pub waypoint: WaypointProc,
    apps: [HttpApp; 2],
}

pub fn start(topo: &Topology, mesh: &Mesh, token: &std::path::Path) -> L7 {
    let waypoint = WaypointProc::start(
        mesh,
        &topo.pod("waypoint").ns,
        "waypoint",
        "shop",
        Source::Xds {
            address: CONTROL_PLANE_ADDR,
            token_file: token,
        },
        &[],
    );
    let listen = |pod: &str| {
        topo.pod(pod)
            .ns
            .listen(SocketAddr::from(([0, 0, 0, 0], REVIEWS_PORT)))
            .expect("reviews listener")
    };
    let apps = [
        HttpApp::serve(listen("reviews-v1"), "reviews-v1"),
        HttpApp::serve(listen("reviews-v2"), "reviews-v2"),
    ];
    L7 { waypoint, apps }
}

fn post(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::post(path)
        .header(http::header::HOST, "reviews.shop")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// One request on a fresh connection from frontend, within [`WAIT`].
async fn once(
    topo: &Topology,
    to: SocketAddr,
    req: http::Request<Full<Bytes>>,
) -> Result<Answer, String> {
    let attempt = async {
        let io = topo
            .pod("frontend")
            .ns
            .connect(to)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut h1 = h1_client(io).await.map_err(|e| format!("handshake: {e}"))?;
        send_h1(&mut h1, req)
            .await
            .map_err(|e| format!("no response: {e}"))
    };
    tokio::time::timeout(WAIT, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

fn line(verdict: &str, what: &str, detail: &str) {
    println!("  {verdict:<8} {what:<44} {detail}");
}

/// The split, the denial, and the bypass, one line each.
pub async fn traffic(topo: &Topology, l7: &L7) {
    println!("\n== L7 through the waypoint (shop/waypoint on node1: HTTP per request, over HBONE both ways)");
    println!("  reviews.shop {REVIEWS_VIP}:80 carries istio.io/use-waypoint=waypoint: node1's ztunnel sends it to the waypoint");
    println!("  HTTPRoute shop/reviews: 90% reviews-v1, 10% reviews-v2 (both pods on node2)");
    println!("  AuthorizationPolicy shop/deny-admin-writes on the waypoint: DENY POST /admin");
    println!("  AuthorizationPolicy shop/reviews-allow-waypoint on the reviews pods (L4): ALLOW only shop/sa/waypoint");
    let vip: SocketAddr = format!("{REVIEWS_VIP}:80").parse().expect("vip");

    // The split: one keep-alive connection, balanced per request.
    let split = async {
        let io = topo
            .pod("frontend")
            .ns
            .connect(vip)
            .await
            .map_err(|e| e.to_string())?;
        let mut h1 = h1_client(io).await.map_err(|e| e.to_string())?;
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..REQUESTS {
            let a = send_h1(&mut h1, get("reviews.shop", &format!("/reviews/{i}")))
                .await
                .map_err(|e| e.to_string())?;
            let who = match a.status {
                200 => a.body.trim().to_owned(),
                s => format!("status {s}"),
            };
            *per.entry(who).or_default() += 1;
        }
        Ok::<_, String>(per)
    };
    match tokio::time::timeout(WAIT * 4, split).await {
        Ok(Ok(per)) => {
            let counts: Vec<String> = per
                .iter()
                .map(|(k, v)| format!("{k} x{v} ({:.1}%)", *v as f64 * 100.0 / REQUESTS as f64))
                .collect();
            line(
                "ok",
                &format!("frontend GET x{REQUESTS} -> reviews VIP (1 conn)"),
                &counts.join(", "),
            );
        }
        Ok(Err(e)) => line("FAILED", "frontend GET -> reviews VIP", &e),
        Err(_) => line("FAILED", "frontend GET -> reviews VIP", "timed out"),
    }

    // The L7 denial, answered by the waypoint; the same path by GET passes.
    for (req, what) in [
        (post("/admin"), "frontend POST /admin -> reviews VIP"),
        (
            get("reviews.shop", "/admin"),
            "frontend GET /admin -> reviews VIP",
        ),
    ] {
        match once(topo, vip, req).await {
            Ok(a) if a.status == 200 => line("ok", what, &format!("200 from {}", a.body.trim())),
            Ok(a) => {
                let posts = l7
                    .apps
                    .iter()
                    .flat_map(|app| app.seen())
                    .filter(|r| r.method == "POST")
                    .count();
                line(
                    "DENIED",
                    what,
                    &format!(
                        "{} \"{}\" from the waypoint; reviews saw {posts} POSTs",
                        a.status,
                        a.body.trim()
                    ),
                )
            }
            Err(e) => line("FAILED", what, &e),
        }
    }

    // Straight to a pod, around the waypoint: the pod's L4 policy refuses.
    let pod = SocketAddr::from((topo.pod("reviews-v1").ip, REVIEWS_PORT));
    let what = format!("frontend GET -> reviews-v1 {pod} (bypass)");
    match once(topo, pod, get("reviews.shop", "/direct")).await {
        Ok(a) => line(
            "LEAKED",
            &what,
            &format!("{} (the bypass got through!)", a.status),
        ),
        Err(e) => line(
            "REFUSED",
            &what,
            &format!("{e}: only the waypoint may reach reviews"),
        ),
    }
}

/// The waypoint's own view: requests by version and status.
pub fn print_metrics(l7: &L7) {
    let text = l7.waypoint.metrics();
    let m = |only: &str| metric_sum(&text, "istio_requests_total", Some(only));
    println!(
        "\n== Waypoint metrics (GET :15020/metrics in the waypoint pod, reporter=\"waypoint\")"
    );
    println!(
        "  istio_requests_total: destination reviews-v1 {}, reviews-v2 {}; response_code 200: {}, 403: {} (response_flags DENY: {})",
        m("destination_workload=\"reviews-v1\""),
        m("destination_workload=\"reviews-v2\""),
        m("response_code=\"200\""),
        m("response_code=\"403\""),
        m("response_flags=\"DENY\""),
    );
    let denied: Vec<String> = l7
        .waypoint
        .access_log()
        .iter()
        .filter(|e| e["status"] == 403)
        .map(|e| {
            format!(
                "{} {} from {} -> {} {}",
                e["method"].as_str().unwrap_or("?"),
                e["path"].as_str().unwrap_or("?"),
                e["src.identity"].as_str().unwrap_or("?"),
                e["status"],
                e["response_flags"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    println!("  access log, denied: {}", denied.join("; "));
}
