//! Every crate of the workspace with cargo-fuzz targets replays them under
//! `cargo test` (`<crate>/tests/fuzz.rs` with `fuzz_replay::targets!`);
//! that test in turn checks it names every target.

use std::path::Path;

#[test]
fn every_fuzz_directory_has_a_stable_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut found = 0;
    for entry in std::fs::read_dir(root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("fuzz/Cargo.toml").is_file() {
            continue;
        }
        found += 1;
        let test = dir.join("tests/fuzz.rs");
        let text = std::fs::read_to_string(&test).unwrap_or_else(|e| {
            panic!(
                "{} has fuzz targets but no stable replay ({}: {e})",
                dir.display(),
                test.display()
            )
        });
        assert!(
            text.contains("fuzz_replay::targets!"),
            "{} does not use fuzz_replay::targets!",
            test.display()
        );
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("fuzz-replay"),
            "{} lacks the fuzz-replay dev-dependency",
            dir.display()
        );
    }
    assert!(
        found >= 4,
        "expected the hbone, waypoint, runtime and control-plane fuzz directories, found {found}"
    );
}

#[test]
fn fuzz_bins_reads_the_bin_names() {
    let dir = tempfile_dir().join("bins");
    std::fs::create_dir_all(dir.join("fuzz")).unwrap();
    std::fs::write(
        dir.join("fuzz/Cargo.toml"),
        "[package]\nname = \"x-fuzz\"\n\n[[bin]]\nname = \"b\"\npath = \"b.rs\"\n\n[[bin]]\nname = \"a\"\n[dependencies]\nname = \"not-a-bin\"\n",
    )
    .unwrap();
    assert_eq!(fuzz_replay::fuzz_bins(&dir), ["a", "b"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A directory of this test process's own (tests run in parallel threads,
/// each using a subdirectory).
fn tempfile_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("fuzz-replay-test-{}", std::process::id()))
}

fn panics_on_a_marker(data: &[u8]) {
    assert!(data.first() != Some(&0xAB), "marker found");
}

#[test]
#[should_panic(expected = "marker found")]
fn explore_reports_a_failing_input() {
    let dir = tempfile_dir().join("explore");
    std::fs::create_dir_all(dir.join("fuzz/corpus/t")).unwrap();
    std::fs::write(dir.join("fuzz/corpus/t/seed"), b"hello").unwrap();
    fuzz_replay::explore(&dir, "t", panics_on_a_marker);
}

#[test]
#[should_panic(expected = "differ")]
fn a_target_left_out_is_refused() {
    let dir = tempfile_dir().join("left-out");
    std::fs::create_dir_all(dir.join("fuzz/corpus/a")).unwrap();
    std::fs::create_dir_all(dir.join("fuzz/corpus/b")).unwrap();
    std::fs::write(
        dir.join("fuzz/Cargo.toml"),
        "[[bin]]\nname = \"a\"\n[[bin]]\nname = \"b\"\n",
    )
    .unwrap();
    fuzz_replay::assert_registered(&dir, &["a"]);
}
