use std::sync::Arc;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, SanType};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::UnixTime;

use super::*;

fn id() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

fn csr() -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        rcgen::string::Ia5String::try_from(id().to_uri()).unwrap(),
    )];
    params.serialize_request(&key).unwrap().der().to_vec()
}

/// Whether a peer trusting `bundle` (PEM) accepts `chain` (leaf first) as
/// a client certificate, as a ztunnel does an inbound HBONE peer.
fn accepts(bundle: &str, chain: &[CertificateDer<'static>]) -> bool {
    let mut store = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        store.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let v = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .unwrap();
    v.verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .is_ok()
}

fn leaf(m: &CaMaterial) -> Vec<CertificateDer<'static>> {
    Signer::new(m)
        .unwrap()
        .sign_csr(&csr(), &id(), Duration::from_secs(3600))
        .unwrap()
}

/// A user's own root, and an intermediate under it in plug-in layout.
fn user_intermediate() -> (CaMaterial, String) {
    let root = CaMaterial::generate().unwrap();
    let root_key = KeyPair::from_pem(&root.ca_key).unwrap();
    let root_der = CertificateDer::from_pem_slice(root.ca_cert.as_bytes()).unwrap();
    let root_issuer = Issuer::from_ca_cert_der(&root_der, root_key).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "cluster-1 intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    let inter = params.signed_by(&key, &root_issuer).unwrap();
    let m = CaMaterial {
        ca_cert: inter.pem(),
        ca_key: key.serialize_pem(),
        cert_chain: format!("{}{}", inter.pem(), root.ca_cert),
        root_cert: root.ca_cert.clone(),
    };
    (m, root.ca_cert)
}

#[test]
fn a_generated_root_signs_leaf_then_root() {
    let m = CaMaterial::generate().unwrap();
    let s = Signer::new(&m).unwrap();
    let chain = s
        .sign_csr(&csr(), &id(), Duration::from_secs(3600))
        .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(hbone::cert::identity_from_der(&chain[0]).unwrap(), id());
    assert_eq!(pem(&chain[1]), m.root_cert);
    assert_eq!(s.roots_pem(), m.root_cert);
    assert!(accepts(&m.root_cert, &chain));
    assert!(!accepts(&CaMaterial::generate().unwrap().root_cert, &chain));
}

#[test]
fn a_plugged_in_intermediate_signs_leaf_intermediate_root() {
    let (m, root) = user_intermediate();
    let chain = leaf(&m);
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(pem(&chain[1]), m.ca_cert);
    assert_eq!(pem(&chain[2]), root);
    assert!(accepts(&root, &chain));
    // cert-chain.pem may also omit the intermediate and the root.
    let bare = CaMaterial {
        cert_chain: String::new(),
        ..m.clone()
    };
    assert_eq!(leaf(&bare).len(), 3);
    assert!(accepts(&root, &leaf(&bare)));
}

#[test]
fn bad_material_is_refused() {
    let (inter, _) = user_intermediate();
    let other = CaMaterial::generate().unwrap();
    let leaf_cert = {
        // A non-CA certificate with its own key.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec!["x".into()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let c = p.self_signed(&key).unwrap();
        CaMaterial {
            ca_cert: c.pem(),
            ca_key: key.serialize_pem(),
            cert_chain: String::new(),
            root_cert: c.pem(),
        }
    };
    let cases: Vec<(&str, CaMaterial, &str)> = vec![
        (
            "another key",
            CaMaterial {
                ca_key: other.ca_key.clone(),
                ..inter.clone()
            },
            "KeyMismatch",
        ),
        (
            "the intermediate's root is not in the bundle",
            CaMaterial {
                root_cert: other.root_cert.clone(),
                ..inter.clone()
            },
            "NoAnchor",
        ),
        ("not a CA", leaf_cert, "NotCa"),
        (
            "no root",
            CaMaterial {
                root_cert: String::new(),
                ..other.clone()
            },
            "NoCert",
        ),
        (
            "garbage key",
            CaMaterial {
                ca_key: "nope".into(),
                ..other.clone()
            },
            "BadKey",
        ),
    ];
    for (name, m, want) in cases {
        let err = Signer::new(&m).unwrap_err();
        assert!(format!("{err:?}").starts_with(want), "{name}: {err:?}");
    }
}

/// A root rotation, as a proxy sees it: its bundle is the ConfigMap's at
/// the time. Each step keeps every live peer's certificate acceptable to
/// every proxy that has the previous step's bundle.
#[test]
fn rotation_keeps_both_roots_trusted_during_the_change() {
    let old = CaMaterial::generate().unwrap();
    let new = CaMaterial::generate().unwrap();
    let old_leaf = leaf(&old);

    // Step 1: the new root joins the bundle; the old key still signs.
    let step1 = old.with_root(&new);
    let s1 = Signer::new(&step1).unwrap();
    assert_eq!(s1.roots().len(), 2);
    let leaf1 = leaf(&step1);
    assert!(accepts(&old.root_cert, &leaf1), "a proxy not yet updated");
    assert!(accepts(&step1.root_cert, &old_leaf));

    // Step 2: the new key signs; the bundle keeps both.
    let step2 = step1.signing_with(&new);
    let s2 = Signer::new(&step2).unwrap();
    assert_eq!(s2.roots_pem(), step1.root_cert, "same bundle as step 1");
    let leaf2 = leaf(&step2);
    assert_eq!(pem(&leaf2[1]), new.root_cert, "chain ends at the new root");
    assert!(accepts(&step1.root_cert, &leaf2));
    assert!(
        accepts(&step1.root_cert, &old_leaf),
        "old peers still trusted"
    );
    assert!(
        !accepts(&old.root_cert, &leaf2),
        "why step 1 must reach every proxy before step 2"
    );

    // Step 3: the old root leaves the bundle.
    let step3 = step2.trusting_only(&new);
    let s3 = Signer::new(&step3).unwrap();
    assert_eq!(s3.roots_pem(), new.root_cert);
    assert!(accepts(&step3.root_cert, &leaf2));
    assert!(!accepts(&step3.root_cert, &old_leaf));
}

#[test]
fn merge_bundles_keeps_order_and_drops_duplicates() {
    let a = CaMaterial::generate().unwrap().root_cert;
    let b = CaMaterial::generate().unwrap().root_cert;
    assert_eq!(merge_bundles(&a, &b), format!("{a}{b}"));
    assert_eq!(merge_bundles(&format!("{a}{b}"), &a), format!("{a}{b}"));
    assert_eq!(merge_bundles(&a, ""), a);
}

#[test]
fn csr_identity_reads_the_uri_san() {
    assert_eq!(csr_identity(&csr()), Some(id()));
    assert_eq!(csr_identity(b"junk"), None);
}
