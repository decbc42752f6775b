//! Per-request load balancing, passive outlier ejection and the retry
//! budget: the arithmetic only. Pure: the caller passes the random draws,
//! the round-robin counter and the time.
//!
//! - [`pick`]: least-request with two random choices (the default, as
//!   Envoy's `LEAST_REQUEST`), or round robin, over the endpoints neither
//!   ejected nor already tried by this request. When every untried one is
//!   ejected, they are used anyway (Envoy's panic mode: an outlier detector
//!   must never turn a degraded service into no service).
//! - [`Outlier`]: consecutive connect failures or 5xx eject an endpoint for
//!   [`OutlierConfig::base_ejection`] × the times it was ejected, capped,
//!   and never more than [`OutlierConfig::max_ejected_percent`] of a
//!   service's endpoints at once (at least one may go).
//! - [`RetryBudget`]: retries in flight stay under a share of the requests
//!   in flight, so retries cannot multiply an outage.

use std::time::Duration;

use tokio::time::Instant;

/// How each request chooses among a Service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbPolicy {
    /// Two random choices; the one with fewer requests in flight wins.
    #[default]
    LeastRequest,
    RoundRobin,
}

/// One endpoint as [`pick`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Candidate {
    /// Requests in flight to it from this waypoint.
    pub active: u32,
    pub ejected: bool,
    /// This request already failed to connect to it.
    pub tried: bool,
}

/// The randomness and ordering [`pick`] consumes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Draw {
    /// The service's round-robin counter (incremented per pick).
    pub round_robin: usize,
    pub first: u64,
    pub second: u64,
}

/// The index of the endpoint to use, or `None` when every endpoint was
/// tried already (or there are none).
pub fn pick(policy: LbPolicy, candidates: &[Candidate], draw: Draw) -> Option<usize> {
    let healthy: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[i].tried && !candidates[i].ejected)
        .collect();
    let pool = if healthy.is_empty() {
        // Panic mode: every untried endpoint is ejected; use them anyway.
        (0..candidates.len())
            .filter(|&i| !candidates[i].tried)
            .collect()
    } else {
        healthy
    };
    let n = pool.len();
    match (n, policy) {
        (0, _) => None,
        (1, _) => Some(pool[0]),
        (_, LbPolicy::RoundRobin) => Some(pool[draw.round_robin % n]),
        (_, LbPolicy::LeastRequest) => {
            let a = (draw.first % n as u64) as usize;
            let mut b = (draw.second % (n as u64 - 1)) as usize;
            if b >= a {
                b += 1;
            }
            let (a, b) = (pool[a], pool[b]);
            Some(if candidates[b].active < candidates[a].active {
                b
            } else {
                a
            })
        }
    }
}

/// Outlier detection settings (Istio's `outlierDetection` field names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OutlierConfig {
    /// Connect failures or 5xx in a row that eject an endpoint.
    pub consecutive_errors: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// The most of a service's endpoints ejected at once, in percent; at
    /// least one may always be.
    pub max_ejected_percent: u32,
}

/// Istio's defaults, except that 5xx count as well as gateway errors.
pub const DEFAULT_OUTLIER: OutlierConfig = OutlierConfig {
    consecutive_errors: 5,
    base_ejection: Duration::from_secs(30),
    max_ejection: Duration::from_secs(300),
    max_ejected_percent: 50,
};

impl OutlierConfig {
    /// Whether one more of `total` endpoints may be ejected while
    /// `ejected` already are.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        let cap = (total * self.max_ejected_percent as usize / 100).max(1);
        ejected < cap
    }
}

/// Passive health of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outlier {
    consecutive: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

impl Outlier {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// When the current ejection ends, if ejected.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.ejected_until.filter(|&t| now < t)
    }

    /// Records a connect failure or 5xx. Returns how long the endpoint is
    /// now ejected for, if this failure ejected it; `may_eject` is
    /// [`OutlierConfig::may_eject`] for its service.
    pub fn failure(
        &mut self,
        now: Instant,
        may_eject: bool,
        cfg: &OutlierConfig,
    ) -> Option<Duration> {
        if self.is_ejected(now) {
            return None;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        if self.consecutive < cfg.consecutive_errors || !may_eject {
            return None;
        }
        self.ejections = self.ejections.saturating_add(1);
        let period = cfg
            .base_ejection
            .saturating_mul(self.ejections)
            .min(cfg.max_ejection);
        self.ejected_until = Some(now + period);
        self.consecutive = 0;
        Some(period)
    }

    /// Records a response that was not a 5xx.
    pub fn success(&mut self) {
        self.consecutive = 0;
    }
}

/// Envoy's retry budget: retries in flight stay below `percent` of the
/// requests in flight, or `min_concurrency`, whichever is larger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RetryBudget {
    pub percent: u32,
    pub min_concurrency: u32,
}

/// Envoy's defaults.
pub const DEFAULT_RETRY_BUDGET: RetryBudget = RetryBudget {
    percent: 20,
    min_concurrency: 3,
};

