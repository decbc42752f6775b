//! `SpiffeId` parsing: never panics, and an accepted id displays as exactly
//! the input and parses back to itself.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::spiffe_id(data));
