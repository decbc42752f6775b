//! The waypoint benchmark's report: every figure per protocol, mode and
//! repetition, the ratios ours ÷ Envoy against the targets, as JSON
//! and as a self-contained HTML page with bar charts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Mode;
use crate::mesh_bench::report::svg::{escape, fmt_num};
use crate::mesh_bench::stats::{added, ratio, Spread};

/// Figure ids.
pub const P50: &str = "p50_us";
pub const P99: &str = "p99_us";
pub const P999: &str = "p999_us";
pub const CPU: &str = "cpu_mcores_per_krps";
pub const RSS: &str = "rss_mib";
pub const PEAK: &str = "peak_rps";
pub const PER_CORE: &str = "peak_rps_per_core";

/// (id, title, unit, whether lower is better).
pub const FIGURES: [(&str, &str, &str, bool); 7] = [
    (P50, "p50 at the fixed rate", "µs", true),
    (P99, "p99 at the fixed rate", "µs", true),
    (P999, "p99.9 at the fixed rate", "µs", true),
    (CPU, "waypoint CPU per 1,000 requests/s", "millicores", true),
    (RSS, "waypoint RSS after the run", "MiB", true),
    (PEAK, "highest sustained rate", "requests/s", false),
    (
        PER_CORE,
        "highest sustained rate per waypoint core",
        "requests/s per core",
        false,
    ),
];

/// About the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    pub started_utc: String,
    pub commit: String,
    pub machine: String,
    pub envoy_version: String,
    pub workers: usize,
    pub reps: usize,
    pub rate: f64,
    pub secs: f64,
    pub smoke: bool,
    pub load_before: String,
    pub load_after: String,
    pub notes: Vec<String>,
}

/// proto key -> figure id -> mode key -> one sample per repetition.
pub type Figures = BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<f64>>>>;

/// A target of the issue, ours ÷ Envoy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub proto: String,
    pub what: String,
    pub ours: Option<f64>,
    pub envoy: Option<f64>,
    pub ratio: Option<f64>,
    /// `≤ 0.5` or `≥ 1.5`.
    pub bound: String,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub meta: Meta,
    pub figures: Figures,
    /// How each mode was proven to carry every request (per repetition).
    pub verification: Vec<String>,
    /// proto -> mode -> the rate search's steps.
    pub searches: BTreeMap<String, BTreeMap<String, Vec<super::search::Step>>>,
    /// `<proto> <mode>` -> the top of `perf report` for the waypoint
    /// during a fixed-rate run (`--profile`).
    #[serde(default)]
    pub profiles: BTreeMap<String, Vec<String>>,
}

impl Report {
    /// Records one sample.
    pub fn push(&mut self, proto: &str, id: &str, mode: Mode, v: f64) {
        self.figures
            .entry(proto.to_owned())
            .or_default()
            .entry(id.to_owned())
            .or_default()
            .entry(mode.key().to_owned())
            .or_default()
            .push(v);
    }

    pub fn spread(&self, proto: &str, id: &str, mode: Mode) -> Option<Spread> {
        Spread::of(self.figures.get(proto)?.get(id)?.get(mode.key())?)
    }

    pub fn median(&self, proto: &str, id: &str, mode: Mode) -> Option<f64> {
        self.spread(proto, id, mode).map(|s| s.median)
    }

    /// Latency over no mesh (medians over repetitions).
    pub fn added(&self, proto: &str, id: &str, mode: Mode) -> Option<f64> {
        added(
            self.median(proto, id, mode),
            self.median(proto, id, Mode::NoMesh),
        )
    }

