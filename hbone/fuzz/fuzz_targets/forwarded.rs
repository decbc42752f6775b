//! `forwarded` header parsing: never panics; a host it returns is non-empty
//! and at most 253 bytes.
#![no_main]

use hbone::headers::parse_forwarded;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (_client, host) = parse_forwarded(s);
    if let Some(h) = host {
        assert!(!h.is_empty() && h.len() <= 253, "host {h:?}");
    }
});
