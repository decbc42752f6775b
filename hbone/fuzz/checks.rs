//! The checks of the HBONE fuzz targets, one function per target: run by
//! cargo-fuzz (`fuzz_targets/<target>.rs`, nightly, `scripts/fuzz`) and on
//! stable by `hbone/tests/fuzz.rs` (each corpus replayed, then a bounded
//! proptest loop; see the `fuzz-replay` crate).
#![allow(dead_code, reason = "each fuzz binary uses one check")]

use hbone::cert::identity_from_der;
use hbone::headers::{format_authority, parse_authority, parse_forwarded, Baggage};
use hbone::SpiffeId;

/// CONNECT `:authority` parsing: never panics; an accepted authority has a
/// non-zero port and survives a format/parse round trip.
pub fn authority(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(addr) = parse_authority(s) {
        assert_ne!(addr.port(), 0);
        let again = parse_authority(&format_authority(addr)).expect("formatted authority parses");
        assert_eq!(again, addr);
    }
}

/// `baggage` decoding: never panics, and what it decodes survives an
/// encode/decode round trip.
pub fn baggage(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let b = Baggage::decode(s);
    assert_eq!(Baggage::decode(&b.encode()), b, "round trip of {s:?}");
}

/// The SPIFFE identity of a DER certificate (peer certificates are
/// untrusted bytes): never panics; an identity it returns parses back.
pub fn cert_identity(data: &[u8]) {
    if let Ok(id) = identity_from_der(data) {
        let again: SpiffeId = id.to_string().parse().expect("identity reparses");
        assert_eq!(again, id);
    }
}

/// `forwarded` header parsing: never panics; a host it returns is non-empty
/// and at most 253 bytes.
pub fn forwarded(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (_client, host) = parse_forwarded(s);
    if let Some(h) = host {
        assert!(!h.is_empty() && h.len() <= 253, "host {h:?}");
    }
}

/// `SpiffeId` parsing: never panics, and an accepted id displays as exactly
/// the input and parses back to itself.
pub fn spiffe_id(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = s.parse::<SpiffeId>() {
        let shown = id.to_string();
        assert_eq!(shown, s, "display differs from the accepted input");
        let again: SpiffeId = shown.parse().expect("a displayed id parses");
        assert_eq!(again, id);
    }
}
