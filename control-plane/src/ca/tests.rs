use std::collections::BTreeMap;

use prost_types::{value::Kind, Struct, Value};
use rustls_pki_types::pem::PemObject;

use super::*;

const MESH: &str = "nodes: [{name: node1, ip: 10.0.0.1}, {name: node2, ip: 10.0.0.2}]\n\
    namespaces: [{name: shop, labels: {istio.io/dataplane-mode: ambient}}]\n\
    workloads:\n\
    - {name: a, namespace: shop, serviceAccount: cart, ip: 10.1.1.1, node: node1}\n\
    - {name: b, namespace: shop, serviceAccount: pay, ip: 10.1.2.1, node: node2}\n";

fn snap() -> Snapshot {
    mesh_model::config::parse(MESH).unwrap()
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn node(n: &str) -> NodeName {
    NodeName(n.into())
}

fn node_caller(n: &str) -> Caller {
    Caller::Node(node(n))
}

#[test]
fn authorize_table() {
    let cases: &[(&str, &str, Result<(), &str>)] = &[
        ("node1", "spiffe://cluster.local/ns/shop/sa/cart", Ok(())),
        ("node2", "spiffe://cluster.local/ns/shop/sa/pay", Ok(())),
        (
            "node1",
            "spiffe://cluster.local/ns/shop/sa/pay",
            Err("not_authorized"),
        ),
        (
            "node2",
            "spiffe://cluster.local/ns/shop/sa/cart",
            Err("not_authorized"),
        ),
        (
            "node3",
            "spiffe://cluster.local/ns/shop/sa/cart",
            Err("not_authorized"),
        ),
        (
            "node1",
            "spiffe://other.td/ns/shop/sa/cart",
            Err("not_authorized"),
        ),
        (
            "node1",
            "spiffe://cluster.local/ns/shop/sa/nobody",
            Err("not_authorized"),
        ),
    ];
    let s = snap();
    for (n, i, want) in cases {
        let got = authorize(&s, &node(n), &id(i)).map_err(|e| e.reason());
        assert_eq!(got, *want, "{n} asks for {i}");
    }
}

fn request(identity: Option<&str>, csr: &str) -> IstioCertificateRequest {
    IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: 3600,
        metadata: identity.map(|i| Struct {
            fields: BTreeMap::from([(
                proto::IMPERSONATED_IDENTITY_KEY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(i.to_owned())),
                },
            )]),
        }),
    }
}

#[test]
fn requested_identity_table() {
    let cases: &[(Option<&str>, Result<&str, &str>)] = &[
        (
            Some("spiffe://cluster.local/ns/shop/sa/cart"),
            Ok("spiffe://cluster.local/ns/shop/sa/cart"),
        ),
        (Some("cluster.local/ns/shop/sa/cart"), Err("bad_identity")),
        (None, Err("bad_identity")),
    ];
    for (given, want) in cases {
        let got = requested_identity(&request(*given, ""))
            .map(|i| i.to_string())
            .map_err(|e| e.reason());
        assert_eq!(got, want.map(String::from), "{given:?}");
    }
}

#[test]
fn validity_is_clamped() {
    let cases = [
        (0, MAX_VALIDITY),
        (-5, MAX_VALIDITY),
        (1, MIN_VALIDITY),
        (3600, Duration::from_secs(3600)),
        (10 * 24 * 3600, MAX_VALIDITY),
    ];
    for (secs, want) in cases {
        assert_eq!(validity(secs, MIN_VALIDITY), want, "{secs}");
    }
    // A lower floor (--min-cert-ttl) lets short lifetimes through, never
    // a longer one than the maximum.
    assert_eq!(validity(2, Duration::from_secs(1)), Duration::from_secs(2));
    assert_eq!(validity(1, Duration::ZERO), Duration::from_secs(1));
    assert_eq!(validity(7200, 10 * MAX_VALIDITY), MAX_VALIDITY);
}

pub(crate) fn csr_pem() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

fn service() -> CaService {
    let (_tx, rx) = watch::channel(None);
    let signer = keys::Signer::new(&keys::CaMaterial::generate().unwrap()).unwrap();
    CaService {
        signer: watch::channel(Arc::new(signer)).1,
        auth: Arc::new(crate::auth::Authenticator::new(
            Default::default(),
            Arc::default(),
        )),
        snapshots: rx,
        metrics: Arc::default(),
        min_validity: MIN_VALIDITY,
    }
}

