//! Waypoints in Kubernetes mode, against the test API server: the real
//! `control-plane` binary (`--source kubernetes`) watches Gateway API
//! objects and Istio policies, serves a waypoint's xDS view, and runs the
//! waypoint controller. The cluster is changed with `kubectl apply` and
//! `kubectl delete`, as a user does.
//!
//! Each test prints how long a change took to reach the waypoint's xDS
//! client (a figure, not an assertion).

use std::time::{Duration, Instant};

use mesh_model::state::Snapshot;
use mesh_tests::kube_api::resources::RESOURCES;
use mesh_tests::kube_api::Store;
use mesh_tests::kube_cluster::{require_kubectl, KubeCluster};
use serde_json::Value;

/// Generous: these are correctness tests on a shared, loaded machine.
const WAIT: Duration = Duration::from_secs(20);

/// `shop` is ambient and uses the waypoint `waypoint` (a Gateway of class
/// istio-waypoint, with its pod as its Deployment would make it); `web`
/// has one pod, `web-v2` another.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-6f7c9-abcde
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}
spec:
  serviceAccountName: waypoint
  nodeName: node-a
  containers: [{name: waypoint, image: waypoint}]
status:
  phase: Running
  podIP: 10.1.0.9
  podIPs: [{ip: 10.1.0.9}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: web
  nodeName: node-b
  containers: [{name: web, image: echo}]
status:
  phase: Running
  podIP: 10.1.0.2
  podIPs: [{ip: 10.1.0.2}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-v2-1, namespace: shop, labels: {app: web-v2}}
spec:
  serviceAccountName: web
  nodeName: node-b
  containers: [{name: web, image: echo}]
status:
  phase: Running
  podIP: 10.1.0.3
  podIPs: [{ip: 10.1.0.3}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIP: 10.96.1.1
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec:
  selector: {app: web-v2}
  clusterIP: 10.96.1.2
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [10.1.0.2]
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: shop, name: web-1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v2-x1, namespace: shop, labels: {kubernetes.io/service-name: web-v2}}
addressType: IPv4
endpoints:
- addresses: [10.1.0.3]
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: shop, name: web-v2-1}
"#;

const CANARY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - backendRefs: [{name: web, port: 80}]
"#;

const DENY_ADMIN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-writes, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: [POST], paths: ["/admin*"]}}]}]
"#;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn route_names(s: &Snapshot) -> Vec<String> {
    s.routes().map(|r| r.key().to_string()).collect()
}

fn l7_names(s: &Snapshot) -> Vec<String> {
    s.l7_policies()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_and_a_waypoint_policy_reach_the_waypoint_and_leave_with_their_deletion() {
    if !require_kubectl() {
        return;
    }
    let cluster = KubeCluster::start(CLUSTER).await;
    let mut wp = cluster.waypoint_xds_client("shop", "waypoint");
    // The namespace's label binds `web` to the waypoint Gateway's pod.
    wp.wait_for("web bound to the waypoint", WAIT, |s| {
        s.service_by_name("shop", "web")
            .and_then(|svc| svc.waypoint.as_ref()?.ready().cloned())
            .is_some_and(|w| {
                w.address.to_string() == "10.1.0.9"
                    && w.identity.to_string() == "spiffe://cluster.local/ns/shop/sa/waypoint"
            })
    })
    .await;

    let applied = cluster.apply_timed(CANARY);
    let at = wp
        .wait_for("the HTTPRoute at the waypoint", WAIT, |s| {
            route_names(s) == ["HTTPRoute/shop/web-canary"]
        })
        .await;
    println!(
        "HTTPRoute written (kubectl apply) → waypoint xDS: {}",
        ms(at - applied)
    );
    let snap = wp.snapshot().unwrap();
    let route = snap.routes().next().unwrap();
    assert_eq!(route.rules.len(), 2);
    assert_eq!(route.rules[0].backends[0].service.name, "web-v2");
    // Its backend is served to the waypoint too.
    assert!(snap.service_by_name("shop", "web-v2").is_some());

    let applied = cluster.apply_timed(DENY_ADMIN);
    let at = wp
        .wait_for("the L7 policy at the waypoint", WAIT, |s| {
            l7_names(s) == ["shop/deny-admin-writes"]
        })
        .await;
    println!(
        "AuthorizationPolicy (targetRefs) written (kubectl apply) → waypoint xDS: {}",
        ms(at - applied)
    );

    // A GRPCRoute beside it (the Gateway API v1 kind), and gone again.
    let applied = cluster.apply_timed(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: web-grpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{method: {service: shop.Cart, method: Get}}]
    backendRefs: [{name: web-v2, port: 80}]
"#,
    );
    let at = wp
        .wait_for("the GRPCRoute at the waypoint", WAIT, |s| {
            route_names(s) == ["HTTPRoute/shop/web-canary", "GRPCRoute/shop/web-grpc"]
        })
        .await;
    println!(
        "GRPCRoute written (kubectl apply) → waypoint xDS: {}",
        ms(at - applied)
    );
    cluster.kubectl(&["delete", "grpcroute", "-n", "shop", "web-grpc"]);
    wp.wait_for("the GRPCRoute gone", WAIT, |s| {
        route_names(s) == ["HTTPRoute/shop/web-canary"]
    })
    .await;

    let deleted = cluster.kubectl_timed(&["delete", "httproute", "-n", "shop", "web-canary"]);
    let at = wp
        .wait_for("the HTTPRoute gone", WAIT, |s| route_names(s).is_empty())
        .await;
    println!(
        "HTTPRoute deleted (kubectl delete) → waypoint xDS: {}",
        ms(at - deleted)
    );
    cluster.kubectl(&[
        "delete",
        "authorizationpolicy",
        "-n",
        "shop",
        "deny-admin-writes",
    ]);
    wp.wait_for("the L7 policy gone", WAIT, |s| l7_names(s).is_empty())
        .await;
}

