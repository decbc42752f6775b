//! TLS 1.3 record sealing without glibc's aliased `rep movsb`.
//!
//! rustls's ring provider seals a record in place: it copies the plaintext
//! into a fresh record buffer, five bytes past the buffer's start (the record
//! header goes there), then encrypts that buffer. On x86-64 glibc copies of
//! 4 KiB and more use `rep movsb`. On this project's AMD EPYC machines
//! `rep movsb` runs at about 2 GB/s when the destination is 1 to 63 bytes
//! past the source modulo 4 KiB, against 30–40 GB/s otherwise, and the record
//! copy lands right there: page-aligned buffers on both sides, plus the
//! 5-byte header (and h2's 9-byte frame header) between them. That copy was
//! 17% of both ztunnels' CPU under bulk traffic (benches/README.md, "Sealing
//! records").
//!
//! [`SealingAead`] wraps each ring TLS 1.3 AEAD. Opening records, key sizes
//! and key export go to ring's implementation unchanged; sealing does exactly
//! what ring's sealer does (same nonce, additional data, inner content type
//! and tag, so the bytes on the wire are identical), except that the
//! plaintext is copied in pieces of [`COPY_PIECE`] bytes. Copies that short
//! take glibc's vector loop, which has no such cliff.

use rustls::crypto::cipher::{
    make_tls13_aad, AeadKey, Iv, MessageDecrypter, MessageEncrypter, Nonce, OutboundChunks,
    OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload, Tls13AeadAlgorithm,
    UnsupportedOperationError,
};
use rustls::crypto::CryptoProvider;
use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite};

/// Largest single copy into a record: below glibc's smallest `rep movsb`
/// threshold on x86-64 (2,048 bytes with SSE2 only; 2,112 or more on CPUs
/// with fast short `rep movsb`).
pub const COPY_PIECE: usize = 1024;

/// A TLS 1.3 AEAD that opens with ring's implementation and seals with
/// [`Sealer`].
pub struct SealingAead {
    ring: &'static dyn Tls13AeadAlgorithm,
    alg: &'static ring::aead::Algorithm,
}

impl Tls13AeadAlgorithm for SealingAead {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        // The key length comes from `key_len()` (ring's), so it matches
        // `alg`; should it ever not, ring's own sealer decides what to do.
        match ring::aead::UnboundKey::new(self.alg, key.as_ref()) {
            Ok(k) => Box::new(Sealer {
                key: ring::aead::LessSafeKey::new(k),
                iv,
            }),
            Err(_) => self.ring.encrypter(key, iv),
        }
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        self.ring.decrypter(key, iv)
    }

    fn key_len(&self) -> usize {
        self.ring.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        self.ring.extract_keys(key, iv)
    }

    fn fips(&self) -> bool {
        self.ring.fips()
    }
}

/// Seals TLS 1.3 records (RFC 8446 §5.2): plaintext, then the inner content
/// type, encrypted under the per-record nonce with the record header as
/// additional data.
pub struct Sealer {
    key: ring::aead::LessSafeKey,
    iv: Iv,
}

impl MessageEncrypter for Sealer {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, rustls::Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        for_each_slice(&msg.payload, |s| {
            for piece in s.chunks(COPY_PIECE) {
                payload.extend_from_slice(piece);
            }
        });
        payload.extend_from_slice(&[u8::from(msg.typ)]);
        let nonce = ring::aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, seq).0);
        let aad = ring::aead::Aad::from(make_tls13_aad(total_len));
        self.key
            .seal_in_place_append_tag(nonce, aad, &mut payload)
            .map_err(|_| rustls::Error::EncryptError)?;
        // Every TLS 1.3 record carries legacy version 0x0303 (RFC 8446 §5.1).
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + self.key.algorithm().tag_len()
    }
}

/// Calls `f` on each byte range of `chunks`, in order.
fn for_each_slice(chunks: &OutboundChunks<'_>, mut f: impl FnMut(&[u8])) {
    match *chunks {
        OutboundChunks::Single(s) => f(s),
        OutboundChunks::Multiple { chunks, start, end } => {
            let mut at = 0;
            for c in chunks {
                let (lo, hi) = (at, at + c.len());
                at = hi;
                if hi <= start || lo >= end {
                    continue;
                }
                f(&c[start.saturating_sub(lo)..end.min(hi) - lo]);
            }
        }
    }
}

/// The ring AEAD behind a TLS 1.3 suite, if we know it.
fn ring_algorithm(suite: rustls::CipherSuite) -> Option<&'static ring::aead::Algorithm> {
    match suite {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(&ring::aead::AES_128_GCM),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(&ring::aead::AES_256_GCM),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(&ring::aead::CHACHA20_POLY1305),
        _ => None,
    }
}

/// rustls's ring provider with every TLS 1.3 suite sealing through
/// [`SealingAead`] (TLS 1.2 suites, if any, are left as they are). Only
/// ring's: the wrapper seals with ring, so it must wrap ring's suites. Call
/// once per process: the new suites are leaked, as rustls needs them
/// `'static`.
pub fn ring_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    for s in &mut provider.cipher_suites {
        // Refutable once rustls's `tls12` feature is on.
        #[allow(irrefutable_let_patterns, reason = "refutable with tls12")]
        let SupportedCipherSuite::Tls13(t) = *s
        else {
            continue;
        };
        let Some(alg) = ring_algorithm(t.common.suite) else {
            continue;
        };
        let aead: &'static SealingAead = Box::leak(Box::new(SealingAead {
            ring: t.aead_alg,
            alg,
        }));
        let suite = rustls::Tls13CipherSuite {
            common: rustls::crypto::CipherSuiteCommon {
                suite: t.common.suite,
                hash_provider: t.common.hash_provider,
                confidentiality_limit: t.common.confidentiality_limit,
            },
            hkdf_provider: t.hkdf_provider,
            aead_alg: aead,
            quic: t.quic,
        };
        *s = SupportedCipherSuite::Tls13(Box::leak(Box::new(suite)));
    }
    provider
}

#[cfg(test)]
mod tests;
