//! The benchmark's results as one document: every figure per mode with its
//! spread over repetitions, latency distributions, the ratios between modes,
//! and the targets. Serialised as JSON, rendered as a self-contained
//! HTML page ([`html::render`]).

pub mod html;
pub mod svg;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stats::{added, ratio, Spread};
use super::Mode;

/// Which direction of a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// The modes every figure is also given as a ratio to (JSON `ratios`
/// `vs_<key>`, and a column each in the HTML table).
pub const RATIO_BASES: [Mode; 4] = [Mode::NoMesh, Mode::Sidecar, Mode::Envoy, Mode::TlsRelay];

/// What a figure is: its id in [`Report::figures`], a label, a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FigureDef {
    pub id: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
    /// A latency: the report also shows what each proxy adds to no mesh.
    pub latency: bool,
}

const fn fig(
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    better: Better,
    latency: bool,
) -> FigureDef {
    FigureDef {
        id,
        label,
        unit,
        better,
        latency,
    }
}

/// The figures measured once per (repetition, mode), in report order.
/// Per-pod-count figures ([`rss_id`], [`startup_id`]) come on top.
pub const FIGURES: &[FigureDef] = &[
    fig(
        "throughput_gbit_s",
        "single-stream throughput",
        "Gbit/s",
        Better::Higher,
        false,
    ),
    fig(
        "closed_p50_us",
        "1 KiB RR closed loop p50",
        "µs",
        Better::Lower,
        true,
    ),
    fig(
        "closed_p90_us",
        "1 KiB RR closed loop p90",
        "µs",
        Better::Lower,
        true,
    ),
    fig(
        "closed_p99_us",
        "1 KiB RR closed loop p99",
        "µs",
        Better::Lower,
        true,
    ),
    fig(
        "closed_rps",
        "1 KiB RR closed loop rate",
        "req/s",
        Better::Higher,
        false,
    ),
    fig(
        "open_p50_us",
        "1 KiB RR open loop p50",
        "µs",
        Better::Lower,
        true,
    ),
    fig(
        "open_p90_us",
        "1 KiB RR open loop p90",
        "µs",
        Better::Lower,
        true,
    ),
    fig(
        "open_p99_us",
        "1 KiB RR open loop p99",
        "µs",
        Better::Lower,
        true,
    ),
    fig(
        "conns_per_s",
        "new connections",
        "conn/s",
        Better::Higher,
        false,
    ),
    fig(
        "cpu_s_per_gb",
        "proxy CPU per GB (bulk)",
        "s/GB",
        Better::Lower,
        false,
    ),
    fig(
        "cpu_s_per_1k_req",
        "proxy CPU per 1,000 requests (closed loop)",
        "s",
        Better::Lower,
        false,
    ),
    fig(
        "cpu_s_per_1k_conns",
        "proxy CPU per 1,000 new connections",
        "s",
        Better::Lower,
        false,
    ),
];

/// Figure id of the total proxy RSS per node (the larger node) with `pods`
/// pods per node, each holding idle connections.
pub fn rss_id(pods: usize) -> String {
    format!("proxy_rss_mib_per_node_{pods}_pods")
}

/// Figure id of the proportional set size (shared pages, such as the
/// proxy binary's text, divided among the processes mapping them) of every
/// proxy per node, the larger node, with `pods` pods per node.
pub fn pss_id(pods: usize) -> String {
    format!("proxy_pss_mib_per_node_{pods}_pods")
}

/// Figure id of the time until every proxy is ready with `pods` pods per node.
pub fn startup_id(pods: usize) -> String {
    format!("startup_s_{pods}_pods")
}

