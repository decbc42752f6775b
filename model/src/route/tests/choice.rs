//! Backend choice, fractions, faults and retry backoff.

use std::time::Duration;

use super::*;

/// splitmix64: a deterministic stream of uniform draws.
pub(super) struct Draws(u64);

impl Iterator for Draws {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Some(z ^ (z >> 31))
    }
}

fn shares(backends: &[Backend], n: usize) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = backends
        .iter()
        .map(|b| (b.service.name.clone(), 0))
        .collect();
    for draw in Draws(7).take(n) {
        let b = pick_backend(backends, draw).expect("a backend");
        counts
            .iter_mut()
            .find(|(n, _)| *n == b.service.name)
            .unwrap()
            .1 += 1;
    }
    counts
}

#[test]
fn ninety_ten_lands_within_tolerance() {
    let n = 100_000;
    let counts = shares(&[backend("v1", 90), backend("v2", 10)], n);
    let v2 = counts[1].1 as f64 / n as f64;
    assert!((v2 - 0.10).abs() < 0.005, "v2 share {v2}");
    assert_eq!(counts[0].1 + counts[1].1, n);
}

#[test]
fn zero_weight_is_never_chosen() {
    let counts = shares(
        &[
            backend("a", 0),
            backend("b", 1),
            backend("c", 0),
            backend("d", 3),
        ],
        20_000,
    );
    assert_eq!(counts[0].1, 0);
    assert_eq!(counts[2].1, 0);
    let d = counts[3].1 as f64 / 20_000.0;
    assert!((d - 0.75).abs() < 0.02, "d share {d}");
}

#[test]
fn no_backend_when_all_weights_are_zero() {
    assert_eq!(
        pick_backend(&[backend("a", 0), backend("b", 0)], 12345),
        None
    );
    assert_eq!(pick_backend(&[], 1), None);
    // Extremes of the draw still land on a backend.
    let bs = [backend("a", MAX_WEIGHT), backend("b", MAX_WEIGHT)];
    for draw in [0, 1, u64::MAX, u64::MAX - 1] {
        assert!(pick_backend(&bs, draw).is_some());
    }
}

#[test]
fn fractions() {
    let f = |numerator, denominator| Fraction {
        numerator,
        denominator,
    };
    let rate = |fr: Fraction| Draws(3).take(10_000).filter(|d| fr.hits(*d)).count();
    assert_eq!(rate(Fraction::ALL), 10_000);
    assert_eq!(rate(f(0, 100)), 0);
    assert_eq!(rate(f(0, 0)), 0, "a zero denominator never hits");
    let quarter = rate(f(25, 100));
    assert!((2300..2700).contains(&quarter), "25% gave {quarter}");
}

#[test]
fn fault_decisions_are_independent() {
    let fault = Fault {
        delay: Some(FaultDelay {
            delay: Duration::from_millis(500),
            fraction: Fraction::ALL,
        }),
        abort: Some(FaultAbort {
            status: AbortStatus::Http(503),
            fraction: Fraction {
                numerator: 1,
                denominator: 2,
            },
        }),
    };
    assert_eq!(
        fault.decide(0, 0),
        FaultAction {
            delay: Some(Duration::from_millis(500)),
            abort: Some(AbortStatus::Http(503))
        }
    );
    assert_eq!(fault.decide(0, 1).abort, None);
    let none = Fault {
        delay: None,
        abort: None,
    };
    assert_eq!(none.decide(0, 0), FaultAction::default());
}

#[test]
fn retry_defaults_and_backoff() {
    let r = Retry {
        attempts: None,
        codes: vec![503],
        backoff: None,
    };
    assert_eq!(r.attempts(), DEFAULT_RETRY_ATTEMPTS);
    assert!(r.retries_status(503) && !r.retries_status(500));
    let zero = Retry {
        attempts: Some(0),
        ..r
    };
    assert_eq!(zero.attempts(), 0, "an explicit zero disables retries");
    let base = Duration::from_millis(100);
    for (retry, lo, hi) in [
        (1, 50, 100),
        (2, 100, 200),
        (3, 200, 400),
        (4, 400, 800),
        (5, 500, 1000),
        (40, 500, 1000),
    ] {
        for draw in Draws(retry as u64).take(200) {
            let d = retry_backoff(base, retry, draw).as_millis();
            assert!(
                (lo..=hi).contains(&d),
                "retry {retry}: {d} ms not in {lo}..={hi}"
            );
        }
    }
    assert_eq!(retry_backoff(Duration::ZERO, 3, 99), Duration::ZERO);
}

#[test]
fn timeouts_zero_disables() {
    let t = Timeouts {
        request: Some(Duration::ZERO),
        backend_request: Some(Duration::from_secs(1)),
    };
    assert_eq!(
        (t.request(), t.backend_request()),
        (None, Some(Duration::from_secs(1)))
    );
    assert_eq!(Timeouts::default().request(), None);
}
