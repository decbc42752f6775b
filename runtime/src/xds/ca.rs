//! The CA client: certificates for local workloads from the control plane's
//! `IstioCertificateService/CreateCertificate`, so ztunnel never holds the
//! CA key. Each fetch makes a fresh P-256 key and a CSR, names the workload
//! in `ImpersonatedIdentity`, authenticates as the node with a bearer token,
//! and checks that the returned leaf carries exactly the identity asked for.
//! A proxy that asks only for its own identity (the waypoint, with a token
//! bound to that identity) names none: [`RemoteCa::own_identity`].
//!
//! The mesh roots may come from a file read again on each fetch
//! ([`RemoteCa::with_roots_file`]: the mounted `istio-ca-root-cert`
//! ConfigMap), so during a root rotation each renewed certificate carries
//! the bundle as it is then, old and new roots both, and peers are
//! verified against it.
//!
//! Fetches are bounded ([`MAX_CONCURRENT_FETCHES`]) and retried with
//! backoff; each attempt has a deadline ([`ATTEMPT_TIMEOUT`], also sent as
//! `grpc-timeout`), so a control plane that takes the call and never
//! answers costs one attempt, not the certificate. [`hbone::cert::CertStore`]
//! deduplicates per identity, bounds each fetch as a whole, and refreshes
//! at half-life.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use hbone::cert::{identity_from_der, CertError, CertProvider, WorkloadCert};
use hbone::SpiffeId;
use proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use proto::ca::IstioCertificateRequest;
use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use super::token::BearerToken;

/// CSRs in flight at once, whatever the number of new pods.
pub const MAX_CONCURRENT_FETCHES: usize = 8;
/// Attempts per fetch, with backoff between them.
const ATTEMPTS: u32 = 4;
const RETRY_BASE: Duration = Duration::from_millis(100);
/// One CSR's deadline: connecting (if the channel must), sending, signing
/// and the answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("building the CSR")]
    Csr(#[source] rcgen::Error),
    #[error("CreateCertificate")]
    Rpc(#[source] tonic::Status),
    #[error("CreateCertificate not answered within {0:?}")]
    Timeout(Duration),
    #[error("the CA returned no certificate")]
    EmptyChain,
    #[error("the CA returned a certificate that is not PEM X.509")]
    BadPem,
    #[error("the CA returned a certificate for {got}, not {want}")]
    WrongIdentity { got: SpiffeId, want: SpiffeId },
    #[error("reading the returned certificate")]
    Leaf(#[source] CertError),
}

/// Fetches workload certificates from the control plane.
pub struct RemoteCa {
    channel: Channel,
    token: Option<BearerToken>,
    roots: Vec<CertificateDer<'static>>,
    /// Read again on each fetch; `roots` if it cannot be read.
    roots_file: Option<std::path::PathBuf>,
    ttl: Duration,
    limit: Arc<Semaphore>,
    attempt_timeout: Duration,
    /// Name the identity in `ImpersonatedIdentity` (a node proxy asking on
    /// behalf of its pods); without it the CA signs the caller's own.
    impersonate: bool,
}

impl RemoteCa {
    /// `roots` are the mesh roots the returned chains must lead to.
    pub fn new(
        channel: Channel,
        token: Option<BearerToken>,
        roots: Vec<CertificateDer<'static>>,
        ttl: Duration,
    ) -> Self {
        RemoteCa {
            channel,
            token,
            roots,
            roots_file: None,
            ttl,
            limit: Arc::new(Semaphore::new(MAX_CONCURRENT_FETCHES)),
            attempt_timeout: ATTEMPT_TIMEOUT,
            impersonate: true,
        }
    }

    /// The roots are read from `path` (PEM, one or more) on each fetch;
    /// the ones given to [`Self::new`] stay the fallback while it cannot
    /// be read or holds none.
    pub fn with_roots_file(mut self, path: &std::path::Path) -> Self {
        self.roots_file = Some(path.to_owned());
        self
    }

    /// The roots now: the file's, else the fixed ones.
    pub fn current_roots(&self) -> Vec<CertificateDer<'static>> {
        let Some(path) = &self.roots_file else {
            return self.roots.clone();
        };
        let read = std::fs::read(path).ok().and_then(|pem| {
            CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .ok()
        });
        match read {
            Some(r) if !r.is_empty() => r,
            _ => {
                tracing::warn!(path = %path.display(), "the mesh roots file cannot be read; keeping the last roots");
                self.roots.clone()
            }
        }
    }

    /// Each attempt's deadline instead of [`ATTEMPT_TIMEOUT`].
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// One attempt, under its deadline.
    async fn attempt(&self, id: &SpiffeId) -> Result<WorkloadCert, CaClientError> {
        tokio::time::timeout(self.attempt_timeout, self.fetch_once(id))
            .await
            .map_err(|_| CaClientError::Timeout(self.attempt_timeout))?
    }

    /// Asks for the caller's own identity: requests carry no
    /// `ImpersonatedIdentity`, and the CA takes the identity from the
    /// caller's token (DESIGN §6).
    pub fn own_identity(mut self) -> Self {
        self.impersonate = false;
        self
    }

    async fn fetch_once(&self, id: &SpiffeId) -> Result<WorkloadCert, CaClientError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaClientError::Csr)?;
        let csr = csr_pem(id, &key)?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: self.impersonate.then(|| impersonate(id)),
        });
        request.set_timeout(self.attempt_timeout);
        if let Some(v) = self.token.as_ref().and_then(|t| t.header()) {
            request.metadata_mut().insert("authorization", v);
        }
        let mut client = IstioCertificateServiceClient::new(self.channel.clone());
        let chain = client
            .create_certificate(request)
            .await
            .map_err(CaClientError::Rpc)?
            .into_inner()
            .cert_chain;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        workload_cert(id, &chain, key, self.current_roots())
    }
}

