//! Caller authentication in Kubernetes mode: projected service-account
//! tokens, checked with a `TokenReview`.
//!
//! ztunnel and the waypoint present their projected service-account token
//! (audience [`TOKEN_AUDIENCE`], `istio-ca`) as the bearer token. The
//! control plane asks the API server
//! (`authentication.k8s.io/v1` `TokenReview`, audiences `[istio-ca]`)
//! whether it is valid, and reads from the answer the service account
//! (`system:serviceaccount:<ns>:<sa>`) and the pod the token is bound to
//! (`extra["authentication.kubernetes.io/pod-name"]` and `pod-uid`). The
//! pod is then read: it must still exist with that uid, run that service
//! account and be scheduled; its `spec.nodeName` is the caller's node.
//!
//! - A token of one of the node proxies' service accounts
//!   ([`KubeAuthConfig::node_accounts`], by default `<root ns>/ztunnel`)
//!   makes a [`Caller::Node`]: the CA signs for it only identities with a
//!   pod on that node, as for a file-mode node token.
//! - Any other makes a [`Caller::Identity`] of its service account: a
//!   waypoint (or Istio's ztunnel in dedicated mode) asking for its own
//!   certificate.
//!
//! Answers are cached for [`CACHE_TTL`] by a hash of the token (never the
//! token itself), at most [`MAX_CACHED`] of them; refusals are not cached
//! (the per-source [`crate::auth::FailureLimiter`] bounds those). Each
//! review and pod read has a deadline ([`REVIEW_TIMEOUT`]); an API server
//! that cannot be reached answers `unavailable`, so the caller retries.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use mesh_model::SpiffeId;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::auth::{AuthError, Caller, NodeName};

/// The audience the projected token must be for (Istio's).
pub const TOKEN_AUDIENCE: &str = "istio-ca";
/// `TokenReview` `status.user.extra` keys of a pod-bound token.
pub const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_KEY: &str = "authentication.kubernetes.io/pod-uid";
/// How long a reviewed token's caller is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Reviewed tokens remembered at once.
pub const MAX_CACHED: usize = 4096;
/// Deadline of one `TokenReview` or pod read.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// The node proxies' service account in the root namespace.
pub const DEFAULT_NODE_ACCOUNT: &str = "ztunnel";

/// What a reviewed token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundToken {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

/// Pure: what a `TokenReview`'s status proves, or why it proves nothing.
pub fn bound_token(status: &TokenReviewStatus) -> Result<BoundToken, AuthError> {
    if status.authenticated != Some(true) {
        // The API server says why; a token for another audience (the API
        // server's own, say) is worth telling apart in the metric.
        let why = status.error.as_deref().unwrap_or_default();
        return Err(if why.contains("audience") {
            AuthError::WrongAudience
        } else {
            AuthError::Unknown
        });
    }
    // The API server answers the audiences the token is valid for among
    // those asked; none given means the server's own, which is not ours.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == TOKEN_AUDIENCE) {
        return Err(AuthError::WrongAudience);
    }
    let user = status.user.as_ref().ok_or(AuthError::Unknown)?;
    let username = user.username.as_deref().unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or(AuthError::NotServiceAccount)?;
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .filter(|s| !s.is_empty())
            .cloned()
    };
    let (Some(pod_name), Some(pod_uid)) = (extra(POD_NAME_KEY), extra(POD_UID_KEY)) else {
        return Err(AuthError::NotPodBound);
    };
    Ok(BoundToken {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name,
        pod_uid,
    })
}

/// Pure: the caller a bound token makes, given its pod as read now.
pub fn caller(
    bound: &BoundToken,
    pod: Option<&Pod>,
    node_accounts: &[(String, String)],
    trust_domain: &str,
) -> Result<Caller, AuthError> {
    let pod = pod
        .filter(|p| p.metadata.uid.as_deref() == Some(bound.pod_uid.as_str()))
        .ok_or(AuthError::NoPod)?;
    let spec = pod.spec.as_ref().ok_or(AuthError::NoPod)?;
    let sa = spec.service_account_name.as_deref().unwrap_or("default");
    if sa != bound.service_account {
        return Err(AuthError::NoPod);
    }
    let node = spec
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or(AuthError::NoPod)?;
    let is_node = node_accounts
        .iter()
        .any(|(ns, sa)| *ns == bound.namespace && *sa == bound.service_account);
    if is_node {
        return Ok(Caller::Node(NodeName(node.to_owned())));
    }
    SpiffeId::new(trust_domain, &bound.namespace, &bound.service_account)
        .map(Caller::Identity)
        .map_err(|_| AuthError::NotServiceAccount)
}

