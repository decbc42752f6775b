//! Open-loop load at a fixed rate with coordinated-omission correction.
//!
//! Request `i` is due at `start + i / rate` ([`scheduled`]), whatever the
//! earlier ones are doing: each is sent on its own task, so a slow response
//! never delays the next send (a closed loop would wait, and so omit the
//! requests that would have queued behind it). Each latency runs from the
//! request's *scheduled* time, not from when it was actually written: when
//! the generator's timer wakes late or a connection is busy, the wait
//! counts, as the users who sent at that moment would see it (wrk2's
//! correction). When the timer wakes late every request already due is
//! sent at once.
//!
//! A run gives up (and says so) when more than `max_in_flight` requests are
//! outstanding: the system under test is not keeping up with the rate, and
//! an unbounded backlog would only measure the queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Client;

/// The offset from the start at which request `i` is due at `rate` per
/// second.
pub fn scheduled(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// How many requests a run of `dur` at `rate` sends (at least one).
pub fn planned(rate: f64, dur: Duration) -> u64 {
    (rate * dur.as_secs_f64()).round().max(1.0) as u64
}

/// The outcome of one open-loop run.
#[derive(Debug, Clone, Default)]
pub struct OpenRun {
    pub rate: f64,
    pub planned: u64,
    /// Requests answered and checked byte-exact.
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency of every good request from its scheduled time, µs, in
    /// completion order.
    pub latencies_us: Vec<f64>,
    /// From the first scheduled send to the last response, seconds.
    pub wall_s: f64,
    /// The backlog passed `max_in_flight` and sending stopped.
    pub gave_up: bool,
    /// The most requests outstanding at once.
    pub peak_in_flight: usize,
}

impl OpenRun {
    /// Every planned request was answered correctly.
    pub fn complete(&self) -> bool {
        !self.gave_up && self.errors == 0 && self.ok == self.planned
    }
}

/// Sends `planned(rate, dur)` requests (indices from `first`) at `rate`
/// per second through `client` and waits (up to `drain`) for every answer.
pub async fn run(
    client: Arc<Client>,
    first: u64,
    rate: f64,
    dur: Duration,
    max_in_flight: usize,
    drain: Duration,
) -> OpenRun {
    let n = planned(rate, dur);
    let mut out = OpenRun {
        rate,
        planned: n,
        latencies_us: Vec::with_capacity(n as usize),
        ..OpenRun::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(2);
    for i in 0..n {
        let due = start + scheduled(i, rate);
        tokio::time::sleep_until(due).await;
        let now_in_flight = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        out.peak_in_flight = out.peak_in_flight.max(now_in_flight);
        if now_in_flight > max_in_flight {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            out.gave_up = true;
            out.first_error.get_or_insert(format!(
                "more than {max_in_flight} requests outstanding at request {i} of {n}: not keeping up with {rate}/s"
            ));
            break;
        }
        let (client, tx, in_flight) = (client.clone(), tx.clone(), in_flight.clone());
        tokio::spawn(async move {
            let r = client.call(first + i).await;
            let done = Instant::now();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send((r, done.saturating_duration_since(due)));
        });
    }
    drop(tx);
    let deadline = Instant::now() + drain;
    let mut last = start;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((r, lat))) => {
                last = Instant::now();
                match r {
                    Ok(()) => {
                        out.ok += 1;
                        out.latencies_us.push(lat.as_secs_f64() * 1e6);
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {
                let missing = in_flight.load(Ordering::Relaxed);
                out.errors += missing as u64;
                out.first_error.get_or_insert(format!(
                    "{missing} requests unanswered {drain:?} after the last send"
                ));
                break;
            }
        }
    }
    out.wall_s = last.saturating_duration_since(start).as_secs_f64();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_at_the_rate() {
        let cases = [
            (0, 1000.0, 0.0),
            (1, 1000.0, 0.001),
            (1500, 1000.0, 1.5),
            (3, 4.0, 0.75),
        ];
        for (i, rate, secs) in cases {
            assert!(
                (scheduled(i, rate).as_secs_f64() - secs).abs() < 1e-9,
                "{i} at {rate}"
            );
        }
        assert_eq!(planned(1000.0, Duration::from_secs(3)), 3000);
        assert_eq!(planned(1000.0, Duration::ZERO), 1);
        assert_eq!(planned(333.3, Duration::from_millis(300)), 100);
    }

    #[test]
    fn a_run_is_complete_only_with_every_answer_right() {
        let good = OpenRun {
            planned: 10,
            ok: 10,
            ..OpenRun::default()
        };
        assert!(good.complete());
        for bad in [
            OpenRun {
                ok: 9,
                ..good.clone()
            },
            OpenRun {
                errors: 1,
                ..good.clone()
            },
            OpenRun {
                gave_up: true,
                ..good.clone()
            },
        ] {
            assert!(!bad.complete(), "{bad:?}");
        }
    }
}
