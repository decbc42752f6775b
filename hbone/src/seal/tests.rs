use std::io::{Read, Write};
use std::sync::Arc;

use proptest::prelude::*;
use rustls::crypto::cipher::{AeadKey, Iv, OutboundChunks, OutboundPlainMessage};
use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, ContentType, ProtocolVersion, SupportedCipherSuite};

use super::{for_each_slice, ring_provider, SealingAead};

fn flatten(chunks: &OutboundChunks<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    for_each_slice(chunks, |s| out.extend_from_slice(s));
    out
}

#[test]
fn for_each_slice_yields_exactly_the_selected_range() {
    let parts: [&[u8]; 3] = [b"abc", b"", b"defgh"];
    // (start, end, expected)
    let cases: [(usize, usize, &[u8]); 7] = [
        (0, 8, b"abcdefgh"),
        (1, 8, b"bcdefgh"),
        (3, 8, b"defgh"),
        (2, 4, b"cd"),
        (4, 6, b"ef"),
        (5, 5, b""),
        (0, 3, b"abc"),
    ];
    for (start, end, want) in cases {
        let chunks = OutboundChunks::Multiple {
            chunks: &parts,
            start,
            end,
        };
        assert_eq!(flatten(&chunks), want, "start {start}, end {end}");
        assert_eq!(
            flatten(&chunks),
            chunks.to_vec(),
            "start {start}, end {end}"
        );
    }
    assert_eq!(flatten(&OutboundChunks::Single(b"xyz")), b"xyz");
}

/// The ring suite and our wrapper of it, for a suite with 32-byte keys
/// (the only length a test can build an `AeadKey` of).
fn suites(suite: CipherSuite) -> (&'static rustls::Tls13CipherSuite, SealingAead) {
    let ring = rustls::crypto::ring::default_provider()
        .cipher_suites
        .into_iter()
        .find_map(|s| match s {
            SupportedCipherSuite::Tls13(t) if t.common.suite == suite => Some(t),
            _ => None,
        })
        .expect("ring has the suite");
    let alg = super::ring_algorithm(suite).expect("known suite");
    (
        ring,
        SealingAead {
            ring: ring.aead_alg,
            alg,
        },
    )
}

proptest! {
    /// Same key, IV and sequence number: our records are byte for byte
    /// ring's, for any plaintext however it is split into chunks, and ring
    /// opens them.
    #[test]
    fn sealed_records_match_ring(
        key in any::<[u8; 32]>(),
        iv in any::<[u8; 12]>(),
        seq in any::<u64>(),
        data in proptest::collection::vec(any::<u8>(), 0..=16384),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
        trim in (any::<usize>(), any::<usize>()),
        chacha in any::<bool>(),
        typ in prop_oneof![
            Just(ContentType::ApplicationData),
            Just(ContentType::Handshake),
            Just(ContentType::Alert),
        ],
    ) {
        let suite = if chacha {
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        } else {
            CipherSuite::TLS13_AES_256_GCM_SHA384
        };
        let (ring, ours) = suites(suite);
        use rustls::crypto::cipher::Tls13AeadAlgorithm;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        bounds.push(0);
        bounds.push(data.len());
        bounds.sort_unstable();
        let parts: Vec<&[u8]> = bounds.windows(2).map(|w| &data[w[0]..w[1]]).collect();
        let start = trim.0 % (data.len() + 1);
        let end = start + trim.1 % (data.len() - start + 1);
        let chunks = OutboundChunks::Multiple { chunks: &parts, start, end };
        let msg = || OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: chunks.clone(),
        };
        let mut theirs = ring.aead_alg.encrypter(AeadKey::from(key), Iv::from(iv));
        let mut mine = ours.encrypter(AeadKey::from(key), Iv::from(iv));
        prop_assert_eq!(
            mine.encrypted_payload_len(end - start),
            theirs.encrypted_payload_len(end - start)
        );
        let a = theirs.encrypt(msg(), seq).expect("ring seals").encode();
        let b = mine.encrypt(msg(), seq).expect("we seal").encode();
        prop_assert_eq!(&a, &b);
        // And ring opens it, back to the selected plaintext.
        let mut wire = b.clone();
        let opened = ours
            .decrypter(AeadKey::from(key), Iv::from(iv))
            .decrypt(
                rustls::crypto::cipher::InboundOpaqueMessage::new(
                    ContentType::ApplicationData,
                    ProtocolVersion::TLSv1_2,
                    &mut wire[5..],
                ),
                seq,
            )
            .expect("ring opens our record");
        prop_assert_eq!(opened.typ, typ);
        prop_assert_eq!(opened.payload, &data[start..end]);
    }
}

