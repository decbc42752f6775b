//! rustls configurations for HBONE: TLS 1.3 only, ALPN `h2`, no SNI.
//!
//! - The client verifies the server's chain against the mesh roots, then that
//!   the server's single SPIFFE SAN is one of the identities it expects.
//! - The server requires a client certificate, verifies its chain, and
//!   requires the client's trust domain to equal its own.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    RootCertStore, SignatureScheme,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cert::{identity_from_der, CertError, WorkloadCert};
use crate::identity::SpiffeId;

pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("building TLS configuration")]
    Rustls(#[source] TlsError),
    #[error("building the client-certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// Why a peer certificate was refused, beyond chain errors.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer presented {got}, expected one of {expected:?}")]
    WrongIdentity {
        got: SpiffeId,
        expected: Vec<SpiffeId>,
    },
    #[error("peer is in trust domain {got:?}, expected {expected:?}")]
    WrongTrustDomain { got: String, expected: String },
    #[error("peer certificate identity")]
    Identity(#[source] CertError),
}

pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            // Records are sealed by `seal`, which avoids a slow copy path of
            // glibc's (see there); opening stays ring's.
            let mut p = crate::seal::ring_provider();
            // AES-128-GCM first: the fastest AEAD with hardware AES, as Istio prefers.
            p.cipher_suites
                .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
            Arc::new(p)
        })
        .clone()
}

fn root_store(roots: &[CertificateDer<'static>]) -> RootCertStore {
    let mut store = RootCertStore::empty();
    let (_added, _ignored) = store.add_parsable_certificates(roots.iter().cloned());
    store
}

/// The server side for one local identity: cached on the certificate, so
/// rotation naturally switches new handshakes to the new one.
pub fn server_config(cert: &WorkloadCert) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    if let Some(c) = cert.server_config.get() {
        return Ok(c.clone());
    }
    let roots = Arc::new(root_store(cert.roots()));
    let inner = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(TlsConfigError::Verifier)?;
    let verifier = Arc::new(SameTrustDomain {
        inner,
        trust_domain: cert.identity().trust_domain().to_owned(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsConfigError::Rustls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain().to_vec(), cert.key())
        .map_err(TlsConfigError::Rustls)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let config = Arc::new(config);
    Ok(cert.server_config.get_or_init(|| config).clone())
}

/// The client side: our certificate, and the identities the server may have.
pub fn client_config(
    cert: &WorkloadCert,
    expected: &[SpiffeId],
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let verifier = Arc::new(ExpectIdentity {
        roots: root_store(cert.roots()),
        expected: expected.to_vec(),
        provider: provider(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsConfigError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert.chain().to_vec(), cert.key())
        .map_err(TlsConfigError::Rustls)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The server name handed to rustls; never sent, since SNI is off.
pub fn server_name(addr: std::net::SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

/// The identity in a completed handshake's peer certificate.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<SpiffeId, PeerError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(PeerError::Identity(CertError::NoUriSan))?;
    identity_from_der(leaf).map_err(PeerError::Identity)
}

/// Wraps a TLS stream and remembers the first rustls error it surfaced.
///
/// h2 flattens I/O errors into a kind and a message, losing the rustls error
/// inside. In TLS 1.3 the client's handshake completes before the server has
/// checked the client certificate, so a refusal arrives later, as a fatal
/// alert on the first read inside h2; the tap keeps it so the client can
/// report a TLS failure rather than an HTTP/2 one.
pub(crate) struct ErrorTap<S> {
    inner: S,
    seen: Arc<std::sync::OnceLock<TlsError>>,
}

impl<S> ErrorTap<S> {
    pub(crate) fn new(inner: S) -> (Self, Arc<std::sync::OnceLock<TlsError>>) {
        let seen = Arc::new(std::sync::OnceLock::new());
        let tap = ErrorTap {
            inner,
            seen: seen.clone(),
        };
        (tap, seen)
    }

    fn record<T>(&self, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r {
            if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) {
                let _ = self.seen.set(tls.clone());
            }
        }
        r
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ErrorTap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.record(r)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ErrorTap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.record(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.record(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.record(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.record(r)
    }
}

fn other(e: PeerError) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn pki_error(e: webpki::Error) -> TlsError {
    use webpki::Error as E;
    let ce = match e {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::CertRevoked => CertificateError::Revoked,
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    TlsError::InvalidCertificate(ce)
}

#[derive(Debug)]
struct ExpectIdentity {
    roots: RootCertStore,
    expected: Vec<SpiffeId>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ExpectIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        let got = identity_from_der(end_entity).map_err(|e| other(PeerError::Identity(e)))?;
        if !self.expected.contains(&got) {
            return Err(other(PeerError::WrongIdentity {
                got,
                expected: self.expected.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
struct SameTrustDomain {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for SameTrustDomain {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints only help clients with many certs; ours have one.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let got = identity_from_der(end_entity).map_err(|e| other(PeerError::Identity(e)))?;
        if got.trust_domain() != self.trust_domain {
            return Err(other(PeerError::WrongTrustDomain {
                got: got.trust_domain().to_owned(),
                expected: self.trust_domain.clone(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
