//! Two small inline-SVG line charts: no scripts, no external resources.

use std::fmt::Write;

use super::super::Mode;

const W: f64 = 640.0;
const H: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 44.0;

/// A colour per mode, stable across charts.
pub fn colour(mode: Mode) -> &'static str {
    match mode {
        Mode::NoMesh => "#555555",
        Mode::Sidecar => "#1f77b4",
        Mode::Envoy => "#d62728",
        Mode::TlsRelay => "#9467bd",
        Mode::Ambient => "#2ca02c",
    }
}

/// One line: a mode's points, optionally with (low, high) whiskers.
pub struct Series {
    pub mode: Mode,
    pub points: Vec<(f64, f64)>,
    pub whiskers: Vec<(f64, f64, f64)>,
}

/// How the x axis is drawn.
pub enum XAxis {
    /// Linear, ticks at the given values.
    Linear { ticks: Vec<f64> },
    /// Quantiles drawn as `-log10(1 - q)` so the tail gets room; ticks at
    /// p0, p50, p90, p99, p99.9.
    Quantile,
}

/// How the y axis is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YAxis {
    /// Linear from 0 to a "nice" maximum.
    Linear,
    /// Logarithmic over whole decades, so values two orders of magnitude
    /// apart (Envoy's memory and ambient's, a p50 and a p99.9) both stay
    /// readable; values <= 0 are not drawn.
    Log,
}

/// The decades a log axis spans: (low, high) powers of ten around the
/// positive finite values, at least one decade apart.
pub fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if hi <= 0.0 {
        return (1.0, 10.0);
    }
    let low = lo.log10().floor();
    let high = hi.log10().ceil().max(low + 1.0);
    (10f64.powf(low), 10f64.powf(high))
}

/// Tick values of a log axis from `lo` to `hi` (powers of ten): every
/// 1, 2 and 5 × 10^k while that is at most 13 ticks, else the powers only.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades = (hi / lo).log10().round() as i32;
    let steps: &[f64] = if decades <= 4 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let mut ticks = Vec::new();
    for d in 0..=decades {
        let base = lo * 10f64.powi(d);
        for m in steps {
            let t = base * m;
            if t <= hi * (1.0 + 1e-9) {
                ticks.push(t);
            }
        }
    }
    ticks
}

const Q_MAX: f64 = 0.999;

fn quantile_x(q: f64) -> f64 {
    -(1.0 - q.min(Q_MAX)).log10()
}

/// A "nice" upper bound for the y axis.
pub fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= step * mag {
            return step * mag;
        }
    }
    10.0 * mag
}

