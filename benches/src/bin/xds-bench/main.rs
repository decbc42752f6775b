//! `xds-bench`: the control plane and ztunnel's xDS state under load, with
//! the real `control-plane` and `ztunnel` binaries on loopback.
//!
//! - **Push latency**: from the control plane's config file being replaced
//!   to each simulated client publishing a snapshot that contains the edit.
//!   The clients are ztunnel's own [`XdsClient`] (delta ADS over TLS, one
//!   connection and one node token each), many in this process. Measured
//!   with 2 and 50 clients, on a small mesh and on 10,000 workloads.
//! - **Control-plane cost**: CPU seconds and RSS of the `control-plane`
//!   process (from `/proc`) with 10,000 workloads and 1,000 services,
//!   serving 50 clients.
//! - **ztunnel memory per workload**: the real `ztunnel` (`--no-capture`,
//!   xDS mode, ports moved off the defaults) holding 0, 1,000 and 10,000
//!   workloads; RSS growth per workload.
//! - **Store delta** (`store`): in-process, the time ztunnel's xDS store
//!   takes to apply a one-workload delta while holding 10,000 workloads.
//!
//! `xds-bench [--quick] [--out FILE]`: `--quick` is a correctness smoke
//! (2 clients, a small mesh, a few edits, every edit must reach every
//! client); the full run writes its figures as JSON to `--out`.

mod cluster;
mod mesh;
mod store;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_benches::percentile;
use serde_json::{json, Value};

use cluster::{proc_cpu_seconds, proc_kib, ControlPlane, Fleet, Ztunnel};
use mesh::Scale;

struct Args {
    quick: bool,
    out: Option<PathBuf>,
    /// `push-small`, `push-large`, `ztunnel` or `store`: run only that part.
    only: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        quick: false,
        out: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--out" => args.out = it.next().map(PathBuf::from),
            "--only" => args.only = it.next(),
            other => {
                eprintln!("xds-bench: unknown argument {other:?}; usage: xds-bench [--quick] [--out FILE] [--only push-small|push-large|ztunnel|store]");
                std::process::exit(2);
            }
        }
    }
    args
}

fn main() {
    let args = parse_args();
    let rt = mesh_benches::runtime(2);
    let report = rt.block_on(async {
        if args.quick {
            quick().await
        } else {
            full(args.only.as_deref()).await
        }
    });
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    match &args.out {
        Some(path) => {
            std::fs::write(path, format!("{text}\n")).expect("write --out");
            println!("wrote {}", path.display());
        }
        None => println!("{text}"),
    }
}

/// A smoke run: every edit reaches both clients, and latency is reported.
async fn quick() -> Value {
    let scale = Scale::small();
    let cp = ControlPlane::start(&scale, 0);
    let r = push_latency(&cp, &scale, 2, 5).await;
    assert_eq!(r.missed, 0, "an edit did not reach every client");
    json!({"quick": true, "push": r.to_json()})
}

async fn full(only: Option<&str>) -> Value {
    let runs = |part: &str| only.is_none_or(|o| o == part);
    let mut push = Vec::new();
    let scales = [
        ("push-small", Scale::small()),
        ("push-large", Scale::large()),
    ];
    for (_, scale) in scales.into_iter().filter(|(part, _)| runs(part)) {
        let cp = ControlPlane::start(&scale, 0);
        let loaded = cp_usage(&cp);
        for clients in [2, 50] {
            let rounds = if scale.workloads > 1000 { 30 } else { 100 };
            let cpu0 = proc_cpu_seconds(cp.pid());
            let r = push_latency(&cp, &scale, clients, rounds).await;
            let cpu = proc_cpu_seconds(cp.pid()) - cpu0;
            let mut v = r.to_json();
            v["scale"] = scale.to_json();
            v["control_plane_loaded"] = loaded.clone();
            v["control_plane_after"] = cp_usage(&cp);
            v["control_plane_cpu_seconds_during"] = json!(round3(cpu));
            println!("{}", serde_json::to_string(&v).expect("JSON"));
            push.push(v);
        }
    }
    let ztunnel = if runs("ztunnel") {
        ztunnel_memory().await
    } else {
        Value::Null
    };
    let store = if runs("store") {
        store::delta_apply(&Scale::large(), 200)
    } else {
        Value::Null
    };
    json!({
        "machine": machine(),
        "push": push,
        "ztunnel_memory": ztunnel,
        "store_delta": store,
    })
}

/// CPU seconds so far and RSS / peak RSS of the control-plane process.
fn cp_usage(cp: &ControlPlane) -> Value {
    json!({
        "cpu_seconds": round3(proc_cpu_seconds(cp.pid())),
        "rss_kib": proc_kib(cp.pid(), "VmRSS"),
        "peak_rss_kib": proc_kib(cp.pid(), "VmHWM"),
    })
}

