//! The checks of the waypoint's fuzz targets, one function per target: run
//! by cargo-fuzz (`fuzz_targets/<target>.rs`, nightly) and on stable by
//! `waypoint/tests/fuzz.rs` (each corpus replayed, then a bounded proptest
//! loop; see the `fuzz-replay` crate).
#![allow(dead_code, reason = "each fuzz binary uses one check")]

use bytes::BytesMut;
use waypoint::h1::framing::Framer;
use waypoint::protocol::{detect, Detected, DETECT_MAX};

/// The strict HTTP/1.1 framer on arbitrary bytes, fed in arbitrary pieces:
/// never panics, never releases more than it was given, and reaches the
/// same verdict and releases the same bytes however the input is split.
pub fn h1_framing(data: &[u8]) {
    // The first byte chooses where the input is cut.
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let whole = {
        let mut f = Framer::default();
        let mut out = BytesMut::new();
        let r = f.feed(data, &mut out);
        (r, out)
    };
    assert!(whole.1.len() <= data.len());
    let mut f = Framer::default();
    let mut out = BytesMut::new();
    let step = usize::from(cut).max(1);
    let mut r = Ok(());
    for piece in data.chunks(step) {
        r = f.feed(piece, &mut out);
        if r.is_err() {
            break;
        }
    }
    assert_eq!(r, whole.0);
    assert_eq!(out, whole.1);
}

/// Protocol sniffing on arbitrary first bytes: never panics, decides within
/// `DETECT_MAX` bytes, and never changes its mind as more bytes arrive.
pub fn protocol_detect(data: &[u8]) {
    let mut decided = None;
    for n in 0..=data.len() {
        let d = detect(&data[..n]);
        match decided {
            Some(prev) => assert_eq!(d, prev),
            None if d != Detected::NeedMore => decided = Some(d),
            None => assert!(n < DETECT_MAX),
        }
    }
}
