//! The cargo-fuzz targets of `hbone/fuzz` on stable: each corpus replayed and
//! a bounded loop of arbitrary and mutated inputs per target (the
//! `fuzz-replay` crate). libFuzzer runs stay in `scripts/fuzz`.

#[path = "../fuzz/checks.rs"]
mod checks;

fuzz_replay::targets! { authority, baggage, cert_identity, forwarded, spiffe_id }
