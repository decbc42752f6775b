//! `netns-bench`: ambient mesh against no mesh, pod to pod across two nodes
//! in network namespaces, in one run with the modes alternated
//! (no-mesh, relay, tls-relay, hbone-relay, ambient, no-mesh, ...) so
//! machine drift cancels out.
//!
//! - no mesh: no ztunnel running (stopped with SIGTERM, which removes its
//!   nftables table), so nothing is captured;
//! - relay: no ztunnel either; the client dials node 1's address, where a
//!   plain user-space TCP relay (`tcp-relay`) forwards to one in node 2,
//!   which forwards to the server pod: ambient's three TCP legs without
//!   TLS, HTTP/2 or policy, the floor of any node proxy on this machine;
//! - tls-relay: the same relays with mutual TLS 1.3 between the nodes
//!   (HBONE's rustls configurations and record sealing, no HTTP/2): the
//!   data path of a sidecar mesh, and the floor of any proxy that encrypts
//!   between nodes in user space (this kernel has no kTLS);
//! - hbone-relay: the same relays with HBONE between the nodes, through the
//!   `hbone` library ztunnel uses (pooled HTTP/2 CONNECT in mutual TLS):
//!   ambient's tunnel without capture, policy or telemetry;
//! - ambient: both ztunnels running, the pods' namespace labelled ambient.
//!
//! Workloads (client pod on node 1, server pod on node 2): single-stream bulk
//! throughput, 1 KiB request/response latency (closed loop), new connections
//! per second (connect, 16-byte echo, close; several workers), and the
//! proxies' CPU seconds and peak RSS. A last phase configures 1,000 extra
//! workloads and holds 1,000 idle connections through the mesh, then reads
//! the ztunnels' RSS. Every byte is checked in every mode.
//!
//! `--quick`: tiny sizes, one repetition, for CI (correctness, not speed).
//! Writes every figure (min/median/max over repetitions) to `--out`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_tests::load::{
    bulk, churn, closed_loop, in_ns, prepare_for_churn, serve, ECHO_PORT, ONESHOT_PORT, SINK_PORT,
};
use mesh_tests::mesh::Mesh;
use mesh_tests::process;
use mesh_tests::relay::{Hop, RelayChain};
use mesh_tests::{require_root, Netns, Topology};

mod report;

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    /// One connection-rate port for every repetition (reproduces the
    /// no-mesh slowdown after ambient repetitions, see NETNS-BENCH.md).
    shared_port: bool,
    reps: usize,
    out: PathBuf,
    bulk: Duration,
    latency: Duration,
    rate: Duration,
    workers: usize,
    scale_workloads: usize,
    /// Idle connections held at each reading of the scale phase (growing).
    scale_conns: Vec<usize>,
    /// Only the scale phase (no repetitions of the modes).
    scale_only: bool,
    /// Internal: serve the scale phase's echo on this port and nothing else
    /// (a child process in the server pod, so this process's descriptors
    /// hold only the client ends).
    idle_echo: Option<u16>,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            quick: false,
            shared_port: false,
            reps: 3,
            out: PathBuf::from("target/netns-bench.json"),
            bulk: Duration::from_secs(5),
            latency: Duration::from_secs(3),
            rate: Duration::from_secs(3),
            workers: 8,
            scale_workloads: 1000,
            scale_conns: vec![1000, 10_000],
            scale_only: false,
            idle_echo: None,
        };
        let mut scale_conns = None;
        let mut flags = process::Flags::from_env(usage);
        while let Some(a) = flags.next_flag() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--shared-port" => o.shared_port = true,
                "--scale-only" => o.scale_only = true,
                "--idle-echo" => o.idle_echo = Some(flags.value("--idle-echo")),
                "--scale-conns" => scale_conns = Some(flags.list("--scale-conns")),
                "--reps" => o.reps = flags.value("--reps"),
                "--out" => o.out = flags.string("--out").into(),
                "--secs" => {
                    let d = Duration::from_secs(flags.value("--secs"));
                    (o.bulk, o.latency, o.rate) = (d, d, d);
                }
                "-h" | "--help" => usage(""),
                other => usage(&format!("unknown argument {other}")),
            }
        }
        if o.quick {
            o.reps = 1;
            o.bulk = Duration::from_millis(300);
            o.latency = Duration::from_millis(300);
            o.rate = Duration::from_millis(300);
            o.workers = 4;
            o.scale_workloads = 100;
            o.scale_conns = vec![100, 300];
        }
        if let Some(c) = scale_conns {
            o.scale_conns = c;
        }
        if o.scale_conns.is_empty() || o.scale_conns.windows(2).any(|w| w[0] >= w[1]) {
            usage("--scale-conns: one or more counts, increasing");
        }
        o.reps = o.reps.max(1);
        o
    }
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("error: {err}");
    }
    eprintln!("usage: netns-bench [--quick] [--reps N (default 3)] [--secs S per workload (default 5/3/3)] [--out FILE.json] [--shared-port] [--scale-only] [--scale-conns N,M (default 1000,10000)]");
    std::process::exit(2);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    NoMesh,
    Relay,
    TlsRelay,
    HboneRelay,
    Ambient,
}

