//! CONNECT `:authority` parsing: never panics; an accepted authority has a
//! non-zero port and survives a format/parse round trip.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::authority(data));
