//! The development CA: a P-256 root that issues short-lived workload leaves.
//!
//! The root is loaded from a directory, or generated on first start and
//! persisted there, so a restart keeps the same trust root. The control plane
//! reuses [`DevCa::sign_csr`] to serve `CreateCertificate`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

use crate::cert::{CertError, CertProvider, WorkloadCert};
use crate::identity::SpiffeId;

pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// Leaves are back-dated by this much to tolerate clock skew between nodes.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading CA file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing CA file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA directory {0} holds only one of {ROOT_CERT_FILE} and {ROOT_KEY_FILE}")]
    Incomplete(PathBuf),
    #[error("CA material in {path} is invalid")]
    Invalid {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("signing a certificate")]
    Sign(#[source] rcgen::Error),
    #[error("certificate signing request is malformed")]
    Csr(#[source] rcgen::Error),
    #[error("certificate signing request must be for an ECDSA P-256 key")]
    CsrKeyType,
}

/// A root key and certificate. Cheap to clone.
#[derive(Clone)]
pub struct DevCa(Arc<Inner>);

struct Inner {
    issuer: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    root_pem: String,
    leaf_ttl: Duration,
}

impl DevCa {
    /// A fresh in-memory root (tests and benchmarks).
    pub fn generate() -> Result<Self, CaError> {
        let (pem, key) = generate_root()?;
        Self::from_parts(&pem, key, Path::new("<memory>"))
    }

    /// Load the root from `dir`, or generate and persist it there on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let pem = read(&cert_path)?;
                let key =
                    KeyPair::from_pem(&read(&key_path)?).map_err(|source| CaError::Invalid {
                        path: key_path.clone(),
                        source,
                    })?;
                Self::from_parts(&pem, key, &cert_path)
            }
            (false, false) => {
                let (pem, key) = generate_root()?;
                std::fs::create_dir_all(dir).map_err(|source| CaError::Write {
                    path: dir.to_owned(),
                    source,
                })?;
                write_private(&key_path, &key.serialize_pem())?;
                write_atomic(&cert_path, &pem)?;
                Self::from_parts(&pem, key, &cert_path)
            }
            _ => Err(CaError::Incomplete(dir.to_owned())),
        }
    }

    fn from_parts(pem: &str, key: KeyPair, path: &Path) -> Result<Self, CaError> {
        let invalid = |source| CaError::Invalid {
            path: path.to_owned(),
            source,
        };
        let root_der = pem_to_der(pem).map_err(invalid)?;
        let issuer = Issuer::from_ca_cert_der(&root_der, key).map_err(invalid)?;
        Ok(DevCa(Arc::new(Inner {
            issuer,
            root_der,
            root_pem: pem.to_owned(),
            leaf_ttl: DEFAULT_LEAF_TTL,
        })))
    }

    /// Leaves issued from now on live for `ttl`.
    pub fn with_leaf_ttl(self, ttl: Duration) -> Self {
        let inner = &self.0;
        let key = KeyPair::from_pem(&inner.issuer.key().serialize_pem()).expect("own key");
        let issuer = Issuer::from_ca_cert_der(&inner.root_der, key).expect("own root");
        DevCa(Arc::new(Inner {
            issuer,
            root_der: inner.root_der.clone(),
            root_pem: inner.root_pem.clone(),
            leaf_ttl: ttl,
        }))
    }

    pub fn root(&self) -> CertificateDer<'static> {
        self.0.root_der.clone()
    }

    pub fn root_pem(&self) -> &str {
        &self.0.root_pem
    }

    pub fn leaf_ttl(&self) -> Duration {
        self.0.leaf_ttl
    }

    /// Issue a new key and leaf certificate for `id`, valid from
    /// `not_before` for `ttl` (tests use this to make expired certificates).
    pub fn issue_at(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        ttl: Duration,
    ) -> Result<WorkloadCert, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Sign)?;
        let params = leaf_params(id, not_before, ttl)?;
        let cert = params
            .signed_by(&key, &self.0.issuer)
            .map_err(CaError::Sign)?;
        Ok(WorkloadCert::new(
            id.clone(),
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            not_before,
            not_before + ttl,
            vec![self.root()],
        ))
    }

    /// Issue a fresh leaf for `id` with the CA's configured TTL.
    pub fn issue(&self, id: &SpiffeId) -> Result<WorkloadCert, CaError> {
        let not_before = SystemTime::now() - CLOCK_SKEW_ALLOWANCE;
        self.issue_at(id, not_before, self.0.leaf_ttl + CLOCK_SKEW_ALLOWANCE)
    }

    /// Sign a PKCS#10 CSR for `id`, ignoring whatever names the CSR asks for.
    /// Returns the chain, leaf first (the root last).
    pub fn sign_csr(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let der = CertificateSigningRequestDer::from(csr);
        let mut req = CertificateSigningRequestParams::from_der(&der).map_err(CaError::Csr)?;
        if req.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::CsrKeyType);
        }
        let not_before = SystemTime::now() - CLOCK_SKEW_ALLOWANCE;
        req.params = leaf_params(id, not_before, ttl + CLOCK_SKEW_ALLOWANCE)?;
        let cert = req.signed_by(&self.0.issuer).map_err(CaError::Sign)?;
        Ok(vec![cert.der().clone(), self.root()])
    }
}

