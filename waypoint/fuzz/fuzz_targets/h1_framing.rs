//! The strict HTTP/1.1 framer on arbitrary bytes, fed in arbitrary pieces:
//! never panics, never releases more than it was given, and reaches the
//! same verdict and releases the same bytes however the input is split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use waypoint::h1::framing::Framer;

fuzz_target!(|data: &[u8]| {
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
});