/// Reviewed tokens by hash: bounded, each kept for [`CACHE_TTL`]. Pure
/// (the caller passes the time).
#[derive(Debug, Default)]
pub struct ReviewCache {
    entries: HashMap<[u8; 32], (Caller, Instant)>,
}

impl ReviewCache {
    pub fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    pub fn get(&self, token: &str, now: Instant) -> Option<Caller> {
        self.entries
            .get(&Self::key(token))
            .filter(|(_, expires)| *expires > now)
            .map(|(c, _)| c.clone())
    }

    pub fn insert(&mut self, token: &str, caller: Caller, now: Instant) {
        if self.entries.len() >= MAX_CACHED {
            self.entries.retain(|_, (_, expires)| *expires > now);
        }
        if self.entries.len() >= MAX_CACHED {
            // All live: forget the one closest to expiry.
            if let Some(k) = self
                .entries
                .iter()
                .min_by_key(|(_, v)| v.1)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&k);
            }
        }
        self.entries
            .insert(Self::key(token), (caller, now + CACHE_TTL));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How Kubernetes-mode callers are told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeAuthConfig {
    /// `(namespace, service account)` of the node proxies (ztunnel).
    pub node_accounts: Vec<(String, String)>,
    pub trust_domain: String,
}

impl KubeAuthConfig {
    /// ztunnel's service account in `root_namespace`.
    pub fn new(root_namespace: &str, trust_domain: &str) -> Self {
        KubeAuthConfig {
            node_accounts: vec![(root_namespace.to_owned(), DEFAULT_NODE_ACCOUNT.to_owned())],
            trust_domain: trust_domain.to_owned(),
        }
    }
}

