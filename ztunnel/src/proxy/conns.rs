//! Live inbound connections, so a policy change can close the ones it now
//! denies (DESIGN §5). The re-check ([`recheck`]) is pure; the registry only
//! stores what the check needs and a way to cancel the connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hbone::SpiffeId;
use tokio::sync::watch;

use mesh_model::policy::{admit_peer, ConnCtx, Decision, Denial};
use mesh_model::state::Snapshot;

/// What authorized an inbound connection, kept to authorize it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    /// `None` for plaintext (arrived on 15006).
    pub src_identity: Option<SpiffeId>,
    pub src_ip: IpAddr,
    pub dst_uid: String,
    pub dst_port: u16,
}

/// Why a live connection must now close: what [`admit_peer`] now says
/// (a policy denies it, or its namespace became STRICT and it is
/// plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked(pub Denial);

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "policy changed: {}", self.0)
    }
}

/// Admits `conn` again under `snap`, with the very check that admitted it
/// ([`admit_peer`]). A destination that left the config keeps its
/// connection: removal is not a policy decision.
pub fn recheck(snap: &Snapshot, conn: &Authorized) -> Option<Revoked> {
    let dst = snap.workload_by_uid(&conn.dst_uid)?;
    let ctx = ConnCtx {
        src_identity: conn.src_identity.clone(),
        src_ip: conn.src_ip,
        dst,
        dst_port: conn.dst_port,
    };
    match admit_peer(snap, &ctx) {
        Decision::Allow => None,
        Decision::Deny(d) => Some(Revoked(d)),
    }
}

struct Entry {
    auth: Authorized,
    cancel: watch::Sender<Option<Revoked>>,
}

/// The registry of live inbound connections.
#[derive(Default)]
pub struct Connections {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
}

/// Held by a connection; removes it from the registry on drop. `revoked`
/// resolves when a policy change denies the connection.
pub struct Registration {
    id: u64,
    registry: Arc<Connections>,
    pub revoked: watch::Receiver<Option<Revoked>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .live
            .lock()
            .expect("connections poisoned")
            .remove(&self.id);
    }
}

