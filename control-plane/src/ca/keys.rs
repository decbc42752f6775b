//! The CA's key material in Istio's plug-in CA layout, and the signer
//! made from it.
//!
//! The four files (or the keys of the `cacerts` Secret) are Istio's:
//! - `ca-cert.pem`: the certificate that signs workload leaves (a root, or
//!   an intermediate under a user's own root);
//! - `ca-key.pem`: its key;
//! - `cert-chain.pem`: the chain from `ca-cert.pem` up to the root (may be
//!   empty or just `ca-cert.pem` when it is the root);
//! - `root-cert.pem`: the trust bundle, one root or several. During a root
//!   rotation it holds the old and the new root, so proxies trust leaves
//!   of either while the change goes through ([`CaMaterial::with_root`]).
//!
//! Issued chains are leaf first, then the intermediates, then the root the
//! chain leads to (the one in the bundle whose subject and key identifier
//! match the last issuer), as Istio's CA answers.

use std::time::{Duration, SystemTime};

use hbone::ca::{leaf_params, random_serial, CaError, CLOCK_SKEW_ALLOWANCE};
use hbone::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::extensions::ParsedExtension;

pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const ROOT_CERT: &str = "root-cert.pem";
/// A generated root lives this long.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The four PEM texts of the plug-in layout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaMaterial {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert_chain: String,
    pub root_cert: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{0} holds no PEM certificate")]
    NoCert(&'static str),
    #[error("{0} is not PEM")]
    BadPem(&'static str),
    #[error("{0} is not an X.509 certificate")]
    BadCert(&'static str),
    #[error("{CA_KEY} is not a valid private key")]
    BadKey(#[source] rcgen::Error),
    #[error("{CA_KEY} is not the key of {CA_CERT}")]
    KeyMismatch,
    #[error("{CA_CERT} is not a CA certificate (basicConstraints CA:TRUE)")]
    NotCa,
    #[error("the chain from {CA_CERT} does not lead to a root in {ROOT_CERT}")]
    NoAnchor,
    #[error("building the CA")]
    Rcgen(#[source] rcgen::Error),
}

impl CaMaterial {
    /// A fresh self-signed root, serving as its own `ca-cert`. Each root
    /// gets a subject of its own, so two roots in one bundle are told apart.
    pub fn generate() -> Result<Self, KeysError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(KeysError::Rcgen)?;
        let mut params = CertificateParams::default();
        let serial = random_serial();
        let tag: String = serial.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "ambient-mesh");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ambient-mesh root {tag}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now() - CLOCK_SKEW_ALLOWANCE;
        params.not_before = now.into();
        params.not_after = (now + ROOT_VALIDITY).into();
        params.serial_number = Some(serial);
        let cert = params.self_signed(&key).map_err(KeysError::Rcgen)?;
        Ok(CaMaterial {
            ca_cert: cert.pem(),
            ca_key: key.serialize_pem(),
            cert_chain: cert.pem(),
            root_cert: cert.pem(),
        })
    }

    /// Rotation, step one: `new`'s root joins this bundle (both trusted);
    /// this material still signs. Step two is to sign with `new`
    /// ([`Self::signing_with`]); step three drops the old root
    /// ([`Self::trusting_only`]).
    pub fn with_root(&self, new: &CaMaterial) -> CaMaterial {
        let mut m = self.clone();
        m.root_cert = merge_bundles(&self.root_cert, &new.root_cert);
        m
    }

    /// Step two: `new` signs; the bundle keeps both roots.
    pub fn signing_with(&self, new: &CaMaterial) -> CaMaterial {
        CaMaterial {
            root_cert: merge_bundles(&self.root_cert, &new.root_cert),
            ..new.clone()
        }
    }

    /// Step three: only this material's own roots are trusted.
    pub fn trusting_only(&self, own: &CaMaterial) -> CaMaterial {
        CaMaterial {
            root_cert: own.root_cert.clone(),
            ..self.clone()
        }
    }
}

/// The certificates of `a`, then those of `b` not already in `a`, as PEM.
pub fn merge_bundles(a: &str, b: &str) -> String {
    let mut out: Vec<CertificateDer<'static>> = Vec::new();
    for der in CertificateDer::pem_slice_iter(a.as_bytes())
        .chain(CertificateDer::pem_slice_iter(b.as_bytes()))
        .flatten()
    {
        if !out.contains(&der) {
            out.push(der);
        }
    }
    out.iter().map(|d| pem(d)).collect()
}

pub fn pem(der: &[u8]) -> String {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), lf)
}

fn certs(text: &str, file: &'static str) -> Result<Vec<CertificateDer<'static>>, KeysError> {
    CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| KeysError::BadPem(file))
}

