//! Applying config: each new snapshot is published to the data path, then
//! capture, certificates and live connections are brought in line with it.
//! A malformed file, or a failed nft run, leaves the last good state in
//! force; neither ever stops traffic. A failed nft run (file or xDS mode)
//! makes readiness false and is retried with backoff
//! ([`capture_retry_delay`]) until it succeeds.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone::cert::CertStore;
use hbone::drain::Drain;
use hbone::SpiffeId;
use tokio::sync::watch;

use crate::capture::Capture;
use crate::metrics::Metrics;
use crate::proxy::conns::Connections;
use mesh_model::state::{Scope, Snapshot, UseWaypoint};
use mesh_runtime::source::{Change, FileSource};

/// The identities of the workloads in `scope`: certificates to hold.
pub fn local_identities(snap: &Snapshot, scope: &Scope) -> BTreeSet<SpiffeId> {
    scope.served(snap).iter().map(|w| w.identity()).collect()
}

/// The first retry of a failed capture update comes this long after it.
pub const CAPTURE_RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Retries of a failed capture update back off up to this.
pub const CAPTURE_RETRY_MAX: Duration = Duration::from_secs(10);

/// The wait before retry `attempt` (0-based) of a failed capture update:
/// doubling from [`CAPTURE_RETRY_INITIAL`] up to [`CAPTURE_RETRY_MAX`].
pub fn capture_retry_delay(attempt: u32) -> Duration {
    CAPTURE_RETRY_INITIAL
        .saturating_mul(1u32 << attempt.min(16))
        .min(CAPTURE_RETRY_MAX)
}

/// The addresses of the pods to capture on `node`: IPv4 ones are captured,
/// IPv6 ones refused ([`crate::capture::ipv6`]).
pub fn capture_set(snap: &Snapshot, node: &str) -> BTreeSet<IpAddr> {
    snap.local_ambient_ips(node)
}

/// How many workloads and services name a waypoint that is missing.
pub fn behind_missing_waypoints(snap: &Snapshot) -> usize {
    let missing = |wp: &Option<UseWaypoint>| wp.as_ref().is_some_and(|wp| wp.missing().is_some());
    snap.workloads().filter(|w| missing(&w.waypoint)).count()
        + snap.services().filter(|s| missing(&s.waypoint)).count()
}

/// Keeps capture, certificates and live connections in line with the
/// published snapshot.
pub struct Controller {
    pub node: String,
    /// What this process serves (certificates to hold).
    pub scope: Scope,
    pub state: watch::Sender<Arc<Snapshot>>,
    pub certs: Arc<CertStore>,
    pub conns: Arc<Connections>,
    pub metrics: Arc<Metrics>,
    /// `None` when running without capture.
    pub capture: Option<Arc<Mutex<Capture>>>,
    /// The last capture update failed: not ready, and [`Self::retry_capture`]
    /// retries it even if the config does not change.
    pub capture_failed: std::sync::atomic::AtomicBool,
    /// Wakes [`Self::retry_capture`] after a failure.
    pub capture_retry: tokio::sync::Notify,
}

impl Controller {
    /// Publishes `snap` and reconciles everything that depends on it.
    pub async fn apply(&self, snap: Arc<Snapshot>) {
        let before = self.state.send_replace(snap.clone());
        self.metrics.config_updates.inc();
        // Revoke first: a connection the new policy denies is cut before
        // the capture rules (and certificates) change under it.
        let revoked = self.conns.revoke_denied(&snap);
        self.reconcile_capture().await;
        self.reconcile_certs(&before, &snap);
        let behind_missing = behind_missing_waypoints(&snap);
        if behind_missing > 0 {
            tracing::warn!(
                workloads_and_services = behind_missing,
                "waypoints missing: connections that must cross them are refused (reason waypoint_missing)"
            );
        }
        tracing::info!(
            workloads = snap.workloads().count(),
            services = snap.services().count(),
            policies = snap.policies().len(),
            revoked,
            "config applied"
        );
    }

