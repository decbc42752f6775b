//! The results of a run: the JSON file (`--out`) and the printed table.

use std::time::Duration;

use mesh_tests::load::REQ_LEN;
use serde_json::json;

use crate::{Mode, Opts, ProxyKeys, Samples, Scale, MODES};

/// Issue 3's targets for ambient mode.
const THROUGHPUT_MIN_RATIO: f64 = 0.5;
const ADDED_P99_MAX_US: f64 = 100.0;
const NEW_CONNS_MIN_RATIO: f64 = 0.45;
const RSS_MAX_MIB: f64 = 40.0;
/// Issue 15's target: RSS growth per idle connection through one ztunnel.
const KIB_PER_CONN_MAX: f64 = 6.0;

const RELAY_NOTE: &str = "relay: two plain user-space TCP relays (tcp-relay: no TLS, HTTP/2 or \
    policy), client -> node1 -> node2 -> server, ztunnels stopped. It opens a new node-to-node \
    TCP connection per client connection (ambient pools them), so its connection rate is \
    informational, not a floor.";

const TLS_RELAY_NOTE: &str = "tls relay: the same two relays with mutual TLS 1.3 between the \
    nodes (HBONE's rustls configurations, SPIFFE checks and record sealing; no HTTP/2): a sidecar \
    mesh's data path, and the floor of any proxy that encrypts between nodes in user space (no \
    kTLS on this kernel). It makes a TLS handshake per client connection (ambient pools them), so \
    its connection rate is informational, not a floor.";

const HBONE_RELAY_NOTE: &str = "hbone relay: the same two relays with HBONE between the nodes \
    (the hbone library ztunnel uses: pooled HTTP/2 CONNECT streams in mutual TLS 1.3): ambient's \
    tunnel without TPROXY capture, policy, telemetry or source-IP preservation.";

/// What a floor mode is, for the JSON and the table; `None` for no mesh and
/// ambient.
fn floor_note(mode: Mode) -> Option<&'static str> {
    match mode {
        Mode::Relay => Some(RELAY_NOTE),
        Mode::TlsRelay => Some(TLS_RELAY_NOTE),
        Mode::HboneRelay => Some(HBONE_RELAY_NOTE),
        Mode::NoMesh | Mode::Ambient => None,
    }
}

/// Picks one figure's name out of a mode's [`ProxyKeys`].
type KeyOf = fn(&ProxyKeys) -> &'static str;

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let med = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (s[0], med, s[s.len() - 1])
}

fn median(s: &Samples, fig: &str, mode: Mode) -> f64 {
    s.get(fig)
        .and_then(|m| m.get(&mode))
        .map_or(f64::NAN, |v| stats(v).1)
}

/// One mode against no mesh, from the medians.
#[derive(Debug, Clone, Copy)]
struct Ratios {
    throughput: f64,
    added_p50_us: f64,
    added_p99_us: f64,
    new_conns: f64,
}

impl Ratios {
    fn of(s: &Samples, mode: Mode) -> Ratios {
        let ratio = |fig| median(s, fig, mode) / median(s, fig, Mode::NoMesh);
        let added = |fig| median(s, fig, mode) - median(s, fig, Mode::NoMesh);
        Ratios {
            throughput: ratio("throughput_gbit_s"),
            added_p50_us: added("latency_p50_us"),
            added_p99_us: added("latency_p99_us"),
            new_conns: ratio("new_conns_per_s"),
        }
    }

    fn json(self) -> serde_json::Value {
        json!({"throughput": self.throughput, "added_p50_us": self.added_p50_us,
               "added_p99_us": self.added_p99_us, "new_conns": self.new_conns})
    }

    /// Which of issue 3's targets these ratios meet (RSS aside).
    fn met(self) -> serde_json::Value {
        json!({"throughput": self.throughput >= THROUGHPUT_MIN_RATIO,
               "added_p99": self.added_p99_us <= ADDED_P99_MAX_US,
               "new_conns": self.new_conns >= NEW_CONNS_MIN_RATIO})
    }
}

