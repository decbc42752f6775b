//! The control plane's Kubernetes source against the test API server:
//! the real `control-plane` binary (`--source kubernetes`) watches it,
//! ztunnel's own xDS client follows the control plane, and the cluster is
//! changed with `kubectl` as a user would (or, for what kubectl cannot do,
//! such as killing the API server, by the test).
//!
//! Each test prints how long a change took to reach the xDS client (a
//! figure, not an assertion).

use std::time::{Duration, Instant};

use mesh_model::state::{PolicyKey, Snapshot, Tunnel};
use mesh_tests::kube_api::store::namespace_resource;
use mesh_tests::kube_cluster::{require_kubectl, KubeCluster};
use serde_json::json;

/// Generous: these are correctness tests on a shared, loaded machine.
const WAIT: Duration = Duration::from_secs(20);

/// Two namespaces, three pods on two nodes, a Service over two of them
/// with its EndpointSlice (as the EndpointSlice controller would write it)
/// and a named target port.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: bank, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccountName: client
  nodeName: node-a
  containers: [{name: client, image: curl}]
status:
  phase: Running
  podIP: 10.1.0.1
  podIPs: [{ip: 10.1.0.1}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: server-1, namespace: bank, labels: {app: server}}
spec:
  serviceAccountName: server
  nodeName: node-b
  containers: [{name: server, image: echo, ports: [{name: http, containerPort: 8080}]}]
status:
  phase: Running
  podIP: 10.1.0.2
  podIPs: [{ip: 10.1.0.2}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: server-2, namespace: bank, labels: {app: server}}
spec:
  serviceAccountName: server
  nodeName: node-a
  containers: [{name: server, image: echo, ports: [{name: http, containerPort: 8080}]}]
status:
  phase: Running
  podIP: 10.1.0.3
  podIPs: [{ip: 10.1.0.3}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: bank}
spec:
  selector: {app: server}
  clusterIP: 10.96.1.1
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: server-x1
  namespace: bank
  labels: {kubernetes.io/service-name: server}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.1.0.2]
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: bank, name: server-1}
- addresses: [10.1.0.3]
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: bank, name: server-2}
"#;

fn uid(ns: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{ns}/{name}")
}

fn tunnel(snap: &Snapshot, ns: &str, name: &str) -> Option<Tunnel> {
    snap.workload_by_uid(&uid(ns, name)).map(|w| w.tunnel)
}