impl Registration {
    /// Resolves with the reason once the connection is revoked.
    pub async fn wait_revoked(&mut self) -> Revoked {
        loop {
            if let Some(r) = self.revoked.borrow_and_update().clone() {
                return r;
            }
            if self.revoked.changed().await.is_err() {
                // The registry entry is gone only when we are dropped.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Connections {
    /// Registers a connection admitted under some earlier snapshot, then
    /// checks it again under `current()`, read after it is in the registry:
    /// a policy published between its admission and now is either seen
    /// here or by the [`Self::revoke_denied`] that follows the publication,
    /// so no connection admitted under an old policy slips through.
    pub fn register(
        self: &Arc<Self>,
        auth: Authorized,
        current: impl FnOnce() -> Arc<Snapshot>,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (cancel, revoked) = watch::channel(None);
        let check = auth.clone();
        self.live
            .lock()
            .expect("connections poisoned")
            .insert(id, Entry { auth, cancel });
        if let Some(r) = recheck(&current(), &check) {
            if let Some(entry) = self.live.lock().expect("connections poisoned").get(&id) {
                entry.cancel.send_replace(Some(r));
            }
        }
        Registration {
            id,
            registry: self.clone(),
            revoked,
        }
    }

    pub fn len(&self) -> usize {
        self.live.lock().expect("connections poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-authorizes every live connection under `snap` and cancels those
    /// now denied. Returns how many were revoked.
    pub fn revoke_denied(&self, snap: &Snapshot) -> usize {
        let live = self.live.lock().expect("connections poisoned");
        let mut revoked = 0;
        for entry in live.values() {
            if entry.cancel.borrow().is_some() {
                continue;
            }
            if let Some(why) = recheck(snap, &entry.auth) {
                tracing::info!(src = %entry.auth.src_ip, dst = %entry.auth.dst_uid, port = entry.auth.dst_port, reason = %why, "closing connection");
                entry.cancel.send_replace(Some(why));
                revoked += 1;
            }
        }
        revoked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_model::config;

    const BASE: &str = r#"
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces:
  - {name: shop, labels: {istio.io/dataplane-mode: ambient}}
  - {name: bank, labels: {istio.io/dataplane-mode: ambient}, mtls: MODE}
workloads:
  - {name: client, namespace: shop, ip: 10.1.1.10, node: n1}
  - {name: server, namespace: bank, ip: 10.1.1.11, node: n1}
"#;

    fn snap(mtls: &str, policies: &str) -> Snapshot {
        config::parse(&format!("{}{}", BASE.replace("MODE", mtls), policies)).unwrap()
    }

    fn mtls_conn() -> Authorized {
        Authorized {
            src_identity: Some("spiffe://cluster.local/ns/shop/sa/default".parse().unwrap()),
            src_ip: "10.1.1.10".parse().unwrap(),
            dst_uid: "bank/server".into(),
            dst_port: 8080,
        }
    }

    const DENY_SHOP: &str = r#"
policies:
  - name: no-shop
    namespace: bank
    action: DENY
    rules: [{from: [{source: {namespaces: [shop]}}]}]
"#;

    /// `recheck` is `admit_peer` again (its own table is in mesh-model):
    /// the same reasons, and a destination that left keeps its connection.
    #[test]
    fn recheck_table() {
        let plaintext = Authorized {
            src_identity: None,
            ..mtls_conn()
        };
        let gone = Authorized {
            dst_uid: "bank/nobody".into(),
            ..mtls_conn()
        };
        let cases = [
            (
                "no policy keeps mTLS",
                snap("PERMISSIVE", ""),
                mtls_conn(),
                None,
            ),
            (
                "no policy keeps plaintext",
                snap("PERMISSIVE", ""),
                plaintext.clone(),
                None,
            ),
            (
                "STRICT cuts plaintext",
                snap("STRICT", ""),
                plaintext.clone(),
                Some("strict_mtls"),
            ),
            ("STRICT keeps mTLS", snap("STRICT", ""), mtls_conn(), None),
            (
                "DENY by namespace cuts",
                snap("PERMISSIVE", DENY_SHOP),
                mtls_conn(),
                Some("deny_policy"),
            ),
            (
                "removed destination kept",
                snap("STRICT", DENY_SHOP),
                gone,
                None,
            ),
        ];
        for (name, snap, conn, want) in cases {
            let got = recheck(&snap, &conn);
            assert_eq!(got.as_ref().map(|r| r.0.reason()), want, "{name}");
        }
        let cut = recheck(&snap("STRICT", ""), &plaintext).unwrap();
        assert_eq!(
            cut.to_string(),
            "policy changed: namespace bank requires mutual TLS; plaintext refused"
        );
    }

    #[tokio::test]
    async fn revoke_cancels_only_denied_and_drop_unregisters() {
        let reg = Arc::new(Connections::default());
        let allow_all = || Arc::new(snap("PERMISSIVE", ""));
        let mut denied = reg.register(mtls_conn(), allow_all);
        let kept = reg.register(
            Authorized {
                src_identity: Some("spiffe://cluster.local/ns/other/sa/x".parse().unwrap()),
                ..mtls_conn()
            },
            allow_all,
        );
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.revoke_denied(&snap("PERMISSIVE", DENY_SHOP)), 1);
        assert!(matches!(
            denied.wait_revoked().await,
            Revoked(Denial::DenyPolicy(_))
        ));
        assert!(kept.revoked.borrow().is_none());
        // A second pass does not count the same connection again.
        assert_eq!(reg.revoke_denied(&snap("PERMISSIVE", DENY_SHOP)), 0);
        drop(denied);
        drop(kept);
        assert!(reg.is_empty());
    }

    /// A connection admitted under the old policy that registers after the
    /// new one was published (and after its revocation pass) is cut at
    /// once; one still allowed is kept.
    #[tokio::test]
    async fn a_connection_registering_after_a_policy_change_is_rechecked() {
        let reg = Arc::new(Connections::default());
        let deny = || Arc::new(snap("PERMISSIVE", DENY_SHOP));
        let late = reg.register(mtls_conn(), deny);
        assert!(
            matches!(*late.revoked.borrow(), Some(Revoked(Denial::DenyPolicy(_)))),
            "admitted under the old policy, registered under the new: not revoked"
        );
        let other = reg.register(
            Authorized {
                src_identity: Some("spiffe://cluster.local/ns/other/sa/x".parse().unwrap()),
                ..mtls_conn()
            },
            deny,
        );
        assert!(other.revoked.borrow().is_none());
        // Already cut: the next pass does not count it again.
        assert_eq!(reg.revoke_denied(&deny()), 0);
    }
}
