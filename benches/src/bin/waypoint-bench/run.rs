//! One run: topology, apps, both waypoints, the alternation of modes, the
//! rate searches, and the report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mesh_benches::mesh_bench::stats::{percentile, sorted};
use mesh_benches::waypoint_bench::envoy::{check_routed, Service};
use mesh_benches::waypoint_bench::report::{self, Meta, Report};
use mesh_benches::waypoint_bench::search::{self, Plan, Step};
use mesh_benches::waypoint_bench::{
    mesh_config, Mode, PodAddr, ENVOY_VIP, ENVOY_WAYPOINT, OUR_WAYPOINT, SERVICE_PORT, TARGET_PORT,
};
use mesh_tests::l7load::{self, open, Client, Proto, APP_PORT};
use mesh_tests::load::in_ns;
use mesh_tests::mesh::{metric_sum, Mesh};
use mesh_tests::process;
use mesh_tests::Topology;

use crate::procs::{self, EnvoyWaypoint, OurWaypoint};
use crate::Opts;

/// Requests sent one by one before each measured run (connections, pools,
/// HBONE tunnels warm); counted in the verification, not in the figures.
const WARM_UP: u64 = 20;
/// Outstanding requests past which an open-loop run gives up.
const MAX_IN_FLIGHT: usize = 2000;
/// How long the last responses may take after the last send.
const DRAIN: Duration = Duration::from_secs(10);

struct Bench<'a> {
    opts: &'a Opts,
    topo: &'a Topology,
    mesh: &'a Mesh,
    ours: Option<OurWaypoint>,
    envoy: Option<EnvoyWaypoint>,
    next_index: u64,
    report: Report,
}

/// One measured open-loop run of a mode.
struct Measured {
    run: open::OpenRun,
    /// Waypoint cores busy during the run (CPU seconds / wall seconds).
    waypoint_cores: Option<f64>,
    rss_mib: Option<f64>,
    verified: String,
}