impl RetryBudget {
    /// Whether one more retry may start with `requests` requests and
    /// `retries` retries in flight.
    pub fn allows(&self, requests: u64, retries: u64) -> bool {
        let cap = (requests * u64::from(self.percent) / 100).max(u64::from(self.min_concurrency));
        retries < cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(active: u32, ejected: bool, tried: bool) -> Candidate {
        Candidate {
            active,
            ejected,
            tried,
        }
    }

    fn draw(rr: usize, first: u64, second: u64) -> Draw {
        Draw {
            round_robin: rr,
            first,
            second,
        }
    }

    #[test]
    fn pick_table() {
        use LbPolicy::*;
        type Case = (LbPolicy, Vec<Candidate>, Draw, Option<usize>, &'static str);
        let cases: &[Case] = &[
            (LeastRequest, vec![], draw(0, 0, 0), None, "no endpoints"),
            (
                LeastRequest,
                vec![c(9, false, false)],
                draw(0, 5, 7),
                Some(0),
                "one",
            ),
            (
                LeastRequest,
                vec![c(3, false, false), c(1, false, false)],
                draw(0, 0, 0),
                Some(1),
                "the less loaded of the two draws",
            ),
            (
                LeastRequest,
                vec![c(1, false, false), c(3, false, false)],
                draw(0, 1, 0),
                Some(0),
                "order of the draws does not matter",
            ),
            (
                LeastRequest,
                vec![c(2, false, false), c(2, false, false)],
                draw(0, 1, 0),
                Some(1),
                "a tie keeps the first draw",
            ),
            (
                LeastRequest,
                vec![c(0, false, false), c(5, false, false), c(4, false, false)],
                draw(0, 1, 1),
                Some(2),
                "the second draw skips the first",
            ),
            (
                LeastRequest,
                vec![c(0, true, false), c(7, false, false)],
                draw(0, 0, 0),
                Some(1),
                "an ejected endpoint is skipped even when idle",
            ),
            (
                LeastRequest,
                vec![c(0, false, true), c(7, false, false)],
                draw(0, 0, 0),
                Some(1),
                "a tried endpoint is skipped",
            ),
            (
                LeastRequest,
                vec![c(0, true, false), c(0, false, true)],
                draw(0, 0, 0),
                Some(0),
                "panic mode: only ejected ones left",
            ),
            (
                RoundRobin,
                vec![c(0, false, true), c(0, false, true)],
                draw(0, 0, 0),
                None,
                "every endpoint tried",
            ),
            (
                RoundRobin,
                vec![c(0, false, false), c(0, true, false), c(0, false, false)],
                draw(3, 0, 0),
                Some(2),
                "round robin over the healthy ones",
            ),
        ];
        for (policy, cands, d, want, what) in cases {
            assert_eq!(pick(*policy, cands, *d), *want, "{what}");
        }
    }

    #[test]
    fn round_robin_visits_each_healthy_endpoint_in_turn() {
        let cands = [c(0, false, false), c(0, true, false), c(0, false, false)];
        let seq: Vec<usize> = (0..4)
            .map(|rr| pick(LbPolicy::RoundRobin, &cands, draw(rr, 0, 0)).unwrap())
            .collect();
        assert_eq!(seq, [0, 2, 0, 2]);
    }

    proptest::proptest! {
        #[test]
        fn least_request_never_picks_the_busier_of_its_draws(
            actives in proptest::collection::vec(0u32..10, 2..8),
            first: u64,
            second: u64,
        ) {
            let cands: Vec<Candidate> = actives.iter().map(|&a| c(a, false, false)).collect();
            let n = cands.len() as u64;
            let i = (first % n) as usize;
            let mut j = (second % (n - 1)) as usize;
            if j >= i { j += 1; }
            let got = pick(LbPolicy::LeastRequest, &cands, draw(0, first, second)).unwrap();
            proptest::prop_assert!(got == i || got == j);
            proptest::prop_assert_eq!(cands[got].active, cands[i].active.min(cands[j].active));
        }
    }

    #[test]
    fn outlier_ejects_after_consecutive_failures_and_backs_off() {
        let cfg = DEFAULT_OUTLIER;
        let t0 = Instant::now();
        let mut o = Outlier::default();
        for _ in 0..4 {
            assert_eq!(o.failure(t0, true, &cfg), None);
        }
        o.success();
        for _ in 0..4 {
            assert_eq!(
                o.failure(t0, true, &cfg),
                None,
                "a success resets the count"
            );
        }
        assert_eq!(o.failure(t0, true, &cfg), Some(Duration::from_secs(30)));
        assert!(o.is_ejected(t0 + Duration::from_secs(29)));
        assert_eq!(o.failure(t0, true, &cfg), None, "no news while ejected");
        let t1 = t0 + Duration::from_secs(30);
        assert!(!o.is_ejected(t1));
        for _ in 0..4 {
            assert_eq!(o.failure(t1, true, &cfg), None);
        }
        assert_eq!(
            o.failure(t1, true, &cfg),
            Some(Duration::from_secs(60)),
            "the second ejection lasts twice as long"
        );
        let mut long = Outlier {
            ejections: 100,
            ..Outlier::default()
        };
        for _ in 0..5 {
            long.failure(t1, true, &cfg);
        }
        assert_eq!(
            long.ejected_until(t1),
            Some(t1 + cfg.max_ejection),
            "capped"
        );
    }

    #[test]
    fn outlier_respects_the_ejection_cap() {
        let cfg = DEFAULT_OUTLIER;
        let t0 = Instant::now();
        let mut o = Outlier::default();
        for _ in 0..10 {
            assert_eq!(o.failure(t0, false, &cfg), None);
        }
        for (ejected, total, want) in [
            (0, 1, true),
            (1, 1, false),
            (0, 2, true),
            (1, 2, false),
            (1, 4, true),
            (2, 4, false),
            (4, 10, true),
            (5, 10, false),
        ] {
            assert_eq!(cfg.may_eject(ejected, total), want, "{ejected}/{total}");
        }
    }

    #[test]
    fn retry_budget_table() {
        let b = DEFAULT_RETRY_BUDGET;
        for (requests, retries, want) in [
            (0, 0, true),
            (1, 2, true),
            (1, 3, false),
            (100, 19, true),
            (100, 20, false),
            (1000, 199, true),
            (1000, 200, false),
        ] {
            assert_eq!(b.allows(requests, retries), want, "{requests}/{retries}");
        }
    }
}