/// The definition of any figure id, including the per-pod-count ones.
pub fn figure_def(id: &str) -> Option<FigureDef> {
    if let Some(f) = FIGURES.iter().find(|f| f.id == id) {
        return Some(*f);
    }
    if id.starts_with("proxy_rss_mib_per_node_") {
        return Some(fig(
            "proxy_rss",
            "total proxy RSS per node (larger node)",
            "MiB",
            Better::Lower,
            false,
        ));
    }
    if id.starts_with("proxy_pss_mib_per_node_") {
        return Some(fig(
            "proxy_pss",
            "total proxy PSS per node (larger node)",
            "MiB",
            Better::Lower,
            false,
        ));
    }
    if id.starts_with("startup_s_") {
        return Some(fig(
            "startup",
            "time until every proxy is ready",
            "s",
            Better::Lower,
            false,
        ));
    }
    None
}

/// How the run was made and on what.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub command: String,
    pub started_utc: String,
    pub elapsed_s: f64,
    pub git_commit: String,
    pub machine: String,
    pub cpus: usize,
    pub load_avg_before: String,
    pub load_avg_after: String,
    pub smoke: bool,
    pub repetitions: usize,
    pub pod_counts: Vec<usize>,
    pub idle_conns_per_pod: usize,
    /// Workload parameters (durations, rates, sizes), for the record.
    pub params: BTreeMap<String, f64>,
    /// Modes that ran, in alternation order.
    pub modes: Vec<Mode>,
    /// Modes that did not run, and why.
    pub not_run: BTreeMap<String, String>,
    pub envoy_version: String,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub meta: Meta,
    /// figure id -> mode -> spread over repetitions.
    pub figures: BTreeMap<String, BTreeMap<Mode, Spread>>,
    /// Latency distribution per mode, all repetitions pooled, as
    /// `(quantile, µs)` points: `"closed"` and `"open"` loop.
    pub latency_curves: BTreeMap<String, BTreeMap<Mode, Vec<(f64, f64)>>>,
    /// Checks that each meshed mode really carried the traffic (bytes counted
    /// by the proxies, TLS handshakes), as text.
    pub verification: BTreeMap<String, Vec<String>>,
}

/// A ratio that places the TLS relay floor between ambient and Envoy, on
/// the run's medians. Informational: the targets stay ambient vs Envoy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloorRatio {
    /// Stable key, e.g. `throughput_ambient_vs_tls_relay`.
    pub id: String,
    pub name: String,
    /// `None` when a mode needed for it did not run.
    pub value: Option<f64>,
}

/// One of the targets, evaluated on the run's medians.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetResult {
    pub name: String,
    pub rule: String,
    /// The measured ratio; `None` when a mode needed for it did not run.
    pub value: Option<f64>,
    pub met: Option<bool>,
}

impl Report {
    /// Median of a figure for a mode.
    pub fn median(&self, id: &str, mode: Mode) -> Option<f64> {
        self.figures.get(id)?.get(&mode).map(|s| s.median)
    }

    /// `median(mode) / median(baseline)` of a figure.
    pub fn ratio(&self, id: &str, mode: Mode, baseline: Mode) -> Option<f64> {
        ratio(self.median(id, mode), self.median(id, baseline))
    }

    /// Latency `mode` adds to no mesh (medians), for a latency figure.
    pub fn added(&self, id: &str, mode: Mode) -> Option<f64> {
        added(self.median(id, mode), self.median(id, Mode::NoMesh))
    }

    /// Ratio of the latency `mode` adds to no mesh to what `base` adds
    /// (medians), for a latency figure.
    pub fn added_ratio(&self, id: &str, mode: Mode, base: Mode) -> Option<f64> {
        ratio(self.added(id, mode), self.added(id, base))
    }