/// Every mode, in the order each repetition runs them.
const MODES: [Mode; 5] = [
    Mode::NoMesh,
    Mode::Relay,
    Mode::TlsRelay,
    Mode::HboneRelay,
    Mode::Ambient,
];

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Mode::NoMesh => "no_mesh",
            Mode::Relay => "relay",
            Mode::TlsRelay => "tls_relay",
            Mode::HboneRelay => "hbone_relay",
            Mode::Ambient => "ambient",
        }
    }

    /// The names of the proxy figures of this mode: the relays' own in
    /// the relay modes; ztunnel's otherwise (zero in no-mesh mode, where no
    /// process is measured).
    fn proxy_keys(self) -> &'static ProxyKeys {
        match self {
            Mode::Relay => &RELAY_KEYS,
            Mode::TlsRelay => &TLS_RELAY_KEYS,
            Mode::HboneRelay => &HBONE_RELAY_KEYS,
            Mode::NoMesh | Mode::Ambient => &ZTUNNEL_KEYS,
        }
    }

    /// The relays this mode runs, if any.
    fn hop(self) -> Option<Hop> {
        match self {
            Mode::Relay => Some(Hop::Plain),
            Mode::TlsRelay => Some(Hop::Tls),
            Mode::HboneRelay => Some(Hop::Hbone),
            Mode::NoMesh | Mode::Ambient => None,
        }
    }
}

/// Figure names of the proxy processes' CPU and memory.
struct ProxyKeys {
    cpu_s_bulk: &'static str,
    cpu_s_per_gib: &'static str,
    cpu_s_latency: &'static str,
    cpu_s_conns: &'static str,
    cpu_us_per_conn: &'static str,
    peak_rss_mib: &'static str,
}

const ZTUNNEL_KEYS: ProxyKeys = ProxyKeys {
    cpu_s_bulk: "ztunnel_cpu_s_bulk",
    cpu_s_per_gib: "ztunnel_cpu_s_per_gib",
    cpu_s_latency: "ztunnel_cpu_s_latency",
    cpu_s_conns: "ztunnel_cpu_s_conns",
    cpu_us_per_conn: "ztunnel_cpu_us_per_conn",
    peak_rss_mib: "ztunnel_peak_rss_mib",
};

const RELAY_KEYS: ProxyKeys = ProxyKeys {
    cpu_s_bulk: "relay_cpu_s_bulk",
    cpu_s_per_gib: "relay_cpu_s_per_gib",
    cpu_s_latency: "relay_cpu_s_latency",
    cpu_s_conns: "relay_cpu_s_conns",
    cpu_us_per_conn: "relay_cpu_us_per_conn",
    peak_rss_mib: "relay_peak_rss_mib",
};

const TLS_RELAY_KEYS: ProxyKeys = ProxyKeys {
    cpu_s_bulk: "tls_relay_cpu_s_bulk",
    cpu_s_per_gib: "tls_relay_cpu_s_per_gib",
    cpu_s_latency: "tls_relay_cpu_s_latency",
    cpu_s_conns: "tls_relay_cpu_s_conns",
    cpu_us_per_conn: "tls_relay_cpu_us_per_conn",
    peak_rss_mib: "tls_relay_peak_rss_mib",
};

