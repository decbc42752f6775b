//! The control plane's serving certificate, issued by the mesh CA (the
//! signer of workload certificates) at start-up, and again when the CA
//! changes so that the root it chains to has left the trust bundle
//! ([`keep_serving_cert`]). Through a rotation's middle step (the new key
//! signs, both roots trusted) it keeps the one from the old key: proxies
//! read the bundle for their control-plane connection at start, and one
//! started before the new root was added still reaches the control plane.
//! Clients verify it against the mesh roots and the name they dialled.
//!
//! It names what clients may dial: [`SERVING_DNS_NAMES`], `127.0.0.1`, the
//! Service's DNS names in a cluster ([`service_names`]), and any extra DNS
//! names or IP addresses given (`--serving-names`).

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

use crate::ca::keys::Signer;

/// Names the serving certificate always carries.
pub const SERVING_DNS_NAMES: &[&str] = &[
    "localhost",
    "control-plane",
    "control-plane.istio-system.svc",
    "istiod.istio-system.svc",
];
/// Each serving certificate is re-issued on start and on a CA change; this
/// bounds it.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ServingCertError {
    #[error("building the serving certificate")]
    Rcgen(#[source] rcgen::Error),
    #[error("serving name {0:?} is neither a DNS name nor an IP address")]
    BadName(String),
    #[error("building the TLS configuration")]
    Rustls(#[source] rustls::Error),
}

/// The DNS names of Service `service` in `namespace`, as pods dial it.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Pure: the subject alternative names for `extra` names (DNS names or IP
/// addresses) besides the defaults, without duplicates.
pub fn serving_sans(extra: &[String]) -> Result<Vec<SanType>, ServingCertError> {
    let mut names: Vec<SanType> = Vec::new();
    let mut push = |san: SanType| {
        if !names.contains(&san) {
            names.push(san);
        }
    };
    for n in SERVING_DNS_NAMES {
        push(SanType::DnsName(
            (*n).try_into().map_err(ServingCertError::Rcgen)?,
        ));
    }
    push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    for n in extra {
        let n = n.trim();
        if n.is_empty() {
            continue;
        }
        match n.parse::<IpAddr>() {
            Ok(ip) => push(SanType::IpAddress(ip)),
            Err(_) => {
                let bad = || ServingCertError::BadName(n.to_owned());
                rustls_pki_types::DnsName::try_from(n).map_err(|_| bad())?;
                push(SanType::DnsName(n.try_into().map_err(|_| bad())?));
            }
        }
    }
    Ok(names)
}

/// A fresh key and certificate for the gRPC port, signed by `signer`: the
/// chain (leaf, intermediates, root) and the key.
pub fn serving_cert(
    signer: &Signer,
    sans: &[SanType],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ServingCertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(ServingCertError::Rcgen)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans.to_vec();
    let now = SystemTime::now() - Duration::from_secs(60);
    params.not_before = now.into();
    params.not_after = (now + SERVING_VALIDITY).into();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, signer.issuer())
        .map_err(ServingCertError::Rcgen)?;
    let mut chain = vec![cert.der().clone()];
    chain.extend(signer.tail().iter().cloned());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((chain, key))
}

fn certified(
    signer: &Signer,
    sans: &[SanType],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, ServingCertError> {
    let (chain, key) = serving_cert(signer, sans)?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(ServingCertError::Rustls)
}

/// Pure: whether a serving certificate whose chain ends at `issued_root`
/// stays when the CA becomes `signer`: while that root is still trusted.
pub fn keep_serving_cert(issued_root: &CertificateDer<'_>, signer: &Signer) -> bool {
    signer
        .roots()
        .iter()
        .any(|r| r.as_ref() == issued_root.as_ref())
}

/// The current serving certificate, replaced when the CA changes.
#[derive(Debug)]
pub struct ServingCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("serving cert lock").clone())
    }
}