    /// Replaces the nft table if the local pod set of the latest snapshot
    /// differs from what is installed. On failure the old rules stay,
    /// readiness turns false and [`Self::retry_capture`] is woken.
    pub async fn reconcile_capture(&self) {
        let Some(capture) = &self.capture else { return };
        let capture = capture.clone();
        let (state, node) = (self.state.subscribe(), self.node.clone());
        // The latest snapshot, read under the capture lock: concurrent
        // reconciles (an update and a retry) converge on it.
        let result = tokio::task::spawn_blocking(move || {
            let mut capture = capture.lock().expect("capture poisoned");
            let want = capture_set(&state.borrow().clone(), &node);
            if capture.pods() == &want {
                return Ok(None);
            }
            capture.update(&want).map(|()| Some(want.len()))
        })
        .await;
        let ok = matches!(result, Ok(Ok(_)));
        self.capture_failed
            .store(!ok, std::sync::atomic::Ordering::Release);
        match result {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(pods))) => tracing::info!(pods, "capture updated"),
            Ok(Err(e)) => {
                self.metrics.capture_errors.inc();
                tracing::error!(error = %e, "updating capture rules failed; keeping the old rules, not ready, retrying");
            }
            Err(e) => {
                self.metrics.capture_errors.inc();
                tracing::error!(error = %e, "capture update task failed; not ready, retrying");
            }
        }
        if !ok {
            self.capture_retry.notify_one();
        }
    }

    /// Retries a failed capture update, waiting [`capture_retry_delay`]
    /// between attempts, until one succeeds (then waits for the next
    /// failure) or until drained. Runs beside [`Self::follow`] in both file
    /// and xDS mode: a failure must not wait for the next config change.
    pub async fn retry_capture(&self, drain: Drain) {
        let mut watch = drain.watch();
        let mut attempt = 0u32;
        loop {
            if !self
                .capture_failed
                .load(std::sync::atomic::Ordering::Acquire)
            {
                attempt = 0;
                tokio::select! {
                    () = self.capture_retry.notified() => continue,
                    () = watch.signaled() => return,
                }
            }
            tokio::select! {
                () = tokio::time::sleep(capture_retry_delay(attempt)) => {}
                () = watch.signaled() => return,
            }
            attempt = attempt.saturating_add(1);
            self.reconcile_capture().await;
        }
    }

    /// Not while the last capture update failed. Otherwise node mode:
    /// always; sidecar mode: the served pod is in the config and its
    /// certificate is loaded.
    pub fn serving_ready(&self) -> bool {
        if self
            .capture_failed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return false;
        }
        match &self.scope {
            Scope::Node(_) => true,
            Scope::Pod(_) => {
                let snap = self.state.borrow().clone();
                self.scope
                    .pod(&snap)
                    .is_some_and(|w| self.certs.cached(&w.identity()).is_some())
            }
        }
    }

    /// Pre-fetches certificates for pods that appeared on this node and
    /// forgets those of pods that left (live tunnels keep their own copy).
    fn reconcile_certs(&self, before: &Snapshot, after: &Snapshot) {
        let old = local_identities(before, &self.scope);
        let new = local_identities(after, &self.scope);
        for id in new.difference(&old) {
            self.certs.prefetch(id.clone());
        }
        for id in old.difference(&new) {
            self.certs.forget(id);
        }
    }

    /// Follows `updates` until drained: polls the file, or applies each
    /// snapshot the xDS client publishes.
    pub async fn follow(&self, updates: super::sources::Updates, interval: Duration, drain: Drain) {
        match updates {
            // The initial contents are already applied; the first poll sees
            // them as new and re-applies them idempotently.
            super::sources::Updates::File(source) => self.watch_file(source, interval, drain).await,
            super::sources::Updates::Xds(mut rx) => {
                let mut watch = drain.watch();
                loop {
                    tokio::select! {
                        s = rx.recv() => match s {
                            Some(snap) => self.apply(snap).await,
                            None => return,
                        },
                        () = watch.signaled() => return,
                    }
                }
            }
        }
    }

    /// Polls `source` every `interval` until drained, applying valid changes.
    pub async fn watch_file(&self, mut source: FileSource, interval: Duration, drain: Drain) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = drain.watch();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = watch.signaled() => return,
            }
            let path = source.path().display().to_string();
            // Reading and parsing a large file must not stall the runtime.
            let (returned, change) = match tokio::task::spawn_blocking(move || {
                let change = source.poll();
                (source, change)
            })
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "config poll task failed");
                    return;
                }
            };
            source = returned;
            match change {
                Change::Unchanged => {}
                Change::Updated(update) => self.apply(update.snapshot).await,
                Change::Rejected(e) => {
                    self.metrics.config_rejected.inc();
                    tracing::error!(file = %path, error = %e, "config rejected; the last good config stays in force");
                }
                Change::Unreadable(e) => {
                    self.metrics.config_rejected.inc();
                    tracing::error!(file = %path, error = %e, "config unreadable; the last good config stays in force");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_model::config;

    #[test]
    fn capture_retries_back_off_to_a_bound() {
        let ms = |a| capture_retry_delay(a).as_millis();
        let got: Vec<u128> = (0..9).map(ms).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        assert_eq!(ms(u32::MAX), 10000, "no overflow");
    }

    #[test]
    fn local_sets_follow_the_namespace_label_and_opt_out() {
        // e and f run their own sidecars (native tunnel): never captured, and
        // the node ztunnel holds no certificate for them.
        let snap = config::parse(
            r#"
nodes: [{name: n1, ip: 10.0.0.1}, {name: n2, ip: 10.0.0.2}]
namespaces:
  - {name: shop, labels: {istio.io/dataplane-mode: ambient}}
  - {name: legacy}
workloads:
  - {name: a, namespace: shop, serviceAccount: a, ip: 10.1.1.10, node: n1}
  - {name: b, namespace: shop, serviceAccount: b, ip: 10.1.2.10, node: n2}
  - {name: c, namespace: shop, ip: 10.1.1.11, node: n1, labels: {istio.io/dataplane-mode: none}}
  - {name: d, namespace: legacy, ip: 10.1.1.12, node: n1}
  - {name: e, namespace: shop, serviceAccount: e, ip: 10.1.1.13, node: n1, labels: {security.istio.io/tlsMode: istio}}
  - {name: f, namespace: legacy, serviceAccount: f, ip: 10.1.1.14, node: n1, nativeTunnel: true}
"#,
        )
        .unwrap();
        let ips: Vec<String> = capture_set(&snap, "n1")
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(ips, ["10.1.1.10"]);
        let ids: Vec<String> = local_identities(&snap, &Scope::Node("n1".into()))
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(ids, ["spiffe://cluster.local/ns/shop/sa/a"]);
        assert!(capture_set(&snap, "n3").is_empty());
    }

    #[test]
    fn counts_what_stands_behind_a_missing_waypoint() {
        let snap = config::parse(
            r#"
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces:
  - {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
  - {name: bank, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: gone}}
workloads:
  - {name: wp, namespace: shop, ip: 10.1.1.30, node: n1, labels: {istio.io/dataplane-mode: none}}
  - {name: a, namespace: shop, ip: 10.1.1.10, node: n1, labels: {app: a}}
  - {name: b, namespace: bank, ip: 10.1.1.11, node: n1, labels: {app: b}}
services:
  - {name: a, namespace: shop, vip: 10.96.0.1, ports: [{port: 80}], selector: {app: a}}
  - {name: b, namespace: bank, vip: 10.96.0.2, ports: [{port: 80}], selector: {app: b}}
"#,
        )
        .unwrap();
        // bank's pod and Service; shop's waypoint exists.
        assert_eq!(behind_missing_waypoints(&snap), 2);
        // The pod behind the missing waypoint is still captured.
        assert!(capture_set(&snap, "n1").contains(&"10.1.1.11".parse().unwrap()));
    }
}