/// Reviews tokens against the API server, with the cache.
pub struct TokenReviewer {
    client: kube::Client,
    cfg: KubeAuthConfig,
    cache: Mutex<ReviewCache>,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, cfg: KubeAuthConfig) -> Self {
        TokenReviewer {
            client,
            cfg,
            cache: Mutex::new(ReviewCache::default()),
        }
    }

    /// The caller `token` proves.
    pub async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        if let Some(c) = self.cache.lock().await.get(token, Instant::now()) {
            return Ok(c);
        }
        let caller = tokio::time::timeout(REVIEW_TIMEOUT, self.review_uncached(token))
            .await
            .map_err(|_| AuthError::Unavailable)??;
        self.cache
            .lock()
            .await
            .insert(token, caller.clone(), Instant::now());
        Ok(caller)
    }

    async fn review_uncached(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %mesh_runtime::Chain(&e), "TokenReview failed");
                AuthError::Unavailable
            })?;
        let status = answer.status.unwrap_or_default();
        let bound = bound_token(&status).inspect_err(|e| {
            tracing::debug!(error = %e, review_error = ?status.error, "token not accepted");
        })?;
        let pod = Api::<Pod>::namespaced(self.client.clone(), &bound.namespace)
            .get_opt(&bound.pod_name)
            .await
            .map_err(|e| {
                tracing::warn!(error = %mesh_runtime::Chain(&e), "reading the token's pod failed");
                AuthError::Unavailable
            })?;
        caller(
            &bound,
            pod.as_ref(),
            &self.cfg.node_accounts,
            &self.cfg.trust_domain,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn status(
        authenticated: bool,
        audiences: &[&str],
        username: &str,
        pod: Option<(&str, &str)>,
    ) -> TokenReviewStatus {
        let extra = pod.map(|(name, uid)| {
            BTreeMap::from([
                (POD_NAME_KEY.to_owned(), vec![name.to_owned()]),
                (POD_UID_KEY.to_owned(), vec![uid.to_owned()]),
            ])
        });
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|s| s.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(username.to_owned()),
                extra,
                ..Default::default()
            }),
            error: None,
        }
    }

    const ZT: &str = "system:serviceaccount:istio-system:ztunnel";

    #[test]
    fn bound_token_table() {
        let ok = BoundToken {
            namespace: "istio-system".into(),
            service_account: "ztunnel".into(),
            pod_name: "ztunnel-abc".into(),
            pod_uid: "u1".into(),
        };
        let pod = Some(("ztunnel-abc", "u1"));
        let cases: Vec<(TokenReviewStatus, Result<BoundToken, AuthError>)> = vec![
            (status(true, &["istio-ca"], ZT, pod), Ok(ok.clone())),
            (
                status(true, &["other", "istio-ca"], ZT, pod),
                Ok(ok.clone()),
            ),
            (
                status(false, &["istio-ca"], ZT, pod),
                Err(AuthError::Unknown),
            ),
            (
                status(true, &["https://kubernetes.default.svc"], ZT, pod),
                Err(AuthError::WrongAudience),
            ),
            (
                TokenReviewStatus {
                    error: Some("token audiences [\"api\"] is invalid for the target audiences [\"istio-ca\"]".into()),
                    ..status(false, &[], ZT, pod)
                },
                Err(AuthError::WrongAudience),
            ),
            (status(true, &[], ZT, pod), Err(AuthError::WrongAudience)),
            (
                status(true, &["istio-ca"], "alice", pod),
                Err(AuthError::NotServiceAccount),
            ),
            (
                status(true, &["istio-ca"], "system:serviceaccount:ns", pod),
                Err(AuthError::NotServiceAccount),
            ),
            (
                status(true, &["istio-ca"], ZT, None),
                Err(AuthError::NotPodBound),
            ),
            (
                status(true, &["istio-ca"], ZT, Some(("ztunnel-abc", ""))),
                Err(AuthError::NotPodBound),
            ),
        ];
        for (i, (s, want)) in cases.into_iter().enumerate() {
            assert_eq!(bound_token(&s), want, "case {i}");
        }
    }

    fn pod(uid: &str, sa: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": uid},
            "spec": {"serviceAccountName": sa, "nodeName": node, "containers": []},
        }))
        .unwrap()
    }

    fn bound(ns: &str, sa: &str) -> BoundToken {
        BoundToken {
            namespace: ns.into(),
            service_account: sa.into(),
            pod_name: "p".into(),
            pod_uid: "u1".into(),
        }
    }

    #[test]
    fn caller_table() {
        let accounts = KubeAuthConfig::new("istio-system", "cluster.local").node_accounts;
        let node = |n: &str| Ok(Caller::Node(NodeName(n.into())));
        let wp: SpiffeId = "spiffe://cluster.local/ns/shop/sa/waypoint"
            .parse()
            .unwrap();
        let cases: Vec<(BoundToken, Option<Pod>, Result<Caller, AuthError>)> = vec![
            (
                bound("istio-system", "ztunnel"),
                Some(pod("u1", "ztunnel", Some("node-a"))),
                node("node-a"),
            ),
            (
                bound("shop", "waypoint"),
                Some(pod("u1", "waypoint", Some("node-b"))),
                Ok(Caller::Identity(wp)),
            ),
            // ztunnel's account name in another namespace is no node proxy.
            (
                bound("shop", "ztunnel"),
                Some(pod("u1", "ztunnel", Some("node-a"))),
                Ok(Caller::Identity(
                    "spiffe://cluster.local/ns/shop/sa/ztunnel".parse().unwrap(),
                )),
            ),
            // The pod is gone, or was replaced by one of the same name.
            (
                bound("istio-system", "ztunnel"),
                None,
                Err(AuthError::NoPod),
            ),
            (
                bound("istio-system", "ztunnel"),
                Some(pod("u2", "ztunnel", Some("node-a"))),
                Err(AuthError::NoPod),
            ),
            (
                bound("istio-system", "ztunnel"),
                Some(pod("u1", "other", Some("node-a"))),
                Err(AuthError::NoPod),
            ),
            (
                bound("istio-system", "ztunnel"),
                Some(pod("u1", "ztunnel", None)),
                Err(AuthError::NoPod),
            ),
        ];
        for (i, (b, p, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                caller(&b, p.as_ref(), &accounts, "cluster.local"),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let mut c = ReviewCache::default();
        let a = Caller::Node(NodeName("a".into()));
        c.insert("tok", a.clone(), t0);
        assert_eq!(c.get("tok", t0), Some(a.clone()));
        assert_eq!(c.get("other", t0), None);
        assert_eq!(c.get("tok", t0 + CACHE_TTL), None, "expired");
        for i in 0..MAX_CACHED + 10 {
            c.insert(
                &format!("t{i}"),
                a.clone(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert!(c.len() <= MAX_CACHED);
        assert_eq!(
            c.get(&format!("t{}", MAX_CACHED + 9), t0),
            Some(a),
            "the newest is kept"
        );
    }
}
