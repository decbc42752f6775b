//! Arbitrary bytes as an `istio.workload.Address` resource: never panics,
//! a rejected response changes nothing.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::xds_address(data));