const HBONE_RELAY_KEYS: ProxyKeys = ProxyKeys {
    cpu_s_bulk: "hbone_relay_cpu_s_bulk",
    cpu_s_per_gib: "hbone_relay_cpu_s_per_gib",
    cpu_s_latency: "hbone_relay_cpu_s_latency",
    cpu_s_conns: "hbone_relay_cpu_s_conns",
    cpu_us_per_conn: "hbone_relay_cpu_us_per_conn",
    peak_rss_mib: "hbone_relay_peak_rss_mib",
};

/// figure name -> mode -> one sample per repetition.
type Samples = BTreeMap<&'static str, BTreeMap<Mode, Vec<f64>>>;

fn main() {
    let opts = Opts::parse();
    if let Some(port) = opts.idle_echo {
        return idle_echo(port);
    }
    process::ensure_ztunnel_bin();
    process::install_signal_cleanup();
    if !require_root() {
        // `require_root` printed SKIPPED (and panicked under CI): a smoke run
        // skips like the netns tests do; a measurement needs root.
        if opts.quick {
            return;
        }
        eprintln!("netns-bench builds network namespaces: run it as root");
        std::process::exit(2);
    }
    // Each idle connection of the scale phase holds its client end here.
    let max_conns = opts.scale_conns.iter().max().copied().unwrap_or(0) as u64;
    raise_nofile(max_conns + 4096);
    // A missing tcp-relay fails here, not after the first repetition.
    mesh_tests::relay::relay_bin();
    if process::run_guarded(|| run(&opts)).is_none() {
        std::process::exit(1);
    }
}

fn run(opts: &Opts) {
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("client2", 1)
        .pod("server", 2)
        .build()
        .expect("build topology");
    for ns in topo
        .pods()
        .iter()
        .map(|p| &p.ns)
        .chain(topo.nodes().iter().map(|n| &n.ns))
    {
        prepare_for_churn(ns).expect("sysctl");
    }
    let client = topo.pod("client").ns.clone();
    let server_ip = topo.pod("server").ip;
    let mut mesh = Mesh::new(&topo, &config(&topo, 0));
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    serve(
        &server_rt,
        &topo.pod("server").ns,
        true,
        MODES.len() * opts.reps,
    );

    let mut samples = Samples::new();
    let started = Instant::now();
    let reps = if opts.scale_only { 0 } else { opts.reps };
    for rep in 1..=reps {
        for mode in MODES {
            eprintln!("rep {rep}/{}: {}", opts.reps, mode.key());
            set_mode(&mut mesh, mode);
            let shot_port = if opts.shared_port {
                ONESHOT_PORT
            } else {
                shot_port(rep, mode)
            };
            let relays = mode.hop().map(|hop| {
                let ports = [SINK_PORT, ECHO_PORT, shot_port];
                RelayChain::start(&topo, &mesh.scratch("relays"), server_ip, &ports, hop)
            });
            let pids = match &relays {
                Some(chain) => chain.pids(),
                None => ztunnel_pids(&mesh, mode),
            };
            // In the relay modes the client dials the relay in its own node.
            let ip = relays.as_ref().map_or(server_ip, RelayChain::entry);
            let server = Server { ip, shot_port };
            one_rep(opts, &client, server, &mesh, &pids, mode, &mut samples);
            if mode != Mode::NoMesh {
                let hwm = pids
                    .iter()
                    .map(|p| process::status_kib(*p, "VmHWM"))
                    .max()
                    .unwrap_or(0);
                let key = mode.proxy_keys().peak_rss_mib;
                push(&mut samples, key, mode, hwm as f64 / 1024.0);
            }
            if let Some(chain) = relays {
                for line in chain.errors() {
                    eprintln!("warning: {line}");
                }
                chain.stop();
            }
        }
    }
    set_mode(&mut mesh, Mode::NoMesh);
    let scale = scale_phase(opts, &topo, &mut mesh, server_ip);
    let elapsed = started.elapsed();
    report::report(opts, &samples, &scale, elapsed);
    drop(mesh);
    drop(server_rt);
}

