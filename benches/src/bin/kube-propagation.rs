//! From a pod deletion, or a namespace's enrolment label removal, being
//! committed by the API server to every simulated ztunnel holding the
//! change, at `--pods N` (default 10,000): the test API server of
//! `mesh-tests` in-process (real Kubernetes JSON, watches), the real
//! `control-plane` binary in Kubernetes mode watching it, and `--clients
//! C` (default 10) of ztunnel's own delta-xDS clients in this process.
//!
//! The cluster: 100 ambient namespaces, N/100 pods each over two nodes,
//! 10 Services per namespace with their EndpointSlices (the shape of the
//! `kube` suite's `figures_at_10000_pods`). Events, one at a time:
//! `--deletions K` pod deletions (default 40), then `--unlabels U`
//! namespace label removals (`istio.io/dataplane-mode`, default 10; each
//! takes a namespace's pods out of ambient). For each event, the time
//! from the API server's commit to the slowest client publishing a
//! snapshot with the change; p50 / p99 / max, and a JSON line.
//!
//! ```sh
//! cargo build --release -p control-plane -p mesh-benches --bin control-plane --bin kube-propagation
//! CONTROL_PLANE_BIN=target/release/control-plane target/release/kube-propagation [--pods N --clients C]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_model::state::Tunnel;
use mesh_tests::kube_api::resources::RESOURCES;
use mesh_tests::kube_api::store::{namespace_resource, Broadcast};
use mesh_tests::kube_api::Store;
use mesh_tests::kube_cluster::{KubeCluster, XdsFollower, NODES};
use serde_json::{json, Value};

const NAMESPACES: usize = 100;
const SERVICES_PER_NS: usize = 10;
const WAIT: Duration = Duration::from_secs(60);

fn uid(ns: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{ns}/{name}")
}

fn fill(store: &Store, pods_per_ns: usize) {
    let rid = |plural: &str| RESOURCES.iter().position(|r| r.plural == plural).unwrap();
    let (pods, services, slices) = (rid("pods"), rid("services"), rid("endpointslices"));
    for n in 0..NAMESPACES {
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
                    "metadata": {"name": format!("pod-{p}"), "labels": {"app": format!("app-{}", p % SERVICES_PER_NS)}},
                    "spec": {"nodeName": NODES[i % 2], "serviceAccountName": "sa", "containers": [{"name": "c", "image": "x"}]},
                    "status": {"phase": "Running", "podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": "True"}]}
                }))
                .unwrap();
        }
        for s in 0..SERVICES_PER_NS {
            store
                .create(services, &ns, json!({
                    "metadata": {"name": format!("svc-{s}")},
                    "spec": {"selector": {"app": format!("app-{s}")}, "ports": [{"port": 80, "targetPort": 8080}]}
                }))
                .unwrap();
            let endpoints: Vec<_> = (0..pods_per_ns)
                .filter(|p| p % SERVICES_PER_NS == s)
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
}

/// Runs `write` and returns when the API server committed its event.
fn committed(store: &Store, write: impl FnOnce()) -> Instant {
    let mut writes = store.subscribe();
    write();
    loop {
        match writes.try_recv() {
            Ok(Broadcast::Event(e)) => return e.at,
            Ok(_) => {}
            Err(e) => panic!("the write made no event: {e}"),
        }
    }
}

/// The slowest client's time from `written` to holding what `cond` checks.
async fn every_client(
    clients: &mut [XdsFollower],
    what: &str,
    written: Instant,
    cond: impl Fn(&mesh_model::state::Snapshot) -> bool + Copy,
) -> Duration {
    let mut slowest = Duration::ZERO;
    for c in clients.iter_mut() {
        let at = c.wait_for(what, WAIT, cond).await;
        slowest = slowest.max(at.saturating_duration_since(written));
    }
    slowest
}

