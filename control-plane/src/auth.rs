//! Caller authentication in local mode: bootstrap tokens.
//!
//! The tokens file is YAML mapping a caller → its token. A caller is a node
//! (a ztunnel), or a SPIFFE identity (a proxy with an identity of its own:
//! a waypoint):
//!
//! ```yaml
//! node1: 3f9c0e...   # at least MIN_TOKEN_LEN characters: 32+ random bytes, hex or base64
//! node2: 77ab41...
//! spiffe://cluster.local/ns/shop/sa/waypoint: 5d20aa...
//! ```
//!
//! A caller sends `authorization: Bearer <token>` as gRPC metadata on every
//! xDS stream and CA call; the token names the caller ([`Caller`]). A node's
//! CA request is only signed for identities with a workload on that node;
//! an identity's only for itself, and its xDS stream carries only what that
//! waypoint serves. In Kubernetes mode a token the file does not hold is
//! a projected service-account token, reviewed by the API server
//! ([`crate::kube_auth`]), which gives the same answers.
//!
//! Guessing is made expensive twice over: a token shorter than
//! [`MIN_TOKEN_LEN`] is refused when the file is loaded, and each source IP
//! may fail only [`FAILURE_BURST`] times before its calls are refused
//! unread, regaining one attempt every [`FAILURE_REFILL`]
//! ([`FailureLimiter`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_model::SpiffeId;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::kube_auth::TokenReviewer;
use crate::metrics::{Metrics, ReasonLabel};

/// The shortest token the tokens file may hold: 32 characters is 128 bits
/// as hex (`openssl rand -hex 16`), more as base64.
pub const MIN_TOKEN_LEN: usize = 32;
/// Failed authentications one source IP may make in a burst.
pub const FAILURE_BURST: u32 = 10;
/// After its burst, a source regains one attempt per this long.
pub const FAILURE_REFILL: Duration = Duration::from_secs(6);
/// Sources remembered at once; past this the one closest to a full
/// allowance is forgotten.
pub const MAX_TRACKED_SOURCES: usize = 4096;

/// The node a caller authenticated as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeName(pub String);

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("reading tokens file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokens file {path} is not a YAML map of node name to token")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("tokens file {path}: node {node:?} has an empty token")]
    Empty { path: PathBuf, node: String },
    #[error("tokens file {path}: the token of node {node:?} has {len} characters; at least {MIN_TOKEN_LEN} are required (e.g. `openssl rand -hex 32`)")]
    TooShort {
        path: PathBuf,
        node: String,
        len: usize,
    },
    #[error("tokens file {path}: {key:?} is not a valid SPIFFE identity")]
    BadIdentity {
        path: PathBuf,
        key: String,
        #[source]
        source: mesh_model::identity::SpiffeIdError,
    },
}

/// Who a caller authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node proxy, asking on behalf of the pods of its node.
    Node(NodeName),
    /// A proxy with an identity of its own (a waypoint).
    Identity(SpiffeId),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Node(n) => write!(f, "node {n}"),
            Caller::Identity(id) => write!(f, "{id}"),
        }
    }
}

/// Keys of the tokens file that name an identity, not a node.
const IDENTITY_PREFIX: &str = "spiffe://";

/// Why a caller was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("unknown bearer token")]
    Unknown,
    #[error("too many failed authentications from this address; retry later")]
    RateLimited,
    #[error("the service-account token is not for audience `istio-ca`")]
    WrongAudience,
    #[error("the token is not a service account's")]
    NotServiceAccount,
    #[error("the service-account token is not bound to a pod (use a projected token)")]
    NotPodBound,
    #[error("the token's pod no longer exists, runs another account, or has no node")]
    NoPod,
    #[error("the token could not be reviewed (API server unavailable); retry later")]
    Unavailable,
}

impl AuthError {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Unknown => "unknown_token",
            AuthError::RateLimited => "rate_limited",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::NotServiceAccount => "not_service_account",
            AuthError::NotPodBound => "not_pod_bound",
            AuthError::NoPod => "no_pod",
            AuthError::Unavailable => "review_unavailable",
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::RateLimited => tonic::Status::resource_exhausted(e.to_string()),
            AuthError::Unavailable => tonic::Status::unavailable(e.to_string()),
            _ => tonic::Status::unauthenticated(e.to_string()),
        }
    }
}

/// Bootstrap tokens: caller (node name or SPIFFE identity) → token.
#[derive(Debug, Clone, Default)]
pub struct Tokens(BTreeMap<String, String>);

