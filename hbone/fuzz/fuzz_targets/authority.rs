//! CONNECT `:authority` parsing: never panics; an accepted authority has a
//! non-zero port and survives a format/parse round trip.
#![no_main]

use hbone::headers::{format_authority, parse_authority};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(addr) = parse_authority(s) {
        assert_ne!(addr.port(), 0);
        let again = parse_authority(&format_authority(addr)).expect("formatted authority parses");
        assert_eq!(again, addr);
    }
});
