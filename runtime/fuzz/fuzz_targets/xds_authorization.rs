//! Arbitrary bytes as an `istio.security.Authorization` resource: applied
//! with its version, or deny-all in force in its place.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::xds_authorization(data));
