//! `seal-bench`: TLS 1.3 record sealing, rustls's ring sealer against
//! `hbone::seal`, in one run (alternated, 5 rounds, median).
//!
//! The plaintext is what h2 hands rustls under bulk traffic through
//! ztunnel: one DATA frame per 256 KiB read (`hbone::copy::MAX_BUFFER`, a
//! page-aligned buffer), its 9-byte header then the payload, sealed as
//! 16 KiB records. The allocator is mimalloc, as in ztunnel, so
//! the record buffers sit where they sit in the proxy. See `hbone::seal` for
//! why the two differ. AES-256-GCM: a unit of code outside rustls can only
//! build 32-byte keys; the copy does not depend on the cipher.
//!
//! `seal-bench [MiB per round, default 1024]`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::time::Instant;

use rustls::crypto::cipher::{
    AeadKey, Iv, MessageEncrypter, OutboundChunks, OutboundPlainMessage, Tls13AeadAlgorithm,
};
use rustls::{CipherSuite, ContentType, ProtocolVersion, SupportedCipherSuite};

const SOURCE: usize = 256 * 1024;
const RECORD: usize = 16 * 1024;
const FRAME_HEADER: usize = 9;

/// A page-aligned, zero-filled buffer (freed on drop).
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Aligned { ptr, layout }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points at `layout.size()` initialised bytes we own.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn aead(provider: rustls::crypto::CryptoProvider) -> &'static dyn Tls13AeadAlgorithm {
    provider
        .cipher_suites
        .into_iter()
        .find_map(|s| match s {
            SupportedCipherSuite::Tls13(t)
                if t.common.suite == CipherSuite::TLS13_AES_256_GCM_SHA384 =>
            {
                Some(t.aead_alg)
            }
            _ => None,
        })
        .expect("AES-256-GCM suite")
}

/// Seals `bytes` of plaintext; returns GB/s and a checksum of the sealed
/// bytes (so the work cannot be skipped). The plaintext is one HTTP/2 DATA
/// frame per pass over `src` (its 9-byte header, then all of `src`), cut
/// into 16 KiB records the way rustls cuts the byte stream h2 writes.
fn seal(enc: &mut dyn MessageEncrypter, src: &[u8], bytes: usize) -> (f64, u64) {
    let header = [0u8; FRAME_HEADER];
    let (mut done, mut seq, mut sum) = (0usize, 0u64, 0u64);
    let t = Instant::now();
    while done < bytes {
        let mut at = 0;
        while at < src.len() {
            let first = at == 0;
            let take = (RECORD - if first { FRAME_HEADER } else { 0 }).min(src.len() - at);
            let with_header: [&[u8]; 2] = [&header, &src[at..at + take]];
            let alone: [&[u8]; 1] = [&src[at..at + take]];
            let msg = OutboundPlainMessage {
                typ: ContentType::ApplicationData,
                version: ProtocolVersion::TLSv1_2,
                payload: OutboundChunks::new(if first { &with_header } else { &alone }),
            };
            let sealed = enc.encrypt(msg, seq).expect("seal").encode();
            sum = sum.wrapping_add(u64::from(sealed[sealed.len() - 1]));
            at += take;
            seq += 1;
        }
        done += FRAME_HEADER + src.len();
    }
    (done as f64 / t.elapsed().as_secs_f64() / 1e9, sum)
}

fn main() {
    let mib: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 1024,
        Some(Ok(n)) if n > 0 && n <= 1 << 20 => n,
        _ => {
            eprintln!("usage: seal-bench [MiB per round, 1 to 1048576, default 1024]");
            std::process::exit(2);
        }
    };
    let mut src = Aligned::new(SOURCE);
    for (i, b) in src.bytes().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let ring = aead(rustls::crypto::ring::default_provider());
    let ours = aead(hbone::seal::ring_provider());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let mut sums = Vec::new();
        for (alg, out) in [(ring, &mut a), (ours, &mut b)] {
            let mut enc = alg.encrypter(AeadKey::from([7u8; 32]), Iv::from([1u8; 12]));
            let (gbps, sum) = seal(enc.as_mut(), src.bytes(), mib << 20);
            sums.push(sum);
            out.push(gbps);
        }
        // Same key, IV and plaintext: the same records, so the same sums.
        assert_eq!(sums[0], sums[1], "round {round}: the sealers disagree");
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, o) = (median(&mut a), median(&mut b));
    println!(
        "seal-bench: {mib} MiB per round, 5 rounds alternated, median GB/s of plaintext sealed"
    );
    println!("  rustls ring sealer : {r:6.2}  (rounds {a:.2?})");
    println!("  hbone::seal        : {o:6.2}  (rounds {b:.2?})");
    println!("  ratio              : {:6.2}x", o / r);
}
