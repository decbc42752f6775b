//! A waypoint end to end in network namespaces, with Kubernetes as the
//! source: the test API server is the cluster (in node 1's namespace),
//! the real `control-plane` runs there with `--source kubernetes`, a real
//! `ztunnel` per node and a real `waypoint` (its own pod namespace, its
//! token bound to its identity) follow it over xDS. The `shop` Service
//! `echo` is bound to the waypoint Gateway by its `istio.io/use-waypoint`
//! label; `kubectl apply` of an HTTPRoute and of an AuthorizationPolicy
//! with `targetRefs` changes what the waypoint does, live. The same L7
//! rule in a policy of ztunnel's (a `selector`) is split as Istio splits
//! it: in an ALLOW it allows nothing (the destination ztunnel refuses even
//! the waypoint's GET), in a DENY it is cut to its L4 part (which then
//! denies the waypoint outright).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_tests::http::{get, h1_client, send_h1};
use mesh_tests::kube_api::{load_yaml, ApiServer, Store, DEFAULT_BOOKMARK_INTERVAL};
use mesh_tests::mesh::{Mesh, CONTROL_PLANE_ADDR, CONTROL_PLANE_METRICS_ADDR};
use mesh_tests::require_root;
use mesh_tests::waypoint::scenario::{bodies, Scenario, ECHO_VIP, WAYPOINT_ID};
use mesh_tests::waypoint::{Source, WaypointProc};

const WAIT: Duration = Duration::from_secs(20);
const API_ADDR: &str = "10.0.0.1:6443";

fn cluster(topo: &mesh_tests::Topology) -> String {
    let pod = |name: &str, sa: &str, labels: &str| {
        let p = topo.pod(name);
        format!(
            r#"
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{{labels}}}}}
spec: {{serviceAccountName: {sa}, nodeName: node{}, containers: [{{name: c, image: x}}]}}
status:
  phase: Running
  podIPs: [{{ip: {}}}]
  conditions: [{{type: Ready, status: "True"}}]
"#,
            p.node, p.ip
        )
    };
    let slice = |svc: &str, pods: &[&str]| {
        let endpoints: String = pods
            .iter()
            .map(|p| {
                format!(
                    "- {{addresses: [{}], conditions: {{ready: true}}, targetRef: {{kind: Pod, namespace: shop, name: {p}}}}}\n",
                    topo.pod(p).ip
                )
            })
            .collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {svc}-1, namespace: shop, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nendpoints:\n{endpoints}"
        )
    };
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: shop}}
spec: {{gatewayClassName: istio-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop, labels: {{istio.io/use-waypoint: waypoint}}}}
spec: {{clusterIP: 10.96.0.10, selector: {{app: echo}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo-v2, namespace: shop}}
spec: {{clusterIP: 10.96.0.15, selector: {{app: echo, version: v2}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}
{}{}{}{}{}{}
"#,
        pod("client", "client", "app: client"),
        pod(
            "waypoint",
            "waypoint",
            "gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none"
        ),
        pod("echo-1", "echo", "app: echo, version: v1"),
        pod("echo-2", "echo", "app: echo, version: v2"),
        slice("echo", &["echo-1", "echo-2"]),
        slice("echo-v2", &["echo-2"]),
    )
}

const ROUTE_AND_POLICY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - backendRefs: [{name: echo, port: 80}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-writes, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: [POST], paths: ["/admin"]}}]}]
"#;

