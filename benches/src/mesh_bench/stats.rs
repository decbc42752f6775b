//! Percentiles, min/median/max over repetitions, and the ratios the report
//! quotes. Plain functions on plain numbers.

use serde::{Deserialize, Serialize};

/// Nearest-rank percentile (`q` in 0.0..=1.0) of ascending `sorted`; NaN
/// when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts a copy of `samples` ascending (NaN last).
pub fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// A figure over repetitions: min, median, max and the samples themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Spread {
    /// The spread of `samples` (in measurement order); `None` when empty.
    pub fn of(samples: &[f64]) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        let s = sorted(samples);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Spread {
            min: s[0],
            median,
            max: s[n - 1],
            samples: samples.to_vec(),
        })
    }
}

/// `a / b`, or `None` when either is missing, not finite, or `b` is 0.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// Latency a proxy adds: `meshed - baseline`, or `None` if either is missing.
pub fn added(meshed: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (meshed, baseline) {
        (Some(m), Some(b)) if m.is_finite() && b.is_finite() => Some(m - b),
        _ => None,
    }
}

/// A latency distribution thinned to `points` quantiles (evenly spaced from
/// 0 to 1), for the chart: `(quantile, value)` pairs of ascending `sorted`.
pub fn quantile_curve(sorted: &[f64], points: usize) -> Vec<(f64, f64)> {
    if sorted.is_empty() || points < 2 {
        return Vec::new();
    }
    (0..points)
        .map(|i| {
            let q = i as f64 / (points - 1) as f64;
            (q, percentile(sorted, q))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        for (q, want) in [
            (0.0, 1.0),
            (0.5, 50.0),
            (0.9, 90.0),
            (0.99, 99.0),
            (1.0, 100.0),
            (0.001, 1.0),
        ] {
            assert_eq!(percentile(&v, q), want, "q={q}");
        }
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
        // Out-of-range quantiles clamp instead of panicking.
        assert_eq!(percentile(&v, 1.5), 100.0);
        assert_eq!(percentile(&v, -1.0), 1.0);
    }

    #[test]
    fn spread_keeps_measurement_order_and_takes_the_median() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(s.samples, vec![3.0, 1.0, 2.0]);
        let even = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn ratios_and_added_latency_refuse_missing_values() {
        let table = [
            (Some(6.0), Some(3.0), Some(2.0)),
            (Some(1.0), Some(0.0), None),
            (None, Some(1.0), None),
            (Some(1.0), None, None),
            (Some(f64::NAN), Some(1.0), None),
        ];
        for (a, b, want) in table {
            assert_eq!(ratio(a, b), want, "{a:?}/{b:?}");
        }
        assert_eq!(added(Some(250.0), Some(50.0)), Some(200.0));
        assert_eq!(added(None, Some(50.0)), None);
    }

    #[test]
    fn quantile_curve_spans_min_to_max() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let c = quantile_curve(&v, 11);
        assert_eq!(c.len(), 11);
        assert_eq!(c[0], (0.0, 1.0));
        assert_eq!(c[5], (0.5, 500.0));
        assert_eq!(c[10], (1.0, 1000.0));
        assert!(quantile_curve(&[], 10).is_empty());
    }
}
