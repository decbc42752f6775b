//! Workload certificates and the store that fetches and rotates them.
//!
//! A [`CertProvider`] mints certificates (the in-process [`crate::ca::DevCa`],
//! or a remote CA client). The [`CertStore`] caches one per identity, hands
//! out `Arc`s, and replaces each at half its lifetime. Live tunnels keep the
//! certificate they were established with, so rotation never drops one.
//!
//! Every fetch has a deadline ([`FETCH_DEADLINE`]), and rotation renews
//! the identities due concurrently, so one hung request delays only its
//! own identity (whose current certificate stays in force) and never the
//! rest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::{SpiffeId, SpiffeIdError};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate provider failed")]
    Provider(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("certificate is not valid X.509")]
    Parse,
    #[error("certificate has no SPIFFE URI SAN")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; exactly one is allowed")]
    ManyUriSans(usize),
    #[error("certificate URI SAN is not a valid SPIFFE identity")]
    BadSan(#[source] SpiffeIdError),
    /// The certificate held expired and a new one could not be fetched
    /// (the CA unreachable, say): connections needing it are refused.
    #[error("certificate for {id} has expired and could not be renewed")]
    Expired {
        id: SpiffeId,
        #[source]
        source: Box<CertError>,
    },
    #[error("fetching the certificate for {id} took longer than {deadline:?}")]
    Timeout { id: SpiffeId, deadline: Duration },
}

/// What the [`CertStore`] did, for metrics (ztunnel registers them).
#[derive(Debug, Default)]
pub struct CertStats {
    /// Certificates installed (first fetches and renewals).
    pub installed: AtomicU64,
    /// Fetches that failed or timed out, rotations included.
    pub fetch_failures: AtomicU64,
    /// Requests refused a certificate because the one held had expired
    /// and could not be renewed (each fails closed).
    pub expired: AtomicU64,
}

/// How long one fetch (all of a provider's attempts) may take.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(60);

/// Something that mints certificates for identities: the dev CA, or a
/// remote CA client that sends a CSR.
pub trait CertProvider: Send + Sync + 'static {
    fn fetch(&self, id: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, CertError>>;
    /// The mesh trust roots.
    fn roots(&self) -> Vec<CertificateDer<'static>>;
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A leaf (plus intermediates), its key, and the roots it chains to.
pub struct WorkloadCert {
    identity: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    /// When this process got the certificate.
    received: SystemTime,
    roots: Vec<CertificateDer<'static>>,
    generation: u64,
    pub(crate) server_config: OnceLock<Arc<rustls::ServerConfig>>,
}

impl WorkloadCert {
    pub fn new(
        identity: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        not_before: SystemTime,
        not_after: SystemTime,
        roots: Vec<CertificateDer<'static>>,
    ) -> Self {
        WorkloadCert {
            identity,
            chain,
            key,
            not_before,
            not_after,
            received: SystemTime::now(),
            roots,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            server_config: OnceLock::new(),
        }
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// Unique per issued certificate in this process; the pool uses it to
    /// stop opening streams on connections made with a rotated-out cert.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Half-life: when the store starts replacing this certificate.
    ///
    /// Measured from when we received it, not from `not_before`: CAs
    /// back-date `not_before` for clock skew (the dev CA by a minute), and
    /// counting that would make a short-lived leaf due at once and renewed
    /// on every rotation tick.
    pub fn refresh_at(&self) -> SystemTime {
        let start = self.not_before.max(self.received);
        let life = self.not_after.duration_since(start).unwrap_or_default();
        start + life / 2
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The single SPIFFE URI SAN of a DER certificate.
pub fn identity_from_der(der: &[u8]) -> Result<SpiffeId, CertError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| CertError::Parse)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| CertError::Parse)?
        .ok_or(CertError::NoUriSan)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(CertError::NoUriSan),
        [one] => one.parse().map_err(CertError::BadSan),
        many => Err(CertError::ManyUriSans(many.len())),
    }
}

struct Entry {
    current: RwLock<Option<Arc<WorkloadCert>>>,
    /// Serialises fetches for one identity so a burst of connections
    /// triggers one CSR, not hundreds.
    fetching: tokio::sync::Mutex<()>,
}

/// Caches certificates per identity and rotates them at half-life.
pub struct CertStore {
    provider: Arc<dyn CertProvider>,
    entries: Mutex<HashMap<SpiffeId, Arc<Entry>>>,
    fetch_deadline: Duration,
    stats: Arc<CertStats>,
}

