//! Errors of the harness itself (setting up namespaces, running commands).

use std::io;

/// A harness operation failed; the message names the command or namespace.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The command could not be started at all.
    #[error("starting `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// The command ran and exited unsuccessfully.
    #[error("`{command}` exited with {status}: {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// Entering a network namespace (open /run/netns/<name> or setns) failed.
    #[error("entering network namespace {name}")]
    Enter {
        name: String,
        #[source]
        source: io::Error,
    },
    /// The topology description is invalid (unknown node, duplicate pod, ...).
    #[error("invalid topology: {0}")]
    Topology(&'static str),
}
