//! The state behind [`crate::lb`]: requests in flight and passive health
//! per endpoint, round-robin counters per service, and the requests and
//! retries in flight that the retry budget weighs. Locks are held only for
//! a lookup, never across an `.await`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::dial::Endpoint;
use crate::lb::{self, Candidate, Draw, LbPolicy, Outlier, OutlierConfig, RetryBudget};

/// Endpoint state unused for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct EndpointState {
    active: AtomicU32,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
    outlier: Outlier,
    last_used: Instant,
}

/// A request in flight to one endpoint; counted until dropped.
#[derive(Debug)]
pub struct Chosen {
    pub endpoint: Endpoint,
    state: Arc<EndpointState>,
}

impl Drop for Chosen {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request (or retry) in flight, for the retry budget.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An endpoint that was just ejected, for the log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejected {
    pub addr: SocketAddr,
    pub period: Duration,
}

pub struct Balancer {
    policy: LbPolicy,
    outlier: OutlierConfig,
    budget: RetryBudget,
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
    round_robin: Mutex<HashMap<String, usize>>,
    requests: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
}

impl Balancer {
    pub fn new(policy: LbPolicy, outlier: OutlierConfig, budget: RetryBudget) -> Self {
        Balancer {
            policy,
            outlier,
            budget,
            endpoints: Mutex::default(),
            round_robin: Mutex::default(),
            requests: Arc::default(),
            retries: Arc::default(),
        }
    }

    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    /// Counts a request in flight until the guard drops.
    pub fn request(&self) -> InFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        InFlight(self.requests.clone())
    }

    /// A retry may start if the budget allows; counted until the guard drops.
    pub fn retry(&self) -> Option<InFlight> {
        let requests = self.requests.load(Ordering::Acquire);
        let retries = self.retries.load(Ordering::Acquire);
        if !self.budget.allows(requests, retries) {
            return None;
        }
        self.retries.fetch_add(1, Ordering::AcqRel);
        Some(InFlight(self.retries.clone()))
    }

    /// Chooses one of `endpoints` (of the service or pod `group`) not in
    /// `tried`, and counts a request in flight to it.
    pub fn choose(
        &self,
        group: &str,
        endpoints: &[Endpoint],
        tried: &[SocketAddr],
    ) -> Option<Chosen> {
        let now = Instant::now();
        let states = self.states(endpoints, now);
        let candidates: Vec<Candidate> = endpoints
            .iter()
            .zip(&states)
            .map(|(ep, st)| Candidate {
                active: st.active.load(Ordering::Acquire),
                ejected: st.health.lock().expect("poisoned").outlier.is_ejected(now),
                tried: tried.contains(&ep.addr),
            })
            .collect();
        let round_robin = match self.policy {
            LbPolicy::RoundRobin => {
                let mut rr = self.round_robin.lock().expect("poisoned");
                let n = rr.entry(group.to_owned()).or_default();
                *n = n.wrapping_add(1);
                *n - 1
            }
            LbPolicy::LeastRequest => 0,
        };
        let draw = Draw {
            round_robin,
            first: rand::random(),
            second: rand::random(),
        };
        let i = lb::pick(self.policy, &candidates, draw)?;
        let state = states[i].clone();
        state.active.fetch_add(1, Ordering::AcqRel);
        Some(Chosen {
            endpoint: endpoints[i].clone(),
            state,
        })
    }

    /// Records the outcome of a request to `chosen` (one of `endpoints`):
    /// a connect failure or 5xx counts towards ejection.
    pub fn report(&self, chosen: &Chosen, endpoints: &[Endpoint], failed: bool) -> Option<Ejected> {
        let now = Instant::now();
        if !failed {
            chosen
                .state
                .health
                .lock()
                .expect("poisoned")
                .outlier
                .success();
            return None;
        }
        let states = self.states(endpoints, now);
        let ejected = states
            .iter()
            .filter(|s| s.health.lock().expect("poisoned").outlier.is_ejected(now))
            .count();
        let may_eject = self.outlier.may_eject(ejected, endpoints.len());
        let mut health = chosen.state.health.lock().expect("poisoned");
        health
            .outlier
            .failure(now, may_eject, &self.outlier)
            .map(|period| Ejected {
                addr: chosen.endpoint.addr,
                period,
            })
    }

    /// Endpoints currently ejected.
    pub fn ejected(&self) -> Vec<SocketAddr> {
        let now = Instant::now();
        let map = self.endpoints.lock().expect("poisoned");
        let mut out: Vec<SocketAddr> = map
            .iter()
            .filter(|(_, s)| s.health.lock().expect("poisoned").outlier.is_ejected(now))
            .map(|(a, _)| *a)
            .collect();
        out.sort();
        out
    }

