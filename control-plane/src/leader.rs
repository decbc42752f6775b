//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does (kube-rs has none built in).
//!
//! Every replica serves xDS and the CA; only the leader writes what must be
//! written once (the namespaces' root ConfigMaps, the waypoint objects).
//! Each replica, every [`LeaderConfig::retry_period`]:
//! - reads the Lease; [`decide`] (pure) says what to do with it;
//! - creates it if missing, renews it if it holds it, takes it over if the
//!   holder has not renewed within `leaseDurationSeconds`, or waits;
//! - writes with the read `resourceVersion`, so of two replicas racing for
//!   one Lease the API server takes one write and refuses the other
//!   (`409`): at most one leader at a time.
//!
//! A leader that cannot renew (API server unreachable, or lost the Lease)
//! steps down once [`LeaderConfig::renew_deadline`] has passed since its
//! last renewal, before the Lease expires for the others. [`Elector::release`]
//! (on shutdown) clears the holder so another replica takes over at once.
//! Whether this replica leads is a `watch::Receiver<bool>`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::chrono::{DateTime, Utc};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const DEFAULT_LEASE_NAME: &str = "ambient-mesh-control-plane";
/// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    /// This replica (its pod name, or host name and process id).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaderConfig {
            namespace: namespace.to_owned(),
            name: DEFAULT_LEASE_NAME.to_owned(),
            identity: identity.to_owned(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// There is none: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it (a new transition).
    Acquire,
    /// Someone else holds it and has renewed in time.
    Wait,
}

/// Pure: what `me` does with `lease` at `now`.
pub fn decide(lease: Option<&Lease>, me: &str, now: DateTime<Utc>) -> Action {
    let Some(lease) = lease else {
        return Action::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Action::Renew;
    }
    if holder.is_empty() {
        return Action::Acquire;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let renewed = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
    match renewed {
        Some(t) if t + k8s_openapi::chrono::Duration::seconds(duration) > now => Action::Wait,
        _ => Action::Acquire,
    }
}

/// Pure: the Lease after `action` by `cfg.identity` at `now`.
pub fn next(
    lease: Option<&Lease>,
    action: Action,
    cfg: &LeaderConfig,
    now: DateTime<Utc>,
) -> Lease {
    let mut l = lease.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            ..Default::default()
        },
        spec: None,
    });
    let mut spec = l.spec.take().unwrap_or_default();
    let secs = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    match action {
        Action::Renew => {}
        Action::Create | Action::Acquire => {
            spec = LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                acquire_time: Some(MicroTime(now)),
                lease_transitions: Some(
                    spec.lease_transitions.unwrap_or(0) + i32::from(action == Action::Acquire),
                ),
                ..spec
            };
        }
        Action::Wait => {
            l.spec = Some(spec);
            return l;
        }
    }
    spec.lease_duration_seconds = Some(secs);
    spec.renew_time = Some(MicroTime(now));
    l.spec = Some(spec);
    l
}

/// A running election.
pub struct Elector {
    leading: watch::Receiver<bool>,
    task: JoinHandle<()>,
    api: Api<Lease>,
    cfg: LeaderConfig,
}

impl Elector {
    /// Starts electing. Not leading until the first write succeeds.
    pub fn spawn(client: kube::Client, cfg: LeaderConfig) -> Elector {
        let api = Api::<Lease>::namespaced(client, &cfg.namespace);
        let (tx, leading) = watch::channel(false);
        let task = tokio::spawn(run(api.clone(), cfg.clone(), tx));
        Elector {
            leading,
            task,
            api,
            cfg,
        }
    }

    /// Whether this replica leads, as it changes.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops electing and, if leading, hands the Lease back (holder
    /// cleared), so another replica need not wait for it to expire.
    pub async fn release(self) {
        self.task.abort();
        let _ = self.task.await;
        if !*self.leading.borrow() {
            return;
        }
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.cfg.name, "leadership released"),
            Err(e) => tracing::warn!(error = %mesh_runtime::Chain(&e), "releasing the lease"),
        }
    }
}

/// One round: read, decide, write. `Ok(true)`: we hold the Lease now.
async fn round(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let lease = api.get_opt(&cfg.name).await?;
    let now = Utc::now();
    let action = decide(lease.as_ref(), &cfg.identity, now);
    let new = next(lease.as_ref(), action, cfg, now);
    let written = match action {
        Action::Wait => return Ok(false),
        Action::Create => api.create(&PostParams::default(), &new).await,
        Action::Renew | Action::Acquire => {
            // Carries the read resourceVersion: a concurrent write wins.
            api.replace(&cfg.name, &PostParams::default(), &new).await
        }
    };
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn run(api: Api<Lease>, cfg: LeaderConfig, tx: watch::Sender<bool>) {
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(cfg.renew_deadline, round(&api, &cfg)).await;
        let (holds, failed) = match result {
            Ok(Ok(h)) => (h, false),
            Ok(Err(e)) => {
                tracing::warn!(error = %mesh_runtime::Chain(&e), lease = %cfg.name, "leader election");
                (false, true)
            }
            Err(_) => {
                tracing::warn!(lease = %cfg.name, "leader election: no answer within the renew deadline");
                (false, true)
            }
        };
        if holds {
            last_renewed = Some(started);
        }
        // A leader keeps leading through failed rounds until its renew
        // deadline has passed (shorter than the lease: others wait that long).
        let leading = holds
            || (failed
                && *tx.borrow()
                && last_renewed.is_some_and(|t| t.elapsed() < cfg.renew_deadline));
        if leading != *tx.borrow() {
            tracing::info!(identity = %cfg.identity, lease = %cfg.name, leading, "leadership changed");
            tx.send_replace(leading);
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: i64, duration: i32) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: Some(MicroTime(t(renewed))),
                lease_duration_seconds: Some(duration),
                lease_transitions: Some(3),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn decide_table() {
        let cases = [
            (None, 0, Action::Create),
            (Some(lease(Some("me"), 0, 15)), 100, Action::Renew),
            (Some(lease(Some("other"), 0, 15)), 14, Action::Wait),
            (Some(lease(Some("other"), 0, 15)), 15, Action::Acquire),
            (Some(lease(Some("other"), 0, 15)), 16, Action::Acquire),
            (Some(lease(None, 0, 15)), 1, Action::Acquire),
            (Some(lease(Some(""), 0, 15)), 1, Action::Acquire),
        ];
        for (i, (l, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(decide(l.as_ref(), "me", t(now)), want, "case {i}");
        }
    }

    #[test]
    fn next_sets_holder_times_and_transitions() {
        let cfg = LeaderConfig::new("istio-system", "me");
        let created = next(None, Action::Create, &cfg, t(0));
        let spec = created.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(created.metadata.name.as_deref(), Some(DEFAULT_LEASE_NAME));

        let old = lease(Some("other"), 0, 15);
        let taken = next(Some(&old), Action::Acquire, &cfg, t(20));
        let spec = taken.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(t(20))));

        let renewed = next(Some(&taken), Action::Renew, &cfg, t(25));
        let spec = renewed.spec.as_ref().unwrap();
        assert_eq!(spec.acquire_time, Some(MicroTime(t(20))), "kept");
        assert_eq!(spec.renew_time, Some(MicroTime(t(25))));
        assert_eq!(spec.lease_transitions, Some(4));
    }
}
