//! Where the mesh's state comes from. A [`Source`] yields each new good
//! [`Update`]: the snapshot, and the keyed objects the change touched (a
//! [`mesh_model::input::MeshInput`] holds the objects). The local YAML file
//! is the first ([`FileSource`], `mesh-runtime`'s watched file: each edit is
//! diffed into keyed changes); the Kubernetes source
//! ([`kube::KubeSource`]) feeds its watch events into the same input.

pub mod kube;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mesh_model::input::Update;
pub use mesh_runtime::source::WatchedFile as FileSource;

/// How often the config file is polled. An edit is normally seen at once
/// (inotify on its directory); the poll catches what inotify cannot see
/// (e.g. network filesystems).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A stream of updates. Invalid input never reaches the caller: a source
/// logs it and keeps waiting, so the last good snapshot stays in force.
pub trait Source: Send + 'static {
    /// The next update; `None` when the source has ended for good.
    fn next(&mut self) -> BoxFuture<'_, Option<Arc<Update>>>;
}

impl Source for FileSource {
    fn next(&mut self) -> BoxFuture<'_, Option<Arc<Update>>> {
        Box::pin(FileSource::next(self))
    }
}

impl Source for Box<dyn Source> {
    fn next(&mut self) -> BoxFuture<'_, Option<Arc<Update>>> {
        (**self).next()
    }
}
