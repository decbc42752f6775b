//! The cargo-fuzz targets on the stable toolchain, under `cargo test`.
//!
//! libFuzzer needs nightly (`scripts/fuzz` runs it). CI has only stable, so
//! each crate with a `fuzz/` directory also has a `tests/fuzz.rs` that runs
//! the same checks the fuzz targets call (`fuzz/checks.rs`, included by
//! both) in two ways:
//!
//! - [`replay`]: every file of `fuzz/corpus/<target>/` (the seeds, and any
//!   crash input saved there as a regression);
//! - [`explore`]: a bounded proptest loop of arbitrary inputs, half raw
//!   bytes and half the corpus files mutated (bytes overwritten, inserted,
//!   deleted, flipped, truncated, spans repeated), for at most
//!   [`budget`] (15 s in release, 3 s in a debug build; `FUZZ_SECS`
//!   overrides) and at most [`cases`] inputs. A failure is shrunk and
//!   printed in hex, to be saved into the corpus.
//!
//! [`assert_registered`] fails when a target of `fuzz/Cargo.toml` or a
//! corpus directory has no check in the crate's table, so a target added
//! later is not left out of CI; this crate's own test fails when a crate
//! with a `fuzz/` directory has no `tests/fuzz.rs`.
//!
//! Use [`targets!`] in `tests/fuzz.rs`:
//!
//! ```ignore
//! #[path = "../fuzz/checks.rs"]
//! mod checks;
//! fuzz_replay::targets! { authority, baggage }
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// The longest raw input [`explore`] makes.
pub const MAX_RAW_LEN: usize = 1024;

/// The files of `<crate_dir>/fuzz/corpus/<target>`, sorted by name. Panics
/// if there are none: every target has seeds.
pub fn corpus(crate_dir: &Path, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = crate_dir.join("fuzz/corpus").join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// Feeds every corpus file of `target` to `check`; a panic names the file.
pub fn replay(crate_dir: &Path, target: &str, check: fn(&[u8])) -> usize {
    let files = corpus(crate_dir, target);
    for (path, bytes) in &files {
        let r = std::panic::catch_unwind(|| check(bytes));
        if let Err(e) = r {
            eprintln!("{target}: corpus file {} failed", path.display());
            std::panic::resume_unwind(e);
        }
    }
    files.len()
}

/// How long [`explore`] runs per target: `FUZZ_SECS`, else 15 s in a
/// release build and 3 s in a debug one.
pub fn budget() -> Duration {
    match std::env::var("FUZZ_SECS").ok().and_then(|s| s.parse().ok()) {
        Some(secs) => Duration::from_secs(secs),
        None if cfg!(debug_assertions) => Duration::from_secs(3),
        None => Duration::from_secs(15),
    }
}

/// At most this many inputs per target: fewer in a debug build. With
/// `FUZZ_SECS` set, only the time bounds the loop.
pub fn cases() -> u32 {
    if std::env::var_os("FUZZ_SECS").is_some() {
        u32::MAX
    } else if cfg!(debug_assertions) {
        3_000
    } else {
        200_000
    }
}

/// One edit of a seed.
#[derive(Debug, Clone, Copy)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Flip(usize, u8),
    Truncate(usize),
    /// Repeat `len` bytes at `at` (lengths, counts, nesting).
    Repeat(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Edit::Flip(i, bit)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1u8..32).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut s = seed.to_vec();
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match *e {
            Edit::Set(i, b) if !s.is_empty() => {
                let i = at(i, s.len());
                s[i] = b;
            }
            Edit::Insert(i, b) => {
                let i = at(i, s.len() + 1);
                s.insert(i, b);
            }
            Edit::Delete(i) if !s.is_empty() => {
                let i = at(i, s.len());
                s.remove(i);
            }
            Edit::Flip(i, bit) if !s.is_empty() => {
                let i = at(i, s.len());
                s[i] ^= 1 << bit;
            }
            Edit::Truncate(i) => s.truncate(at(i, s.len() + 1)),
            Edit::Repeat(i, n) if !s.is_empty() => {
                let i = at(i, s.len());
                let end = (i + usize::from(n)).min(s.len());
                let span = s[i..end].to_vec();
                s.splice(i..i, span);
            }
            _ => {}
        }
    }
    s
}