impl Tokens {
    /// Keys that start with `spiffe://` must be valid identities;
    /// [`Tokens::load`] checks, here a bad one never authenticates.
    pub fn new(map: BTreeMap<String, String>) -> Self {
        Tokens(map)
    }

    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        let map: BTreeMap<String, String> = serde_yaml_ng::from_str::<Option<_>>(&text)
            .map_err(|source| TokensError::Parse {
                path: path.to_owned(),
                source,
            })?
            .unwrap_or_default();
        if let Some((node, _)) = map.iter().find(|(_, t)| t.is_empty()) {
            return Err(TokensError::Empty {
                path: path.to_owned(),
                node: node.clone(),
            });
        }
        // Compared as sent: `authenticate` trims only the header's padding.
        let short = map.iter().find(|(_, t)| t.chars().count() < MIN_TOKEN_LEN);
        if let Some((node, token)) = short {
            return Err(TokensError::TooShort {
                path: path.to_owned(),
                node: node.clone(),
                len: token.chars().count(),
            });
        }
        for key in map.keys().filter(|k| k.starts_with(IDENTITY_PREFIX)) {
            key.parse::<SpiffeId>()
                .map_err(|source| TokensError::BadIdentity {
                    path: path.to_owned(),
                    key: key.clone(),
                    source,
                })?;
        }
        Ok(Tokens(map))
    }

    /// The caller whose token is `token`. Compares every entry in constant
    /// time per byte, so timing does not reveal a prefix.
    pub fn caller_for(&self, token: &str) -> Option<Caller> {
        let mut found = None;
        for (key, t) in &self.0 {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(key);
            }
        }
        let key = found?;
        if key.starts_with(IDENTITY_PREFIX) {
            key.parse().ok().map(Caller::Identity)
        } else {
            Some(Caller::Node(NodeName(key.clone())))
        }
    }

    /// Authenticates a gRPC call by its `authorization` metadata.
    pub fn authenticate(&self, md: &MetadataMap) -> Result<Caller, AuthError> {
        self.caller_for(bearer(md)?).ok_or(AuthError::Unknown)
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The bearer token of a call's `authorization` metadata.
pub fn bearer(md: &MetadataMap) -> Result<&str, AuthError> {
    let value = md
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Missing)?;
    Ok(value
        .strip_prefix("Bearer ")
        .ok_or(AuthError::Missing)?
        .trim())
}

/// One source's allowance of failed authentications: a token bucket.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    /// Attempts left, counted in `FAILURE_REFILL` units as of `at`.
    left: f64,
    at: Instant,
}

impl Allowance {
    fn now(self, now: Instant) -> f64 {
        let regained =
            now.saturating_duration_since(self.at).as_secs_f64() / FAILURE_REFILL.as_secs_f64();
        (self.left + regained).min(f64::from(FAILURE_BURST))
    }
}

/// Failed authentications per source IP (pure: the caller passes the
/// time). A source that has spent its allowance is refused before its
/// token is even looked at; one that authenticates is never charged.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    sources: HashMap<IpAddr, Allowance>,
}

impl FailureLimiter {
    /// Whether `ip` may try to authenticate now.
    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        self.sources.get(&ip).is_none_or(|a| a.now(now) >= 1.0)
    }

    /// Charges `ip` one failed attempt.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_TRACKED_SOURCES {
            self.forget_one(now);
        }
        let a = self.sources.entry(ip).or_insert(Allowance {
            left: f64::from(FAILURE_BURST),
            at: now,
        });
        *a = Allowance {
            left: (a.now(now) - 1.0).max(0.0),
            at: now,
        };
    }

    /// Sources currently remembered.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Drops every source back at a full allowance; if none is, the one
    /// closest to it.
    fn forget_one(&mut self, now: Instant) {
        let full = f64::from(FAILURE_BURST);
        self.sources.retain(|_, a| a.now(now) < full);
        if self.sources.len() < MAX_TRACKED_SOURCES {
            return;
        }
        let best = self
            .sources
            .iter()
            .max_by(|a, b| a.1.now(now).total_cmp(&b.1.now(now)))
            .map(|(ip, _)| *ip);
        if let Some(ip) = best {
            self.sources.remove(&ip);
        }
    }
}

/// Authenticates calls: the tokens, in Kubernetes mode the token
/// reviewer, the per-source limiter, and the
/// `control_plane_auth_failures_total{reason}` counter.
pub struct Authenticator {
    tokens: Tokens,
    kube: Option<TokenReviewer>,
    limiter: Mutex<FailureLimiter>,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(tokens: Tokens, metrics: Arc<Metrics>) -> Self {
        Authenticator {
            tokens,
            kube: None,
            limiter: Mutex::new(FailureLimiter::default()),
            metrics,
        }
    }

    /// Tokens the file does not hold are reviewed by the API server.
    pub fn with_token_review(mut self, reviewer: TokenReviewer) -> Self {
        self.kube = Some(reviewer);
        self
    }

    /// The caller. A call whose source address is unknown (not over TCP)
    /// is not rate-limited.
    pub async fn authenticate<T>(&self, req: &tonic::Request<T>) -> Result<Caller, AuthError> {
        let ip = req.remote_addr().map(|a| a.ip());
        let now = Instant::now();
        let limited = ip.is_some_and(|ip| !self.limiter().allows(ip, now));
        let result = if limited {
            Err(AuthError::RateLimited)
        } else {
            self.caller(req.metadata()).await
        };
        if let Err(e) = result {
            self.metrics
                .auth_failures
                .get_or_create(&ReasonLabel { reason: e.reason() })
                .inc();
            // An API server that cannot answer is not the caller's fault.
            if let (Some(ip), false, false) = (ip, limited, e == AuthError::Unavailable) {
                self.limiter().failed(ip, now);
            }
            tracing::debug!(source = ?ip, error = %e, "authentication failed");
        }
        result
    }