/// What the chain logic needs of a certificate.
struct Names {
    subject: Vec<u8>,
    issuer: Vec<u8>,
    ski: Option<Vec<u8>>,
    aki: Option<Vec<u8>>,
    spki: Vec<u8>,
    is_ca: bool,
}

fn names(der: &CertificateDer<'_>, file: &'static str) -> Result<Names, KeysError> {
    let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|_| KeysError::BadCert(file))?;
    let mut ski = None;
    let mut aki = None;
    for ext in c.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => {}
        }
    }
    Ok(Names {
        subject: c.subject().as_raw().to_vec(),
        issuer: c.issuer().as_raw().to_vec(),
        ski,
        aki,
        spki: c.public_key().raw.to_vec(),
        is_ca: c.is_ca(),
    })
}

/// Pure: the root of `roots` that issued `child`: same subject as its
/// issuer and, when both carry one, the same key identifier.
fn anchor_of(child: &Names, roots: &[(CertificateDer<'static>, Names)]) -> Option<usize> {
    roots.iter().position(|(_, r)| {
        r.subject == child.issuer
            && match (&child.aki, &r.ski) {
                (Some(a), Some(s)) => a == s,
                _ => true,
            }
    })
}

/// Signs workload leaves (and the serving certificate) with `ca-cert`.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// After the leaf: the intermediates, then the root they lead to.
    tail: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    material: CaMaterial,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("tail", &self.tail.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Checks the material (the key is `ca-cert`'s, `ca-cert` is a CA, the
    /// chain leads to a root of the bundle) and builds the signer.
    pub fn new(m: &CaMaterial) -> Result<Self, KeysError> {
        let ca = certs(&m.ca_cert, CA_CERT)?
            .into_iter()
            .next()
            .ok_or(KeysError::NoCert(CA_CERT))?;
        let roots = certs(&m.root_cert, ROOT_CERT)?;
        if roots.is_empty() {
            return Err(KeysError::NoCert(ROOT_CERT));
        }
        let key = KeyPair::from_pem(&m.ca_key).map_err(KeysError::BadKey)?;
        let ca_names = names(&ca, CA_CERT)?;
        if key.subject_public_key_info() != ca_names.spki {
            return Err(KeysError::KeyMismatch);
        }
        if !ca_names.is_ca {
            return Err(KeysError::NotCa);
        }
        let root_names: Vec<_> = roots
            .iter()
            .map(|r| Ok((r.clone(), names(r, ROOT_CERT)?)))
            .collect::<Result<_, KeysError>>()?;
        // The intermediates: cert-chain.pem without the roots, starting at
        // ca-cert (itself, unless it is a root).
        let mut tail: Vec<CertificateDer<'static>> = Vec::new();
        if !roots.contains(&ca) {
            tail.push(ca.clone());
        }
        for c in certs(&m.cert_chain, CERT_CHAIN)? {
            if c != ca && !roots.contains(&c) && !tail.contains(&c) {
                tail.push(c);
            }
        }
        let last = match tail.last() {
            Some(c) => names(c, CERT_CHAIN)?,
            None => ca_names,
        };
        let anchor = if roots.contains(&ca) && tail.is_empty() {
            ca.clone()
        } else {
            let i = anchor_of(&last, &root_names).ok_or(KeysError::NoAnchor)?;
            roots[i].clone()
        };
        tail.push(anchor);
        let issuer = Issuer::from_ca_cert_der(&ca, key).map_err(KeysError::Rcgen)?;
        Ok(Signer {
            issuer,
            tail,
            roots,
            material: m.clone(),
        })
    }

    /// The trust bundle (every root), in order.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The trust bundle as PEM (what `istio-ca-root-cert` carries).
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|d| pem(d)).collect()
    }

    pub fn material(&self) -> &CaMaterial {
        &self.material
    }

    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// What follows a leaf in an issued chain: intermediates, then the root.
    pub fn tail(&self) -> &[CertificateDer<'static>] {
        &self.tail
    }

    /// Signs a PKCS#10 CSR for `id`, whatever names it asks for: the chain,
    /// leaf first, root last.
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
        let cert = req.signed_by(&self.issuer).map_err(CaError::Sign)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.tail.iter().cloned());
        Ok(chain)
    }
}

/// The SPIFFE identity a CSR names (its first `spiffe://` URI SAN).
pub fn csr_identity(csr: &[u8]) -> Option<SpiffeId> {
    let der = CertificateSigningRequestDer::from(csr);
    let req = CertificateSigningRequestParams::from_der(&der).ok()?;
    req.params
        .subject_alt_names
        .iter()
        .find_map(|san| match san {
            rcgen::SanType::URI(uri) => uri.as_str().parse().ok(),
            _ => None,
        })
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
