//! One run: topology, apps, the alternation of modes, and the report.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mesh_benches::mesh_bench::envoy::{sum_stats, INBOUND_STAT_PREFIX, OUTBOUND_STAT_PREFIX};
use mesh_benches::mesh_bench::report::{html, pss_id, rss_id, startup_id, Meta, Report};
use mesh_benches::mesh_bench::stats::{percentile, quantile_curve, sorted, Spread};
use mesh_benches::mesh_bench::{spiffe_uri, Mode, HBONE_PORT};
use mesh_tests::load::{self as workloads, in_ns, IdleConns, ECHO_PORT, ONESHOT_PORT, SINK_PORT};
use mesh_tests::mesh::Mesh;
use mesh_tests::relay::RelayChain;
use mesh_tests::sidecar::Sidecars;
use mesh_tests::{Netns, Topology};

use crate::proxies::{self, EnvoyFleet, Running};
use crate::Opts;

/// figure id -> mode -> one sample per repetition.
type Samples = BTreeMap<String, BTreeMap<Mode, Vec<f64>>>;

/// Everything the modes need, built once.
struct Bench<'a> {
    opts: &'a Opts,
    topo: &'a Topology,
    /// Before `mesh`: dropped (killed) before its scratch dir goes.
    sidecars: Sidecars,
    /// The TLS relay floor while it runs (also before `mesh`, whose scratch
    /// dir holds the relays' CA and stderr).
    relays: Option<RelayChain>,
    mesh: Mesh,
    envoy: Option<EnvoyFleet>,
    samples: Samples,
    /// "closed"/"open" -> mode -> every latency sample (µs).
    latencies: BTreeMap<String, BTreeMap<Mode, Vec<f64>>>,
    verification: BTreeMap<String, Vec<String>>,
}

