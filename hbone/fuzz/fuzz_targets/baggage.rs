//! `baggage` decoding: never panics, and what it decodes survives an
//! encode/decode round trip.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::baggage(data));
