//! The per-request choices that need chance: which backend, whether a
//! mirror or a fault applies, how long to back off. Pure: each takes its
//! random draw (any `u64`, uniformly distributed) as an argument.

use std::time::Duration;

use super::types::{AbortStatus, Backend, Fault, Fraction};

/// The backend for one request: each with probability `weight / total`.
/// `None` when every weight is zero (or there is no backend): the API
/// requires a 500 then.
pub fn pick_backend(backends: &[Backend], draw: u64) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    // total <= 16 backends * 1e6: the modulo bias is below 1e-12.
    let mut point = draw % total;
    for b in backends {
        let w = u64::from(b.weight);
        if point < w {
            return Some(b);
        }
        point -= w;
    }
    None
}

impl Fraction {
    /// Whether this request falls in the fraction.
    pub fn hits(&self, draw: u64) -> bool {
        match self.denominator {
            0 => false,
            d => draw % u64::from(d) < u64::from(self.numerator),
        }
    }
}

/// What a rule's fault injection does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultAction {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer this instead of forwarding.
    pub abort: Option<AbortStatus>,
}

impl Fault {
    /// The fault for one request; the delay and the abort are drawn
    /// independently (as Istio does).
    pub fn decide(&self, delay_draw: u64, abort_draw: u64) -> FaultAction {
        FaultAction {
            delay: self
                .delay
                .as_ref()
                .filter(|d| d.fraction.hits(delay_draw))
                .map(|d| d.delay),
            abort: self
                .abort
                .as_ref()
                .filter(|a| a.fraction.hits(abort_draw))
                .map(|a| a.status),
        }
    }
}

/// How long to wait before retry number `retry` (1 for the first retry):
/// `base * 2^(retry-1)`, capped at ten times `base`, with half of it
/// jittered (so between half and all of that).
pub fn retry_backoff(base: Duration, retry: u32, draw: u64) -> Duration {
    let base_ns = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
    let shift = retry.saturating_sub(1).min(32);
    let full = base_ns
        .saturating_mul(1u64 << shift)
        .min(base_ns.saturating_mul(10));
    let half = full / 2;
    let jitter = if half == 0 { 0 } else { draw % (half + 1) };
    Duration::from_nanos(full - half + jitter)
}