pub fn run(opts: &Opts) -> Result<(), String> {
    let load_before = load_avg();
    let started_utc = utc_now();
    let commit = git_commit();
    let mut not_run = BTreeMap::new();
    let mut modes = opts.modes.clone();
    let envoy_bin = match proxies::envoy_bin() {
        Ok(b) => Some(b),
        Err(e) if modes.contains(&Mode::Envoy) => {
            if std::env::var_os("CI").is_some() || !opts.smoke {
                return Err(format!("Envoy mode cannot run: {e}"));
            }
            eprintln!("SKIPPED envoy mode: {e} (set CI=true to make this a failure)");
            not_run.insert(Mode::Envoy.key().to_owned(), e);
            modes.retain(|m| *m != Mode::Envoy);
            None
        }
        Err(_) => None,
    };
    if modes.contains(&Mode::TlsRelay) {
        // A missing tcp-relay fails here, not after the first modes ran.
        mesh_tests::relay::relay_bin();
    }
    let n_max = *opts.pods.last().expect("pod counts");
    eprintln!("building 2 nodes x {n_max} pods ...");
    let mut builder = Topology::builder().nodes(2);
    for i in 0..n_max {
        builder = builder.pod(&format!("client-{i}"), 1);
    }
    for i in 0..n_max {
        builder = builder.pod(&format!("server-{i}"), 2);
    }
    let topo = builder
        .build()
        .map_err(|e| format!("building the topology: {e}"))?;
    let churn_ns = [
        &topo.pod("client-0").ns,
        &topo.nodes()[0].ns,
        &topo.nodes()[1].ns,
        &topo.pod("server-0").ns,
    ];
    for ns in churn_ns {
        workloads::prepare_for_churn(ns).map_err(|e| e.to_string())?;
    }
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    for pod in topo.pods().iter().filter(|p| p.name.starts_with("server-")) {
        workloads::serve(
            &server_rt,
            &pod.ns,
            pod.name == "server-0",
            opts.reps * Mode::ALL.len(),
        );
    }
    let mesh = Mesh::new(&topo, &proxies::mesh_config(&topo, 0, Mode::Ambient));
    let sidecars = Sidecars::new(&mesh, topo.nodes().len());
    let envoy = envoy_bin.as_ref().map(|bin| {
        let ca = hbone::ca::DevCa::load_or_create(mesh.ca_dir()).expect("mesh CA");
        EnvoyFleet::new(bin.clone(), mesh.scratch("envoy"), ca)
    });
    let mut bench = Bench {
        opts,
        topo: &topo,
        sidecars,
        relays: None,
        mesh,
        envoy,
        samples: Samples::new(),
        latencies: BTreeMap::new(),
        verification: BTreeMap::new(),
    };
    let t0 = Instant::now();
    for rep in 1..=opts.reps {
        for (pi, n) in opts.pods.iter().enumerate() {
            for (mi, mode) in modes.iter().enumerate() {
                // The floor has no per-pod proxies: only the perf phase, at
                // the first pod count; no startup or memory figures.
                if mode.perf_only() && pi > 0 {
                    continue;
                }
                eprintln!("rep {rep}/{}, {n} pods/node: {}", opts.reps, mode.label());
                let shot_port = ONESHOT_PORT + ((rep - 1) * Mode::ALL.len() + mi) as u16;
                let running = bench.start(*mode, *n, shot_port);
                if !mode.perf_only() {
                    bench.push(&startup_id(*n), *mode, running.startup_s);
                }
                if pi == 0 {
                    bench.perf(*mode, &running, shot_port)?;
                }
                if !mode.perf_only() {
                    bench.idle(*mode, *n, &running)?;
                }
                bench.stop(*mode, *n);
            }
        }
    }
    let elapsed = t0.elapsed();
    let report = bench.report(Meta {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_utc,
        elapsed_s: elapsed.as_secs_f64(),
        git_commit: commit,
        machine: machine(opts),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_avg_before: load_before,
        load_avg_after: load_avg(),
        smoke: opts.smoke,
        repetitions: opts.reps,
        pod_counts: opts.pods.clone(),
        idle_conns_per_pod: opts.idle_per_pod,
        params: BTreeMap::from([
            ("bulk_s".into(), opts.bulk.as_secs_f64()),
            ("closed_loop_s".into(), opts.closed.as_secs_f64()),
            ("open_loop_s".into(), opts.open.as_secs_f64()),
            ("open_loop_rate_per_s".into(), opts.open_rate),
            ("churn_s".into(), opts.churn.as_secs_f64()),
            ("churn_workers".into(), opts.churn_workers as f64),
            ("request_bytes".into(), workloads::REQ_LEN as f64),
        ]),
        modes: modes.clone(),
        not_run,
        envoy_version: envoy_bin
            .as_deref()
            .map(proxies::envoy_version)
            .unwrap_or_default(),
    });
    drop(bench);
    drop(server_rt);
    write_outputs(opts, &report)?;
    print_summary(&report);
    Ok(())
}

impl<'a> Bench<'a> {
    fn push(&mut self, id: &str, mode: Mode, v: f64) {
        self.samples
            .entry(id.to_owned())
            .or_default()
            .entry(mode)
            .or_default()
            .push(v);
    }

