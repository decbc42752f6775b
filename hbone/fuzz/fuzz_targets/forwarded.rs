//! `forwarded` header parsing: never panics; a host it returns is non-empty
//! and at most 253 bytes.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::forwarded(data));