pub(crate) fn report(opts: &Opts, s: &Samples, scale: &Scale, elapsed: Duration) {
    let mut figures = serde_json::Map::new();
    for (fig, modes) in s {
        let mut m = serde_json::Map::new();
        for (mode, v) in modes {
            let (min, med, max) = stats(v);
            m.insert(
                mode.key().into(),
                json!({"min": min, "median": med, "max": max, "samples": v}),
            );
        }
        figures.insert((*fig).into(), m.into());
    }
    // Each mode but no mesh against no mesh, in `MODES` order.
    let ratios: ModeRatios = std::array::from_fn(|i| Ratios::of(s, MODES[i + 1]));
    let ambient = Ratios::of(s, Mode::Ambient);
    // Each floor: its own ratios, and ambient's excess over it.
    let mut floors = serde_json::Map::new();
    for (mode, floor) in MODES[1..].iter().zip(ratios) {
        let Some(note) = floor_note(*mode) else {
            continue;
        };
        let key = mode.key();
        floors.insert(
            format!("{key}_floor"),
            json!({
                "ratios": floor.json(),
                "met": floor.met(),
                format!("ambient_over_{key}"): {
                    "throughput": ambient.throughput / floor.throughput,
                    "new_conns": ambient.new_conns / floor.new_conns,
                    "added_p99_us_more": ambient.added_p99_us - floor.added_p99_us,
                },
                "note": note,
            }),
        );
    }
    // Issue 3's target: the first step (1,000 idle connections).
    let first = scale.steps.first();
    let max_rss_mib = first
        .and_then(|s| s.rss_kib.iter().max().copied())
        .unwrap_or(0) as f64
        / 1024.0;
    let steps: Vec<_> = scale
        .steps
        .iter()
        .map(|s| json!({"idle_conns": s.conns, "rss_kib": s.rss_kib, "open_s": s.open_s}))
        .collect();
    let mut met = ambient.met();
    met["rss"] = (max_rss_mib < RSS_MAX_MIB).into();
    let per_conn = scale.kib_per_conn();
    if !per_conn.is_empty() {
        met["rss_per_idle_conn"] = per_conn.iter().all(|k| *k < KIB_PER_CONN_MAX).into();
    }
    let mut doc = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "quick": opts.quick,
        "repetitions": opts.reps,
        "modes": MODES.map(Mode::key),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "elapsed_s": elapsed.as_secs_f64(),
        "params": {"bulk_s": opts.bulk.as_secs_f64(), "latency_s": opts.latency.as_secs_f64(),
                   "rate_s": opts.rate.as_secs_f64(), "rate_workers": opts.workers, "request_bytes": REQ_LEN},
        "figures": figures,
        "scale": {"workloads": scale.workloads, "idle_conns": first.map_or(0, |s| s.conns),
                  "startup_s": scale.startup_s, "open_s": first.map_or(0.0, |s| s.open_s),
                  "rss_idle_kib": scale.rss_idle_kib, "rss_idle_anon_kib": scale.rss_idle_anon_kib,
                  "rss_idle_file_kib": scale.rss_idle_file_kib,
                  "rss_with_conns_kib": first.map_or(&[][..], |s| &s.rss_kib[..]),
                  "hwm_kib": scale.hwm_kib, "steps": steps,
                  "rss_kib_per_idle_conn": scale.kib_per_conn()},
        "ratios": ambient.json(),
        "targets": {"throughput_min_ratio": THROUGHPUT_MIN_RATIO, "added_p99_max_us": ADDED_P99_MAX_US,
                    "new_conns_min_ratio": NEW_CONNS_MIN_RATIO, "rss_max_mib": RSS_MAX_MIB,
                    "rss_kib_per_idle_conn_max": KIB_PER_CONN_MAX},
        "met": met,
    });
    doc.as_object_mut().expect("an object").extend(floors);
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(
        &opts.out,
        serde_json::to_string_pretty(&doc).expect("json") + "\n",
    )
    .expect("write results");
    print_table(opts, s, scale, ratios, max_rss_mib);
}

/// Each mode but no mesh against no mesh, in `MODES` order (ambient last).
type ModeRatios = [Ratios; MODES.len() - 1];