impl CertStore {
    pub fn new(provider: Arc<dyn CertProvider>) -> Arc<Self> {
        Self::with_fetch_deadline(provider, FETCH_DEADLINE)
    }

    /// A store whose fetches each end within `deadline`.
    pub fn with_fetch_deadline(provider: Arc<dyn CertProvider>, deadline: Duration) -> Arc<Self> {
        Self::with_stats(provider, deadline, Arc::default())
    }

    /// A store counting what it does into `stats`.
    pub fn with_stats(
        provider: Arc<dyn CertProvider>,
        deadline: Duration,
        stats: Arc<CertStats>,
    ) -> Arc<Self> {
        Arc::new(CertStore {
            provider,
            entries: Mutex::new(HashMap::new()),
            fetch_deadline: deadline,
            stats,
        })
    }

    pub fn stats(&self) -> &Arc<CertStats> {
        &self.stats
    }

    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.provider.roots()
    }

    fn entry(&self, id: &SpiffeId) -> Arc<Entry> {
        let mut entries = self.entries.lock().expect("cert store poisoned");
        entries
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    current: RwLock::new(None),
                    fetching: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// The certificate currently cached for `id`, if any, without fetching.
    pub fn cached(&self, id: &SpiffeId) -> Option<Arc<WorkloadCert>> {
        let entry = self
            .entries
            .lock()
            .expect("cert store poisoned")
            .get(id)?
            .clone();
        let cur = entry.current.read().expect("cert entry poisoned").clone();
        cur
    }

    /// A valid certificate for `id`, fetching one if none is cached or the
    /// cached one expired. An expired one is never handed out: if it cannot
    /// be renewed the caller gets [`CertError::Expired`] (fail closed),
    /// counted and logged.
    pub async fn get(&self, id: &SpiffeId) -> Result<Arc<WorkloadCert>, CertError> {
        let entry = self.entry(id);
        if let Some(c) = usable(&entry) {
            return Ok(c);
        }
        let _guard = entry.fetching.lock().await;
        if let Some(c) = usable(&entry) {
            return Ok(c);
        }
        let held = entry.current.read().expect("cert entry poisoned").is_some();
        match self.fetch_into(id, &entry).await {
            Err(e) if held => {
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                let e = CertError::Expired {
                    id: id.clone(),
                    source: Box::new(e),
                };
                tracing::error!(identity = %id, error = %ErrorChain(&e), "certificate expired and could not be renewed; refusing connections that need it");
                Err(e)
            }
            r => r,
        }
    }

    async fn fetch_into(
        &self,
        id: &SpiffeId,
        entry: &Entry,
    ) -> Result<Arc<WorkloadCert>, CertError> {
        let fetch = tokio::time::timeout(self.fetch_deadline, self.provider.fetch(id));
        let fetched = fetch
            .await
            .map_err(|_| CertError::Timeout {
                id: id.clone(),
                deadline: self.fetch_deadline,
            })
            .and_then(|r| r);
        let cert = match fetched {
            Ok(c) => Arc::new(c),
            Err(e) => {
                self.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.stats.installed.fetch_add(1, Ordering::Relaxed);
        *entry.current.write().expect("cert entry poisoned") = Some(cert.clone());
        tracing::debug!(identity = %id, not_after = ?cert.not_after, "certificate installed");
        Ok(cert)
    }

    /// Start fetching `id` in the background (pre-fetch for a new pod).
    pub fn prefetch(self: &Arc<Self>, id: SpiffeId) {
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.get(&id).await {
                tracing::warn!(identity = %id, error = %e, "certificate prefetch failed");
            }
        });
    }

    /// Drop `id` (its pod left the node). Live tunnels keep their own `Arc`.
    pub fn forget(&self, id: &SpiffeId) {
        self.entries.lock().expect("cert store poisoned").remove(id);
    }

    pub fn identities(&self) -> Vec<SpiffeId> {
        self.entries
            .lock()
            .expect("cert store poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Every cached certificate (for config dumps).
    pub fn all(&self) -> Vec<Arc<WorkloadCert>> {
        let entries: Vec<Arc<Entry>> = self
            .entries
            .lock()
            .expect("cert store poisoned")
            .values()
            .cloned()
            .collect();
        entries
            .iter()
            .filter_map(|e| e.current.read().expect("cert entry poisoned").clone())
            .collect()
    }

    /// Replace every certificate past its half-life, all at once (the
    /// provider bounds how many requests are in flight). Returns how many
    /// were renewed and how many renewals failed or timed out (the old one
    /// stays in force).
    pub async fn rotate_due(&self, now: SystemTime) -> (usize, usize) {
        let due: Vec<(SpiffeId, Arc<Entry>)> = {
            let entries = self.entries.lock().expect("cert store poisoned");
            entries
                .iter()
                .filter(|(_, e)| {
                    let cur = e.current.read().expect("cert entry poisoned");
                    cur.as_ref().is_some_and(|c| now >= c.refresh_at())
                })
                .map(|(id, e)| (id.clone(), e.clone()))
                .collect()
        };
        let renewals = due.iter().map(|(id, entry)| async move {
            let _guard = entry.fetching.lock().await;
            match self.fetch_into(id, entry).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(identity = %id, error = %e, "certificate rotation failed; keeping the current one");
                    false
                }
            }
        });
        let results = futures::future::join_all(renewals).await;
        let ok = results.iter().filter(|r| **r).count();
        (ok, results.len() - ok)
    }

    /// Run rotation every `interval` until the store is dropped.
    pub fn spawn_rotation(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                store.rotate_due(SystemTime::now()).await;
            }
        })
    }
}