fn stats(v: &[Duration]) -> Value {
    let mut s = v.to_vec();
    s.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    let pct = |p: f64| ms(s[((p / 100.0 * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]);
    json!({"p50_ms": pct(50.0), "p99_ms": pct(99.0), "max_ms": ms(s[s.len() - 1]), "samples": s.len()})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (mut pods, mut clients, mut deletions, mut unlabels) = (10_000, 10, 40, 10);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut n = || args.next().and_then(|n| n.parse().ok()).expect("a number");
        match a.as_str() {
            "--pods" => pods = n(),
            "--clients" => clients = n(),
            "--deletions" => deletions = n(),
            "--unlabels" => unlabels = n(),
            other => panic!("unknown argument {other:?}"),
        }
    }
    if std::env::var_os("CONTROL_PLANE_BIN").is_none() {
        eprintln!("kube-propagation: set CONTROL_PLANE_BIN to the control-plane binary");
        std::process::exit(2);
    }
    let per_ns = pods / NAMESPACES;
    assert!(deletions <= pods / 2 && unlabels <= NAMESPACES / 2);
    let store = Arc::new(Store::default());
    fill(&store, per_ns);
    let started = Instant::now();
    let cluster = KubeCluster::start_with(store.clone()).await;
    let mut fleet: Vec<XdsFollower> = (0..clients)
        .map(|i| cluster.xds_client(NODES[i % NODES.len()]))
        .collect();
    for c in &mut fleet {
        c.wait_for("every pod", Duration::from_secs(300), |s| {
            s.workloads().count() == per_ns * NAMESPACES
        })
        .await;
    }
    let synced = started.elapsed();
    println!(
        "{pods} pods, {} services, {clients} clients: listed, published and synced in {:.1} s",
        NAMESPACES * SERVICES_PER_NS,
        synced.as_secs_f64()
    );

    let rid = |plural: &str| RESOURCES.iter().position(|r| r.plural == plural).unwrap();
    let mut deleted = Vec::new();
    for k in 0..deletions {
        // Spread over the namespaces, never in one that is unlabelled below.
        let (ns, name) = (
            format!("ns-{}", k % (NAMESPACES / 2)),
            format!("pod-{}", k / (NAMESPACES / 2)),
        );
        let written = committed(&store, || {
            store.delete(rid("pods"), &ns, &name).unwrap();
        });
        let id = uid(&ns, &name);
        let took = every_client(&mut fleet, "the deletion", written, |s| {
            s.workload_by_uid(&id).is_none()
        })
        .await;
        deleted.push(took);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut unlabelled = Vec::new();
    for k in 0..unlabels {
        let ns = format!("ns-{}", NAMESPACES - 1 - k);
        let written = committed(&store, || {
            store
                .update(namespace_resource(), "", &ns, |old| {
                    let mut new = old.clone();
                    new["metadata"]["labels"]
                        .as_object_mut()
                        .expect("labels")
                        .remove("istio.io/dataplane-mode");
                    Ok(new)
                })
                .unwrap();
        });
        let (first, last) = (uid(&ns, "pod-0"), uid(&ns, &format!("pod-{}", per_ns - 1)));
        let out = |s: &mesh_model::state::Snapshot, id: &str| {
            s.workload_by_uid(id)
                .is_some_and(|w| w.tunnel == Tunnel::None)
        };
        let took = every_client(&mut fleet, "the namespace unenrolled", written, |s| {
            out(s, &first) && out(s, &last)
        })
        .await;
        unlabelled.push(took);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = json!({
        "pods": pods,
        "services": NAMESPACES * SERVICES_PER_NS,
        "clients": clients,
        "initial_sync_s": (synced.as_secs_f64() * 10.0).round() / 10.0,
        "pod_deletion_to_every_client": stats(&deleted),
        "namespace_label_removal_to_every_client": stats(&unlabelled),
    });
    println!(
        "pod deletion → every client: {}\nnamespace label removal → every client: {}",
        report["pod_deletion_to_every_client"], report["namespace_label_removal_to_every_client"]
    );
    println!("{report}");
    let log = cluster.control_plane_log();
    for line in log
        .lines()
        .filter(|l| l.contains("publishing"))
        .rev()
        .take(3)
    {
        println!("  {line}");
    }
}
