//! The strict HTTP/1.1 framer on arbitrary bytes, fed in arbitrary pieces:
//! never panics, never releases more than it was given, and reaches the
//! same verdict and releases the same bytes however the input is split.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::h1_framing(data));