/// Renders a chart as an `<svg>` element.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    x: &XAxis,
    y: YAxis,
    series: &[Series],
) -> String {
    let xs = |v: f64| match x {
        XAxis::Linear { .. } => v,
        XAxis::Quantile => quantile_x(v),
    };
    let (x_min, x_max) = match x {
        XAxis::Linear { ticks } => (
            ticks.iter().copied().fold(f64::INFINITY, f64::min).min(0.0),
            ticks.iter().copied().fold(0.0, f64::max),
        ),
        XAxis::Quantile => (0.0, quantile_x(Q_MAX)),
    };
    let values = || {
        series.iter().flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1)
                .chain(s.whiskers.iter().flat_map(|w| [w.1, w.2]))
        })
    };
    let (y_lo, y_top) = match y {
        YAxis::Linear => (
            0.0,
            nice_max(values().filter(|v| v.is_finite()).fold(0.0, f64::max)),
        ),
        YAxis::Log => log_bounds(values()),
    };
    let px = |v: f64| LEFT + (xs(v) - x_min) / (x_max - x_min).max(1e-9) * (W - LEFT - RIGHT);
    let frac = |v: f64| match y {
        YAxis::Linear => v / y_top,
        YAxis::Log => (v.max(y_lo) / y_lo).log10() / (y_top / y_lo).log10(),
    };
    let py = |v: f64| H - BOTTOM - frac(v) * (H - TOP - BOTTOM);
    let drawable = |v: f64| v.is_finite() && (y == YAxis::Linear || v > 0.0);
    let y_ticks: Vec<f64> = match y {
        YAxis::Linear => (0..=4).map(|i| y_top * f64::from(i) / 4.0).collect(),
        YAxis::Log => log_ticks(y_lo, y_top),
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = escape(title)
    );
    // Axes, grid and tick labels.
    let _ = write!(
        s,
        r##"<g stroke="#999" stroke-width="1"><line x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}"/></g>"##,
        b = H - BOTTOM,
        r = W - RIGHT
    );
    for v in y_ticks {
        let y = py(v);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#eee"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end">{}</text>"##,
            fmt_tick(v),
            r = W - RIGHT,
            tx = LEFT - 6.0,
            ty = y + 4.0
        );
    }
    let ticks: Vec<(f64, String)> = match x {
        XAxis::Linear { ticks } => ticks.iter().map(|t| (*t, fmt_tick(*t))).collect(),
        XAxis::Quantile => [
            (0.0, "p0"),
            (0.5, "p50"),
            (0.9, "p90"),
            (0.99, "p99"),
            (0.999, "p99.9"),
        ]
        .iter()
        .map(|(q, l)| (*q, (*l).to_owned()))
        .collect(),
    };
    for (t, label) in ticks {
        let xp = px(t);
        let _ = write!(
            s,
            r##"<line x1="{xp:.1}" y1="{b}" x2="{xp:.1}" y2="{b2}" stroke="#999"/><text x="{xp:.1}" y="{ty}" font-size="11" text-anchor="middle">{label}</text>"##,
            b = H - BOTTOM,
            b2 = H - BOTTOM + 4.0,
            ty = H - BOTTOM + 16.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{cx}" y="{y}" font-size="12" text-anchor="middle">{}</text>"#,
        escape(x_label),
        cx = (LEFT + W - RIGHT) / 2.0,
        y = H - 8.0
    );
    let _ = write!(
        s,
        r#"<text x="14" y="{cy}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {cy})">{}</text>"#,
        escape(y_label),
        cy = (TOP + H - BOTTOM) / 2.0
    );
    // Series and legend.
    for (i, series) in series.iter().enumerate() {
        let c = colour(series.mode);
        let pts: Vec<String> = series
            .points
            .iter()
            .filter(|p| drawable(p.1))
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        if !pts.is_empty() {
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
        }
        for p in series.points.iter().filter(|p| drawable(p.1)) {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{c}"/>"#,
                px(p.0),
                py(p.1)
            );
        }
        for (wx, lo, hi) in series.whiskers.iter().filter(|w| drawable(w.2)) {
            let _ = write!(
                s,
                r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{c}" stroke-width="1"/>"#,
                py(*lo),
                py(*hi),
                x = px(*wx)
            );
        }
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let lx = W - RIGHT + 12.0;
        let _ = write!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            series.mode.label()
        );
    }
    s.push_str("</svg>");
    s
}

/// A number with 3 significant digits, no exponent for normal ranges.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// An axis tick: whole numbers without decimals (`10`, not `10.0`),
/// others as [`fmt_num`].
pub fn fmt_tick(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1.0 && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        fmt_num(v)
    }
}

