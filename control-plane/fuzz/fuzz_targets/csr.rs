//! The CA's `CreateCertificate` on hostile CSRs and requested identities:
//! never panics, never signs an identity the caller may not have.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::csr(data));