fn config(topo: &Topology, dummies: usize) -> String {
    let mut w = String::new();
    for name in ["client", "client2", "server"] {
        let p = topo.pod(name);
        w += &format!(
            "  - {{name: {name}, namespace: bench, serviceAccount: {name}, ip: {}, node: node{}, labels: {{app: {name}}}}}\n",
            p.ip, p.node
        );
    }
    for i in 0..dummies {
        // 10.2.x.y: configured, never routed.
        w += &format!(
            "  - {{name: dummy-{i}, namespace: bench, serviceAccount: dummy-{i}, ip: 10.2.{}.{}, node: node{}, labels: {{app: dummy}}}}\n",
            i / 250,
            i % 250 + 1,
            i % 2 + 1
        );
    }
    format!(
        "trustDomain: cluster.local\nnodes:\n  - {{name: node1, ip: 10.0.0.1}}\n  - {{name: node2, ip: 10.0.0.2}}\n\
         namespaces:\n  - {{name: bench, labels: {{istio.io/dataplane-mode: ambient}}}}\nworkloads:\n{w}"
    )
}

/// Starts or stops both ztunnels; in no-mesh and the relay modes also checks
/// that no capture table is left in either node.
fn set_mode(mesh: &mut Mesh, mode: Mode) {
    let running = process::find_pid_with_arg(&mesh.access_log_path(1)).is_some();
    match (mode, running) {
        (Mode::Ambient, false) => mesh.start_all(),
        (Mode::NoMesh | Mode::Relay | Mode::TlsRelay | Mode::HboneRelay, true) => {
            mesh.terminate_all()
        }
        _ => {}
    }
}

fn ztunnel_pids(mesh: &Mesh, mode: Mode) -> Vec<u32> {
    if mode != Mode::Ambient {
        return Vec::new();
    }
    (1..=2)
        .map(|n| process::find_pid_with_arg(&mesh.access_log_path(n)).expect("ztunnel pid"))
        .collect()
}

fn cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|p| process::cpu_seconds(*p)).sum()
}

fn push(s: &mut Samples, fig: &'static str, mode: Mode, v: f64) {
    s.entry(fig).or_default().entry(mode).or_default().push(v);
}

/// Where the client connects in one repetition: the server pod, or in the
/// relay modes the relay in node 1 (same ports).
#[derive(Debug, Clone, Copy)]
struct Server {
    ip: std::net::Ipv4Addr,
    shot_port: u16,
}

/// A fresh port per (repetition, mode) for the connection-rate test: with one
/// shared port, no-mesh connection rates after an ambient repetition dropped
/// to ~1/s (connects stalled for seconds; see tests/NETNS-BENCH.md), so the
/// modes would not be measured alike.
fn shot_port(rep: usize, mode: Mode) -> u16 {
    let index = MODES.iter().position(|m| *m == mode).expect("a mode");
    ONESHOT_PORT + (MODES.len() * (rep - 1) + index) as u16
}

