//! The cargo-fuzz targets of `control-plane/fuzz` on stable: each corpus
//! replayed and a bounded loop of arbitrary and mutated inputs per target
//! (the `fuzz-replay` crate). libFuzzer runs stay in `scripts/fuzz`.
//!
//! The seeds are real CSRs; `write_seeds` (ignored) makes them anew:
//! `cargo test -p control-plane --test fuzz -- --ignored write_seeds`.

#[path = "../fuzz/checks.rs"]
mod checks;

fuzz_replay::targets! { csr }

/// The seeds reach the signer: the ones a caller may have are signed (and
/// checked), the others refused.
#[test]
fn the_seeds_reach_the_signer() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let signed: Vec<String> = fuzz_replay::corpus(dir, "csr")
        .into_iter()
        .filter(|(_, bytes)| checks::csr_signed(bytes))
        .map(|(path, _)| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        signed,
        [
            "node-asks-own",
            "node-der",
            "node-greedy-der",
            "node-pem",
            "own-der",
            "own-greedy-der",
            "own-names-none",
        ]
    );
}

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

fn csr_der(params: CertificateParams, key: &KeyPair) -> Vec<u8> {
    params.serialize_request(key).unwrap().der().to_vec()
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    v
}

#[test]
#[ignore = "writes control-plane/fuzz/corpus/csr"]
fn write_seeds() {
    let p256 = || KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let uri = |s: &str| SanType::URI(s.try_into().unwrap());
    let mut plain = CertificateParams::default();
    plain.subject_alt_names = vec![uri("spiffe://cluster.local/ns/shop/sa/pay")];
    let plain_der = csr_der(plain.clone(), &p256());
    // Asks for more than one name, and to be a CA.
    let mut greedy = CertificateParams::default();
    greedy.subject_alt_names = vec![
        uri(checks::NODE1_IDENTITY),
        uri("spiffe://cluster.local/ns/kube-system/sa/admin"),
        SanType::DnsName("kubernetes.default.svc".try_into().unwrap()),
    ];
    greedy.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let greedy_der = csr_der(greedy, &p256());
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let p384_der = csr_der(plain.clone(), &p384);
    let pem_text = plain.serialize_request(&p256()).unwrap().pem().unwrap();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("node-der", with_mode(0, &plain_der)),
        ("own-der", with_mode(1, &plain_der)),
        ("node-greedy-der", with_mode(0, &greedy_der)),
        ("own-greedy-der", with_mode(1, &greedy_der)),
        ("node-p384-der", with_mode(0, &p384_der)),
        ("node-pem", with_mode(2, pem_text.as_bytes())),
        (
            "node-asks-other",
            with_mode(4, b"spiffe://cluster.local/ns/shop/sa/pay"),
        ),
        (
            "node-asks-own",
            with_mode(4, checks::NODE1_IDENTITY.as_bytes()),
        ),
        (
            "own-asks-other",
            with_mode(5, checks::NODE1_IDENTITY.as_bytes()),
        ),
        ("node-names-none", with_mode(6, &plain_der)),
        ("own-names-none", with_mode(7, &greedy_der)),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/csr");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