    /// Forgets endpoints idle and healthy for ten minutes.
    pub fn reap(&self) {
        let now = Instant::now();
        self.endpoints.lock().expect("poisoned").retain(|_, s| {
            let h = s.health.lock().expect("poisoned");
            s.active.load(Ordering::Acquire) > 0
                || h.outlier.is_ejected(now)
                || now.duration_since(h.last_used) < FORGET_AFTER
        });
    }

    fn states(&self, endpoints: &[Endpoint], now: Instant) -> Vec<Arc<EndpointState>> {
        let mut map = self.endpoints.lock().expect("poisoned");
        endpoints
            .iter()
            .map(|ep| {
                let st = map
                    .entry(ep.addr)
                    .or_insert_with(|| {
                        Arc::new(EndpointState {
                            active: AtomicU32::new(0),
                            health: Mutex::new(Health {
                                outlier: Outlier::default(),
                                last_used: now,
                            }),
                        })
                    })
                    .clone();
                st.health.lock().expect("poisoned").last_used = now;
                st
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::{DEFAULT_OUTLIER, DEFAULT_RETRY_BUDGET};

    fn eps(n: u8) -> Vec<Endpoint> {
        (1..=n)
            .map(|i| Endpoint {
                addr: SocketAddr::from(([10, 1, 1, i], 8080)),
                tunnel: None,
            })
            .collect()
    }

    #[test]
    fn least_request_spreads_requests_in_flight() {
        let b = Balancer::new(
            LbPolicy::LeastRequest,
            DEFAULT_OUTLIER,
            DEFAULT_RETRY_BUDGET,
        );
        let eps = eps(2);
        let held: Vec<Chosen> = (0..10).map(|_| b.choose("s", &eps, &[]).unwrap()).collect();
        let on_first = held.iter().filter(|c| c.endpoint == eps[0]).count();
        assert_eq!(on_first, 5, "two endpoints, ten requests held: five each");
    }

    #[test]
    fn round_robin_alternates_and_skips_tried() {
        let b = Balancer::new(LbPolicy::RoundRobin, DEFAULT_OUTLIER, DEFAULT_RETRY_BUDGET);
        let eps = eps(3);
        let seq: Vec<u8> = (0..6)
            .map(|_| {
                b.choose("s", &eps, &[])
                    .unwrap()
                    .endpoint
                    .addr
                    .ip()
                    .to_string()
            })
            .map(|ip| ip.rsplit('.').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(seq, [1, 2, 3, 1, 2, 3]);
        let all: Vec<SocketAddr> = eps.iter().map(|e| e.addr).collect();
        assert!(b.choose("s", &eps, &all).is_none());
    }

    #[test]
    fn consecutive_failures_eject_one_of_two() {
        let b = Balancer::new(LbPolicy::RoundRobin, DEFAULT_OUTLIER, DEFAULT_RETRY_BUDGET);
        let eps = eps(2);
        let mut ejections = Vec::new();
        for _ in 0..20 {
            let c = b.choose("s", &eps, &[]).unwrap();
            let failing = c.endpoint == eps[0];
            if let Some(e) = b.report(&c, &eps, failing) {
                ejections.push(e);
            }
        }
        assert_eq!(ejections.len(), 1, "{ejections:?}");
        assert_eq!(ejections[0].addr, eps[0].addr);
        assert_eq!(b.ejected(), [eps[0].addr]);
        for _ in 0..5 {
            assert_eq!(b.choose("s", &eps, &[]).unwrap().endpoint, eps[1]);
        }
        // The healthy one cannot be ejected too (50% cap): it is all there is.
        let c = b.choose("s", &[eps[1].clone()], &[]).unwrap();
        drop(c);
    }

    #[test]
    fn retries_stay_within_the_budget() {
        let b = Balancer::new(LbPolicy::RoundRobin, DEFAULT_OUTLIER, DEFAULT_RETRY_BUDGET);
        let _reqs: Vec<InFlight> = (0..10).map(|_| b.request()).collect();
        let retries: Vec<InFlight> = std::iter::from_fn(|| b.retry()).take(100).collect();
        assert_eq!(
            retries.len(),
            3,
            "min concurrency with 10 requests in flight"
        );
        drop(retries);
        assert!(b.retry().is_some(), "released retries free the budget");
    }
}
