//! The config file as an async stream of updates: re-read when inotify
//! reports a finished write or a rename into its directory, and at least
//! every `interval` (what inotify cannot see, e.g. network filesystems).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_model::input::Update;

use super::{watch, Change, FileSource};

/// The local YAML file: re-read when its directory reports a finished write
/// or a rename into it, and at least every `interval`.
pub struct WatchedFile {
    poller: FileSource,
    dir: PathBuf,
    /// Created on the first wait (it needs the runtime); `None` when inotify
    /// is unavailable, and then only the poll remains.
    watch: Option<watch::DirWatch>,
    interval: Duration,
    rejected: prometheus_client::metrics::counter::Counter,
    first: bool,
}

impl WatchedFile {
    pub fn new(path: &Path, interval: Duration) -> Self {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        WatchedFile {
            poller: FileSource::new(path),
            dir,
            watch: None,
            interval,
            rejected: Default::default(),
            first: true,
        }
    }

    /// Counts rejected updates in `counter` (a metric).
    pub fn count_rejections(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.rejected = counter;
        self
    }

    /// Updates rejected so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.get()
    }
}

impl WatchedFile {
    /// The next good update; `None` never (the file may come back).
    pub async fn next(&mut self) -> Option<Arc<Update>> {
        {
            loop {
                if self.first {
                    self.first = false;
                    self.watch = watch::DirWatch::new(&self.dir)
                        .inspect_err(|e| {
                            tracing::warn!(dir = %self.dir.display(), error = %e, "no inotify on the config directory; polling only")
                        })
                        .ok();
                } else {
                    match &mut self.watch {
                        Some(w) => {
                            tokio::select! {
                                () = tokio::time::sleep(self.interval) => {}
                                () = w.changed() => {}
                            }
                        }
                        None => tokio::time::sleep(self.interval).await,
                    }
                }
                match self.poller.poll() {
                    Change::Unchanged => {}
                    Change::Updated(update) => {
                        let stats = self.poller.parse_stats();
                        tracing::debug!(
                            parsed = stats.parsed,
                            reused = stats.reused,
                            whole = stats.whole,
                            "config parsed"
                        );
                        return Some(Arc::new(*update));
                    }
                    Change::Rejected(e) => {
                        self.rejected.inc();
                        tracing::warn!(
                            path = %self.poller.path().display(),
                            error = %e,
                            cause = ?std::error::Error::source(&e).map(ToString::to_string),
                            "config rejected; keeping the last good one"
                        );
                    }
                    Change::Unreadable(e) => {
                        self.rejected.inc();
                        tracing::warn!(
                            path = %self.poller.path().display(),
                            error = %e,
                            "config unreadable; keeping the last good one"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn yields_changes_and_skips_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, "nodes: [{name: n1, ip: 10.0.0.1}]\n").unwrap();
        let mut src = WatchedFile::new(&path, Duration::from_millis(10));
        let first = src.next().await.unwrap();
        assert!(first.snapshot.node("n1").is_some());
        assert_eq!(first.touched.nodes.len(), 1);

        std::fs::write(&path, "nodes: [{name: n1, ip: bogus}]\n").unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(100), src.next()).await;
        assert!(waited.is_err(), "a bad file yields nothing");
        assert_eq!(src.rejected(), 1);

        std::fs::write(&path, "nodes: [{name: n2, ip: 10.0.0.2}]\n").unwrap();
        let next = src.next().await.unwrap();
        assert!(next.snapshot.node("n2").is_some());
    }

    #[tokio::test]
    async fn a_rename_into_place_is_seen_without_waiting_for_the_poll() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, "nodes: [{name: n1, ip: 10.0.0.1}]\n").unwrap();
        // A poll interval far beyond the timeout below: only inotify can
        // deliver the edit in time.
        let mut src = WatchedFile::new(&path, Duration::from_secs(3600));
        src.next().await.unwrap();
        let tmp = dir.path().join("mesh.yaml.tmp");
        std::fs::write(&tmp, "nodes: [{name: n2, ip: 10.0.0.2}]\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), src.next())
            .await
            .expect("the rename wakes the source")
            .unwrap();
        assert!(next.snapshot.node("n2").is_some());
        // An in-place write (close after write) too.
        std::fs::write(&path, "nodes: [{name: n3, ip: 10.0.0.3}]\n").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), src.next())
            .await
            .expect("the write wakes the source")
            .unwrap();
        assert!(next.snapshot.node("n3").is_some());
    }
}