    /// The four targets for each protocol measured.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for proto in self.figures.keys() {
            let p = proto.as_str();
            let rows = [
                (
                    "added p99",
                    self.added(p, P99, Mode::Waypoint),
                    self.added(p, P99, Mode::EnvoyWaypoint),
                    0.5,
                    true,
                ),
                (
                    "CPU per 1,000 rps",
                    self.median(p, CPU, Mode::Waypoint),
                    self.median(p, CPU, Mode::EnvoyWaypoint),
                    0.5,
                    true,
                ),
                (
                    "RSS",
                    self.median(p, RSS, Mode::Waypoint),
                    self.median(p, RSS, Mode::EnvoyWaypoint),
                    0.25,
                    true,
                ),
                (
                    "peak rps per core",
                    self.median(p, PER_CORE, Mode::Waypoint),
                    self.median(p, PER_CORE, Mode::EnvoyWaypoint),
                    1.5,
                    false,
                ),
            ];
            for (what, ours, envoy, bound, at_most) in rows {
                // An added latency at or under no mesh's (noise) has no
                // meaningful ratio.
                let positive = |v: Option<f64>| v.filter(|v| *v > 0.0);
                let r = ratio(positive(ours), positive(envoy));
                out.push(Target {
                    proto: proto.clone(),
                    what: what.into(),
                    ours,
                    envoy,
                    ratio: r,
                    bound: format!("{} {bound}", if at_most { "≤" } else { "≥" }),
                    met: r.map(|r| if at_most { r <= bound } else { r >= bound }),
                });
            }
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("report serializes");
        v["targets"] = serde_json::to_value(self.targets()).expect("targets serialize");
        v
    }

    pub fn from_json(doc: &serde_json::Value) -> Result<Report, serde_json::Error> {
        let mut doc = doc.clone();
        if let Some(o) = doc.as_object_mut() {
            o.remove("targets");
        }
        serde_json::from_value(doc)
    }

    /// The self-contained HTML page.
    pub fn html(&self) -> String {
        let m = &self.meta;
        let mut h = String::from(
            "<!doctype html><meta charset=utf-8><title>waypoint-bench</title>\
             <style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}\
             table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
             .no{color:#b00;font-weight:bold}.yes{color:#070;font-weight:bold}</style>\n",
        );
        h += "<h1>Waypoint benchmark: ours vs Envoy in the same role</h1>\n";
        h += &format!(
            "<p>client → ztunnel → waypoint → ztunnel → server, network namespaces; 1 KiB bodies, every response checked byte-exact; open loop at {} requests/s ({} s per step, coordinated-omission corrected), {} repetition(s), modes alternated; both waypoints {} worker thread(s).</p>\n\
             <p>{} · commit {} · {} · started {} · load before {} / after {}{}</p>\n",
            fmt_num(m.rate), fmt_num(m.secs), m.reps, m.workers,
            escape(&m.machine), escape(&m.commit), escape(&m.envoy_version), escape(&m.started_utc),
            escape(&m.load_before), escape(&m.load_after),
            if m.smoke { " · <b>smoke run: correctness only, not figures</b>" } else { "" }
        );
        for n in &m.notes {
            h += &format!("<p>{}</p>\n", escape(n));
        }
        h += "<h2>Targets (ours ÷ Envoy)</h2><table><tr><th>protocol<th>figure<th>ours<th>Envoy<th>ratio<th>target<th>met</tr>\n";
        for t in self.targets() {
            let f = |v: Option<f64>| v.map(fmt_num).unwrap_or_else(|| "–".into());
            let met = match t.met {
                Some(true) => "<span class=yes>yes</span>",
                Some(false) => "<span class=no>no</span>",
                None => "–",
            };
            h += &format!(
                "<tr><td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{met}</tr>\n",
                t.proto,
                t.what,
                f(t.ours),
                f(t.envoy),
                t.ratio.map(|r| format!("{r:.2}×")).unwrap_or("–".into()),
                t.bound
            );
        }
        h += "</table>\n";
        for (proto, figs) in &self.figures {
            h += &format!("<h2>{proto}</h2>\n<table><tr><th>mode");
            for (id, title, unit, _) in FIGURES {
                if figs.contains_key(id) {
                    h += &format!("<th>{title} ({unit})");
                }
            }
            h += "<th>added p50 / p99 / p99.9 (µs)</tr>\n";
            for mode in Mode::ALL {
                h += &format!("<tr><td style=text-align:left>{}", mode.label());
                for (id, ..) in FIGURES {
                    if figs.contains_key(id) {
                        h += &format!("<td>{}", cell(self.spread(proto, id, mode)));
                    }
                }
                let a = |id| {
                    self.added(proto, id, mode)
                        .map(fmt_num)
                        .unwrap_or("–".into())
                };
                h += &format!("<td>{} / {} / {}</tr>\n", a(P50), a(P99), a(P999));
            }
            h += "</table>\n";
            for (id, title, unit, lower) in FIGURES {
                if figs.contains_key(id) {
                    h += &bar_chart(
                        &format!(
                            "{proto}: {title} ({unit}{})",
                            if lower {
                                ", lower is better"
                            } else {
                                ", higher is better"
                            }
                        ),
                        &Mode::ALL.map(|mode| (mode, self.median(proto, id, mode))),
                    );
                }
            }
        }
        if !self.searches.is_empty() {
            h += "<h2>Rate searches</h2><table><tr><th>protocol<th>mode<th>steps (offered → achieved, p99 µs, sustained)</tr>\n";
            for (proto, modes) in &self.searches {
                for (mode, steps) in modes {
                    let s: Vec<String> = steps
                        .iter()
                        .map(|s| {
                            format!(
                                "{} → {} ({}, {})",
                                fmt_num(s.rate),
                                fmt_num(s.achieved),
                                fmt_num(s.p99_us),
                                if s.sustained { "yes" } else { "no" }
                            )
                        })
                        .collect();
                    h += &format!(
                        "<tr><td>{proto}<td>{mode}<td style=text-align:left>{}</tr>\n",
                        escape(&s.join("; "))
                    );
                }
            }
            h += "</table>\n";
        }
        for (what, lines) in &self.profiles {
            h += &format!(
                "<h2>Profile: {}</h2><pre>{}</pre>\n",
                escape(what),
                escape(&lines.join("\n"))
            );
        }
        h += "<h2>Verification</h2><ul>\n";
        for v in &self.verification {
            h += &format!("<li>{}</li>\n", escape(v));
        }
        h += "</ul>\n";
        h
    }
}