fn endpoints(snap: &Snapshot) -> Vec<String> {
    snap.service_by_name("bank", "server")
        .map(|s| snap.endpoints(s).iter().map(|w| w.name.clone()).collect())
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelling_a_namespace_enrols_its_pods_and_unlabelling_removes_them() {
    if !require_kubectl() {
        return;
    }
    let cluster = KubeCluster::start(CLUSTER).await;
    let mut xds = cluster.xds_client("node-a");
    xds.wait_for("the cluster over xDS", WAIT, |s| {
        tunnel(s, "shop", "client") == Some(Tunnel::None)
            && tunnel(s, "bank", "server-1") == Some(Tunnel::Hbone)
    })
    .await;
    let snap = xds.snapshot().unwrap();
    let server = snap.workload_by_uid(&uid("bank", "server-1")).unwrap();
    assert_eq!(
        server.identity().to_string(),
        "spiffe://cluster.local/ns/bank/sa/server"
    );
    assert_eq!(server.node, "node-b");
    let svc = snap.service_by_name("bank", "server").unwrap();
    assert_eq!(
        svc.vips,
        vec!["10.96.1.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(svc.target_port(80), Some(8080), "named targetPort resolved");

    let labelled = cluster.kubectl_timed(&[
        "label",
        "namespace",
        "shop",
        "istio.io/dataplane-mode=ambient",
    ]);
    let at = xds
        .wait_for("shop enrolled", WAIT, |s| {
            tunnel(s, "shop", "client") == Some(Tunnel::Hbone)
        })
        .await;
    println!(
        "namespace label written → xDS client: {}",
        ms(at - labelled)
    );

    // The pod's own opt-out beats its namespace.
    cluster.kubectl(&[
        "label",
        "pod",
        "-n",
        "shop",
        "client",
        "istio.io/dataplane-mode=none",
    ]);
    xds.wait_for("client opted out", WAIT, |s| {
        tunnel(s, "shop", "client") == Some(Tunnel::None)
    })
    .await;
    cluster.kubectl(&[
        "label",
        "pod",
        "-n",
        "shop",
        "client",
        "istio.io/dataplane-mode-",
    ]);
    xds.wait_for("client back in", WAIT, |s| {
        tunnel(s, "shop", "client") == Some(Tunnel::Hbone)
    })
    .await;

    let unlabelled =
        cluster.kubectl_timed(&["label", "namespace", "shop", "istio.io/dataplane-mode-"]);
    let at = xds
        .wait_for("shop unenrolled", WAIT, |s| {
            tunnel(s, "shop", "client") == Some(Tunnel::None)
        })
        .await;
    println!(
        "namespace label removal written → xDS client: {}",
        ms(at - unlabelled)
    );
    assert_eq!(
        xds.snapshot().unwrap().local_ambient_ips("node-a"),
        ["10.1.0.3".parse().unwrap()].into(),
        "node-a captures only bank's pod"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_deletion_reach_the_service_endpoints() {
    if !require_kubectl() {
        return;
    }
    let cluster = KubeCluster::start(CLUSTER).await;
    let mut xds = cluster.xds_client("node-a");
    xds.wait_for("both endpoints", WAIT, |s| {
        endpoints(s) == ["server-1", "server-2"]
    })
    .await;

    // The kubelet reports server-2 unready (before the EndpointSlice
    // controller reacts): it leaves the endpoints, and stays a workload.
    let unready = cluster.kubectl_timed(&[
        "patch",
        "pod",
        "server-2",
        "-n",
        "bank",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
    ]);
    let at = xds
        .wait_for("server-2 out of the endpoints", WAIT, |s| {
            endpoints(s) == ["server-1"]
        })
        .await;
    println!(
        "pod status unready written → xDS client: {}",
        ms(at - unready)
    );
    assert!(xds
        .snapshot()
        .unwrap()
        .workload_by_uid(&uid("bank", "server-2"))
        .is_some());

    // Ready again, but the slice now says not ready: still out.
    cluster.kubectl(&[
        "patch",
        "endpointslice",
        "server-x1",
        "-n",
        "bank",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/endpoints/1/conditions/ready","value":false}]"#,
    ]);
    cluster.kubectl(&[
        "patch",
        "pod",
        "server-2",
        "-n",
        "bank",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    xds.wait_for("still one endpoint", WAIT, |s| endpoints(s) == ["server-1"])
        .await;

    let deleted = cluster.kubectl_timed(&["delete", "pod", "server-1", "-n", "bank"]);
    let at = xds
        .wait_for("server-1 gone", WAIT, |s| {
            s.workload_by_uid(&uid("bank", "server-1")).is_none() && endpoints(s).is_empty()
        })
        .await;
    println!("pod deletion written → xDS client: {}", ms(at - deleted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_policies_applied_with_kubectl_reach_xds() {
    if !require_kubectl() {
        return;
    }
    let cluster = KubeCluster::start(CLUSTER).await;
    let mut xds = cluster.xds_client("node-b");
    xds.wait_for("the cluster", WAIT, |s| endpoints(s).len() == 2)
        .await;
    let applied = Instant::now();
    cluster.apply(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-shop, namespace: bank}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {namespaces: [shop]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-only, namespace: bank}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bank}
spec: {mtls: {mode: STRICT}}
"#,
    );
    let key = |name: &str| PolicyKey {
        namespace: "bank".into(),
        name: name.into(),
    };
    let at = xds
        .wait_for("the DENY and STRICT policies", WAIT, |s| {
            let names: Vec<PolicyKey> = s.policies().iter().map(|p| p.key()).collect();
            names.contains(&key("no-shop")) && names.contains(&key("istio_converted_static_strict"))
        })
        .await;
    println!(
        "kubectl apply of policies (kubectl included) → xDS client: {}",
        ms(at - applied)
    );
    let snap = xds.snapshot().unwrap();
    assert!(
        !snap.policies().iter().any(|p| p.name == "waypoint-only"),
        "a targetRefs policy is the waypoint's"
    );
    let server = snap.workload_by_uid(&uid("bank", "server-1")).unwrap();
    assert_eq!(server.authorization_policies, vec![key("no-shop")]);

    cluster.kubectl(&["delete", "peerauthentication", "default", "-n", "bank"]);
    xds.wait_for("STRICT lifted", WAIT, |s| {
        !s.policies()
            .iter()
            .any(|p| p.key() == key("istio_converted_static_strict"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_keeps_the_last_state_and_the_source_resumes() {
    if !require_kubectl() {
        return;
    }
    let mut cluster = KubeCluster::start(CLUSTER).await;
    let mut xds = cluster.xds_client("node-a");
    xds.wait_for("the cluster", WAIT, |s| endpoints(s).len() == 2)
        .await;

    cluster.api.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // While the API server is down the control plane keeps serving the
    // last good state, to clients already connected and to new ones.
    assert!(cluster.ready(), "still ready with the API server down");
    let mut late = cluster.xds_client("node-b");
    late.wait_for("the last good state, to a new client", WAIT, |s| {
        endpoints(s).len() == 2 && tunnel(s, "bank", "server-1") == Some(Tunnel::Hbone)
    })
    .await;
    // A change made meanwhile (as etcd would hold it).
    let store = cluster.api.store().clone();
    store
        .update(namespace_resource(), "", "shop", |ns| {
            let mut ns = ns.clone();
            ns["metadata"]["labels"] = json!({"istio.io/dataplane-mode": "ambient"});
            Ok(ns)
        })
        .unwrap();
    assert_eq!(
        xds.snapshot().map(|s| tunnel(&s, "shop", "client")),
        Some(Some(Tunnel::None))
    );

    let back = Instant::now();
    cluster.api.restart().expect("API server restarts");
    let at = xds
        .wait_for("the change made during the outage", WAIT, |s| {
            tunnel(s, "shop", "client") == Some(Tunnel::Hbone)
        })
        .await;
    println!(
        "API server back → xDS client has the change: {}",
        ms(at - back)
    );
    assert!(
        cluster
            .metrics()
            .contains("control_plane_kube_watch_errors_total"),
        "the outage was counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_forces_a_relist_and_the_state_converges() {
    if !require_kubectl() {
        return;
    }
    let mut cluster = KubeCluster::start(CLUSTER).await;
    let mut xds = cluster.xds_client("node-a");
    xds.wait_for("the cluster", WAIT, |s| endpoints(s).len() == 2)
        .await;

    // An open watch is expired (the API server's watch cache fell behind).
    cluster.api.store().expire_watches();
    cluster.kubectl(&[
        "label",
        "namespace",
        "shop",
        "istio.io/dataplane-mode=ambient",
    ]);
    xds.wait_for("the label after the expiry", WAIT, |s| {
        tunnel(s, "shop", "client") == Some(Tunnel::Hbone)
    })
    .await;

    let listed_before = cluster.control_plane_log().matches("listed").count();
    // The watches' resourceVersion is compacted away while they are
    // disconnected, and a pod is deleted meanwhile: only a list can tell.
    cluster.api.stop();
    let store = cluster.api.store().clone();
    let pods = mesh_tests::kube_api::resources::RESOURCES
        .iter()
        .position(|r| r.plural == "pods")
        .unwrap();
    store.delete(pods, "bank", "server-2").unwrap();
    // A write to another type moves the revision past every watch's.
    store
        .create(
            namespace_resource(),
            "",
            json!({"metadata": {"name": "later"}}),
        )
        .unwrap();
    store.compact();
    let back = Instant::now();
    cluster.api.restart().expect("API server restarts");
    let at = xds
        .wait_for("server-2 gone after the relist", WAIT, |s| {
            s.workload_by_uid(&uid("bank", "server-2")).is_none()
                && tunnel(s, "bank", "server-1") == Some(Tunnel::Hbone)
        })
        .await;
    println!(
        "410 Gone → relisted state at the xDS client: {}",
        ms(at - back)
    );
    let log = cluster.control_plane_log();
    assert!(
        log.matches("listed").count() > listed_before,
        "the source listed again:\n{log}"
    );
}

/// Figures at scale (not run by default: `cargo test -p mesh-tests --test
/// kube -- --ignored --nocapture`): 10,000 pods in 100 ambient namespaces,
/// 1,000 Services with their EndpointSlices; the time from each of 40 pod
/// deletions, and of a namespace's label removal, being written to the xDS
/// client holding the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn figures_at_10000_pods() {
    use mesh_tests::kube_api::resources::RESOURCES;
    use mesh_tests::kube_api::Store;
    use std::sync::Arc;
    let (namespaces, pods_per_ns, services_per_ns) = (100, 100, 10);
    let store = Arc::new(Store::default());
    let rid = |plural: &str| RESOURCES.iter().position(|r| r.plural == plural).unwrap();
    let (pods, services, slices) = (rid("pods"), rid("services"), rid("endpointslices"));
    for n in 0..namespaces {
        let ns = format!("ns-{n}");
        store
            .create(
                namespace_resource(),
                "",
                json!({"metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient"}}}),
            )
            .unwrap();
        for p in 0..pods_per_ns {
            let i = n * pods_per_ns + p;
            let ip = format!("10.{}.{}.{}", 1 + i / 65536, i / 256 % 256, i % 256);
            store
                .create(pods, &ns, json!({
                    "metadata": {"name": format!("pod-{p}"), "labels": {"app": format!("app-{}", p % services_per_ns)}},
                    "spec": {"nodeName": if i % 2 == 0 { "node-a" } else { "node-b" }, "serviceAccountName": "sa", "containers": [{"name": "c", "image": "x"}]},
                    "status": {"phase": "Running", "podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": "True"}]}
                }))
                .unwrap();
        }
        for s in 0..services_per_ns {
            store
                .create(services, &ns, json!({
                    "metadata": {"name": format!("svc-{s}")},
                    "spec": {"selector": {"app": format!("app-{s}")}, "ports": [{"port": 80, "targetPort": 8080}]}
                }))
                .unwrap();
            let endpoints: Vec<_> = (0..pods_per_ns)
                .filter(|p| p % services_per_ns == s)
                .map(|p| json!({"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("pod-{p}")}}))
                .collect();
            store
                .create(slices, &ns, json!({
                    "metadata": {"name": format!("svc-{s}-x"), "labels": {"kubernetes.io/service-name": format!("svc-{s}")}},
                    "addressType": "IPv4",
                    "endpoints": endpoints
                }))
                .unwrap();
        }
    }
    let started = Instant::now();
    let cluster = KubeCluster::start_with(store.clone()).await;
    println!(
        "10,000 pods listed and published in {}",
        ms(started.elapsed())
    );
    let mut xds = cluster.xds_client("node-a");
    let at = xds
        .wait_for("all pods", Duration::from_secs(120), |s| {
            s.workloads().count() == 10_000
        })
        .await;
    println!("first full sync to an xDS client: {}", ms(at - started));

    let mut took = Vec::new();
    for k in 0..40 {
        let (ns, name) = (format!("ns-{}", k * 2), format!("pod-{k}"));
        let mut writes = store.subscribe();
        store.delete(pods, &ns, &name).unwrap();
        let written = match writes.try_recv() {
            Ok(mesh_tests::kube_api::store::Broadcast::Event(e)) => e.at,
            _ => unreachable!("a delete is an event"),
        };
        let at = xds
            .wait_for("the deletion", WAIT, |s| {
                s.workload_by_uid(&uid(&ns, &name)).is_none()
            })
            .await;
        took.push(at - written);
    }
    took.sort();
    println!(
        "pod deletion written → xDS client, 40 deletions at 10,000 pods: p50 {}, p90 {}, max {}",
        ms(took[took.len() / 2]),
        ms(took[took.len() * 9 / 10]),
        ms(took[took.len() - 1])
    );
    let written =
        cluster.kubectl_timed(&["label", "namespace", "ns-99", "istio.io/dataplane-mode-"]);
    let at = xds
        .wait_for("ns-99 unenrolled", WAIT, |s| {
            tunnel(s, "ns-99", "pod-5") == Some(Tunnel::None)
        })
        .await;
    println!(
        "label removal of a 100-pod namespace → xDS client: {}",
        ms(at - written)
    );
    // Where the time goes, with
    // KUBE_TEST_CONTROL_PLANE_LOG=info,control_plane::source=debug.
    let log = cluster.control_plane_log();
    let lines = log
        .lines()
        .filter(|l| l.contains("applied") || l.contains("publishing"));
    for line in lines.rev().take(6) {
        println!("  {line}");
    }
}
