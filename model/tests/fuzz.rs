//! The cargo-fuzz targets of `model/fuzz` on stable: each corpus replayed
//! and a bounded loop of arbitrary and mutated inputs per target (the
//! `fuzz-replay` crate). libFuzzer runs stay in `scripts/fuzz`.

#[path = "../fuzz/checks.rs"]
mod checks;

fuzz_replay::targets! { route_select }