fn cell(s: Option<Spread>) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.samples.len() == 1 => fmt_num(s.median),
        Some(s) => format!(
            "{} <small>({}–{})</small>",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max)
        ),
    }
}

/// A horizontal bar chart of one figure's medians (absent modes skipped).
pub fn bar_chart(title: &str, bars: &[(Mode, Option<f64>)]) -> String {
    let bars: Vec<(Mode, f64)> = bars
        .iter()
        .filter_map(|(m, v)| v.filter(|v| v.is_finite()).map(|v| (*m, v)))
        .collect();
    if bars.is_empty() {
        return String::new();
    }
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9);
    let (w, row, left) = (640.0, 24.0, 190.0);
    let height = 30.0 + row * bars.len() as f64;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{height}' font-size='12'><text x='0' y='14' font-weight='bold'>{}</text>",
        escape(title)
    );
    for (i, (mode, v)) in bars.iter().enumerate() {
        let y = 22.0 + row * i as f64;
        let len = (w - left - 80.0) * v / max;
        s += &format!(
            "<text x='0' y='{}'>{}</text><rect x='{left}' y='{y}' width='{len:.1}' height='{}' fill='{}'/><text x='{:.1}' y='{}'>{}</text>",
            y + 15.0,
            mode.label(),
            row - 6.0,
            colour(*mode),
            left + len + 4.0,
            y + 15.0,
            fmt_num(*v)
        );
    }
    s + "</svg>\n"
}

fn colour(mode: Mode) -> &'static str {
    match mode {
        Mode::NoMesh => "#999",
        Mode::Ztunnel => "#4a7",
        Mode::Waypoint => "#37c",
        Mode::EnvoyWaypoint => "#c63",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Report::default();
        for (mode, p99, cpu, rss, per_core) in [
            (Mode::NoMesh, 100.0, f64::NAN, f64::NAN, f64::NAN),
            (Mode::Ztunnel, 300.0, f64::NAN, f64::NAN, f64::NAN),
            (Mode::Waypoint, 500.0, 50.0, 10.0, 9000.0),
            (Mode::EnvoyWaypoint, 1100.0, 200.0, 50.0, 5000.0),
        ] {
            for rep in 0..3 {
                r.push("http1", P99, mode, p99 + rep as f64 * 10.0);
            }
            if mode.has_waypoint() {
                r.push("http1", CPU, mode, cpu);
                r.push("http1", RSS, mode, rss);
                r.push("http1", PER_CORE, mode, per_core);
            }
        }
        r
    }

    #[test]
    fn targets_compare_ours_to_envoy_with_added_latency() {
        let t = report().targets();
        let get = |what: &str| t.iter().find(|t| t.what == what).unwrap().clone();
        // added p99: (510 - 110) / (1110 - 110) = 0.4
        let p99 = get("added p99");
        assert_eq!((p99.ours, p99.envoy), (Some(400.0), Some(1000.0)));
        assert!((p99.ratio.unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(p99.met, Some(true));
        assert_eq!(get("CPU per 1,000 rps").met, Some(true)); // 0.25
        assert_eq!(get("RSS").met, Some(true)); // 0.2
        let pc = get("peak rps per core"); // 1.8
        assert_eq!((pc.met, pc.bound.as_str()), (Some(true), "≥ 1.5"));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_missed_target_or_missing_figure_is_not_met() {
        let mut r = report();
        r.figures
            .get_mut("http1")
            .unwrap()
            .get_mut(RSS)
            .unwrap()
            .insert("waypoint".into(), vec![20.0]);
        r.figures.get_mut("http1").unwrap().remove(CPU);
        let t = r.targets();
        assert_eq!(t.iter().find(|t| t.what == "RSS").unwrap().met, Some(false)); // 0.4
        assert_eq!(
            t.iter()
                .find(|t| t.what == "CPU per 1,000 rps")
                .unwrap()
                .met,
            None
        );
        // Envoy's p99 under no mesh's: no ratio rather than a negative one.
        r.figures
            .get_mut("http1")
            .unwrap()
            .get_mut(P99)
            .unwrap()
            .insert("envoy_waypoint".into(), vec![50.0]);
        let p99 = r
            .targets()
            .into_iter()
            .find(|t| t.what == "added p99")
            .unwrap();
        assert_eq!((p99.ratio, p99.met), (None, None));
    }

    #[test]
    fn json_round_trips_and_html_renders_every_mode() {
        let r = report();
        let doc = r.to_json();
        assert_eq!(doc["targets"].as_array().unwrap().len(), 4);
        let back = Report::from_json(&doc).unwrap();
        assert_eq!(back.median("http1", P99, Mode::Waypoint), Some(510.0));
        let html = back.html();
        for m in Mode::ALL {
            assert!(html.contains(m.label()), "{}", m.label());
        }
        assert!(html.contains("<svg"));
        assert!(html.contains("0.40×"));
    }
}
