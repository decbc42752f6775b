//! `baggage` decoding: never panics, and what it decodes survives an
//! encode/decode round trip.
#![no_main]

use hbone::headers::Baggage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let b = Baggage::decode(s);
    assert_eq!(Baggage::decode(&b.encode()), b, "round trip of {s:?}");
});
