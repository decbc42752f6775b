//! The control plane's serving certificate, issued from the mesh root at
//! start-up. Clients verify it against the root (the same one workload
//! certificates chain to) and the DNS name they dialled.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hbone::ca::{DevCa, ROOT_KEY_FILE};
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Names the serving certificate carries: what clients may dial.
pub const SERVING_DNS_NAMES: &[&str] = &[
    "localhost",
    "control-plane",
    "control-plane.istio-system.svc",
    "istiod.istio-system.svc",
];
/// The serving certificate is re-issued on every start; this bounds it.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ServingCertError {
    #[error("reading the root key {path}")]
    ReadKey {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the serving certificate")]
    Rcgen(#[source] rcgen::Error),
    #[error("building the TLS configuration")]
    Rustls(#[source] rustls::Error),
}

/// The TLS configuration of the gRPC port: [`serving_cert`], ALPN `h2`,
/// no client certificate (callers authenticate with a bearer token).
pub fn server_config(
    ca: &DevCa,
    ca_dir: &Path,
) -> Result<Arc<rustls::ServerConfig>, ServingCertError> {
    let (chain, key) = serving_cert(ca, ca_dir)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServingCertError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(ServingCertError::Rustls)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A fresh key and certificate for the gRPC port, signed by the root in
/// `ca_dir` (which [`DevCa::load_or_create`] has just loaded or made): the
/// chain (leaf, root) and the key.
pub fn serving_cert(
    ca: &DevCa,
    ca_dir: &Path,
) -> Result<
    (
        Vec<rustls_pki_types::CertificateDer<'static>>,
        PrivateKeyDer<'static>,
    ),
    ServingCertError,
> {
    let key_path = ca_dir.join(ROOT_KEY_FILE);
    let root_key_pem =
        std::fs::read_to_string(&key_path).map_err(|source| ServingCertError::ReadKey {
            path: key_path.clone(),
            source,
        })?;
    let root_key = KeyPair::from_pem(&root_key_pem).map_err(ServingCertError::Rcgen)?;
    let issuer = Issuer::from_ca_cert_der(&ca.root(), root_key).map_err(ServingCertError::Rcgen)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(ServingCertError::Rcgen)?;
    let mut params = CertificateParams::new(
        SERVING_DNS_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
    .map_err(ServingCertError::Rcgen)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let now = SystemTime::now() - Duration::from_secs(60);
    params.not_before = now.into();
    params.not_after = (now + SERVING_VALIDITY).into();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(ServingCertError::Rcgen)?;
    let chain = vec![cert.der().clone(), ca.root()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((chain, key))
}
