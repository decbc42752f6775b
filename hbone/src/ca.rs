//! The development CA: a P-256 root that issues short-lived workload leaves.
//!
//! The root is loaded from a directory, or generated on first start and
//! persisted there, so a restart keeps the same trust root. The control plane
//! reuses [`DevCa::sign_csr`] to serve `CreateCertificate`.
//!
//! The first start is atomic, however many processes start on one fresh
//! directory at once: the one that takes the lock ([`LOCK_FILE`], `flock`)
//! writes the key and then the certificate, each to a temporary file of its
//! own that is renamed into place (the certificate's rename is the commit),
//! and the others, once they hold the lock, load what it wrote. A directory
//! that already holds both files is read without the lock (each file
//! appears whole), so a read-only one works.

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
/// Taken (`flock`) while the root is created; left in place.
pub const LOCK_FILE: &str = ".ca.lock";
/// Leaves are back-dated by this much to tolerate clock skew between nodes.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);
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
    #[error("locking {path}")]
    Lock {
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

    /// Load the root from `dir`, or generate and persist it there on first
    /// start (atomically, see the module docs).
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            return Self::load(&cert_path, &key_path);
        }
        std::fs::create_dir_all(dir).map_err(|source| CaError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let _lock = lock(&dir.join(LOCK_FILE))?;
        match (cert_path.exists(), key_path.exists()) {
            // Another process made it while we waited for the lock.
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => {
                let (pem, key) = generate_root()?;
                write_file(&key_path, &key.serialize_pem(), 0o600)?;
                write_file(&cert_path, &pem, 0o644)?;
                sync_dir(dir)?;
                Self::from_parts(&pem, key, &cert_path)
            }
            _ => Err(CaError::Incomplete(dir.to_owned())),
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let pem = read(cert_path)?;
        let key = KeyPair::from_pem(&read(key_path)?).map_err(|source| CaError::Invalid {
            path: key_path.to_owned(),
            source,
        })?;
        Self::from_parts(&pem, key, cert_path)
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

/// The parameters of a workload leaf for `id` (the control plane's
/// signer issues the same leaves from a plugged-in CA).
pub fn leaf_params(
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

/// A random positive 128-bit serial.
pub fn random_serial() -> SerialNumber {
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

/// An exclusive `flock` on `path` (created if need be), held until the
/// file is dropped. Blocks while another process or thread holds it.
fn lock(path: &Path) -> Result<std::fs::File, CaError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let wrap = |source| CaError::Lock {
        path: path.to_owned(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(wrap)?;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(wrap(e));
        }
    }
}

/// Writes `path` whole or not at all: a temporary file of this writer's
/// own in the same directory, synced, then renamed over `path`.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let wrap = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("ca");
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(wrap)
}

/// Makes the renames into `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), CaError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CaError::Write {
            path: dir.to_owned(),
            source,
        })
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

    /// Many threads start on one fresh directory at once: every one ends
    /// up with the root on disk (before, one died with "writing CA file
    /// …/root-key.pem: No such file or directory", or kept a root of its
    /// own that lost the race to the file).
    #[test]
    fn concurrent_first_starts_share_one_root() {
        for round in 0..5 {
            let dir = std::env::temp_dir().join(format!("devca-race-{}", rand::random::<u64>()));
            let n = 16;
            let start = std::sync::Arc::new(std::sync::Barrier::new(n));
            let threads: Vec<_> = (0..n)
                .map(|_| {
                    let (dir, start) = (dir.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        DevCa::load_or_create(&dir).map(|ca| ca.root())
                    })
                })
                .collect();
            let roots: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let on_disk = DevCa::load_or_create(&dir).unwrap().root();
            for r in roots {
                let r = r.unwrap_or_else(|e| panic!("round {round}: {}", crate_error_chain(&e)));
                assert_eq!(
                    r, on_disk,
                    "round {round}: a root that is not the one on disk"
                );
            }
            let left: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".tmp"))
                .collect();
            assert!(left.is_empty(), "temporary files left behind: {left:?}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// The same with processes: this test binary, re-run as
    /// [`child_initialises_the_ca`].
    #[test]
    fn concurrent_first_starts_of_processes_share_one_root() {
        let dir = std::env::temp_dir().join(format!("devca-procs-{}", rand::random::<u64>()));
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..8)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "ca::tests::child_initialises_the_ca",
                        "--ignored",
                        "--nocapture",
                        "--test-threads",
                        "1",
                    ])
                    .env(CHILD_DIR_ENV, &dir)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let on_disk = || DevCa::load_or_create(&dir).unwrap().root_pem().to_owned();
        for c in children {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let root = stdout
                .lines()
                .find_map(|l| l.split_once("root: ").map(|(_, r)| r))
                .expect("the child printed its root");
            assert_eq!(root, on_disk().replace('\n', ""));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const CHILD_DIR_ENV: &str = "HBONE_DEVCA_TEST_DIR";

    /// Run only by [`concurrent_first_starts_of_processes_share_one_root`].
    #[test]
    #[ignore = "a child of concurrent_first_starts_of_processes_share_one_root"]
    fn child_initialises_the_ca() {
        let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
            return;
        };
        let ca = DevCa::load_or_create(Path::new(&dir))
            .unwrap_or_else(|e| panic!("{}", crate_error_chain(&e)));
        println!("root: {}", ca.root_pem().replace('\n', ""));
    }

    fn crate_error_chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(c) = src {
            s.push_str(&format!(": {c}"));
            src = c.source();
        }
        s
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