    /// The first `n` client and server pods.
    fn pods(&self, n: usize) -> Vec<&'a mesh_tests::Pod> {
        self.topo
            .pods()
            .iter()
            .filter(|p| proxies::pod_index(&p.name) < n)
            .collect()
    }

    /// Starts `mode` for `n` pods per node; `shot_port` is the churn port
    /// of this (repetition, mode), which the TLS relays must carry too.
    fn start(&mut self, mode: Mode, n: usize, shot_port: u16) -> Running {
        let pods = self.pods(n);
        match mode {
            Mode::NoMesh => Running::default(),
            Mode::TlsRelay => {
                let dir = self.mesh.scratch("relays");
                let ports = [SINK_PORT, ECHO_PORT, shot_port];
                let (chain, running) = proxies::start_tls_relay(self.topo, &dir, &ports);
                self.relays = Some(chain);
                running
            }
            Mode::Envoy => {
                let dest = proxies::destinations(self.topo, n);
                let node_ips: Vec<_> = self.topo.nodes().iter().map(|n| n.ip).collect();
                self.envoy
                    .as_mut()
                    .expect("envoy available")
                    .start(&pods, &dest, &node_ips)
            }
            Mode::Ambient => proxies::start_ambient(&mut self.mesh, self.topo, n),
            Mode::Sidecar => {
                proxies::start_sidecars(&self.mesh, &mut self.sidecars, self.topo, &pods, n)
            }
        }
    }

    fn stop(&mut self, mode: Mode, n: usize) {
        match mode {
            Mode::NoMesh => {}
            Mode::Sidecar => {
                let pods = self.pods(n);
                proxies::stop_sidecars(&mut self.sidecars, &pods);
            }
            Mode::Envoy => self.envoy.as_mut().expect("envoy available").stop(),
            Mode::TlsRelay => {
                let chain = self.relays.take().expect("TLS relays running");
                for line in chain.errors() {
                    eprintln!("warning: {line}");
                }
                chain.stop();
            }
            Mode::Ambient => self.mesh.terminate_all(),
        }
        // Nothing of the mode may be left in the pods: no-mesh must be plain.
        for pod in self.topo.pods().iter().take(2) {
            let t = pod.ns.exec("nft list tables").unwrap_or_default();
            assert!(
                t.trim().is_empty(),
                "{} still has nft tables after {}: {t}",
                pod.name,
                mode.label()
            );
        }
    }

    fn perf(&mut self, mode: Mode, running: &Running, shot_port: u16) -> Result<(), String> {
        let o = self.opts;
        let client = self.topo.pod("client-0").ns.clone();
        // Server-0, or where a mode without capture takes its traffic.
        let server: Ipv4Addr = running.entry.unwrap_or(self.topo.pod("server-0").ip);
        let (sink, echo, shot) = (
            SocketAddr::from((server, SINK_PORT)),
            SocketAddr::from((server, ECHO_PORT)),
            SocketAddr::from((server, shot_port)),
        );
        let ctx = |what: &str, e: String| format!("{} {what}: {e}", mode.label());
        in_ns(&client, workloads::warm_up(echo, b"warm-up")).map_err(|e| ctx("warm-up", e))?;

        let c0 = running.cpu_s_by_node();
        let (bytes, secs) =
            in_ns(&client, workloads::bulk(sink, o.bulk)).map_err(|e| ctx("bulk", e))?;
        let c1 = running.cpu_s_by_node();
        let node_cpu = [c1[0] - c0[0], c1[1] - c0[1]];
        let cpu = node_cpu[0] + node_cpu[1];
        self.push("throughput_gbit_s", mode, bytes as f64 * 8.0 / secs / 1e9);
        self.push("cpu_s_per_gb", mode, cpu / (bytes as f64 / 1e9));
        self.verify_bulk(mode, bytes, sink, node_cpu)?;

        let c0 = running.cpu_s();
        let rtts = in_ns(&client, workloads::closed_loop(echo, o.closed))
            .map_err(|e| ctx("closed loop", e))?;
        let cpu = running.cpu_s() - c0;
        if rtts.is_empty() {
            return Err(ctx("closed loop", "no round trips".into()));
        }
        self.push("cpu_s_per_1k_req", mode, cpu / (rtts.len() as f64 / 1000.0));
        self.push(
            "closed_rps",
            mode,
            rtts.len() as f64 / o.closed.as_secs_f64(),
        );
        self.latency("closed", mode, rtts);

        let lat = in_ns(&client, workloads::open_loop(echo, o.open_rate, o.open))
            .map_err(|e| ctx("open loop", e))?;
        self.latency("open", mode, lat);

        let c0 = running.cpu_s();
        let (conns, secs) = in_ns(&client, workloads::churn(shot, o.churn_workers, o.churn))
            .map_err(|e| ctx("churn", e))?;
        let cpu = running.cpu_s() - c0;
        if conns == 0 {
            return Err(ctx("churn", "no connection completed".into()));
        }
        self.push("conns_per_s", mode, conns as f64 / secs);
        self.push("cpu_s_per_1k_conns", mode, cpu / (conns as f64 / 1000.0));
        Ok(())
    }

    fn latency(&mut self, kind: &str, mode: Mode, samples: Vec<f64>) {
        let s = sorted(&samples);
        for (q, name) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
            self.push(&format!("{kind}_{name}_us"), mode, percentile(&s, q));
        }
        self.latencies
            .entry(kind.to_owned())
            .or_default()
            .entry(mode)
            .or_default()
            .extend(samples);
    }

    /// Did the meshed mode really carry the bulk bytes (sent to `sink`),
    /// over mutual TLS? `node_cpu`: the proxies' CPU seconds on each node
    /// during the bulk.
    fn verify_bulk(
        &mut self,
        mode: Mode,
        bytes: u64,
        sink: SocketAddr,
        node_cpu: [f64; 2],
    ) -> Result<(), String> {
        let line = match mode {
            Mode::NoMesh => return Ok(()),
            Mode::Sidecar => self.verify_sidecar_bulk(bytes)?,
            Mode::TlsRelay => self.verify_relay_bulk(bytes, sink, node_cpu)?,
            Mode::Ambient => {
                let dst = SocketAddr::from((self.topo.pod("server-0").ip, SINK_PORT)).to_string();
                self.mesh.wait_event(1, "bulk outbound", |e| {
                    e["dst.addr"] == dst.as_str() && e["bytes_sent"] == bytes
                });
                format!("node1 ztunnel access log: one HBONE connection to {dst} with bytes_sent = {bytes}, the bytes the client wrote")
            }
            Mode::Envoy => {
                let c = EnvoyFleet::stats(&self.topo.pod("client-0").ns);
                let s = EnvoyFleet::stats(&self.topo.pod("server-0").ns);
                let out_rx = sum_stats(
                    &c,
                    &format!("tcp.{OUTBOUND_STAT_PREFIX}."),
                    ".downstream_cx_rx_bytes_total",
                );
                let in_rx = sum_stats(
                    &s,
                    &format!("tcp.{INBOUND_STAT_PREFIX}."),
                    ".downstream_cx_rx_bytes_total",
                );
                let c_hs = sum_stats(&c, "cluster.outbound|server-0.", ".ssl.handshake");
                let c_v13 = sum_stats(&c, "cluster.outbound|server-0.", ".ssl.versions.TLSv1.3");
                let s_hs = sum_stats(&s, "listener.0.0.0.0_15006.", ".ssl.handshake");
                let s_v13 = sum_stats(&s, "listener.0.0.0.0_15006.", ".ssl.versions.TLSv1.3");
                if out_rx < bytes
                    || in_rx < bytes
                    || c_hs == 0
                    || s_hs == 0
                    || c_v13 != c_hs
                    || s_v13 != s_hs
                {
                    return Err(format!(
                        "Envoy did not carry the bulk over mTLS 1.3: client outbound rx {out_rx}, server inbound rx {in_rx} (want >= {bytes}); \
                         handshakes client {c_hs} (TLS 1.3: {c_v13}), server {s_hs} (TLS 1.3: {s_v13})"
                    ));
                }
                format!(
                    "Envoy admin stats: client outbound tcp_proxy received {out_rx} B and server inbound {in_rx} B (bulk {bytes} B); \
                     TLS handshakes client->server-0 cluster {c_hs}, server inbound listener {s_hs}, all TLSv1.3"
                )
            }
        };
        let v = self.verification.entry(mode.key().to_owned()).or_default();
        if v.is_empty() {
            v.push(line);
        }
        Ok(())
    }

    /// The client dialled node 1's address, where only the node-1 relay
    /// listens (the pods have no nft table, checked at every stop), and the
    /// sink counted every byte; both relays must have worked during the
    /// bulk and reported no failed connection.
    fn verify_relay_bulk(
        &self,
        bytes: u64,
        sink: SocketAddr,
        node_cpu: [f64; 2],
    ) -> Result<String, String> {
        let chain = self.relays.as_ref().expect("TLS relays running");
        let errors = chain.errors();
        if !errors.is_empty() {
            return Err(format!(
                "the TLS relays reported failed connections: {}",
                errors.join("; ")
            ));
        }
        if node_cpu.iter().any(|c| *c <= 0.0) {
            return Err(format!(
                "a TLS relay used no CPU during the bulk of {bytes} B (node 1: {:.3} s, node 2: {:.3} s): it did not carry it",
                node_cpu[0], node_cpu[1]
            ));
        }
        Ok(format!(
            "client-0 sent the bulk to {sink} (node 1's address, where only the node-1 tcp-relay listens; no nft table in the pods) and server-0's sink counted all {bytes} B; \
             relay CPU during the bulk: node 1 {:.2} s, node 2 {:.2} s (mutual TLS 1.3 between them); no failed connection on either relay",
            node_cpu[0], node_cpu[1]
        ))
    }

    /// The client-0 sidecar's access log and metrics, and the server-0
    /// sidecar's access log, show the bulk bytes crossing both sidecars
    /// over mutual TLS with server-0's identity.
    fn verify_sidecar_bulk(&self, bytes: u64) -> Result<String, String> {
        let server = self.topo.pod("server-0").ip;
        let dst = SocketAddr::from((server, SINK_PORT)).to_string();
        let hbone = SocketAddr::from((server, HBONE_PORT)).to_string();
        let (src_id, dst_id) = (spiffe_uri("client-0"), spiffe_uri("server-0"));
        let out = self.sidecars.wait_event("client-0", "bulk outbound", |e| {
            e["direction"] == "outbound"
                && e["dst.addr"] == dst.as_str()
                && e["bytes_sent"] == bytes
        });
        if out["dst.identity"] != dst_id.as_str() || out["dst.hbone_addr"] != hbone.as_str() {
            return Err(format!(
                "client-0 sidecar did not tunnel the bulk to {dst_id} at {hbone}: {out}"
            ));
        }
        self.sidecars.wait_event("server-0", "bulk inbound", |e| {
            e["direction"] == "inbound"
                && e["src.identity"] == src_id.as_str()
                && e["dst.identity"] == dst_id.as_str()
                && e["bytes_sent"] == bytes
        });
        let principal = dst_id.trim_start_matches("spiffe://");
        let metrics = self.sidecars.metrics("client-0");
        // Istio's naming: "received" is the request direction (client to server).
        let sent: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("istio_tcp_received_bytes_total{")
                    && l.contains("reporter=\"source\"")
                    && l.contains("connection_security_policy=\"mutual_tls\"")
                    && l.contains(&format!("destination_principal=\"{principal}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if sent < bytes as f64 {
            return Err(format!(
                "client-0 sidecar metrics show {sent} B received from the client over mutual_tls to {principal}, want >= {bytes}"
            ));
        }
        Ok(format!(
            "client-0 sidecar access log: outbound to {dst} via HBONE {hbone}, dst.identity {dst_id}, bytes_sent = {bytes} (the bytes the client wrote); \
             server-0 sidecar: inbound from {src_id} with bytes_sent (client to app) = {bytes}; client-0 istio_tcp_received_bytes_total{{connection_security_policy=\"mutual_tls\", destination_principal=\"{principal}\"}} = {sent}"
        ))
    }

    /// Idle connections from every client pod to its server pod; RSS per node.
    fn idle(&mut self, mode: Mode, n: usize, running: &Running) -> Result<(), String> {
        let per_pod = self.opts.idle_per_pod;
        let pairs: Vec<(Netns, SocketAddr)> = (0..n)
            .map(|i| {
                let c = self.topo.pod(&format!("client-{i}")).ns.clone();
                (
                    c,
                    SocketAddr::from((
                        proxies::ip_of(self.topo, &format!("server-{i}")),
                        ECHO_PORT,
                    )),
                )
            })
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("idle runtime");
        let rss = rt.block_on(async {
            let mut conns = IdleConns::open(&pairs, per_pod).await?;
            tokio::time::sleep(Duration::from_millis(if self.opts.smoke {
                100
            } else {
                1000
            }))
            .await;
            let mem = (running.rss_mib(), running.pss_mib());
            conns.check().await?;
            Ok::<_, String>(mem)
        });
        let (rss, pss) =
            rss.map_err(|e| format!("{} idle connections at {n} pods: {e}", mode.label()))?;
        self.push(&rss_id(n), mode, rss[0].max(rss[1]));
        self.push(&pss_id(n), mode, pss[0].max(pss[1]));
        Ok(())
    }

    fn report(&self, meta: Meta) -> Report {
        let figures = self
            .samples
            .iter()
            .map(|(id, modes)| {
                (
                    id.clone(),
                    modes
                        .iter()
                        .filter_map(|(m, v)| Some((*m, Spread::of(v)?)))
                        .collect(),
                )
            })
            .collect();
        let latency_curves = self
            .latencies
            .iter()
            .map(|(kind, modes)| {
                (
                    kind.clone(),
                    modes
                        .iter()
                        .map(|(m, v)| (*m, quantile_curve(&sorted(v), 200)))
                        .collect(),
                )
            })
            .collect();
        Report {
            meta,
            figures,
            latency_curves,
            verification: self.verification.clone(),
        }
    }
}