impl CertProvider for DevCa {
    fn fetch(&self, id: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, CertError>> {
        let ca = self.clone();
        let id = id.clone();
        // Key generation and signing take ~100 µs: not worth a blocking thread.
        Box::pin(async move { ca.issue(&id).map_err(|e| CertError::Provider(Box::new(e))) })
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        vec![self.root()]
    }
}

fn leaf_params(
    id: &SpiffeId,
    not_before: SystemTime,
    ttl: Duration,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let uri = rcgen::string::Ia5String::try_from(id.to_uri()).map_err(CaError::Sign)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.not_before = not_before.into();
    params.not_after = (not_before + ttl).into();
    params.serial_number = Some(random_serial());
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn generate_root() -> Result<(String, KeyPair), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Sign)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ambient-mesh");
    params
        .distinguished_name
        .push(DnType::CommonName, "ambient-mesh dev root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now() - CLOCK_SKEW_ALLOWANCE;
    params.not_before = now.into();
    params.not_after = (now + ROOT_VALIDITY).into();
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key).map_err(CaError::Sign)?;
    Ok((cert.pem(), key))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, rcgen::Error> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| rcgen::Error::CouldNotParseCertificate)
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_atomic(path: &Path, contents: &str) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp");
    let wrap = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::write(&tmp, contents).map_err(wrap)?;
    std::fs::rename(&tmp, path).map_err(wrap)
}

fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let wrap = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(wrap)?;
    f.write_all(contents.as_bytes()).map_err(wrap)?;
    f.sync_all().map_err(wrap)?;
    std::fs::rename(&tmp, path).map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SpiffeId {
        "spiffe://cluster.local/ns/default/sa/web".parse().unwrap()
    }

    #[test]
    fn root_persists_across_restarts() {
        let dir = std::env::temp_dir().join(format!("devca-{}", rand::random::<u64>()));
        let a = DevCa::load_or_create(&dir).unwrap();
        let b = DevCa::load_or_create(&dir).unwrap();
        assert_eq!(a.root(), b.root());
        let mode = std::fs::metadata(dir.join(ROOT_KEY_FILE)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn half_written_dir_is_an_error() {
        let dir = std::env::temp_dir().join(format!("devca-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(ROOT_CERT_FILE), "x").unwrap();
        assert!(matches!(
            DevCa::load_or_create(&dir),
            Err(CaError::Incomplete(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn leaf_carries_exactly_the_identity() {
        let ca = DevCa::generate().unwrap();
        let cert = ca.issue(&id()).unwrap();
        let got = crate::cert::identity_from_der(&cert.chain()[0]).unwrap();
        assert_eq!(got, id());
    }

    #[test]
    fn csr_is_signed_for_the_given_identity_not_the_requested_one() {
        let ca = DevCa::generate().unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://evil/ns/kube-system/sa/admin").unwrap(),
        )];
        let csr = params.serialize_request(&key).unwrap();
        let chain = ca.sign_csr(csr.der(), &id(), DEFAULT_LEAF_TTL).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(crate::cert::identity_from_der(&chain[0]).unwrap(), id());
    }

    #[test]
    fn garbage_csr_is_rejected() {
        let ca = DevCa::generate().unwrap();
        assert!(matches!(
            ca.sign_csr(b"not a csr", &id(), DEFAULT_LEAF_TTL),
            Err(CaError::Csr(_))
        ));
    }
}
