//! `SpiffeId` parsing: never panics, and an accepted id displays as exactly
//! the input and parses back to itself.
#![no_main]

use hbone::SpiffeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = s.parse::<SpiffeId>() {
        let shown = id.to_string();
        assert_eq!(shown, s, "display differs from the accepted input");
        let again: SpiffeId = shown.parse().expect("a displayed id parses");
        assert_eq!(again, id);
    }
});
