//! The local config file as a source of snapshots: polled, parsed when its
//! bytes change, and never applied when it is malformed (the caller keeps
//! the last good snapshot).
//!
//! Polling the contents (not the mtime) catches every editor's way of
//! saving, including atomic renames and same-second rewrites, and a missing
//! file is an error like any other, not an empty config.
//!
//! New contents are parsed with [`IncrementalParser`]: only the list items
//! (and sections) whose text changed are parsed again. The parsed objects
//! are diffed against the ones held ([`MeshInput::replace`]), so each edit
//! reaches consumers as keyed changes, with what they touch.

mod watch;
mod watched;

pub use watched::WatchedFile;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use mesh_model::config::{ConfigError, IncrementalParser, ParseStats};
use mesh_model::input::{MeshInput, Update};

/// How often the file is checked.
pub const DEFAULT_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// The result of one poll.
#[derive(Debug)]
pub enum Change {
    /// Same bytes as last time (or the same error as last time).
    Unchanged,
    /// New, valid contents: the snapshot and what the edit touched.
    Updated(Box<Update>),
    /// New contents that do not parse or validate.
    Rejected(ConfigError),
    /// The file could not be read.
    Unreadable(io::Error),
}

/// Watches one config file.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    /// Hash of the last contents seen, valid or not, so a bad file is
    /// reported once, not on every poll.
    last: Option<u64>,
    /// The last read error, reported once.
    last_error: Option<io::ErrorKind>,
    /// Boxed: six caches would make `FileSource` (and enums holding it) large.
    parser: Box<IncrementalParser>,
    /// The objects of the last good contents.
    input: Box<MeshInput>,
}

impl FileSource {
    pub fn new(path: &Path) -> Self {
        FileSource {
            path: path.to_owned(),
            last: None,
            last_error: None,
            parser: Box::default(),
            input: Box::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the last parse did (pieces parsed and reused).
    pub fn parse_stats(&self) -> ParseStats {
        self.parser.stats()
    }

    /// Reads the file and reports what changed since the last poll.
    pub fn poll(&mut self) -> Change {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                self.last_error = None;
                self.consider(&text)
            }
            Err(e) if self.last_error == Some(e.kind()) => Change::Unchanged,
            Err(e) => {
                self.last_error = Some(e.kind());
                Change::Unreadable(e)
            }
        }
    }

    /// The pure half of [`FileSource::poll`]: what `text` means given what
    /// was seen before.
    pub fn consider(&mut self, text: &str) -> Change {
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        let hash = h.finish();
        if self.last == Some(hash) {
            return Change::Unchanged;
        }
        self.last = Some(hash);
        let parsed = match self.parser.parse_objects(text) {
            Ok(parsed) => parsed,
            Err(e) => return Change::Rejected(e),
        };
        match self.input.replace(&parsed.trust_domain, parsed.objects) {
            Ok(update) => Change::Updated(Box::new(update)),
            Err(e) => Change::Rejected(ConfigError::State(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "nodes: [{name: n1, ip: 10.0.0.1}]\n";
    const GOOD2: &str = "nodes: [{name: n1, ip: 10.0.0.1}, {name: n2, ip: 10.0.0.2}]\n";
    const BAD: &str = "nodes: [{name: n1, ip: not-an-ip}]\n";

    #[test]
    fn reports_each_change_once() {
        let mut src = FileSource::new(Path::new("unused"));
        let steps = [
            (GOOD, "updated"),
            (GOOD, "unchanged"),
            (BAD, "rejected"),
            (BAD, "unchanged"),
            (GOOD, "updated"),
            (GOOD2, "updated"),
        ];
        for (i, (text, want)) in steps.into_iter().enumerate() {
            let got = match src.consider(text) {
                Change::Unchanged => "unchanged",
                Change::Updated(_) => "updated",
                Change::Rejected(_) => "rejected",
                Change::Unreadable(_) => "unreadable",
            };
            assert_eq!(got, want, "step {i}");
        }
    }

    #[test]
    fn rejection_names_the_line() {
        let mut src = FileSource::new(Path::new("unused"));
        let Change::Rejected(e) = src.consider("# comment\nnodes:\n  - {name: n1, ip: bogus}\n")
        else {
            panic!("bad config accepted");
        };
        assert!(e.to_string().contains("line 3"), "{e}");
    }

    #[test]
    fn reads_the_file_and_reports_a_missing_one_once() {
        let dir = std::env::temp_dir().join(format!("ztunnel-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        let _ = std::fs::remove_file(&path);
        let mut src = FileSource::new(&path);
        assert!(matches!(src.poll(), Change::Unreadable(_)));
        assert!(matches!(src.poll(), Change::Unchanged));
        std::fs::write(&path, GOOD).unwrap();
        assert!(matches!(src.poll(), Change::Updated(_)));
        assert!(matches!(src.poll(), Change::Unchanged));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