fn one_rep(
    opts: &Opts,
    client: &Netns,
    server: Server,
    mesh: &Mesh,
    pids: &[u32],
    mode: Mode,
    s: &mut Samples,
) {
    let sink = SocketAddr::from((server.ip, SINK_PORT));
    let echo = SocketAddr::from((server.ip, ECHO_PORT));
    let shot = SocketAddr::from((server.ip, server.shot_port));

    // Warm up neighbour entries (proxy ARP answers after up to 0.8 s), the
    // HBONE pool and certificates, and check the path end to end.
    let keys = mode.proxy_keys();
    let back = in_ns(client, async move {
        let s = tokio::net::TcpStream::connect(echo).await?;
        mesh_tests::echo::round_trip(s, b"warm-up").await
    })
    .unwrap_or_else(|e| panic!("{mode:?} warm-up: {e}"));
    assert_eq!(back, b"warm-up", "{mode:?} warm-up echo");

    let c0 = cpu(pids);
    let (bytes, secs) =
        in_ns(client, bulk(sink, opts.bulk)).unwrap_or_else(|e| panic!("{mode:?} bulk: {e}"));
    let c1 = cpu(pids);
    assert!(bytes > 0, "{mode:?} bulk carried nothing");
    push(
        s,
        "throughput_gbit_s",
        mode,
        bytes as f64 * 8.0 / secs / 1e9,
    );
    push(s, keys.cpu_s_bulk, mode, c1 - c0);
    if mode != Mode::NoMesh {
        let gib = bytes as f64 / (1u64 << 30) as f64;
        push(s, keys.cpu_s_per_gib, mode, (c1 - c0) / gib);
    }
    if mode == Mode::Ambient {
        // The mesh carried it: the source ztunnel counted exactly these bytes.
        let dst = sink.to_string();
        mesh.wait_event(1, "bulk outbound", |e| {
            e["dst.addr"] == dst.as_str() && e["bytes_sent"] == bytes
        });
    }

    let c0 = cpu(pids);
    let mut rtts = in_ns(client, closed_loop(echo, opts.latency))
        .unwrap_or_else(|e| panic!("{mode:?} latency: {e}"));
    let c1 = cpu(pids);
    assert!(!rtts.is_empty(), "{mode:?} latency: no round trips");
    rtts.sort_by(f64::total_cmp);
    push(s, "latency_p50_us", mode, percentile(&rtts, 0.50));
    push(s, "latency_p99_us", mode, percentile(&rtts, 0.99));
    push(s, "latency_round_trips", mode, rtts.len() as f64);
    push(s, keys.cpu_s_latency, mode, c1 - c0);

    let c0 = cpu(pids);
    let (conns, secs) = in_ns(client, churn(shot, opts.workers, opts.rate))
        .unwrap_or_else(|e| panic!("{mode:?} connection rate: {e}"));
    let c1 = cpu(pids);
    assert!(
        conns > 0,
        "{mode:?} connection rate: no connection completed"
    );
    push(s, "new_conns_per_s", mode, conns as f64 / secs);
    push(s, keys.cpu_s_conns, mode, c1 - c0);
    if mode != Mode::NoMesh {
        push(
            s,
            keys.cpu_us_per_conn,
            mode,
            (c1 - c0) * 1e6 / conns as f64,
        );
    }
}

fn percentile(sorted_us: &[f64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    sorted_us[i]
}

/// RSS with many workloads configured and idle connections held open.
#[derive(Debug, Default)]
struct Scale {
    workloads: usize,
    startup_s: f64,
    rss_idle_kib: Vec<u64>,
    /// The same, split: anonymous memory (heap, stacks) and file pages (the
    /// binary's text and data that were touched).
    rss_idle_anon_kib: Vec<u64>,
    rss_idle_file_kib: Vec<u64>,
    /// One reading per step of [`Opts::scale_conns`], in order.
    steps: Vec<ScaleStep>,
    hwm_kib: Vec<u64>,
}

/// The ztunnels' RSS with `conns` idle connections open through them.
#[derive(Debug, Default)]
struct ScaleStep {
    conns: usize,
    /// VmRSS of node 1's and node 2's ztunnel.
    rss_kib: Vec<u64>,
    /// Seconds to open (and echo on) this step's new connections.
    open_s: f64,
}

impl Scale {
    /// RSS growth per idle connection of each ztunnel between the first
    /// and the last step, in KiB (empty with fewer than two steps).
    fn kib_per_conn(&self) -> Vec<f64> {
        let (Some(first), Some(last)) = (self.steps.first(), self.steps.last()) else {
            return Vec::new();
        };
        if last.conns <= first.conns {
            return Vec::new();
        }
        let n = (last.conns - first.conns) as f64;
        first
            .rss_kib
            .iter()
            .zip(&last.rss_kib)
            .map(|(a, b)| (*b as f64 - *a as f64) / n)
            .collect()
    }
}

/// Lifts this process's open-file limit to at least `want` (the ztunnels
/// started afterwards inherit it): the soft limit up to the hard one, and
/// the hard one too where the process may (CAP_SYS_RESOURCE).
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own; setrlimit reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= want {
            return;
        }
        let hard = lim.rlim_max;
        lim.rlim_cur = want;
        lim.rlim_max = hard.max(want);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            lim.rlim_cur = hard;
            lim.rlim_max = hard;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            eprintln!("warning: open-file limit {hard}, not {want}: the scale phase may fail");
        }
    }
}

