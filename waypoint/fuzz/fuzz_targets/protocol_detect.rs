//! Protocol sniffing on arbitrary first bytes: never panics, decides within
//! `DETECT_MAX` bytes, and never changes its mind as more bytes arrive.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::protocol_detect(data));
