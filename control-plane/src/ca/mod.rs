//! The CA service: `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! A node proxy asks on behalf of a workload: it names the identity in the
//! request metadata under `ImpersonatedIdentity` (as Istio's ztunnel does)
//! and authenticates as its node with a bearer token ([`crate::auth`]). The
//! CA signs only if a workload with that identity runs on that node
//! ([`authorize`]), whatever names the CSR asks for. A caller whose token is
//! bound to an identity of its own (a waypoint) gets that identity: a
//! request naming no `ImpersonatedIdentity` is for the caller's own
//! (DESIGN §6), and one naming another is refused ([`own_identity`]). A
//! node that names none asks for the identity its CSR names (Istio's
//! ztunnel in dedicated mode), under the same rule. The chain comes back
//! leaf first, then any intermediates, root last ([`keys::Signer`]). The
//! CA key never leaves this process; in Kubernetes mode it is read from
//! (or generated into) the `cacerts` Secret ([`secret`]) and followed
//! there, so a rotation takes effect without a restart.

pub mod keys;
pub mod secret;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use hbone::ca::CaError;
use hbone::SpiffeId;
use mesh_model::state::Snapshot;
use proto::ca::istio_certificate_service_server::IstioCertificateService;
use proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::auth::{Authenticator, Caller, NodeName};
use crate::metrics::{Metrics, ReasonLabel};

/// The longest certificate we issue, and the default.
pub const MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// The shortest lifetime a client may ask for, by default
/// (`--min-cert-ttl`; tests of expiry and rotation go lower).
pub const MIN_VALIDITY: Duration = Duration::from_secs(60);

/// Why a certificate request was refused. `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("request metadata lacks a string {key:?}", key = proto::IMPERSONATED_IDENTITY_KEY)]
    NoIdentity,
    #[error("request names no {key:?} and its CSR no spiffe:// URI", key = proto::IMPERSONATED_IDENTITY_KEY)]
    NoCsrIdentity,
    #[error("{key} {value:?} is not a SPIFFE identity", key = proto::IMPERSONATED_IDENTITY_KEY)]
    BadIdentity {
        value: String,
        #[source]
        source: hbone::identity::SpiffeIdError,
    },
    #[error("{identity} is not in trust domain {trust_domain:?}")]
    WrongTrustDomain {
        identity: SpiffeId,
        trust_domain: String,
    },
    #[error("no workload with identity {identity} runs on node {node}")]
    NotOnNode { identity: SpiffeId, node: NodeName },
    #[error("{caller} asked for {asked}, not its own identity")]
    NotOwnIdentity { caller: SpiffeId, asked: SpiffeId },
    #[error("csr is not a PEM certificate request")]
    CsrPem,
    #[error("csr is invalid")]
    Csr(#[source] CaError),
    #[error("no config loaded yet")]
    NotReady,
    #[error("signing failed")]
    Sign(#[source] CaError),
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoIdentity | Refusal::NoCsrIdentity | Refusal::BadIdentity { .. } => {
                "bad_identity"
            }
            Refusal::WrongTrustDomain { .. }
            | Refusal::NotOnNode { .. }
            | Refusal::NotOwnIdentity { .. } => "not_authorized",
            Refusal::CsrPem | Refusal::Csr(_) => "bad_csr",
            Refusal::NotReady => "not_ready",
            Refusal::Sign(_) => "internal",
        }
    }

    pub fn to_status(&self) -> Status {
        // The whole chain, so the caller sees why (e.g. the CSR parse error).
        let msg = mesh_runtime::error_chain(self);
        match self {
            Refusal::NoIdentity
            | Refusal::NoCsrIdentity
            | Refusal::BadIdentity { .. }
            | Refusal::CsrPem
            | Refusal::Csr(_) => Status::invalid_argument(msg),
            Refusal::WrongTrustDomain { .. }
            | Refusal::NotOnNode { .. }
            | Refusal::NotOwnIdentity { .. } => Status::permission_denied(msg),
            Refusal::NotReady => Status::unavailable(msg),
            Refusal::Sign(_) => Status::internal(msg),
        }
    }
}

/// The identity a request asks for, from its metadata.
pub fn requested_identity(req: &IstioCertificateRequest) -> Result<SpiffeId, Refusal> {
    use prost_types::value::Kind;
    let value = req
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(proto::IMPERSONATED_IDENTITY_KEY))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .ok_or(Refusal::NoIdentity)?;
    value
        .parse()
        .map_err(|source| Refusal::BadIdentity { value, source })
}