fn write_outputs(opts: &Opts, report: &Report) -> Result<(), String> {
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let json = opts.out.with_extension("json");
    let page = opts.out.with_extension("html");
    let text = serde_json::to_string_pretty(&report.to_json()).expect("json") + "\n";
    std::fs::write(&json, text).map_err(|e| format!("writing {}: {e}", json.display()))?;
    std::fs::write(&page, html::render(report))
        .map_err(|e| format!("writing {}: {e}", page.display()))?;
    println!("results: {} and {}", json.display(), page.display());
    Ok(())
}

/// Re-renders `json`'s HTML page (same path, `.html`) from the report it
/// holds.
pub fn render(json: &std::path::Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(json).map_err(|e| format!("reading {}: {e}", json.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let report = Report::from_json(&doc).map_err(|e| format!("{}: {e}", json.display()))?;
    let page = json.with_extension("html");
    std::fs::write(&page, html::render(&report))
        .map_err(|e| format!("writing {}: {e}", page.display()))?;
    println!("rendered {}", page.display());
    Ok(())
}

fn print_summary(r: &Report) {
    print!("\n{:<34}", "figure");
    for m in Mode::ALL {
        print!(" {:>10}", m.key());
    }
    println!("   (medians)");
    for id in r.figures.keys() {
        print!("{id:<34}");
        for m in Mode::ALL {
            let cell = r
                .median(id, m)
                .map_or("-".to_owned(), |v| format!("{v:.2}"));
            print!(" {cell:>10}");
        }
        println!();
    }
    for t in r.targets() {
        let met = match t.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        println!(
            "target: {} {} -> {} ({met})",
            t.name,
            t.rule,
            t.value.map_or("-".into(), |v| format!("{v:.2}"))
        );
    }
    if r.meta.modes.contains(&Mode::TlsRelay) {
        for f in r.floor_ratios() {
            println!(
                "floor: {} -> {}",
                f.name,
                f.value.map_or("-".into(), |v| format!("{v:.2}"))
            );
        }
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

/// `--machine`, or what /proc says (CPU model and count).
fn machine(opts: &Opts) -> String {
    if !opts.machine.is_empty() {
        return opts.machine.clone();
    }
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs, {model}")
}
