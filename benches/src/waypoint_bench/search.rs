//! The highest sustainable rate: open-loop steps, doubling from a start
//! rate until one is not sustained, then bisecting (geometrically) between
//! the best sustained and the lowest unsustained rate until they are
//! within a factor of `precision` or the steps run out.
//!
//! A step is sustained when every request was answered correctly
//! (byte-exact, no backlog give-up), the achieved rate is at least 95% of
//! the offered one, and the coordinated-omission-corrected p99 is within
//! the latency objective: past saturation the backlog grows without bound,
//! so the corrected p99 does too.

use serde::{Deserialize, Serialize};

/// How the search runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub start: f64,
    pub max_rate: f64,
    pub min_rate: f64,
    pub max_steps: usize,
    /// Stop when unsustained / sustained ≤ this.
    pub precision: f64,
}

/// One step's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub rate: f64,
    pub achieved: f64,
    pub p99_us: f64,
    pub sustained: bool,
}

/// Whether a step at `offered` per second is sustained.
pub fn sustained(complete: bool, offered: f64, achieved: f64, p99_us: f64, slo_us: f64) -> bool {
    complete && achieved >= 0.95 * offered && p99_us <= slo_us
}

/// The best sustained rate so far.
pub fn peak(steps: &[Step]) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.sustained)
        .map(|s| s.rate)
        .max_by(f64::total_cmp)
}

/// The next rate to try, or `None` when the search is over.
pub fn next_rate(plan: &Plan, steps: &[Step]) -> Option<f64> {
    if steps.len() >= plan.max_steps {
        return None;
    }
    let good = peak(steps);
    let bad = steps
        .iter()
        .filter(|s| !s.sustained && good.is_none_or(|g| s.rate > g))
        .map(|s| s.rate)
        .min_by(f64::total_cmp);
    let next = match (good, bad) {
        (None, None) => plan.start,
        (Some(g), None) if g >= plan.max_rate => return None,
        (Some(g), None) => (g * 2.0).min(plan.max_rate),
        (None, Some(b)) if b / 2.0 < plan.min_rate => return None,
        (None, Some(b)) => b / 2.0,
        (Some(g), Some(b)) if b / g <= plan.precision => return None,
        (Some(g), Some(b)) => (g * b).sqrt(),
    };
    Some((next / 10.0).round() * 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: Plan = Plan {
        start: 1000.0,
        max_rate: 50_000.0,
        min_rate: 100.0,
        max_steps: 8,
        precision: 1.15,
    };

    fn step(rate: f64, sustained: bool) -> Step {
        Step {
            rate,
            achieved: rate,
            p99_us: 1.0,
            sustained,
        }
    }

    #[test]
    fn doubles_then_bisects_then_stops() {
        let cases: Vec<(Vec<Step>, Option<f64>)> = vec![
            (vec![], Some(1000.0)),
            (vec![step(1000.0, true)], Some(2000.0)),
            (vec![step(1000.0, true), step(2000.0, true)], Some(4000.0)),
            (
                vec![step(1000.0, true), step(2000.0, true), step(4000.0, false)],
                Some(2830.0),
            ),
            (
                vec![
                    step(1000.0, true),
                    step(2000.0, false),
                    step(1410.0, true),
                    step(1680.0, true),
                    step(1830.0, false),
                ],
                None,
            ),
            (vec![step(1000.0, false)], Some(500.0)),
            (vec![step(150.0, false)], None),
            (vec![step(50_000.0, true)], None),
            (vec![step(40_000.0, true)], Some(50_000.0)),
            (
                (0..8).map(|i| step(1000.0 + i as f64, true)).collect(),
                None,
            ),
        ];
        for (steps, want) in cases {
            assert_eq!(next_rate(&PLAN, &steps), want, "{steps:?}");
        }
    }

    #[test]
    fn an_unsustained_step_below_the_peak_does_not_bound_the_search() {
        // A hiccup at 1000 after 2000 held: the bound is above the peak.
        let steps = [step(2000.0, true), step(1000.0, false)];
        assert_eq!(peak(&steps), Some(2000.0));
        assert_eq!(next_rate(&PLAN, &steps), Some(4000.0));
    }

    #[test]
    fn sustained_needs_all_answers_the_rate_and_the_objective() {
        let slo = 50_000.0;
        let cases = [
            (true, 1000.0, 990.0, 2000.0, true),
            (false, 1000.0, 1000.0, 2000.0, false),
            (true, 1000.0, 900.0, 2000.0, false),
            (true, 1000.0, 1000.0, 60_000.0, false),
        ];
        for (complete, offered, achieved, p99, want) in cases {
            assert_eq!(sustained(complete, offered, achieved, p99, slo), want);
        }
    }
}