fn print_table(opts: &Opts, s: &Samples, scale: &Scale, ratios: ModeRatios, max_rss_mib: f64) {
    let amb = ratios[ratios.len() - 1];
    let cell = |fig: &str, mode: Mode| -> String {
        match s.get(fig).and_then(|m| m.get(&mode)) {
            Some(v) => {
                let (lo, med, hi) = stats(v);
                format!("{med:.1} [{lo:.1}-{hi:.1}]")
            }
            None => "-".into(),
        }
    };
    let yes = |b: bool| if b { "yes" } else { "NO" };
    println!(
        "\nnetns-bench: {} repetition(s) per mode, alternated; median [min-max]",
        opts.reps
    );
    let heads = ["no mesh", "relay", "tls relay", "hbone relay", "ambient"];
    let ratio_heads = ["relay/none", "tls/none", "hbone/none", "ambient/none"];
    println!(
        "{:<30} {}  {}  target (issue 3, ambient)",
        "figure",
        heads.map(|h| format!("{h:>25}")).join(" "),
        ratio_heads.map(|h| format!("{h:>12}")).join(" "),
    );
    // `figs`: the figure shown in each column, in `MODES` order.
    let row = |label: &str,
               figs: [&str; MODES.len()],
               ratios: [String; MODES.len() - 1],
               target: String| {
        let cells = std::array::from_fn::<_, { MODES.len() }, _>(|i| cell(figs[i], MODES[i]));
        println!(
            "{label:<30} {}  {}  {target}",
            cells.map(|c| format!("{c:>25}")).join(" "),
            ratios.map(|r| format!("{r:>12}")).join(" "),
        );
    };
    let ratio = |f: fn(&Ratios) -> f64| ratios.map(|r| format!("{:.2}", f(&r)));
    let added = |f: fn(&Ratios) -> f64| ratios.map(|r| format!("+{:.0} us", f(&r)));
    row(
        "throughput (Gbit/s)",
        ["throughput_gbit_s"; MODES.len()],
        ratio(|r| r.throughput),
        format!(
            ">= {THROUGHPUT_MIN_RATIO:.2}: {}",
            yes(amb.throughput >= THROUGHPUT_MIN_RATIO)
        ),
    );
    row(
        "1 KiB RR p50 (us)",
        ["latency_p50_us"; MODES.len()],
        added(|r| r.added_p50_us),
        String::new(),
    );
    row(
        "1 KiB RR p99 (us)",
        ["latency_p99_us"; MODES.len()],
        added(|r| r.added_p99_us),
        format!(
            "<= +{ADDED_P99_MAX_US:.0} us: {}",
            yes(amb.added_p99_us <= ADDED_P99_MAX_US)
        ),
    );
    row(
        "new connections/s",
        ["new_conns_per_s"; MODES.len()],
        ratio(|r| r.new_conns),
        format!(
            ">= {NEW_CONNS_MIN_RATIO:.2}: {}",
            yes(amb.new_conns >= NEW_CONNS_MIN_RATIO)
        ),
    );
    // Proxy rows: each relay mode's own figures in its column, ztunnel's in
    // the others (zero with no mesh).
    let proxy_rows: [(&str, KeyOf); 6] = [
        ("proxy CPU s, bulk", |k| k.cpu_s_bulk),
        ("proxy CPU s per GiB", |k| k.cpu_s_per_gib),
        ("proxy CPU s, latency", |k| k.cpu_s_latency),
        ("proxy CPU s, conns", |k| k.cpu_s_conns),
        ("proxy CPU us per conn", |k| k.cpu_us_per_conn),
        ("proxy peak RSS MiB (max node)", |k| k.peak_rss_mib),
    ];
    let keys = MODES.map(Mode::proxy_keys);
    for (label, key) in proxy_rows {
        let none = std::array::from_fn(|_| String::new());
        row(label, keys.map(key), none, String::new());
    }
    println!("  (proxy: both relays in the relay modes, both ztunnels in ambient mode)");
    for note in MODES.into_iter().filter_map(floor_note) {
        println!("  {note}");
    }
    let mib = |v: &[u64]| {
        v.iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let first = scale.steps.first();
    println!(
        "scale: {} workloads, ztunnel RSS node1 / node2 (MiB): {} with no connection ({} anonymous, {} file); target < {RSS_MAX_MIB:.0} MiB at {} idle conns: {}",
        scale.workloads,
        mib(&scale.rss_idle_kib),
        mib(&scale.rss_idle_anon_kib),
        mib(&scale.rss_idle_file_kib),
        first.map_or(0, |s| s.conns),
        yes(max_rss_mib < RSS_MAX_MIB)
    );
    for step in &scale.steps {
        println!(
            "  {:>6} idle connections: {} MiB (opened in {:.2} s)",
            step.conns,
            mib(&step.rss_kib),
            step.open_s
        );
    }
    let per_conn = scale.kib_per_conn();
    if let (Some(a), Some(b)) = (scale.steps.first(), scale.steps.last()) {
        if !per_conn.is_empty() {
            let kib = per_conn
                .iter()
                .map(|k| format!("{k:.2}"))
                .collect::<Vec<_>>()
                .join(" / ");
            println!(
                "  growth per idle connection ({} -> {}): {kib} KiB (node1 outbound / node2 inbound); target < {KIB_PER_CONN_MAX:.0} KiB: {}",
                a.conns,
                b.conns,
                yes(per_conn.iter().all(|k| *k < KIB_PER_CONN_MAX))
            );
        }
    }
    println!(
        "  (startup with that config {:.2} s; peak {} MiB)",
        scale.startup_s,
        mib(&scale.hwm_kib)
    );
    println!("results: {}", opts.out.display());
}
