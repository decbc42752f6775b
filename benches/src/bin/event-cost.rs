//! The control plane's cost per watch event, in-process: what one keyed
//! change (a Kubernetes watch event, as the Kubernetes source makes it)
//! costs from `MeshInput::apply` to the next published `ResourceSet`, on a
//! mesh of `--pods N` (default 10,000) pods in 100 ambient namespaces,
//! each namespace with 10 Services selecting a tenth of its pods (the
//! shape of the Kubernetes end-to-end test's figures).
//!
//! Events, `--events K` of each kind (default 50, at most 50):
//! - `delete`: a pod deleted;
//! - `unlabel`: a pod's `app` label removed (it leaves its Service);
//! - `ns-unlabel`: a namespace's `istio.io/dataplane-mode` label removed,
//!   as the Kubernetes source sends it: the namespace and its pods (now
//!   tunnel NONE) in one batch; it touches a hundredth of the mesh.
//!
//! Prints, per kind, the p50 / p99 / max of `MeshInput::apply` (keyed
//! changes → touched keys and the next snapshot), `ResourceSet::update`
//! (convert and encode the touched resources), dropping the previous
//! generation, and their total, in microseconds; and a JSON line.
//!
//! `--full-rebuild` builds each snapshot whole, as `MeshInput::apply` did
//! before it patched them (`MeshInput::with_full_rebuild`).
//!
//! `cargo run --release -p mesh-benches --bin event-cost [-- --pods N --events K --full-rebuild]`

use std::time::{Duration, Instant};

use control_plane::resources::ResourceSet;
use mesh_model::input::{Change, Key, MeshInput, Object};
use mesh_model::state::{
    Labels, MtlsMode, Namespace, Node, Service, ServicePort, Tunnel, Workload,
    DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL,
};
use serde_json::json;

/// As in the `control-plane` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NAMESPACES: usize = 100;
const SERVICES_PER_NS: usize = 10;
const NODES: usize = 50;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn namespace(i: usize, ambient: bool) -> Namespace {
    Namespace {
        name: format!("ns-{i}"),
        labels: if ambient {
            labels(&[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT)])
        } else {
            Labels::new()
        },
        mtls: MtlsMode::Permissive,
    }
}

/// Pod `p` of namespace `n` (uid as the Kubernetes source makes it).
fn pod(n: usize, p: usize, per_ns: usize, app: bool) -> Workload {
    let i = n * per_ns + p;
    let ns = format!("ns-{n}");
    let name = format!("pod-{p}");
    Workload {
        uid: format!("Kubernetes//Pod/{ns}/{name}"),
        name,
        namespace: ns,
        service_account: "sa".into(),
        trust_domain: "cluster.local".into(),
        ips: vec![
            format!("10.{}.{}.{}", 1 + i / 65536, i / 256 % 256, i % 256)
                .parse()
                .expect("IP"),
        ],
        node: format!("node-{}", i % NODES),
        tunnel: Tunnel::Hbone,
        native_tunnel: false,
        labels: if app {
            labels(&[("app", &format!("app-{}", p % SERVICES_PER_NS))])
        } else {
            Labels::new()
        },
        waypoint: None,
        authorization_policies: Vec::new(),
    }
}

fn service(n: usize, s: usize) -> Service {
    let (ns, name) = (format!("ns-{n}"), format!("svc-{s}"));
    let j = n * SERVICES_PER_NS + s;
    Service {
        hostname: Service::fqdn(&name, &ns),
        vips: vec![format!("10.96.{}.{}", j / 250, j % 250 + 1)
            .parse()
            .expect("VIP")],
        ports: vec![ServicePort {
            port: 80,
            target_port: 8080,
            app_protocol: None,
        }],
        selector: labels(&[("app", &format!("app-{s}"))]),
        endpoint_uids: Vec::new(),
        labels: Labels::new(),
        waypoint: None,
        name,
        namespace: ns,
    }
}

fn mesh(pods: usize) -> Vec<Change> {
    let per_ns = pods / NAMESPACES;
    let mut out = Vec::new();
    for i in 0..NODES {
        out.push(Object::Node(Node {
            name: format!("node-{i}"),
            ip: format!("10.0.0.{}", i + 1).parse().expect("IP"),
        }));
    }
    for n in 0..NAMESPACES {
        out.push(Object::Namespace(namespace(n, true)));
        for p in 0..per_ns {
            out.push(Object::Workload(pod(n, p, per_ns, true)));
        }
        for s in 0..SERVICES_PER_NS {
            out.push(Object::Service(service(n, s)));
        }
    }
    out.into_iter().map(Change::Upsert).collect()
}

#[derive(Default)]
struct Stage {
    apply: Vec<Duration>,
    update: Vec<Duration>,
    drop: Vec<Duration>,
    total: Vec<Duration>,
}