/// An error and its causes on one line.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

fn usable(entry: &Entry) -> Option<Arc<WorkloadCert>> {
    let cur = entry.current.read().expect("cert entry poisoned");
    cur.as_ref()
        .filter(|c| !c.is_expired(SystemTime::now()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::DevCa;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", sa).unwrap()
    }

    #[tokio::test]
    async fn get_caches_and_rotation_replaces_at_half_life() {
        let ca = DevCa::generate().unwrap();
        let store = CertStore::new(Arc::new(ca));
        let a = store.get(&id("a")).await.unwrap();
        let again = store.get(&id("a")).await.unwrap();
        assert_eq!(a.generation(), again.generation());

        assert_eq!(store.rotate_due(SystemTime::now()).await, (0, 0));
        let later = a.refresh_at() + Duration::from_secs(1);
        assert_eq!(store.rotate_due(later).await, (1, 0));
        let b = store.get(&id("a")).await.unwrap();
        assert_ne!(a.generation(), b.generation());
        assert_eq!(b.identity(), &id("a"));
    }

    #[test]
    fn half_life_ignores_back_dated_not_before() {
        // The dev CA back-dates by a minute; a 4 s leaf must still be
        // renewed about 2 s from now, not at once.
        let ca = DevCa::generate()
            .unwrap()
            .with_leaf_ttl(Duration::from_secs(4));
        let cert = ca.issue(&id("short")).unwrap();
        let now = SystemTime::now();
        assert!(cert.refresh_at() > now + Duration::from_secs(1));
        assert!(cert.refresh_at() < cert.not_after());
    }

    /// The dev CA while `up`, failing otherwise; its certificates last 1 s.
    struct Flaky {
        ca: DevCa,
        up: Arc<std::sync::atomic::AtomicBool>,
    }

    impl CertProvider for Flaky {
        fn fetch(&self, id: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, CertError>> {
            let r = if self.up.load(Ordering::Relaxed) {
                let now = SystemTime::now();
                self.ca
                    .issue_at(id, now, Duration::from_secs(1))
                    .map_err(|e| CertError::Provider(Box::new(e)))
            } else {
                Err(CertError::Provider("the CA is down".into()))
            };
            Box::pin(async move { r })
        }

        fn roots(&self) -> Vec<CertificateDer<'static>> {
            vec![self.ca.root()]
        }
    }

    #[tokio::test]
    async fn an_expired_certificate_is_never_handed_out_and_the_refusal_is_counted() {
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let provider = Flaky {
            ca: DevCa::generate().unwrap(),
            up: up.clone(),
        };
        let store = CertStore::new(Arc::new(provider));
        let a = id("a");
        let first = store.get(&a).await.unwrap();
        assert_eq!(store.stats().installed.load(Ordering::Relaxed), 1);
        up.store(false, Ordering::Relaxed);
        // Still valid: served from the cache, no fetch.
        assert_eq!(
            store.get(&a).await.unwrap().generation(),
            first.generation()
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        match store.get(&a).await {
            Err(CertError::Expired { id, source }) => {
                assert_eq!(id, a);
                assert!(source.to_string().contains("provider"), "{source}");
            }
            other => panic!("expected Expired, got {:?}", other.map(|c| c.generation())),
        }
        let stats = store.stats();
        assert_eq!(stats.expired.load(Ordering::Relaxed), 1);
        assert_eq!(stats.fetch_failures.load(Ordering::Relaxed), 1);
        // A first fetch that fails is no expiry.
        assert!(store.get(&id("b")).await.is_err());
        assert_eq!(stats.expired.load(Ordering::Relaxed), 1);
        // The CA is back: a new certificate.
        up.store(true, Ordering::Relaxed);
        let again = store.get(&a).await.unwrap();
        assert_ne!(again.generation(), first.generation());
        assert_eq!(stats.installed.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn concurrent_gets_fetch_once() {
        let ca = DevCa::generate().unwrap();
        let store = CertStore::new(Arc::new(ca));
        let b = id("b");
        let gets = (0..50).map(|_| store.get(&b));
        let certs = futures::future::join_all(gets).await;
        let first = certs[0].as_ref().unwrap().generation();
        assert!(certs
            .iter()
            .all(|c| c.as_ref().unwrap().generation() == first));
    }

    /// The dev CA, except that fetches for `hung` never finish.
    struct HangsFor {
        ca: DevCa,
        hung: SpiffeId,
        fetched: Arc<Mutex<Vec<(SpiffeId, tokio::time::Instant)>>>,
    }

    impl CertProvider for HangsFor {
        fn fetch(&self, id: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, CertError>> {
            if *id == self.hung {
                return Box::pin(std::future::pending());
            }
            let (ca, id, fetched) = (self.ca.clone(), id.clone(), self.fetched.clone());
            Box::pin(async move {
                let cert = ca
                    .issue(&id)
                    .map_err(|e| CertError::Provider(Box::new(e)))?;
                fetched
                    .lock()
                    .unwrap()
                    .push((id, tokio::time::Instant::now()));
                Ok(cert)
            })
        }

        fn roots(&self) -> Vec<CertificateDer<'static>> {
            vec![self.ca.root()]
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_hung_fetch_delays_neither_the_rest_of_a_rotation_nor_forever() {
        let ca = DevCa::generate().unwrap();
        let good: Vec<SpiffeId> = ["a", "b", "c", "d", "e"].map(id).to_vec();
        let hung = id("hung");
        // Certificates for everyone first, the hung identity's included.
        let seed = CertStore::new(Arc::new(ca.clone()));
        let deadline = Duration::from_secs(30);
        let provider = HangsFor {
            ca: ca.clone(),
            hung: hung.clone(),
            fetched: Arc::default(),
        };
        let fetched = provider.fetched.clone();
        let store = CertStore::with_fetch_deadline(Arc::new(provider), deadline);
        for i in good.iter().chain([&hung]) {
            let cert = seed.get(i).await.unwrap();
            *store.entry(i).current.write().unwrap() = Some(cert);
        }
        let before: Vec<u64> = good
            .iter()
            .map(|i| store.cached(i).unwrap().generation())
            .collect();
        let later = store.cached(&hung).unwrap().refresh_at() + Duration::from_secs(1);

        let started = tokio::time::Instant::now();
        let rotation = tokio::time::timeout(Duration::from_secs(600), store.rotate_due(later));
        let result = rotation
            .await
            .expect("a hung fetch must not hang the rotation");
        assert_eq!(result, (5, 1));
        assert_eq!(
            started.elapsed(),
            deadline,
            "the hung one was cut off at its deadline"
        );
        // Every other identity was renewed at once, not after the hung one.
        let fetched = fetched.lock().unwrap().clone();
        assert_eq!(fetched.len(), 5);
        assert!(fetched.iter().all(|(_, at)| *at == started), "{fetched:?}");
        for (i, old) in good.iter().zip(before) {
            assert_ne!(store.cached(i).unwrap().generation(), old, "{i} renewed");
        }
        // The hung identity keeps its current certificate.
        assert!(store.cached(&hung).is_some());
    }

    #[test]
    fn identity_from_garbage_is_an_error() {
        assert!(matches!(
            identity_from_der(b"\x30\x03garbage"),
            Err(CertError::Parse)
        ));
    }

    #[test]
    fn identity_requires_uri_san() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            identity_from_der(cert.der()),
            Err(CertError::NoUriSan)
        ));
    }
}