    /// The pod counts that have an RSS figure, ascending.
    pub fn pod_counts(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .figures
            .keys()
            .filter_map(|k| {
                k.strip_prefix("proxy_rss_mib_per_node_")?
                    .strip_suffix("_pods")?
                    .parse()
                    .ok()
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// The three targets, on ambient against Envoy sidecars.
    pub fn targets(&self) -> Vec<TargetResult> {
        let largest = self.pod_counts().last().copied().unwrap_or(0);
        let mem = self.ratio(&rss_id(largest), Mode::Ambient, Mode::Envoy);
        let p99 = self.added_ratio("closed_p99_us", Mode::Ambient, Mode::Envoy);
        let thr = self.ratio("throughput_gbit_s", Mode::Ambient, Mode::Envoy);
        vec![
            TargetResult {
                name: format!("ambient proxy memory per node at {largest} pods / Envoy sidecars'"),
                rule: "≤ 0.10".into(),
                value: mem,
                met: mem.map(|v| v <= 0.10),
            },
            TargetResult {
                name: "ambient added p99 latency / Envoy sidecars' (closed loop)".into(),
                rule: "≤ 0.60".into(),
                value: p99,
                // A proxy that adds nothing (or less than nothing) meets it.
                met: p99.map(|v| v <= 0.60),
            },
            TargetResult {
                name: "ambient single-stream throughput / Envoy sidecars'".into(),
                rule: "≥ 1.30".into(),
                value: thr,
                met: thr.map(|v| v >= 1.30),
            },
        ]
    }

    /// Where the TLS relay floor sits: ambient ÷ floor and floor ÷ Envoy,
    /// for single-stream throughput and added closed-loop p99.
    pub fn floor_ratios(&self) -> Vec<FloorRatio> {
        let (thr, p99) = ("throughput_gbit_s", "closed_p99_us");
        let floor = Mode::TlsRelay;
        let r = |id: &str, name: &str, value| FloorRatio {
            id: id.into(),
            name: name.into(),
            value,
        };
        vec![
            r(
                "throughput_ambient_vs_tls_relay",
                "ambient single-stream throughput / TLS relay floor's",
                self.ratio(thr, Mode::Ambient, floor),
            ),
            r(
                "throughput_tls_relay_vs_envoy",
                "TLS relay floor single-stream throughput / Envoy sidecars'",
                self.ratio(thr, floor, Mode::Envoy),
            ),
            r(
                "added_closed_p99_ambient_vs_tls_relay",
                "ambient added p99 latency / TLS relay floor's (closed loop)",
                self.added_ratio(p99, Mode::Ambient, floor),
            ),
            r(
                "added_closed_p99_tls_relay_vs_envoy",
                "TLS relay floor added p99 latency / Envoy sidecars' (closed loop)",
                self.added_ratio(p99, floor, Mode::Envoy),
            ),
        ]
    }

    /// The JSON document: the report plus the derived ratios, targets and
    /// floor ratios, so a reader needs no code to get them.
    pub fn to_json(&self) -> serde_json::Value {
        let mut ratios = serde_json::Map::new();
        for (id, modes) in &self.figures {
            let mut per_mode = serde_json::Map::new();
            for mode in modes.keys() {
                let mut r = serde_json::Map::new();
                for base in RATIO_BASES {
                    if let Some(v) = self.ratio(id, *mode, base) {
                        r.insert(format!("vs_{}", base.key()), v.into());
                    }
                }
                if figure_def(id).is_some_and(|f| f.latency) {
                    if let Some(a) = self.added(id, *mode) {
                        r.insert("added_us".into(), a.into());
                    }
                }
                per_mode.insert(mode.key().into(), r.into());
            }
            ratios.insert(id.clone(), per_mode.into());
        }
        let mut doc = serde_json::to_value(self).expect("report serialises");
        doc["ratios"] = ratios.into();
        doc["targets"] = serde_json::to_value(self.targets()).expect("targets serialise");
        doc["floor_ratios"] =
            serde_json::to_value(self.floor_ratios()).expect("floor ratios serialise");
        doc
    }

    /// Reads back a document written by [`Report::to_json`] (the derived
    /// `ratios`, `targets` and `floor_ratios` are recomputed, not read), so a committed run
    /// can be re-rendered after the report changes.
    pub fn from_json(doc: &serde_json::Value) -> Result<Report, serde_json::Error> {
        Report::deserialize(doc)
    }
}

#[cfg(test)]
mod tests;