fn post_admin() -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post("/admin")
        .header("host", "echo.shop")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_and_a_waypoint_policy_applied_with_kubectl_take_effect() {
    if !require_root() || !mesh_tests::kube_cluster::require_kubectl() {
        return;
    }
    let topo = Scenario::topology();
    let node1 = topo.node(1).ns.clone();
    let store = Arc::new(Store::default());
    load_yaml(&store, &cluster(&topo)).unwrap();
    let listener = node1.std_listener(API_ADDR.parse().unwrap()).unwrap();
    let api = ApiServer::serve(store.clone(), listener, DEFAULT_BOOKMARK_INTERVAL).unwrap();

    // The harness's control plane, replaced by one in Kubernetes mode with
    // the same CA (through the Secret), tokens (the waypoint's added) and
    // address.
    let mut mesh = Mesh::with_control_plane(&topo, "{}\n");
    let token = mesh.add_token(
        WAYPOINT_ID,
        &format!(
            "kube-waypoint-token-{}-0123456789abcdef",
            std::process::id()
        ),
    );
    mesh.kill_control_plane();
    let dir = mesh.scratch("kube");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap().to_owned();
    // The harness's root, brought as the cluster's CA (`cacerts`).
    mesh_tests::kube_cluster::bring_ca(&store, mesh.ca_dir());
    let tokens = mesh.ca_dir().parent().unwrap().join("tokens.yaml");
    let stderr = mesh.ca_dir().parent().unwrap().join("control-plane.stderr");
    let script = format!("exec \"$0\" \"$@\" 2>>{}", stderr.display());
    let bin = mesh_tests::mesh::control_plane_bin();
    let argv = [
        "sh",
        "-c",
        &script,
        bin.to_str().unwrap(),
        "--source",
        "kubernetes",
        "--kubeconfig",
        &kubeconfig,
        "--ca-dir",
        mesh.ca_dir().to_str().unwrap(),
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--listen",
        CONTROL_PLANE_ADDR,
        "--metrics-listen",
        CONTROL_PLANE_METRICS_ADDR,
    ];
    let _cp = node1.spawn(&argv).expect("spawn control-plane");
    mesh.start_all();
    let waypoint = WaypointProc::start(
        &mesh,
        &topo.pod("waypoint").ns,
        "waypoint",
        "shop",
        Source::Xds {
            address: CONTROL_PLANE_ADDR,
            token_file: &token,
        },
        &[],
    );
    let s = Scenario {
        waypoint,
        mesh,
        topo,
    };
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let _apps = s.echo_apps();

    // Bound by the label (the Gateway's pod answers for it): both
    // endpoints, balanced by the waypoint.
    let mut h1 = h1_client(s.connect(ECHO_VIP).await)
        .await
        .expect("h1 handshake");
    let mut got = Vec::new();
    for i in 0..10 {
        let a = send_h1(&mut h1, get("echo.shop", &format!("/before/{i}")))
            .await
            .expect("HTTP/1.1 through the waypoint");
        assert_eq!(a.status, 200, "{a:?}\n{}", log());
        got.push(a.body);
    }
    assert_eq!(bodies(&got).len(), 2, "{got:?}");
    let a = send_h1(&mut h1, post_admin()).await.unwrap();
    assert_eq!(a.status, 200, "no policy yet");
    let events = s.waypoint.access_log();
    assert!(!events.is_empty(), "the requests crossed the waypoint");

    // kubectl apply, from node 1 (where the API server listens).
    let manifest = s.mesh.scratch("kube").join("route.yaml");
    std::fs::write(&manifest, ROUTE_AND_POLICY).unwrap();
    let applied = Instant::now();
    node1
        .exec(&format!(
            "KUBECONFIG={kubeconfig} kubectl apply --validate=false -f {}",
            manifest.display()
        ))
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
    loop {
        let mut canary = get("echo.shop", "/api");
        canary
            .headers_mut()
            .insert("x-canary", "true".parse().unwrap());
        let routed = send_h1(&mut h1, canary)
            .await
            .is_ok_and(|a| a.status == 200 && a.body.trim() == "echo-2");
        let denied = send_h1(&mut h1, post_admin())
            .await
            .is_ok_and(|a| a.status == 403);
        if routed && denied {
            break;
        }
        assert!(
            applied.elapsed() < WAIT,
            "the route and the policy never took effect; control plane:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "kubectl apply HTTPRoute + AuthorizationPolicy(targetRefs) → enforced at the waypoint: {:?}",
        applied.elapsed()
    );
    // Now every canary goes to v2, and GET /admin still passes.
    for _ in 0..5 {
        let mut canary = get("echo.shop", "/api");
        canary
            .headers_mut()
            .insert("x-canary", "true".parse().unwrap());
        let a = send_h1(&mut h1, canary).await.unwrap();
        assert_eq!((a.status, a.body.trim()), (200, "echo-2"));
    }
    let a = send_h1(&mut h1, get("echo.shop", "/admin")).await.unwrap();
    assert_eq!(a.status, 200);

    // kubectl delete of the route: back to both endpoints.
    let deleted = Instant::now();
    node1
        .exec(&format!(
            "KUBECONFIG={kubeconfig} kubectl delete httproute -n shop echo-canary"
        ))
        .unwrap();
    loop {
        let mut got = Vec::new();
        for _ in 0..10 {
            let mut canary = get("echo.shop", "/api");
            canary
                .headers_mut()
                .insert("x-canary", "true".parse().unwrap());
            if let Ok(a) = send_h1(&mut h1, canary).await {
                got.push(a.body);
            }
        }
        if bodies(&got).len() == 2 {
            break;
        }
        assert!(deleted.elapsed() < WAIT, "the route was never removed");
    }
    eprintln!(
        "kubectl delete HTTPRoute → canary header no longer routed: {:?}",
        deleted.elapsed()
    );

    // The L4/L7 split at the destination ztunnel (the waypoint's tunnels
    // arrive there under its identity).
    let ztunnel_policy = |action: &str| {
        format!(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo-l7-at-ztunnel, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: {action}
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/shop/sa/waypoint"]}}}}]
    to: [{{operation: {{methods: [POST]}}}}]
"#
        )
    };
    for (action, what) in [
        ("ALLOW", "an ALLOW whose rule needs L7 allows nothing"),
        ("DENY", "a DENY cut to its L4 part denies the waypoint"),
    ] {
        std::fs::write(&manifest, ztunnel_policy(action)).unwrap();
        let applied = Instant::now();
        node1
            .exec(&format!(
                "KUBECONFIG={kubeconfig} kubectl apply --validate=false -f {}",
                manifest.display()
            ))
            .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
        loop {
            // A fresh connection each time: the GET is not one ztunnel
            // can tell from a POST.
            let refused = match h1_client(s.connect(ECHO_VIP).await).await {
                Ok(mut c) => send_h1(&mut c, get("echo.shop", "/split"))
                    .await
                    .map_or(true, |a| a.status >= 500),
                Err(_) => true,
            };
            if refused {
                break;
            }
            assert!(
                applied.elapsed() < WAIT,
                "{what}: never took effect; control plane:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("{what}: in effect after {:?}", applied.elapsed());
        node1
            .exec(&format!(
                "KUBECONFIG={kubeconfig} kubectl delete authorizationpolicy -n shop echo-l7-at-ztunnel"
            ))
            .unwrap();
        let deleted = Instant::now();
        loop {
            let ok = match h1_client(s.connect(ECHO_VIP).await).await {
                Ok(mut c) => send_h1(&mut c, get("echo.shop", "/split"))
                    .await
                    .is_ok_and(|a| a.status == 200),
                Err(_) => false,
            };
            if ok {
                break;
            }
            assert!(deleted.elapsed() < WAIT, "{what}: never lifted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(api);
}