/// The identity a caller with identity `own` gets: its own, when the
/// request names none or names exactly that one. Pure.
pub fn own_identity(req: &IstioCertificateRequest, own: &SpiffeId) -> Result<SpiffeId, Refusal> {
    match requested_identity(req) {
        Err(Refusal::NoIdentity) => Ok(own.clone()),
        Ok(asked) if asked == *own => Ok(asked),
        Ok(asked) => Err(Refusal::NotOwnIdentity {
            caller: own.clone(),
            asked,
        }),
        Err(e) => Err(e),
    }
}

/// Pure: may `node` obtain a certificate for `identity`? Only if a workload
/// with exactly that identity runs on it.
pub fn authorize(snap: &Snapshot, node: &NodeName, identity: &SpiffeId) -> Result<(), Refusal> {
    if identity.trust_domain() != snap.trust_domain() {
        return Err(Refusal::WrongTrustDomain {
            identity: identity.clone(),
            trust_domain: snap.trust_domain().to_owned(),
        });
    }
    let runs_here = snap
        .workloads()
        .any(|w| w.node == node.0 && w.identity() == *identity);
    if runs_here {
        Ok(())
    } else {
        Err(Refusal::NotOnNode {
            identity: identity.clone(),
            node: node.clone(),
        })
    }
}

/// The lifetime to issue for a requested `validity_duration` (seconds),
/// at least `min` (itself at most [`MAX_VALIDITY`]).
pub fn validity(requested_secs: i64, min: Duration) -> Duration {
    if requested_secs <= 0 {
        return MAX_VALIDITY;
    }
    Duration::from_secs(requested_secs.unsigned_abs()).clamp(min.min(MAX_VALIDITY), MAX_VALIDITY)
}

/// The DER of the first `CERTIFICATE REQUEST` PEM block.
pub fn csr_der(pem: &str) -> Result<Vec<u8>, Refusal> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.as_ref().to_vec())
        .map_err(|_| Refusal::CsrPem)
}

/// The gRPC service.
pub struct CaService {
    /// The current signer (replaced when the CA Secret changes).
    pub signer: watch::Receiver<Arc<keys::Signer>>,
    pub auth: Arc<Authenticator>,
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    pub metrics: Arc<Metrics>,
    /// The shortest lifetime issued ([`MIN_VALIDITY`] unless configured).
    pub min_validity: Duration,
}

impl CaService {
    /// Everything after authentication; pure apart from signing.
    pub fn sign(
        &self,
        snap: Option<&Snapshot>,
        caller: &Caller,
        req: &IstioCertificateRequest,
    ) -> Result<Vec<String>, Refusal> {
        let identity = match caller {
            Caller::Node(node) => {
                let identity = match requested_identity(req) {
                    // The caller's own, as its CSR names it (Istio's
                    // ztunnel in dedicated mode): still only if it runs
                    // on the caller's node.
                    Err(Refusal::NoIdentity) => {
                        keys::csr_identity(&csr_der(&req.csr)?).ok_or(Refusal::NoCsrIdentity)?
                    }
                    other => other?,
                };
                authorize(snap.ok_or(Refusal::NotReady)?, node, &identity)?;
                identity
            }
            Caller::Identity(own) => {
                let identity = own_identity(req, own)?;
                let td = snap.ok_or(Refusal::NotReady)?.trust_domain();
                if identity.trust_domain() != td {
                    return Err(Refusal::WrongTrustDomain {
                        identity,
                        trust_domain: td.to_owned(),
                    });
                }
                identity
            }
        };
        let der = csr_der(&req.csr)?;
        let signer = self.signer.borrow().clone();
        let chain = signer
            .sign_csr(
                &der,
                &identity,
                validity(req.validity_duration, self.min_validity),
            )
            .map_err(|e| match e {
                CaError::Csr(_) | CaError::CsrKeyType => Refusal::Csr(e),
                other => Refusal::Sign(other),
            })?;
        Ok(chain.iter().map(|c| keys::pem(c.as_ref())).collect())
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = match self.auth.authenticate(&request).await {
            Ok(c) => c,
            Err(e) => {
                self.refused("unauthenticated");
                return Err(e.into());
            }
        };
        let snap = self.snapshots.borrow().clone();
        match self.sign(snap.as_deref(), &caller, request.get_ref()) {
            Ok(cert_chain) => {
                self.metrics.certs_signed.inc();
                tracing::info!(%caller, "certificate signed");
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(refusal) => {
                self.refused(refusal.reason());
                tracing::warn!(%caller, error = %refusal, "certificate refused");
                Err(refusal.to_status())
            }
        }
    }
}

impl CaService {
    fn refused(&self, reason: &'static str) {
        self.metrics
            .certs_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}
