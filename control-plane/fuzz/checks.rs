//! The checks of the control plane's fuzz targets, one function per
//! target: run by cargo-fuzz (`fuzz_targets/<target>.rs`, nightly,
//! `scripts/fuzz`) and on stable by `control-plane/tests/fuzz.rs` (each
//! corpus replayed, then a bounded proptest loop of arbitrary bytes and
//! mutated seeds; see the `fuzz-replay` crate).
#![allow(dead_code, reason = "each fuzz binary uses one check")]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use control_plane::auth::{Authenticator, Caller, NodeName};
use control_plane::ca::keys::{CaMaterial, Signer};
use control_plane::ca::CaService;
use hbone::SpiffeId;
use mesh_model::state::Snapshot;
use prost_types::{value::Kind, Struct, Value};
use proto::ca::IstioCertificateRequest;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::FromDer;

/// The mesh the CA serves: `cart` runs on node1, `pay` on node2.
pub const MESH: &str = "nodes: [{name: node1, ip: 10.0.0.1}, {name: node2, ip: 10.0.0.2}]\n\
    namespaces: [{name: shop, labels: {istio.io/dataplane-mode: ambient}}]\n\
    workloads:\n\
    - {name: a, namespace: shop, serviceAccount: cart, ip: 10.1.1.1, node: node1}\n\
    - {name: b, namespace: shop, serviceAccount: pay, ip: 10.1.2.1, node: node2}\n";
/// The one identity node1 may obtain.
pub const NODE1_IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/cart";
/// A caller with an identity of its own (a waypoint's token).
pub const OWN_IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";

struct Fixture {
    service: CaService,
    snapshot: Snapshot,
    /// A real CSR (PEM) from the CA client, naming another identity.
    csr_pem: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (_tx, rx) = tokio::sync::watch::channel(None);
        let service = CaService {
            signer: tokio::sync::watch::channel(Arc::new(
                Signer::new(&CaMaterial::generate().expect("CA material")).expect("signer"),
            ))
            .1,
            auth: Arc::new(Authenticator::new(Default::default(), Arc::default())),
            snapshots: rx,
            metrics: Arc::default(),
            min_validity: control_plane::ca::MIN_VALIDITY,
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let other: SpiffeId = "spiffe://cluster.local/ns/shop/sa/pay".parse().expect("id");
        Fixture {
            service,
            snapshot: mesh_model::config::parse(MESH).expect("mesh"),
            csr_pem: mesh_runtime::xds::ca::csr_pem(&other, &key).expect("csr"),
        }
    })
}

fn pem_wrap(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.to_vec()))
}

fn request(csr: String, identity: Option<String>) -> IstioCertificateRequest {
    IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: identity.map(|i| Struct {
            fields: BTreeMap::from([(
                proto::IMPERSONATED_IDENTITY_KEY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(i)),
                },
            )]),
        }),
    }
}

/// The CA's `CreateCertificate` past authentication, on hostile input.
///
/// The first byte chooses the caller (bit 0: node1, or a caller with an
/// identity of its own) and what the rest is (bits 1-2): the CSR's DER,
/// the CSR's PEM text, the requested identity (with a real CSR), or the
/// CSR's DER with no identity named. Never panics; whatever it signs is a
/// two-certificate chain ending in the CA's root whose leaf names exactly
/// the one identity that caller may have, as its only subject alternative
/// name, is no CA, and certifies the CSR's own key.
pub fn csr(data: &[u8]) {
    csr_signed(data);
}

/// [`csr`], saying whether the CA signed.
pub fn csr_signed(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let f = fixture();
    let (caller, allowed) = if mode & 1 == 0 {
        (Caller::Node(NodeName("node1".into())), NODE1_IDENTITY)
    } else {
        (
            Caller::Identity(OWN_IDENTITY.parse().expect("id")),
            OWN_IDENTITY,
        )
    };
    let (csr_pem, identity) = match (mode >> 1) & 3 {
        0 => (pem_wrap(rest), Some(allowed.to_owned())),
        1 => (
            String::from_utf8_lossy(rest).into_owned(),
            Some(allowed.to_owned()),
        ),
        2 => (
            f.csr_pem.clone(),
            Some(String::from_utf8_lossy(rest).into_owned()),
        ),
        _ => (pem_wrap(rest), None),
    };
    let req = request(csr_pem, identity);
    let chain = match f.service.sign(Some(&f.snapshot), &caller, &req) {
        Ok(chain) => chain,
        Err(refusal) => {
            assert!([
                "bad_identity",
                "not_authorized",
                "bad_csr",
                "not_ready",
                "internal"
            ]
            .contains(&refusal.reason()));
            let _ = refusal.to_status();
            return false;
        }
    };
    assert_eq!(chain.len(), 2, "leaf and root");
    let ders: Vec<Vec<u8>> = chain
        .iter()
        .map(|p| pem::parse(p).expect("issued PEM").into_contents())
        .collect();
    assert_eq!(
        ders[1],
        f.service.signer.borrow().roots()[0].as_ref(),
        "the chain ends in our root"
    );
    let id = hbone::cert::identity_from_der(&ders[0]).expect("the leaf has one URI SAN");
    assert_eq!(
        id.to_string(),
        allowed,
        "signed an identity the caller may not have"
    );
    let (_, leaf) = x509_parser::parse_x509_certificate(&ders[0]).expect("leaf parses");
    let san = leaf
        .subject_alternative_name()
        .expect("SAN extension parses")
        .expect("SAN extension");
    assert_eq!(san.value.general_names.len(), 1, "one name only: {san:?}");
    let ca = leaf.basic_constraints().expect("basic constraints parse");
    assert!(ca.is_none_or(|b| !b.value.ca), "a leaf must not be a CA");
    let csr_der =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(req.csr.as_bytes())
            .expect("a signed CSR was PEM");
    let (_, parsed) =
        x509_parser::certification_request::X509CertificationRequest::from_der(csr_der.as_ref())
            .expect("a signed CSR parses");
    assert_eq!(
        leaf.public_key().raw,
        parsed.certification_request_info.subject_pki.raw,
        "the leaf certifies the CSR's key"
    );
    true
}
