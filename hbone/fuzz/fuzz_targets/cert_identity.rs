//! The SPIFFE identity of a DER certificate (peer certificates are
//! untrusted bytes): never panics; an identity it returns parses back.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::cert_identity(data));