/// The TLS configuration of the gRPC port: the serving certificate (ALPN
/// `h2`, no client certificate: callers authenticate with a bearer token),
/// re-issued on each change of `signer` by a task (returned).
pub fn server_config(
    mut signer: watch::Receiver<Arc<Signer>>,
    extra_names: &[String],
) -> Result<(Arc<rustls::ServerConfig>, tokio::task::JoinHandle<()>), ServingCertError> {
    let sans = serving_sans(extra_names)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let first_signer = signer.borrow_and_update().clone();
    let first = certified(&first_signer, &sans, &provider)?;
    let mut issued_root = first_signer.tail().last().cloned();
    let current = Arc::new(ServingCert(RwLock::new(first)));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(ServingCertError::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(current.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let task = tokio::spawn(async move {
        while signer.changed().await.is_ok() {
            let s = signer.borrow_and_update().clone();
            if issued_root
                .as_ref()
                .is_some_and(|r| keep_serving_cert(r, &s))
            {
                tracing::info!("CA changed; the serving certificate's root is still trusted: kept");
                continue;
            }
            match certified(&s, &sans, &provider) {
                Ok(c) => {
                    *current.0.write().expect("serving cert lock") = c;
                    issued_root = s.tail().last().cloned();
                    tracing::info!("serving certificate re-issued by the new CA");
                }
                Err(e) => {
                    tracing::error!(error = %mesh_runtime::Chain(&e), "re-issuing the serving certificate");
                }
            }
        }
    });
    Ok((Arc::new(cfg), task))
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;

    use super::*;
    use crate::ca::keys::CaMaterial;

    #[test]
    fn sans_take_extra_dns_names_and_ips_once() {
        let extra = service_names("cp", "mesh")
            .into_iter()
            .chain(["10.0.0.7".into(), "localhost".into(), " ".into()])
            .collect::<Vec<_>>();
        let sans = serving_sans(&extra).unwrap();
        let dns = |n: &str| SanType::DnsName(n.try_into().unwrap());
        assert!(sans.contains(&dns("cp.mesh.svc")));
        assert!(sans.contains(&dns("cp.mesh.svc.cluster.local")));
        assert!(sans.contains(&SanType::IpAddress("10.0.0.7".parse().unwrap())));
        assert_eq!(sans.iter().filter(|s| **s == dns("localhost")).count(), 1);
        assert_eq!(sans.len(), SERVING_DNS_NAMES.len() + 1 + 3);
        assert!(matches!(
            serving_sans(&["bad name!".into()]),
            Err(ServingCertError::BadName(_))
        ));
    }

    #[test]
    fn the_serving_cert_stays_while_its_root_is_trusted() {
        let old = CaMaterial::generate().unwrap();
        let new = CaMaterial::generate().unwrap();
        let issued = Signer::new(&old).unwrap().tail().last().unwrap().clone();
        let step1 = old.with_root(&new);
        let step2 = step1.signing_with(&new);
        let step3 = step2.trusting_only(&new);
        for (m, keep) in [
            (&step1, true),
            (&step2, true),
            (&step3, false),
            (&new, false),
        ] {
            assert_eq!(keep_serving_cert(&issued, &Signer::new(m).unwrap()), keep);
        }
    }

    #[test]
    fn the_serving_cert_verifies_for_each_name() {
        let m = CaMaterial::generate().unwrap();
        let signer = Signer::new(&m).unwrap();
        let sans = serving_sans(&["cp.mesh.svc".into(), "10.0.0.7".into()]).unwrap();
        let (chain, _) = serving_cert(&signer, &sans).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(signer.roots()[0].clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let now = rustls_pki_types::UnixTime::now();
        for name in ["cp.mesh.svc", "10.0.0.7", "localhost", "127.0.0.1"] {
            let sn = rustls_pki_types::ServerName::try_from(name).unwrap();
            assert!(
                v.verify_server_cert(&chain[0], &chain[1..], &sn, &[], now)
                    .is_ok(),
                "{name}"
            );
        }
        let other = rustls_pki_types::ServerName::try_from("cp.other.svc").unwrap();
        assert!(v
            .verify_server_cert(&chain[0], &chain[1..], &other, &[], now)
            .is_err());
    }
}
