//! The report as one self-contained HTML page: inline CSS and SVG, no
//! scripts, no external resources.

use std::fmt::Write;

use super::svg::{self, escape, fmt_num, line_chart, Series, XAxis, YAxis};
use super::{figure_def, pss_id, rss_id, startup_id, Report, FIGURES, RATIO_BASES};
use crate::mesh_bench::stats::Spread;
use crate::mesh_bench::Mode;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
th{background:#f4f4f4}td.l,th.l{text-align:left}.met{color:#176c2f;font-weight:bold}\
.missed{color:#b00020;font-weight:bold}.na{color:#888}figure{display:inline-block;margin:0 1em 1em 0}\
code,pre{background:#f6f6f6}pre{padding:.5em;white-space:pre-wrap}";

/// Renders the whole report.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(h, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mesh-bench: ambient vs sidecars</title><style>{STYLE}</style></head><body>");
    h.push_str("<h1>mesh-bench: no mesh, ztunnel sidecar, Envoy sidecar, ambient");
    if has_floor(r) {
        h.push_str(", and a TLS relay floor");
    }
    h.push_str("</h1>");
    meta(&mut h, r);
    targets(&mut h, r);
    floor(&mut h, r);
    charts(&mut h, r);
    figures(&mut h, r);
    verification(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

fn meta(h: &mut String, r: &Report) {
    let m = &r.meta;
    let modes: Vec<&str> = m.modes.iter().map(|m| m.label()).collect();
    let _ = write!(
        h,
        "<p><b>Machine:</b> {}<br><b>Run:</b> {} UTC, {:.0} s, commit <code>{}</code>, {} repetition(s) per mode, modes alternated {}, pod counts per node {:?}, {} idle connection(s) per client pod; load average before / after: {} / {}{}<br><b>Command:</b> <code>{}</code></p>",
        escape(&m.machine),
        escape(&m.started_utc),
        m.elapsed_s,
        escape(&m.git_commit),
        m.repetitions,
        escape(&modes.join(" → ")),
        m.pod_counts,
        m.idle_conns_per_pod,
        escape(&m.load_avg_before),
        escape(&m.load_avg_after),
        if m.smoke { " — <b>SMOKE RUN: correctness only, figures meaningless</b>" } else { "" },
        escape(&m.command),
    );
    if !m.envoy_version.is_empty() {
        let _ = write!(
            h,
            "<p><b>Envoy:</b> <code>{}</code></p>",
            escape(&m.envoy_version)
        );
    }
    for (mode, why) in &m.not_run {
        let _ = write!(
            h,
            "<p class=\"missed\">Not measured: {} — {}</p>",
            escape(mode),
            escape(why)
        );
    }
}

fn targets(h: &mut String, r: &Report) {
    h.push_str("<h2>Targets (issue 5), on medians of this run</h2><table><tr><th class=\"l\">target</th><th>rule</th><th>measured</th><th>result</th></tr>");
    for t in r.targets() {
        let (class, word) = match t.met {
            Some(true) => ("met", "met"),
            Some(false) => ("missed", "missed"),
            None => ("na", "not measured"),
        };
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{word}</td></tr>",
            escape(&t.name),
            escape(&t.rule),
            t.value.map_or("–".into(), |v| format!("{v:.2}")),
        );
    }
    h.push_str("</table>");
}

/// Whether the run has the TLS relay floor (it ran, or has figures).
fn has_floor(r: &Report) -> bool {
    r.meta.modes.contains(&Mode::TlsRelay)
        || r.figures.values().any(|m| m.contains_key(&Mode::TlsRelay))
}

fn floor(h: &mut String, r: &Report) {
    if !has_floor(r) {
        return;
    }
    h.push_str(
        "<h2>The TLS relay floor</h2><p>Not a mesh: a floor for what any proxy pair with our crypto can do here. \
         The client dials node 1's address, where a <code>tcp-relay</code> forwards each connection over mutual TLS 1.3 \
         (HBONE's rustls configurations, SPIFFE checks and record sealing) to a <code>tcp-relay</code> in node 2, which \
         dials the server pod: TLS only, no HTTP/2, no capture (no nftables, no original-destination lookup), no policy, \
         no telemetry, and no per-pod proxy, so it runs only the single-pair figures (throughput, latency, connections, \
         CPU) and is absent, not zero, from the memory and start-up figures. Each client connection is its own TLS \
         connection with a full handshake (no pooling), so its new connections/s is informational. The targets stay \
         ambient vs Envoy sidecars.</p>",
    );
    h.push_str("<table><tr><th class=\"l\">ratio of medians</th><th>measured</th></tr>");
    for f in r.floor_ratios() {
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td></tr>",
            escape(&f.name),
            f.value.map_or("–".into(), |v| format!("{v:.2}")),
        );
    }
    h.push_str("</table>");
}

fn charts(h: &mut String, r: &Report) {
    h.push_str("<h2>Charts</h2>");
    for (kind, title) in [
        ("closed", "1 KiB request/response, closed loop"),
        ("open", "1 KiB request/response, open loop (fixed rate)"),
    ] {
        let Some(curves) = r.latency_curves.get(kind) else {
            continue;
        };
        let series: Vec<Series> = curves
            .iter()
            .map(|(mode, pts)| Series {
                mode: *mode,
                points: pts.clone(),
                whiskers: Vec::new(),
            })
            .collect();
        let _ = write!(
            h,
            "<figure>{}<figcaption>Latency distribution, {title}: all repetitions pooled (log scale).</figcaption></figure>",
            line_chart(&format!("latency, {kind} loop"), "percentile", "round trip (µs, log scale)", &XAxis::Quantile, YAxis::Log, &series)
        );
    }
    let pods = r.pod_counts();
    if !pods.is_empty() {
        let series: Vec<Series> = Mode::ALL
            .iter()
            .filter(|mode| mode.is_meshed())
            .filter_map(|mode| {
                let spreads: Vec<(f64, Spread)> = pods
                    .iter()
                    .filter_map(|n| {
                        Some((*n as f64, r.figures.get(&rss_id(*n))?.get(mode)?.clone()))
                    })
                    .collect();
                (!spreads.is_empty()).then(|| Series {
                    mode: *mode,
                    points: spreads.iter().map(|(n, s)| (*n, s.median)).collect(),
                    whiskers: spreads.iter().map(|(n, s)| (*n, s.min, s.max)).collect(),
                })
            })
            .collect();
        let ticks = pods.iter().map(|n| *n as f64).collect();
        let absent = if has_floor(r) {
            " The TLS relay floor has no per-pod proxies and is not measured here."
        } else {
            ""
        };
        let _ = write!(
            h,
            "<figure>{}<figcaption>Total proxy RSS on the larger node vs pods per node (median, whiskers min–max; log scale), with idle connections open. No mesh runs no proxy.{absent}</figcaption></figure>",
            line_chart("proxy memory per node", "pods per node", "MiB (log scale)", &XAxis::Linear { ticks }, YAxis::Log, &series)
        );
    }
}

fn figure_ids(r: &Report) -> Vec<String> {
    let mut ids: Vec<String> = FIGURES.iter().map(|f| f.id.to_owned()).collect();
    for n in r.pod_counts() {
        ids.push(rss_id(n));
        ids.push(pss_id(n));
    }
    let mut startups: Vec<usize> = r
        .figures
        .keys()
        .filter_map(|k| {
            k.strip_prefix("startup_s_")?
                .strip_suffix("_pods")?
                .parse()
                .ok()
        })
        .collect();
    startups.sort_unstable();
    ids.extend(startups.into_iter().map(startup_id));
    ids.retain(|id| r.figures.contains_key(id));
    ids
}

fn figures(h: &mut String, r: &Report) {
    h.push_str("<h2>Every figure: median [min–max] over repetitions, and ratios of medians</h2>");
    h.push_str(
        "<table><tr><th class=\"l\">figure</th><th class=\"l\">mode</th><th>median [min–max]</th>",
    );
    for base in RATIO_BASES {
        let _ = write!(h, "<th>÷ {}</th>", base.label());
    }
    h.push_str("<th>added vs no mesh</th></tr>");
    let columns = RATIO_BASES.len() + 2;
    for id in figure_ids(r) {
        let def = figure_def(&id).expect("known figure");
        let label = match id.rsplit('_').nth(1) {
            Some(n) if id.ends_with("_pods") => format!("{} at {n} pods/node", def.label),
            _ => def.label.to_owned(),
        };
        let label = format!("{} ({})", escape(&label), def.unit);
        for (mode, s) in &r.figures[&id] {
            let ratio = |base: Mode| {
                if base == *mode {
                    return "1".to_owned();
                }
                r.ratio(&id, *mode, base)
                    .map_or("–".into(), |v| format!("{v:.2}×"))
            };
            let added = if def.latency {
                r.added(&id, *mode)
                    .map_or("–".into(), |v| format!("{v:+.0} µs"))
            } else {
                String::new()
            };
            let _ = write!(
                h,
                "<tr><td class=\"l\">{label}</td><td class=\"l\">{}</td><td>{} [{}–{}]</td>",
                mode_cell(*mode),
                fmt_num(s.median),
                fmt_num(s.min),
                fmt_num(s.max),
            );
            for base in RATIO_BASES {
                let _ = write!(h, "<td>{}</td>", ratio(base));
            }
            let _ = write!(h, "<td>{added}</td></tr>");
        }
        // A perf-only mode that ran has no entry in the per-pod-count
        // figures: say so rather than leave the reader to guess (or read 0).
        if id.ends_with("_pods") {
            for mode in r.meta.modes.iter().filter(|m| m.perf_only()) {
                if !r.figures[&id].contains_key(mode) {
                    let _ = write!(
                        h,
                        "<tr><td class=\"l\">{label}</td><td class=\"l\">{}</td><td class=\"na l\" colspan=\"{columns}\">not measured: no per-pod proxies (single-pair figures only)</td></tr>",
                        mode_cell(*mode),
                    );
                }
            }
        }
    }
    h.push_str("</table>");
}

/// A mode's colour swatch and label.
fn mode_cell(mode: Mode) -> String {
    format!(
        "<span style=\"color:{}\">■</span> {}",
        svg::colour(mode),
        mode.label()
    )
}

fn verification(h: &mut String, r: &Report) {
    if r.verification.is_empty() {
        return;
    }
    h.push_str("<h2>Did each mode really carry the traffic?</h2><ul>");
    for (mode, lines) in &r.verification {
        for l in lines {
            let _ = write!(h, "<li><b>{}</b>: {}</li>", escape(mode), escape(l));
        }
    }
    h.push_str("</ul>");
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample_report;
    use super::*;

    #[test]
    fn page_is_self_contained() {
        let page = render(&sample_report());
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("<link"));
        // The only URL is the SVG namespace.
        assert_eq!(
            page.matches("http").count(),
            page.matches("http://www.w3.org/2000/svg").count()
        );
    }

    #[test]
    fn page_marks_targets_and_missing_modes() {
        let page = render(&sample_report());
        assert_eq!(page.matches("class=\"met\">met<").count(), 3);
        assert!(page.contains("Not measured: sidecar"));
        let mut r = sample_report();
        r.figures
            .get_mut("throughput_gbit_s")
            .unwrap()
            .insert(Mode::Ambient, Spread::of(&[1.0]).unwrap());
        assert!(render(&r).contains("class=\"missed\">missed<"));
    }

    #[test]
    fn page_has_latency_and_memory_charts_and_the_ratio_table() {
        let page = render(&sample_report());
        assert_eq!(
            page.matches("<svg").count(),
            2,
            "closed-loop latency + memory"
        );
        assert!(page.contains("total proxy RSS per node (larger node) at 50 pods/node (MiB)"));
        // ambient throughput median 3.0 over Envoy's 2.0
        assert!(page.contains("1.50×"));
        // added p99 of Envoy: 600 - 100
        assert!(page.contains("+500 µs"));
    }
}