/// Opens `n` connections from `pod` to `echo`, each echoing its index.
fn open_idle(pod: &Netns, echo: SocketAddr, first: usize, n: usize) -> Vec<std::net::TcpStream> {
    pod.run(move || {
        (first..first + n)
            .map(|i| {
                let mut s = std::net::TcpStream::connect_timeout(&echo, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("read timeout");
                echo_check(&mut s, i as u64, "echoed wrong bytes");
                s
            })
            .collect()
    })
    .expect("enter client namespace")
}

fn echo_check(s: &mut std::net::TcpStream, v: u64, what: &str) {
    use std::io::{Read, Write};
    let msg = v.to_le_bytes();
    s.write_all(&msg).expect("write");
    let mut back = [0u8; 8];
    s.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("idle connection {v}: {e}"));
    assert_eq!(back, msg, "idle connection {v} {what}");
}

fn scale_phase(
    opts: &Opts,
    topo: &Topology,
    mesh: &mut Mesh,
    server_ip: std::net::Ipv4Addr,
) -> Scale {
    eprintln!(
        "scale: {} workloads configured, idle connections {:?}",
        opts.scale_workloads, opts.scale_conns
    );
    mesh.write_config(&config(topo, opts.scale_workloads));
    let t = Instant::now();
    mesh.start_all();
    let startup_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let pids = ztunnel_pids(mesh, Mode::Ambient);
    let rss = |f: &str| {
        pids.iter()
            .map(|p| process::status_kib(*p, f))
            .collect::<Vec<_>>()
    };
    let rss_idle_kib = rss("VmRSS");
    let rss_idle_anon_kib = rss("RssAnon");
    let rss_idle_file_kib = rss("RssFile");
    // The echo runs in a process of its own: 10,000 connections' two ends
    // would not fit one process's open-file limit (which only a process with
    // CAP_SYS_RESOURCE may raise).
    let exe = std::env::current_exe().expect("own executable path");
    let port = IDLE_ECHO_PORT.to_string();
    let _echo_server = topo
        .pod("server")
        .ns
        .spawn(&[exe.to_str().expect("a UTF-8 path"), "--idle-echo", &port])
        .expect("start the idle echo");
    let echo = SocketAddr::from((server_ip, IDLE_ECHO_PORT));
    wait_listening(&topo.pod("server").ns, echo);
    // The connections come from IDLE_PODS in turn, each under ztunnel's
    // per-source cap of a capture listener.
    let pods: Vec<&Netns> = IDLE_PODS.iter().map(|p| &topo.pod(p).ns).collect();
    let mut conns = Vec::new();
    let mut steps = Vec::new();
    for &target in &opts.scale_conns {
        let t = Instant::now();
        let mut opened = conns.len();
        while opened < target {
            let n = (target - opened).min(IDLE_BATCH);
            let pod = pods[(opened / IDLE_BATCH) % pods.len()];
            conns.extend(open_idle(pod, echo, opened, n));
            opened += n;
        }
        let open_s = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(1));
        steps.push(ScaleStep {
            conns: conns.len(),
            rss_kib: rss("VmRSS"),
            open_s,
        });
    }
    // Every connection is still alive and byte-exact after the readings.
    for (i, s) in conns.iter_mut().enumerate() {
        echo_check(s, i as u64 ^ 0xffff, "broke");
    }
    let hwm_kib = rss("VmHWM");
    drop(conns);
    Scale {
        workloads: opts.scale_workloads,
        startup_s,
        rss_idle_kib,
        rss_idle_anon_kib,
        rss_idle_file_kib,
        steps,
        hwm_kib,
    }
}

/// The scale phase's echo port (its own process, [`idle_echo`]).
const IDLE_ECHO_PORT: u16 = 5003;

/// Serves an echo on `port` in this process's namespace until killed,
/// holding as little as it can per connection.
fn idle_echo(port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("echo runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .unwrap_or_else(|e| panic!("idle echo on port {port}: {e}"));
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Waits (up to 10 s) until something accepts connections at `addr` from
/// `ns`.
fn wait_listening(ns: &Netns, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns.std_connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens at {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pods (on node 1) the scale phase's idle connections come from.
const IDLE_PODS: [&str; 2] = ["client", "client2"];
/// Connections opened from one pod before the next takes over.
const IDLE_BATCH: usize = 500;