impl CertProvider for RemoteCa {
    fn fetch(&self, id: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, CertError>> {
        let this = RemoteCa {
            channel: self.channel.clone(),
            token: self.token.clone(),
            roots: self.roots.clone(),
            roots_file: self.roots_file.clone(),
            ttl: self.ttl,
            limit: self.limit.clone(),
            attempt_timeout: self.attempt_timeout,
            impersonate: self.impersonate,
        };
        let id = id.clone();
        Box::pin(async move {
            let _permit = this.limit.acquire().await.expect("semaphore never closes");
            let mut last = None;
            for attempt in 0..ATTEMPTS {
                match this.attempt(&id).await {
                    Ok(cert) => return Ok(cert),
                    // A refusal will not change on retry.
                    Err(CaClientError::Rpc(s)) if s.code() == tonic::Code::PermissionDenied => {
                        last = Some(CaClientError::Rpc(s));
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(identity = %id, attempt, error = %e, "certificate request failed");
                        last = Some(e);
                        tokio::time::sleep(RETRY_BASE * 2u32.pow(attempt)).await;
                    }
                }
            }
            Err(CertError::Provider(Box::new(
                last.expect("at least one attempt"),
            )))
        })
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.current_roots()
    }
}

/// A PEM CSR for `id` with `key`. The CA ignores the names; we send the
/// identity anyway, as Istio's clients do.
pub fn csr_pem(id: &SpiffeId, key: &KeyPair) -> Result<String, CaClientError> {
    let mut params = CertificateParams::default();
    let uri = rcgen::string::Ia5String::try_from(id.to_uri()).map_err(CaClientError::Csr)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(key).map_err(CaClientError::Csr)?;
    csr.pem().map_err(CaClientError::Csr)
}

/// `{"ImpersonatedIdentity": "<spiffe uri>"}` as a protobuf Struct.
pub fn impersonate(id: &SpiffeId) -> prost_types::Struct {
    let value = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(id.to_uri())),
    };
    prost_types::Struct {
        fields: BTreeMap::from([(proto::IMPERSONATED_IDENTITY_KEY.to_owned(), value)]),
    }
}

/// Checks a returned chain (leaf first) and builds the certificate.
pub fn workload_cert(
    id: &SpiffeId,
    chain_pem: &[String],
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
) -> Result<WorkloadCert, CaClientError> {
    let mut chain = Vec::new();
    for pem in chain_pem {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            chain.push(der.map_err(|_| CaClientError::BadPem)?);
        }
    }
    let leaf = chain.first().ok_or(CaClientError::EmptyChain)?;
    let got = identity_from_der(leaf).map_err(CaClientError::Leaf)?;
    if &got != id {
        return Err(CaClientError::WrongIdentity {
            got,
            want: id.clone(),
        });
    }
    let (not_before, not_after) = validity(leaf)?;
    // The root travels last in the chain; the TLS chain ends before it.
    if chain.len() > 1 && roots.contains(chain.last().expect("non-empty")) {
        chain.pop();
    }
    Ok(WorkloadCert::new(
        id.clone(),
        chain,
        key,
        not_before,
        not_after,
        roots,
    ))
}

fn validity(der: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), CaClientError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| CaClientError::BadPem)?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

#[cfg(test)]
mod tests;