/// Arbitrary bytes, or a seed with a few edits.
fn inputs(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let raw = proptest::collection::vec(any::<u8>(), 0..MAX_RAW_LEN);
    if seeds.is_empty() {
        return raw.boxed();
    }
    let n = seeds.len();
    let mutated = (0..n, proptest::collection::vec(edit(), 0..8))
        .prop_map(move |(i, edits)| apply(&seeds[i], &edits));
    prop_oneof![1 => raw, 1 => mutated].boxed()
}

/// Runs `check` on arbitrary inputs and mutated corpus files of `target`
/// for at most [`budget`] and [`cases`]. Returns how many inputs ran.
pub fn explore(crate_dir: &Path, target: &str, check: fn(&[u8])) -> u64 {
    let seeds = corpus(crate_dir, target)
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let budget = budget();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        // Shrinking a slow check could outlast the budget many times over.
        max_shrink_time: 30_000,
        // Inputs are only rejected once the time is spent: that ends the run.
        max_global_rejects: 0,
        ..Config::default()
    });
    let start = Instant::now();
    let ran = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&inputs(seeds), |input| {
        if start.elapsed() > budget {
            return Err(TestCaseError::reject(OUT_OF_TIME));
        }
        ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::panic::catch_unwind(|| check(&input)).map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            TestCaseError::fail(format!(
                "{msg}\ninput ({} bytes): {}",
                input.len(),
                hex(&input)
            ))
        })
    });
    match result {
        Ok(()) => {}
        Err(TestError::Abort(_)) if start.elapsed() > budget => {}
        Err(e) => panic!("fuzz target {target}: {e}"),
    }
    let ran = ran.into_inner();
    eprintln!("{target}: {ran} inputs in {:?}", start.elapsed());
    ran
}

/// Why inputs are turned away once [`budget`] is spent.
const OUT_OF_TIME: &str = "the time budget is spent";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The target names of `<crate_dir>/fuzz/Cargo.toml` (its `[[bin]]`s).
pub fn fuzz_bins(crate_dir: &Path) -> Vec<String> {
    let manifest = crate_dir.join("fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let mut in_bin = false;
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line.strip_prefix("name").map(str::trim) {
                if let Some(v) = v.strip_prefix('=') {
                    names.push(v.trim().trim_matches('"').to_owned());
                }
            }
        }
    }
    names.sort();
    names
}

/// Every fuzz target (`fuzz/Cargo.toml`) and every corpus directory of the
/// crate has a check in `registered`, and each registered check is a
/// target with a corpus.
pub fn assert_registered(crate_dir: &Path, registered: &[&str]) {
    let mut registered: Vec<String> = registered.iter().map(|s| s.to_string()).collect();
    registered.sort();
    let bins = fuzz_bins(crate_dir);
    assert_eq!(
        bins, registered,
        "the targets of fuzz/Cargo.toml and those replayed by tests/fuzz.rs differ"
    );
    let corpus_dir = crate_dir.join("fuzz/corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&corpus_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", corpus_dir.display()))
        .map(|e| e.expect("corpus entry"))
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs, registered,
        "the corpus directories and the targets replayed by tests/fuzz.rs differ"
    );
}

/// Tests for each target, whose check is `checks::<target>` (the module
/// of `fuzz/checks.rs`): `<target>::corpus` ([`replay`]),
/// `<target>::arbitrary` ([`explore`]), and `every_target_is_replayed`
/// ([`assert_registered`]).
#[macro_export]
macro_rules! targets {
    ($($name:ident),+ $(,)?) => {
        #[test]
        fn every_target_is_replayed() {
            $crate::assert_registered(
                ::std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
                &[$(stringify!($name)),+],
            );
        }
        $(
            mod $name {
                #[test]
                fn corpus() {
                    let n = $crate::replay(
                        ::std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
                        stringify!($name),
                        super::checks::$name,
                    );
                    assert!(n > 0);
                }
                #[test]
                fn arbitrary() {
                    $crate::explore(
                        ::std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
                        stringify!($name),
                        super::checks::$name,
                    );
                }
            }
        )+
    };
}