    async fn caller(&self, md: &MetadataMap) -> Result<Caller, AuthError> {
        let token = bearer(md)?;
        if let Some(c) = self.tokens.caller_for(token) {
            return Ok(c);
        }
        match &self.kube {
            Some(k) => k.review(token).await,
            None => Err(AuthError::Unknown),
        }
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        self.limiter.lock().expect("auth limiter poisoned")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAYPOINT: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";

    fn tokens() -> Tokens {
        Tokens::new(BTreeMap::from([
            ("node1".into(), "tok-1".into()),
            ("node2".into(), "tok-2".into()),
            (WAYPOINT.into(), "tok-wp".into()),
        ]))
    }

    const LONG: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn authenticate_table() {
        let cases: &[(Option<&str>, Result<&str, AuthError>)] = &[
            (Some("Bearer tok-1"), Ok("node node1")),
            (Some("Bearer tok-2"), Ok("node node2")),
            (Some("Bearer tok-wp"), Ok(WAYPOINT)),
            (Some("Bearer tok-3"), Err(AuthError::Unknown)),
            (Some("Bearer tok-"), Err(AuthError::Unknown)),
            (Some("tok-1"), Err(AuthError::Missing)),
            (None, Err(AuthError::Missing)),
        ];
        for (header, want) in cases {
            let mut md = MetadataMap::new();
            if let Some(h) = header {
                md.insert("authorization", h.parse().unwrap());
            }
            let got = tokens().authenticate(&md).map(|c| c.to_string());
            assert_eq!(got, want.map(String::from), "{header:?}");
        }
    }

    #[test]
    fn load_rejects_empty_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, format!("node1: {LONG}\nnode2: ''\n")).unwrap();
        assert!(matches!(
            Tokens::load(&path),
            Err(TokensError::Empty { .. })
        ));
        std::fs::write(&path, format!("node1: {LONG}\n")).unwrap();
        assert_eq!(
            Tokens::load(&path).unwrap().caller_for(LONG),
            Some(Caller::Node(NodeName("node1".into())))
        );
        std::fs::write(&path, format!("spiffe://cluster.local/ns/a/b: {LONG}\n")).unwrap();
        assert!(matches!(
            Tokens::load(&path),
            Err(TokensError::BadIdentity { .. })
        ));
        std::fs::write(&path, format!("{WAYPOINT}: {LONG}\n")).unwrap();
        assert_eq!(
            Tokens::load(&path).unwrap().caller_for(LONG),
            Some(Caller::Identity(WAYPOINT.parse().unwrap()))
        );
    }

    #[test]
    fn load_rejects_short_tokens_naming_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let short = &LONG[..MIN_TOKEN_LEN - 1];
        std::fs::write(&path, format!("node1: {LONG}\nnode2: {short}\n")).unwrap();
        let err = Tokens::load(&path).unwrap_err();
        assert!(
            matches!(&err, TokensError::TooShort { node, len, .. } if node == "node2" && *len == MIN_TOKEN_LEN - 1),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("node2") && msg.contains("at least 32"),
            "{msg}"
        );
    }

    #[test]
    fn limiter_allows_a_burst_then_one_attempt_per_refill() {
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        let t0 = Instant::now();
        let mut l = FailureLimiter::default();
        for i in 0..FAILURE_BURST {
            assert!(l.allows(ip, t0), "attempt {i} of the burst");
            l.failed(ip, t0);
        }
        assert!(!l.allows(ip, t0), "burst spent");
        assert!(l.allows(other, t0), "another source is not affected");
        let almost = t0 + FAILURE_REFILL - Duration::from_millis(1);
        assert!(!l.allows(ip, almost));
        let later = t0 + FAILURE_REFILL;
        assert!(l.allows(ip, later), "one attempt regained");
        l.failed(ip, later);
        assert!(!l.allows(ip, later));
        let much_later = later + FAILURE_REFILL * (FAILURE_BURST * 10);
        for _ in 0..FAILURE_BURST {
            assert!(
                l.allows(ip, much_later),
                "the allowance is capped at the burst"
            );
            l.failed(ip, much_later);
        }
        assert!(!l.allows(ip, much_later));
    }

    #[test]
    fn limiter_memory_is_bounded_and_keeps_the_limited_sources() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::default();
        let limited: IpAddr = "10.255.255.255".parse().unwrap();
        for _ in 0..FAILURE_BURST {
            l.failed(limited, t0);
        }
        for i in 0..(MAX_TRACKED_SOURCES as u32 + 100) {
            l.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.tracked() <= MAX_TRACKED_SOURCES);
        assert!(!l.allows(limited, t0), "the spent source was not forgotten");
    }
}
