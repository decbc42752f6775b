//! End to end in network namespaces, with Kubernetes as the source: the
//! test API server is the cluster (listening in node 1's namespace), the
//! real `control-plane` runs there with `--source kubernetes`, and a real
//! `ztunnel` per node follows it over xDS. `kubectl` labels a namespace
//! and its pods' traffic becomes HBONE, with the pod's identity; removing
//! the label releases the pod from capture.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_tests::echo::{echo_through, spawn_echo};
use mesh_tests::kube_api::store::Broadcast;
use mesh_tests::kube_api::{load_yaml, ApiServer, Store, DEFAULT_BOOKMARK_INTERVAL};
use mesh_tests::mesh::{read_access_log, Mesh, CONTROL_PLANE_ADDR, CONTROL_PLANE_METRICS_ADDR};
use mesh_tests::rules::pod_set;
use mesh_tests::{require_root, Netns, Topology};

const WAIT: Duration = Duration::from_secs(20);
const API_ADDR: &str = "10.0.0.1:6443";

fn cluster(client_ip: &str, server_ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: bank}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: shop, labels: {{app: client}}}}
spec: {{serviceAccountName: client, nodeName: node1, containers: [{{name: c, image: curl}}]}}
status:
  phase: Running
  podIPs: [{{ip: {client_ip}}}]
  conditions: [{{type: Ready, status: "True"}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: bank, labels: {{app: server}}}}
spec: {{serviceAccountName: server, nodeName: node2, containers: [{{name: s, image: echo}}]}}
status:
  phase: Running
  podIPs: [{{ip: {server_ip}}}]
  conditions: [{{type: Ready, status: "True"}}]
"#
    )
}

async fn talk(from: &Netns, to: SocketAddr) -> bool {
    matches!(echo_through(from, to, b"hello").await, Ok(back) if back == b"hello")
}

/// Runs kubectl in `ns` (where the API server is reachable); returns when
/// the API server committed its write.
fn kubectl(ns: &Netns, store: &Store, kubeconfig: &str, args: &str) -> Instant {
    let mut writes = store.subscribe();
    ns.exec(&format!("KUBECONFIG={kubeconfig} kubectl {args}"))
        .unwrap_or_else(|e| panic!("kubectl {args}: {e}"));
    loop {
        match writes.try_recv() {
            Ok(Broadcast::Event(e)) => return e.at,
            Ok(_) => {}
            Err(_) => panic!("kubectl {args} wrote nothing"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelling_a_namespace_makes_its_traffic_hbone() {
    if !require_root() || !mesh_tests::kube_cluster::require_kubectl() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("server", 2)
        .build()
        .unwrap();
    let (c, s) = (topo.pod("client"), topo.pod("server"));
    let node1 = &topo.node(1).ns;
    let store = Arc::new(Store::default());
    load_yaml(&store, &cluster(&c.ip.to_string(), &s.ip.to_string())).unwrap();
    let listener = node1.std_listener(API_ADDR.parse().unwrap()).unwrap();
    let api = ApiServer::serve(store.clone(), listener, DEFAULT_BOOKMARK_INTERVAL).unwrap();

    // The harness's control plane, replaced by one in Kubernetes mode with
    // the same CA (through the Secret), tokens and address.
    let mut mesh = Mesh::with_control_plane(&topo, "{}\n");
    mesh.kill_control_plane();
    let dir = mesh.scratch("kube");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap().to_owned();
    // The harness's root, brought as the cluster's CA (`cacerts`).
    mesh_tests::kube_cluster::bring_ca(&store, mesh.ca_dir());
    let tokens = mesh.ca_dir().parent().unwrap().join("tokens.yaml");
    // Where the harness's control plane logged: printed if the test fails.
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
    // ztunnels start while it lists the cluster.
    mesh.start_all();

    let listener = s.ns.listen(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    let _echo = spawn_echo(listener);
    let to = SocketAddr::from((s.ip, 8080));
    assert!(talk(&c.ns, to).await, "plain TCP before enrolment");
    assert!(
        !pod_set(node1).contains(&c.ip.to_string()),
        "not captured yet"
    );

    kubectl(
        node1,
        &store,
        &kubeconfig,
        "label namespace bank istio.io/dataplane-mode=ambient",
    );
    let labelled = kubectl(
        node1,
        &store,
        &kubeconfig,
        "label namespace shop istio.io/dataplane-mode=ambient",
    );
    let identity = "spiffe://cluster.local/ns/shop/sa/client";
    let hbone =
        |e: &serde_json::Value| e["direction"] == "inbound" && e["src.identity"] == identity;
    loop {
        let _ = talk(&c.ns, to).await;
        if read_access_log(&mesh.access_log_path(2)).iter().any(hbone) {
            break;
        }
        assert!(
            labelled.elapsed() < WAIT,
            "no HBONE from shop after the label; control plane:\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "kubectl label → client traffic arrives as HBONE: {:?}",
        labelled.elapsed()
    );
    assert!(pod_set(node1).contains(&c.ip.to_string()));

    let unlabelled = kubectl(
        node1,
        &store,
        &kubeconfig,
        "label namespace shop istio.io/dataplane-mode-",
    );
    while pod_set(node1).contains(&c.ip.to_string()) {
        assert!(
            unlabelled.elapsed() < WAIT,
            "the label removal never released the pod"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "label removal → client released from capture: {:?}",
        unlabelled.elapsed()
    );
    assert!(
        talk(&c.ns, to).await,
        "plain TCP again (into ambient bank, as plaintext)"
    );
    drop(api);
}