fn resource(kind: &str) -> usize {
    RESOURCES
        .iter()
        .position(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("{kind} is served"))
}

async fn wait_object(
    store: &Store,
    kind: &str,
    ns: &str,
    name: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(v) = store.get(resource(kind), ns, name) {
            if cond(&v) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{kind} {ns}/{name} not as expected: {:?}",
            store.get(resource(kind), ns, name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn condition<'a>(gw: &'a Value, t: &str) -> Option<&'a Value> {
    gw["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_makes_a_waypoint_deployment_service_and_service_account_with_status() {
    if !require_kubectl() {
        return;
    }
    let cluster = KubeCluster::start(CLUSTER).await;
    let store = cluster.api.store().clone();
    let applied = Instant::now();
    cluster.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: reviews-wp, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#,
    );
    let gw = wait_object(&store, "Gateway", "shop", "reviews-wp", |g| {
        condition(g, "Programmed").is_some_and(|c| c["status"] == "True")
    })
    .await;
    println!(
        "kubectl apply Gateway → Programmed: {}",
        ms(applied.elapsed())
    );
    let accepted = condition(&gw, "Accepted").expect("Accepted");
    assert_eq!(accepted["status"], "True");
    let uid = gw["metadata"]["uid"].as_str().expect("uid").to_owned();
    let owned = |obj: &Value| {
        obj["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|refs| {
                refs.iter().any(|r| {
                    r["kind"] == "Gateway" && r["uid"] == uid.as_str() && r["controller"] == true
                })
            })
    };
    let deploy = wait_object(&store, "Deployment", "shop", "reviews-wp", owned).await;
    let svc = wait_object(&store, "Service", "shop", "reviews-wp", owned).await;
    let sa = wait_object(&store, "ServiceAccount", "shop", "reviews-wp", owned).await;
    assert_eq!(sa["metadata"]["name"], "reviews-wp");
    assert_eq!(svc["spec"]["ports"][0]["port"], 15008);
    let pod = &deploy["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["istio.io/dataplane-mode"], "none");
    assert_eq!(pod["spec"]["serviceAccountName"], "reviews-wp");
    // Server-side apply under our field manager.
    let managers: Vec<&str> = deploy["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(
        managers.contains(&"ambient-mesh-waypoint-controller"),
        "{managers:?}"
    );
    // The Service's address is the Gateway's.
    let ip = svc["spec"]["clusterIP"].as_str().expect("a cluster IP");
    assert_eq!(gw["status"]["addresses"][0]["value"], ip);

    // Deleted by someone: restored on the next reconcile (the Gateway's
    // edit wakes it).
    store
        .delete(resource("Deployment"), "shop", "reviews-wp")
        .expect("delete");
    cluster.kubectl(&[
        "label",
        "gateway",
        "-n",
        "shop",
        "reviews-wp",
        "touched=yes",
    ]);
    wait_object(&store, "Deployment", "shop", "reviews-wp", owned).await;
}

/// The controller writes only while it leads; becoming leader reconciles
/// what was already there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waypoint_controller_writes_only_while_it_leads() {
    use control_plane::waypoint_controller::{self, objects::Settings};
    let store = std::sync::Arc::new(Store::default());
    mesh_tests::kube_api::load_yaml(
        &store,
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec: {gatewayClassName: istio}
"#,
    )
    .unwrap();
    let api = mesh_tests::kube_api::ApiServer::start(
        store.clone(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .unwrap();
    let config = kube::Config::new(api.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let (leader_tx, leader) = tokio::sync::watch::channel(false);
    let controller = tokio::spawn(waypoint_controller::run(
        client,
        Settings::default(),
        leader,
    ));
    // Not leader: the Gateway is seen, nothing is written.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(store
        .get(resource("Deployment"), "shop", "waypoint")
        .is_err());
    let gw = store.get(resource("Gateway"), "shop", "waypoint").unwrap();
    assert!(gw.get("status").is_none(), "{gw}");

    let became = Instant::now();
    leader_tx.send_replace(true);
    wait_object(&store, "Deployment", "shop", "waypoint", |_| true).await;
    wait_object(&store, "Gateway", "shop", "waypoint", |g| {
        condition(g, "Programmed").is_some_and(|c| c["status"] == "True")
    })
    .await;
    println!("leader → waypoint programmed: {}", ms(became.elapsed()));
    // Another class's Gateway is not ours.
    assert!(store
        .get(resource("Deployment"), "shop", "ingress")
        .is_err());
    let ingress = store.get(resource("Gateway"), "shop", "ingress").unwrap();
    assert!(ingress.get("status").is_none());
    controller.abort();
}
