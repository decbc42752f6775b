//! Connection caps checked at accept: a global cap and a per-source-IP cap,
//! so one peer (a pod flooding a node's ports) can take at most its share
//! and the listener can never hold more sockets than it was sized for.
//!
//! [`check`] is the decision (pure, table-tested); [`ConnLimiter`] counts
//! open connections and hands out a [`ConnPermit`] per admitted one, which
//! gives its slot back when dropped. What is refused is counted per
//! [`LimitReason`] and warned about at most once per
//! [`REFUSAL_WARN_INTERVAL`] per limiter, so a flood cannot flood the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// How often a limiter may log that it refused connections.
pub const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, from everyone.
    pub max_connections: usize,
    /// Connections open at once from one source IP.
    pub max_per_source: usize,
}

/// Why a connection was refused at accept: a bounded label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitReason {
    /// The listener holds `max_connections` already.
    GlobalLimit,
    /// The source IP holds `max_per_source` already.
    SourceLimit,
}

impl LimitReason {
    pub const ALL: [LimitReason; 2] = [LimitReason::GlobalLimit, LimitReason::SourceLimit];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitReason::GlobalLimit => "global_limit",
            LimitReason::SourceLimit => "source_limit",
        }
    }
}

impl std::fmt::Display for LimitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether one more connection may open, given how many are open in all
/// (`open`) and from its source (`open_from_source`). The source cap is
/// checked first: a flooding peer is told it is the one over its share.
/// Pure.
pub fn check(limits: &Limits, open: usize, open_from_source: usize) -> Result<(), LimitReason> {
    if open_from_source >= limits.max_per_source {
        return Err(LimitReason::SourceLimit);
    }
    if open >= limits.max_connections {
        return Err(LimitReason::GlobalLimit);
    }
    Ok(())
}

#[derive(Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Open connections of one listener, by source.
pub struct ConnLimiter {
    what: &'static str,
    limits: Limits,
    open: Mutex<Open>,
    refused: [AtomicU64; 2],
    warned: Mutex<Option<(Instant, u64)>>,
}

impl ConnLimiter {
    /// A limiter for the listener `what` (named in its log lines).
    pub fn new(what: &'static str, limits: Limits) -> Arc<Self> {
        Arc::new(ConnLimiter {
            what,
            limits,
            open: Mutex::default(),
            refused: Default::default(),
            warned: Mutex::new(None),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes a slot for a connection from `source`, or says why not (and
    /// counts and maybe logs the refusal).
    pub fn try_acquire(self: &Arc<Self>, source: IpAddr) -> Result<ConnPermit, LimitReason> {
        let source = source.to_canonical();
        let verdict = {
            let mut open = self.open.lock().expect("limiter poisoned");
            let from_source = open.by_source.get(&source).copied().unwrap_or(0);
            let verdict = check(&self.limits, open.total, from_source);
            if verdict.is_ok() {
                open.total += 1;
                *open.by_source.entry(source).or_default() += 1;
            }
            verdict
        };
        match verdict {
            Ok(()) => Ok(ConnPermit {
                limiter: self.clone(),
                source,
            }),
            Err(reason) => {
                self.refused(source, reason);
                Err(reason)
            }
        }
    }

    fn refused(&self, source: IpAddr, reason: LimitReason) {
        let total = self.refused[reason as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let all = total + self.refused[1 - reason as usize].load(Ordering::Relaxed);
        let now = Instant::now();
        let mut warned = self.warned.lock().expect("limiter poisoned");
        let due = warned.is_none_or(|(at, _)| now.duration_since(at) >= REFUSAL_WARN_INTERVAL);
        if due {
            let since = all - warned.map_or(0, |(_, n)| n);
            *warned = Some((now, all));
            drop(warned);
            tracing::warn!(listener = self.what, %source, %reason, refused = since, limits = ?self.limits, "connections refused at the cap");
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("limiter poisoned").total
    }

    /// Connections open now from `source`.
    pub fn open_from(&self, source: IpAddr) -> usize {
        let open = self.open.lock().expect("limiter poisoned");
        open.by_source
            .get(&source.to_canonical())
            .copied()
            .unwrap_or(0)
    }

    /// Connections refused so far for `reason`.
    pub fn refused_total(&self, reason: LimitReason) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }
}

/// One admitted connection's slot; given back on drop.
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    source: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().expect("limiter poisoned");
        open.total -= 1;
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// Closes a refused connection with a reset, so the peer learns at once.
pub fn refuse(sock: TcpStream) {
    let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
    drop(sock);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_table() {
        let limits = Limits {
            max_connections: 10,
            max_per_source: 3,
        };
        let cases = [
            ("empty", 0, 0, Ok(())),
            ("room everywhere", 9, 2, Ok(())),
            ("source at its cap", 5, 3, Err(LimitReason::SourceLimit)),
            ("listener full", 10, 0, Err(LimitReason::GlobalLimit)),
            (
                "both: the source is named",
                10,
                3,
                Err(LimitReason::SourceLimit),
            ),
        ];
        for (what, open, from_source, want) in cases {
            assert_eq!(check(&limits, open, from_source), want, "{what}");
        }
    }

    #[tokio::test]
    async fn permits_count_per_source_and_give_back_their_slot() {
        let limiter = ConnLimiter::new(
            "test",
            Limits {
                max_connections: 3,
                max_per_source: 2,
            },
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limiter.try_acquire(a).unwrap();
        let _a2 = limiter.try_acquire(a).unwrap();
        assert_eq!(limiter.try_acquire(a).err(), Some(LimitReason::SourceLimit));
        // The same IPv4 peer seen as IPv4-mapped IPv6 is the same source.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            limiter.try_acquire(mapped).err(),
            Some(LimitReason::SourceLimit)
        );
        let _b1 = limiter.try_acquire(b).unwrap();
        assert_eq!(limiter.try_acquire(b).err(), Some(LimitReason::GlobalLimit));
        assert_eq!((limiter.open(), limiter.open_from(a)), (3, 2));
        drop(a1);
        assert_eq!((limiter.open(), limiter.open_from(a)), (2, 1));
        let _b2 = limiter.try_acquire(b).unwrap();
        assert_eq!(limiter.refused_total(LimitReason::SourceLimit), 2);
        assert_eq!(limiter.refused_total(LimitReason::GlobalLimit), 1);
    }
}