pub fn run(opts: &Opts) -> Result<(), String> {
    let mut modes = opts.modes.clone();
    let envoy_bin = match procs::envoy_bin() {
        Ok(b) => Some(b),
        Err(e) if modes.contains(&Mode::EnvoyWaypoint) => {
            if std::env::var_os("CI").is_some() || !opts.smoke {
                return Err(format!("the Envoy waypoint cannot run: {e}"));
            }
            eprintln!("SKIPPED envoy_waypoint mode: {e} (set CI=true to make this a failure)");
            modes.retain(|m| *m != Mode::EnvoyWaypoint);
            None
        }
        Err(_) => None,
    };
    let mut meta = Meta {
        started_utc: utc_now(),
        commit: git_commit(),
        machine: machine(opts),
        envoy_version: envoy_bin
            .as_deref()
            .map(procs::envoy_version)
            .unwrap_or_default(),
        workers: opts.workers,
        reps: opts.reps,
        rate: opts.rate,
        secs: opts.secs.as_secs_f64(),
        smoke: opts.smoke,
        load_before: load_avg(),
        ..Meta::default()
    };
    meta.notes.push(format!(
        "One load generator thread (tokio current-thread) in the client pod; the client, both ztunnels, the waypoint and the server share the machine's {} CPUs, so the highest sustained rate is the whole chain's on this machine, and the waypoint's cores at that rate give its requests/s per core. Latencies run from each request's scheduled send time (coordinated omission corrected); the timer's wake-up slack counts in every mode alike, and 'added' subtracts no mesh.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("plain-client", 1)
        .pod(OUR_WAYPOINT, 1)
        .pod(ENVOY_WAYPOINT, 1)
        .pod("server", 2)
        .pod("plain-server", 2)
        .build()
        .map_err(|e| format!("building the topology: {e}"))?;
    let pods: Vec<PodAddr> = topo
        .pods()
        .iter()
        .map(|p| PodAddr {
            name: p.name.clone(),
            ip: p.ip,
            node: p.node,
        })
        .collect();
    let mut mesh = Mesh::new(&topo, &mesh_config(&pods));
    mesh.start_all();
    let apps = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    l7load::serve(&apps, &topo.pod("server").ns, APP_PORT);
    l7load::serve(&apps, &topo.pod("plain-server").ns, APP_PORT);
    let ours = match modes.contains(&Mode::Waypoint) {
        true => Some(OurWaypoint::start(
            &mesh,
            &topo.pod(OUR_WAYPOINT).ns,
            opts.workers,
        )?),
        false => None,
    };
    let envoy = match (&envoy_bin, modes.contains(&Mode::EnvoyWaypoint)) {
        (Some(bin), true) => {
            let server = topo.pod("server");
            let services = vec![Service {
                name: "echo-envoy".into(),
                vip: ENVOY_VIP,
                port: SERVICE_PORT,
                endpoints: vec![(server.ip, TARGET_PORT, "server".into())],
            }];
            Some(EnvoyWaypoint::start(
                bin,
                mesh.ca_dir(),
                &mesh.scratch("envoy-waypoint"),
                &topo.pod(ENVOY_WAYPOINT).ns,
                services,
                opts.workers,
            )?)
        }
        _ => None,
    };
    let mut b = Bench {
        opts,
        topo: &topo,
        mesh: &mesh,
        ours,
        envoy,
        next_index: 0,
        report: Report {
            meta,
            ..Report::default()
        },
    };
    let mut failures = Vec::new();
    for rep in 0..opts.reps {
        for &proto in &opts.protos {
            for &mode in &modes {
                eprintln!(
                    "rep {}/{} {} {}: open loop at {}/s for {:?}",
                    rep + 1,
                    opts.reps,
                    proto.key(),
                    mode.key(),
                    opts.rate,
                    opts.secs
                );
                let m = b.measure(mode, proto, opts.rate, opts.secs)?;
                if let Some(e) = m
                    .run
                    .first_error
                    .as_deref()
                    .filter(|e| e.contains("differs"))
                {
                    return Err(format!("{} {}: {e}", proto.key(), mode.key()));
                }
                if !m.run.complete() {
                    // Recorded, the run goes on, and it fails at the end.
                    let failure = format!(
                        "FAILED: repetition {} {} {} at {}/s: {} of {} answered, {} errors (first: {})",
                        rep + 1,
                        proto.key(),
                        mode.key(),
                        opts.rate,
                        m.run.ok,
                        m.run.planned,
                        m.run.errors,
                        m.run.first_error.unwrap_or_default()
                    );
                    eprintln!("{failure}");
                    b.report.meta.notes.push(failure.clone());
                    failures.push(failure);
                    continue;
                }
                b.record_fixed(mode, proto, &m);
            }
        }
        if rep == 0 && opts.search {
            for &proto in &opts.protos {
                for &mode in &modes {
                    b.search(mode, proto)?;
                }
            }
        }
    }
    if opts.profile {
        for &proto in &opts.protos {
            for mode in modes.iter().copied().filter(|m| m.has_waypoint()) {
                b.profile(mode, proto)?;
            }
        }
    }
    b.report.meta.load_after = load_avg();
    let Bench { report, .. } = b;
    write(&report, &opts.out)?;
    print_summary(&report);
    drop(apps);
    if !failures.is_empty() {
        return Err(format!(
            "{} fixed-rate run(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        ));
    }
    Ok(())
}

impl Bench<'_> {
    fn pid(&self, mode: Mode) -> Option<u32> {
        match mode {
            Mode::Waypoint => self.ours.as_ref().map(|o| o.pid()),
            Mode::EnvoyWaypoint => self.envoy.as_ref().map(|e| e.pid()),
            _ => None,
        }
    }

    /// What proves the mode carried the requests, before and after.
    fn evidence(&self, mode: Mode) -> Result<String, String> {
        Ok(match mode {
            Mode::NoMesh => String::new(),
            Mode::Ztunnel => self.mesh.metrics(2),
            Mode::Waypoint => self.ours.as_ref().expect("ours").metrics(),
            Mode::EnvoyWaypoint => self.envoy.as_ref().expect("envoy").stats()?,
        })
    }

    fn verify(
        &self,
        mode: Mode,
        before: &str,
        after: &str,
        requests: u64,
    ) -> Result<String, String> {
        match mode {
            Mode::NoMesh => Ok(
                "no mesh: plain-client → plain-server, both istio.io/dataplane-mode: none".into(),
            ),
            Mode::Ztunnel => {
                let sel = Some("source_principal=\"cluster.local/ns/shop/sa/client\"");
                let opened = |t: &str| metric_sum(t, "istio_tcp_connections_opened_total", sel);
                let d = opened(after) - opened(before);
                if d == 0 {
                    return Err("ztunnel only: the destination ztunnel saw no new connection from the client's identity".into());
                }
                Ok(format!("ztunnel only: {requests} requests; destination ztunnel opened {d} connection(s) from the client's identity"))
            }
            Mode::Waypoint => {
                let n =
                    |t: &str| metric_sum(t, "istio_requests_total", Some("response_code=\"200\""));
                let d = n(after) - n(before);
                if d != requests {
                    let stderr = self.ours.as_ref().map(|o| o.stderr()).unwrap_or_default();
                    return Err(format!("our waypoint: istio_requests_total{{response_code=\"200\"}} grew by {d}, not by the {requests} requests sent\n{stderr}"));
                }
                Ok(format!("our waypoint: istio_requests_total{{reporter=\"waypoint\",response_code=\"200\"}} +{d} = requests sent"))
            }
            Mode::EnvoyWaypoint => {
                let e = self.envoy.as_ref().expect("envoy");
                check_routed(before, after, &e.services[0], requests)
                    .map_err(|err| format!("Envoy waypoint: {err}\n{}", e.log_text()))?;
                Ok(format!("Envoy waypoint: http.inbound_vip.downstream_rq_2xx and cluster.{}.upstream_rq_2xx +{requests} = requests sent", e.services[0].cluster()))
            }
        }
    }

    fn measure(
        &mut self,
        mode: Mode,
        proto: Proto,
        rate: f64,
        dur: Duration,
    ) -> Result<Measured, String> {
        let ns = self.topo.pod(mode.client_pod()).ns.clone();
        let target = SocketAddr::V4(mode.target(self.topo.pod("plain-server").ip));
        let first = self.next_index;
        self.next_index += WARM_UP + open::planned(rate, dur);
        let pid = self.pid(mode);
        let before = self.evidence(mode)?;
        let (run, cpu) = in_ns(&ns, async move {
            let client = Client::new(proto, target);
            for i in 0..WARM_UP {
                client
                    .call(first + i)
                    .await
                    .map_err(|e| format!("{} {} warm-up: {e}", proto.key(), mode.key()))?;
            }
            let cpu0 = pid.map(process::cpu_seconds);
            let run = open::run(client, first + WARM_UP, rate, dur, MAX_IN_FLIGHT, DRAIN).await;
            let cpu1 = pid.map(process::cpu_seconds);
            Ok::<_, String>((run, cpu0.zip(cpu1).map(|(a, b)| b - a)))
        })?;
        let after = self.evidence(mode)?;
        let verified = if run.complete() {
            self.verify(mode, &before, &after, WARM_UP + run.ok)?
        } else {
            String::new()
        };
        Ok(Measured {
            waypoint_cores: cpu.map(|c| c / run.wall_s.max(1e-3)),
            rss_mib: pid.map(|p| process::status_kib(p, "VmRSS") as f64 / 1024.0),
            run,
            verified,
        })
    }

    fn record_fixed(&mut self, mode: Mode, proto: Proto, m: &Measured) {
        let p = proto.key();
        let lat = sorted(&m.run.latencies_us);
        self.report
            .push(p, report::P50, mode, percentile(&lat, 0.5));
        self.report
            .push(p, report::P99, mode, percentile(&lat, 0.99));
        self.report
            .push(p, report::P999, mode, percentile(&lat, 0.999));
        if let Some(cores) = m.waypoint_cores {
            self.report
                .push(p, report::CPU, mode, cores * 1000.0 * 1000.0 / m.run.rate);
        }
        if let Some(rss) = m.rss_mib {
            self.report.push(p, report::RSS, mode, rss);
        }
        self.report
            .verification
            .push(format!("{p} at {}/s: {}", m.run.rate, m.verified));
    }

    /// The highest rate `mode` sustains for `proto` (and the waypoint's
    /// requests/s per core there).
    fn search(&mut self, mode: Mode, proto: Proto) -> Result<(), String> {
        let plan = Plan {
            start: self.opts.rate,
            max_rate: 100_000.0,
            min_rate: 50.0,
            max_steps: self.opts.search_steps,
            precision: 1.15,
        };
        let mut steps: Vec<Step> = Vec::new();
        let mut cores_at = BTreeMap::new();
        while let Some(rate) = search::next_rate(&plan, &steps) {
            let m = self.measure(mode, proto, rate, self.opts.search_secs)?;
            if let Some(e) = m
                .run
                .first_error
                .as_deref()
                .filter(|e| e.contains("differs"))
            {
                return Err(format!("{} {} at {rate}/s: {e}", proto.key(), mode.key()));
            }
            let achieved = m.run.ok as f64 / m.run.wall_s.max(1e-3);
            let p99 = percentile(&sorted(&m.run.latencies_us), 0.99);
            let ok = search::sustained(
                m.run.complete(),
                rate,
                achieved,
                p99,
                self.opts.slo_ms * 1000.0,
            );
            eprintln!(
                "  search {} {}: {rate}/s -> {achieved:.0}/s, p99 {:.0} µs, {}{}",
                proto.key(),
                mode.key(),
                p99,
                if ok { "sustained" } else { "not sustained" },
                m.run
                    .first_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            if ok {
                if let Some(c) = m.waypoint_cores {
                    cores_at.insert(rate.to_bits(), (achieved, c));
                }
            }
            steps.push(Step {
                rate,
                achieved,
                p99_us: if p99.is_finite() { p99 } else { 0.0 },
                sustained: ok,
            });
        }
        let p = proto.key();
        if let Some(peak) = search::peak(&steps) {
            self.report.push(p, report::PEAK, mode, peak);
            if let Some((achieved, cores)) = cores_at.get(&peak.to_bits()) {
                if *cores > 0.0 {
                    self.report
                        .push(p, report::PER_CORE, mode, achieved / cores);
                }
            }
        }
        self.report
            .searches
            .entry(p.to_owned())
            .or_default()
            .insert(mode.key().to_owned(), steps);
        Ok(())
    }
}

impl Bench<'_> {
    /// `perf record -g` of the waypoint during one more fixed-rate run;
    /// the top of `perf report` (self time by symbol) goes in the report
    /// and the whole of it next to the report.
    fn profile(&mut self, mode: Mode, proto: Proto) -> Result<(), String> {
        let pid = self.pid(mode).expect("a waypoint mode");
        let data =
            self.opts
                .out
                .with_extension(format!("perf-{}-{}.data", mode.key(), proto.key()));
        let mut perf = std::process::Command::new("perf")
            .args(["record", "-F", "999", "-g", "-q", "-o"])
            .arg(&data)
            .args(["-p", &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("perf record: {e}"))?;
        std::thread::sleep(Duration::from_millis(300));
        eprintln!(
            "profiling {} {} at {}/s",
            proto.key(),
            mode.key(),
            self.opts.rate
        );
        let m = self.measure(mode, proto, self.opts.rate, self.opts.secs);
        // SAFETY: kill(2) on the child we spawned.
        unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
        let _ = perf.wait();
        m?;
        let report = |sort: &str, limit: &str| {
            std::process::Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "-g",
                    "none",
                    "--sort",
                    sort,
                    "--percent-limit",
                    limit,
                    "-i",
                ])
                .arg(&data)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .map_err(|e| format!("perf report: {e}"))
        };
        // Where the time goes by binary (kernel, the proxy, libc), then
        // by symbol.
        let text = report("dso", "0.5")? + &report("dso,symbol", "0.7")?;
        let txt = data.with_extension("txt");
        std::fs::write(&txt, &text).map_err(|e| format!("{}: {e}", txt.display()))?;
        let _ = std::fs::remove_file(&data);
        let top: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::trim_end)
            .take(45)
            .map(str::to_owned)
            .collect();
        self.report
            .profiles
            .insert(format!("{} {}", proto.key(), mode.label()), top);
        Ok(())
    }
}

fn write(report: &Report, out: &Path) -> Result<(), String> {
    let json = out.with_extension("json");
    let html = out.with_extension("html");
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&report.to_json()).map_err(|e| e.to_string())?;
    std::fs::write(&json, text).map_err(|e| format!("{}: {e}", json.display()))?;
    std::fs::write(&html, report.html()).map_err(|e| format!("{}: {e}", html.display()))?;
    eprintln!("wrote {} and {}", json.display(), html.display());
    Ok(())
}