pub struct PushResult {
    clients: usize,
    rounds: usize,
    /// Each client's latency for each edit.
    per_client: Vec<Duration>,
    /// The slowest client's latency for each edit ("every client applied").
    per_edit: Vec<Duration>,
    /// From connecting to every client holding the first snapshot.
    initial_sync: Duration,
    /// Edits that did not reach every client within the timeout.
    missed: usize,
}

impl PushResult {
    fn to_json(&self) -> Value {
        let ms = |d: Duration| round3(d.as_secs_f64() * 1e3);
        let stats = |v: &[Duration]| {
            let mut s = v.to_vec();
            s.sort();
            json!({
                "p50_ms": ms(percentile(&s, 50.0)),
                "p99_ms": ms(percentile(&s, 99.0)),
                "max_ms": ms(s.last().copied().unwrap_or_default()),
                "samples": s.len(),
            })
        };
        json!({
            "clients": self.clients,
            "edits": self.rounds,
            "missed_edits": self.missed,
            "initial_sync_ms": ms(self.initial_sync),
            "every_client_applied": stats(&self.per_edit),
            "each_client_applied": stats(&self.per_client),
        })
    }
}

/// Connects `clients` simulated ztunnels, then replaces the config file
/// `rounds` times (renaming a marker workload) and times each edit to each
/// client's published snapshot.
async fn push_latency(
    cp: &ControlPlane,
    scale: &Scale,
    clients: usize,
    rounds: usize,
) -> PushResult {
    let start = Instant::now();
    let mut fleet = Fleet::connect(cp, clients);
    let marker0 = fleet_marker(cp);
    fleet
        .wait_all(&marker0, Duration::from_secs(120))
        .await
        .expect("every client completes the first sync");
    let initial_sync = start.elapsed();
    let mut res = PushResult {
        clients,
        rounds,
        per_client: Vec::new(),
        per_edit: Vec::new(),
        initial_sync,
        missed: 0,
    };
    for round in 1..=rounds {
        // Space the edits so one push never overlaps the next.
        let gap = 20 + rand::random::<u64>() % 50;
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let marker = mesh::marker_name(cp.generation() + 1);
        let edited = Instant::now();
        cp.rewrite(scale);
        match fleet.wait_all(&marker, Duration::from_secs(30)).await {
            Some(applied) => {
                let lat: Vec<Duration> = applied.iter().map(|t| *t - edited).collect();
                res.per_edit.push(*lat.iter().max().expect("clients > 0"));
                res.per_client.extend(lat);
            }
            None => {
                res.missed += 1;
                eprintln!("edit {round}: not every client applied it within 30 s");
            }
        }
    }
    fleet.stop().await;
    res
}

/// The marker the control plane's current file carries.
fn fleet_marker(cp: &ControlPlane) -> String {
    mesh::marker_name(cp.generation())
}

/// ztunnel RSS holding 0, 1,000 and 10,000 workloads (with a tenth as many
/// services), each level in a fresh control plane and ztunnel.
async fn ztunnel_memory() -> Value {
    let mut levels = Vec::new();
    for workloads in [0usize, 1_000, 10_000] {
        let scale = Scale {
            workloads,
            services: workloads / 10,
        };
        let cp = ControlPlane::start(&scale, 0);
        let z = Ztunnel::start(&cp);
        // Let the first snapshots be built and freed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Read /proc before /config_dump, whose JSON would inflate the RSS.
        let rss = proc_kib(z.pid(), "VmRSS");
        let hwm = proc_kib(z.pid(), "VmHWM");
        let held = z.workloads_held();
        assert_eq!(
            held,
            scale.total_workloads(),
            "ztunnel must hold every workload"
        );
        println!("ztunnel holding {held} workloads: RSS {rss} KiB (peak {hwm} KiB)");
        levels.push(json!({
            "workloads": held,
            "services": scale.services,
            "rss_kib": rss,
            "peak_rss_kib": hwm,
        }));
    }
    let rss = |i: usize| levels[i]["rss_kib"].as_u64().unwrap_or(0) as f64;
    let n = |i: usize| levels[i]["workloads"].as_u64().unwrap_or(1) as f64;
    let per_workload = |i: usize| (rss(i) - rss(0)) * 1024.0 / (n(i) - n(0));
    json!({
        "levels": levels,
        "bytes_per_workload_1k": per_workload(1).round(),
        "bytes_per_workload_10k": per_workload(2).round(),
        "target_bytes_per_workload": 2048,
    })
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    json!({"cpus": cpus, "cpu": model, "note": "clients, control plane and ztunnel share these cores"})
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
