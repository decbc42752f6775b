//! Arbitrary bytes as a delta ADS response, through the push reassembly into
//! the xDS store: never panics, the snapshot never drifts from the store,
//! a rejected policy fails closed, the reply NACKs what was rejected.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::xds_response(data));