#[test]
fn every_tls13_suite_seals_through_the_wrapper() {
    let p = ring_provider();
    let mut wrapped = 0;
    for s in &p.cipher_suites {
        // Refutable once rustls's `tls12` feature is on.
        #[allow(irrefutable_let_patterns, reason = "refutable with tls12")]
        let SupportedCipherSuite::Tls13(t) = s
        else {
            continue;
        };
        let (ring, _) = suites(t.common.suite);
        let ptr = |a: &dyn rustls::crypto::cipher::Tls13AeadAlgorithm| {
            a as *const dyn rustls::crypto::cipher::Tls13AeadAlgorithm as *const ()
        };
        assert_ne!(
            ptr(t.aead_alg),
            ptr(ring.aead_alg),
            "{:?} still seals with ring's code",
            t.common.suite
        );
        assert!(std::ptr::eq(t.hkdf_provider, ring.hkdf_provider));
        wrapped += 1;
    }
    assert_eq!(wrapped, 3, "ring offers three TLS 1.3 suites");
}

/// One provider restricted to `suite`, optionally with our sealing.
fn only(suite: CipherSuite, sealing: bool) -> Arc<CryptoProvider> {
    let mut p = if sealing {
        ring_provider()
    } else {
        rustls::crypto::ring::default_provider()
    };
    p.cipher_suites.retain(|s| s.suite() == suite);
    assert_eq!(p.cipher_suites.len(), 1);
    Arc::new(p)
}

/// Moves every TLS byte `from` has to send into `to`; false if none.
fn transfer(from: &mut rustls::Connection, to: &mut rustls::Connection) -> bool {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).expect("write records");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read records");
        to.process_new_packets().expect("records accepted");
    }
    !buf.is_empty()
}

/// Moves TLS bytes between the two ends until neither has anything to send.
fn pump(c: &mut rustls::Connection, s: &mut rustls::Connection) {
    while transfer(c, s) | transfer(s, c) {}
}

fn read_all(r: &mut impl Read, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    r.read_exact(&mut out).expect("plaintext");
    out
}

/// A real TLS 1.3 session per suite between a sealing end and a stock ring
/// end, each way round: the handshake completes and 200 KB cross each
/// direction intact. This covers AES-128-GCM, whose 16-byte keys a unit test
/// cannot build.
#[test]
fn stock_rustls_peers_read_our_records() {
    let cert = rcgen::generate_simple_self_signed(vec!["mesh.test".into()]).expect("cert");
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).expect("root");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for suite in [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        for client_seals in [true, false] {
            let client = rustls::ClientConfig::builder_with_provider(only(suite, client_seals))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls13")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let server = rustls::ServerConfig::builder_with_provider(only(suite, !client_seals))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls13")
                .with_no_client_auth()
                .with_single_cert(vec![der.clone()], key.clone_key())
                .expect("server cert");
            let mut c = rustls::Connection::from(
                rustls::ClientConnection::new(
                    Arc::new(client),
                    "mesh.test".try_into().expect("name"),
                )
                .expect("client"),
            );
            let mut s = rustls::Connection::from(
                rustls::ServerConnection::new(Arc::new(server)).expect("server"),
            );
            pump(&mut c, &mut s);
            assert_eq!(c.negotiated_cipher_suite().map(|x| x.suite()), Some(suite));
            let ctx = format!("{suite:?}, client seals: {client_seals}");

            // In pieces: rustls buffers at most 64 KiB of records per end.
            let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
            for piece in data.chunks(10_000) {
                c.writer().write_all(piece).expect("client plaintext");
                pump(&mut c, &mut s);
                at_server.extend(read_all(&mut s.reader(), piece.len()));
                s.writer().write_all(piece).expect("server plaintext");
                pump(&mut c, &mut s);
                at_client.extend(read_all(&mut c.reader(), piece.len()));
            }
            assert!(at_server == data, "to server, {ctx}");
            assert!(at_client == data, "to client, {ctx}");
        }
    }
}