fn us(v: &[Duration], pct: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort();
    let i = ((pct / 100.0) * s.len() as f64).ceil() as usize;
    let d = s[i.clamp(1, s.len()) - 1];
    (d.as_secs_f64() * 1e7).round() / 10.0
}

fn main() {
    let (mut pods, mut events, mut full) = (10_000, 50, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut n = || args.next().and_then(|n| n.parse().ok()).expect("a number");
        match a.as_str() {
            "--pods" => pods = n(),
            "--events" => events = n(),
            "--full-rebuild" => full = true,
            other => panic!("unknown argument {other:?}"),
        }
    }
    let per_ns = pods / NAMESPACES;
    assert!(events <= per_ns * NAMESPACES / 2 && events <= NAMESPACES / 2);

    let mut input = if full {
        MeshInput::with_full_rebuild("cluster.local")
    } else {
        MeshInput::new("cluster.local")
    };
    let t = Instant::now();
    let first = input.apply(mesh(pods)).expect("the mesh is consistent");
    let mut set = ResourceSet::from_snapshot(&first.snapshot);
    let mut snap = first.snapshot;
    println!(
        "{pods} pods, {} services, {} resources; loaded in {:.0} ms; {events} events of each kind",
        NAMESPACES * SERVICES_PER_NS,
        set.addresses.len(),
        t.elapsed().as_secs_f64() * 1e3
    );

    let kinds = ["delete", "unlabel", "ns-unlabel"];
    let mut results = Vec::new();
    for kind in kinds {
        let mut st = Stage::default();
        for e in 0..events {
            // Distinct pods and namespaces for every event: pods spread
            // over the namespaces, the first half of them deleted, the
            // second half unlabelled; namespaces counted from the end.
            let (n, p) = (e % NAMESPACES, e / NAMESPACES);
            let changes = match kind {
                "delete" => vec![Change::Delete(Key::Workload(pod(n, p, per_ns, true).uid))],
                "unlabel" => vec![Change::Upsert(Object::Workload(pod(
                    n,
                    per_ns - 1 - p,
                    per_ns,
                    false,
                )))],
                _ => {
                    // As the Kubernetes source sends it: the namespace,
                    // and its pods now out of ambient (tunnel NONE).
                    let n = NAMESPACES - 1 - e;
                    let mut batch = vec![Change::Upsert(Object::Namespace(namespace(n, false)))];
                    for p in 0..per_ns {
                        let mut w = pod(n, p, per_ns, true);
                        w.tunnel = Tunnel::None;
                        batch.push(Change::Upsert(Object::Workload(w)));
                    }
                    batch
                }
            };
            let t0 = Instant::now();
            let update = input.apply(changes).expect("consistent");
            let t1 = Instant::now();
            let (next_set, changes) = set.update(&snap, &update.snapshot, &update.touched);
            let t2 = Instant::now();
            assert!(!changes.is_empty(), "{kind} changed nothing");
            let old = std::mem::replace(&mut set, next_set);
            let old_snap = std::mem::replace(&mut snap, update.snapshot);
            drop((old, old_snap, changes));
            let t3 = Instant::now();
            st.apply.push(t1 - t0);
            st.update.push(t2 - t1);
            st.drop.push(t3 - t2);
            st.total.push(t3 - t0);
            // Space the events a little, as watch events arrive.
            std::thread::sleep(Duration::from_millis(2));
        }
        println!(
            "{kind:>10}: {:>10} {:>10} {:>10}   (µs)",
            "p50", "p99", "max"
        );
        for (name, v) in [
            ("apply", &st.apply),
            ("update", &st.update),
            ("drop", &st.drop),
            ("total", &st.total),
        ] {
            println!(
                "{name:>10}: {:>10} {:>10} {:>10}",
                us(v, 50.0),
                us(v, 99.0),
                us(v, 100.0)
            );
        }
        results.push(json!({
            "event": kind,
            "apply_us": {"p50": us(&st.apply, 50.0), "p99": us(&st.apply, 99.0), "max": us(&st.apply, 100.0)},
            "update_us": {"p50": us(&st.update, 50.0), "p99": us(&st.update, 99.0), "max": us(&st.update, 100.0)},
            "drop_us": {"p50": us(&st.drop, 50.0), "p99": us(&st.drop, 99.0), "max": us(&st.drop, 100.0)},
            "total_us": {"p50": us(&st.total, 50.0), "p99": us(&st.total, 99.0), "max": us(&st.total, 100.0)},
        }));
    }
    // The incremental set is the one built from scratch.
    assert_eq!(set, ResourceSet::from_snapshot(&snap));
    println!(
        "{}",
        json!({"pods": pods, "events_per_kind": events, "full_rebuild": full, "results": results})
    );
}