/// `--render RUN.json`: RUN.html from a run's JSON.
pub fn render(json: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let report = Report::from_json(&doc).map_err(|e| e.to_string())?;
    let html = json.with_extension("html");
    std::fs::write(&html, report.html()).map_err(|e| format!("{}: {e}", html.display()))
}

fn print_summary(r: &Report) {
    let f = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
    if r.meta.smoke {
        eprintln!(
            "smoke run: correctness only (every mode byte-exact and proven); not measurements"
        );
    }
    for proto in r.figures.keys() {
        eprintln!("{proto}: mode: p50/p99/p99.9 µs (added p99) | waypoint mcores per 1k rps | RSS MiB | peak rps | rps/core");
        for mode in Mode::ALL {
            let m = |id| r.median(proto, id, mode);
            eprintln!(
                "  {:<26} {}/{}/{} (+{}) | {} | {} | {} | {}",
                mode.label(),
                f(m(report::P50)),
                f(m(report::P99)),
                f(m(report::P999)),
                f(r.added(proto, report::P99, mode)),
                f(m(report::CPU)),
                f(m(report::RSS)),
                f(m(report::PEAK)),
                f(m(report::PER_CORE)),
            );
        }
    }
    for t in r.targets() {
        eprintln!(
            "target {} {}: ours {} envoy {} ratio {} ({}) {}",
            t.proto,
            t.what,
            f(t.ours),
            f(t.envoy),
            t.ratio.map(|r| format!("{r:.2}")).unwrap_or("-".into()),
            t.bound,
            match t.met {
                Some(true) => "MET",
                Some(false) => "MISSED",
                None => "n/a",
            }
        );
    }
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn machine(opts: &Opts) -> String {
    if !opts.machine.is_empty() {
        return opts.machine.clone();
    }
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_default();
    format!(
        "{model}, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}