/// Escapes text for HTML/SVG content and attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_max_rounds_up_to_1_2_2_5_5() {
        for (v, want) in [
            (0.0, 1.0),
            (7.0, 10.0),
            (12.0, 20.0),
            (21.0, 25.0),
            (260.0, 500.0),
            (1000.0, 1000.0),
            (f64::NAN, 1.0),
        ] {
            assert_eq!(nice_max(v), want, "{v}");
        }
    }

    #[test]
    fn chart_is_plain_svg_with_one_line_per_series() {
        let series = vec![
            Series {
                mode: Mode::Envoy,
                points: vec![(10.0, 300.0), (50.0, 1500.0)],
                whiskers: vec![(10.0, 280.0, 320.0)],
            },
            Series {
                mode: Mode::Ambient,
                points: vec![(10.0, 20.0), (50.0, f64::NAN)],
                whiskers: vec![],
            },
        ];
        let svg = line_chart(
            "mem <&>",
            "pods",
            "MiB",
            &XAxis::Linear {
                ticks: vec![10.0, 50.0],
            },
            YAxis::Linear,
            &series,
        );
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("mem &lt;&amp;&gt;"));
        assert!(svg.contains("Envoy sidecar") && svg.contains("ambient"));
        assert!(!svg.contains("NaN"), "non-finite points are skipped");
        assert!(!svg.contains("<script"));
    }

    #[test]
    fn log_axis_spans_whole_decades_around_the_positive_values() {
        for (values, want) in [
            (vec![43.0, 3500.0], (10.0, 10000.0)),
            (vec![0.0, 12.0, 600.0, f64::NAN], (10.0, 1000.0)),
            (vec![100.0], (100.0, 1000.0)),
            (vec![0.0], (1.0, 10.0)),
        ] {
            assert_eq!(log_bounds(values.into_iter()), want);
        }
        assert_eq!(
            log_ticks(10.0, 1000.0),
            vec![10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
        assert_eq!(log_ticks(1.0, 1e6).len(), 7, "powers only past 4 decades");
    }

    #[test]
    fn log_chart_draws_what_is_two_orders_apart_and_skips_zeros() {
        let series = vec![
            Series {
                mode: Mode::NoMesh,
                points: vec![(10.0, 0.0), (50.0, 0.0)],
                whiskers: vec![(10.0, 0.0, 0.0)],
            },
            Series {
                mode: Mode::Envoy,
                points: vec![(10.0, 670.0), (50.0, 3500.0)],
                whiskers: vec![],
            },
            Series {
                mode: Mode::Ambient,
                points: vec![(10.0, 30.0), (50.0, 43.0)],
                whiskers: vec![],
            },
        ];
        let svg = line_chart(
            "mem",
            "pods",
            "MiB",
            &XAxis::Linear {
                ticks: vec![10.0, 50.0],
            },
            YAxis::Log,
            &series,
        );
        assert_eq!(svg.matches("<polyline").count(), 2, "no line for zeros");
        assert!(svg.contains(">10000</text>") && svg.contains(">10</text>"));
        // Ambient at 30 MiB sits ~40 px above the bottom of the plot
        // (y=276); on a linear 0..5000 axis it would be under 2 px.
        let amb = svg
            .split("<polyline")
            .nth(2)
            .and_then(|p| p.split("points=\"").nth(1))
            .and_then(|p| p.split(',').nth(1))
            .and_then(|v| v.split(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .expect("ambient's first point");
        assert!(amb < 276.0 - 30.0, "ambient at y={amb}");
    }

    #[test]
    fn quantile_axis_spreads_the_tail() {
        assert_eq!(quantile_x(0.0), 0.0);
        assert!((quantile_x(0.99) - 2.0).abs() < 1e-9);
        assert!((quantile_x(1.0) - 3.0).abs() < 1e-9, "clamped at p99.9");
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        for (v, want) in [
            (0.0, "0"),
            (0.01234, "0.012"),
            (1.234, "1.23"),
            (12.34, "12.3"),
            (123.4, "123"),
            (12345.6, "12346"),
            (f64::INFINITY, "–"),
        ] {
            assert_eq!(fmt_num(v), want);
        }
        for (v, want) in [(10.0, "10"), (50.0, "50"), (2.5, "2.50"), (0.5, "0.500")] {
            assert_eq!(fmt_tick(v), want);
        }
    }
}