#[test]
fn sign_returns_leaf_first_for_the_requested_identity() {
    let svc = service();
    let s = snap();
    let req = request(Some("spiffe://cluster.local/ns/shop/sa/cart"), &csr_pem());
    let chain = svc.sign(Some(&s), &node_caller("node1"), &req).unwrap();
    assert_eq!(chain.len(), 2);
    let leaf = rustls_pki_types::CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    let got = hbone::cert::identity_from_der(&leaf).unwrap();
    assert_eq!(got, id("spiffe://cluster.local/ns/shop/sa/cart"));
    assert_eq!(chain[1], svc.signer.borrow().roots_pem());
}

#[test]
fn sign_refusals() {
    let svc = service();
    let s = snap();
    let cart = Some("spiffe://cluster.local/ns/shop/sa/cart");
    let garbage_pem =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    let cases: &[(
        &str,
        Option<&Snapshot>,
        IstioCertificateRequest,
        &str,
        tonic::Code,
    )] = &[
        (
            "other node's pod",
            Some(&s),
            request(Some("spiffe://cluster.local/ns/shop/sa/pay"), &csr_pem()),
            "not_authorized",
            tonic::Code::PermissionDenied,
        ),
        (
            "no identity, none in the CSR either",
            Some(&s),
            request(None, &csr_pem()),
            "bad_identity",
            tonic::Code::InvalidArgument,
        ),
        (
            "no identity; the CSR names another node's pod",
            Some(&s),
            request(None, &csr_pem_for("spiffe://cluster.local/ns/shop/sa/pay")),
            "not_authorized",
            tonic::Code::PermissionDenied,
        ),
        (
            "not PEM",
            Some(&s),
            request(cart, "hello"),
            "bad_csr",
            tonic::Code::InvalidArgument,
        ),
        (
            "PEM of garbage",
            Some(&s),
            request(cart, garbage_pem),
            "bad_csr",
            tonic::Code::InvalidArgument,
        ),
        (
            "no config yet",
            None,
            request(cart, &csr_pem()),
            "not_ready",
            tonic::Code::Unavailable,
        ),
    ];
    for (name, snap, req, reason, code) in cases {
        let err = svc.sign(*snap, &node_caller("node1"), req).unwrap_err();
        assert_eq!(err.reason(), *reason, "{name}");
        assert_eq!(err.to_status().code(), *code, "{name}");
    }
}

#[test]
fn an_identity_caller_gets_its_own_identity_only() {
    let svc = service();
    let s = snap();
    let wp = "spiffe://cluster.local/ns/shop/sa/waypoint";
    let caller = Caller::Identity(id(wp));
    let leaf_of = |chain: Vec<String>| {
        let leaf = rustls_pki_types::CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
        hbone::cert::identity_from_der(&leaf).unwrap()
    };
    // No ImpersonatedIdentity: the caller's own (DESIGN §6).
    let chain = svc
        .sign(Some(&s), &caller, &request(None, &csr_pem()))
        .unwrap();
    assert_eq!(leaf_of(chain), id(wp));
    // Naming itself is the same.
    let chain = svc
        .sign(Some(&s), &caller, &request(Some(wp), &csr_pem()))
        .unwrap();
    assert_eq!(leaf_of(chain), id(wp));
    // Anyone else, even a workload's: refused.
    let err = svc
        .sign(
            Some(&s),
            &caller,
            &request(Some("spiffe://cluster.local/ns/shop/sa/cart"), &csr_pem()),
        )
        .unwrap_err();
    assert_eq!(err.reason(), "not_authorized");
    assert_eq!(err.to_status().code(), tonic::Code::PermissionDenied);
    // An identity outside the mesh's trust domain.
    let foreign = Caller::Identity(id("spiffe://other.td/ns/shop/sa/waypoint"));
    let err = svc
        .sign(Some(&s), &foreign, &request(None, &csr_pem()))
        .unwrap_err();
    assert_eq!(err.reason(), "not_authorized");
    // A node naming no one gets the CSR's identity, if it runs there.
    let err = svc
        .sign(Some(&s), &node_caller("node1"), &request(None, &csr_pem()))
        .unwrap_err();
    assert_eq!(err.reason(), "bad_identity");
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    let chain = svc
        .sign(
            Some(&s),
            &node_caller("node1"),
            &request(None, &csr_pem_for(cart)),
        )
        .unwrap();
    assert_eq!(leaf_of(chain), id(cart));
}

fn csr_pem_for(identity: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(identity).unwrap(),
    )];
    params.serialize_request(&key).unwrap().pem().unwrap()
}
