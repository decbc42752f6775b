//! Netns end-to-end harness for ambient-mesh.
//!
//! Builds nodes and pods as real network namespaces wired like a Calico
//! cluster ([`Topology`]), runs commands and processes inside them
//! ([`run_in`], [`ChildGuard`]), and creates sockets inside them from the test
//! process itself ([`Netns::run`], [`Netns::listen`], [`Netns::connect`]).
//! Everything is removed when the topology drops, even on panic.
//!
//! Tests start with `if !require_root() { return; }`: without root they print
//! `SKIPPED`, and under `CI` they fail instead.

mod command;
mod error;
mod netns;
mod skip;
mod topology;

pub mod echo;
pub mod grpc;
pub mod http;
pub mod kube_api;
pub mod kube_cluster;
pub mod l7load;
pub mod load;
pub mod mesh;
pub mod process;
pub mod relay;
pub mod rules;
pub mod sidecar;
pub mod traffic;
pub mod waypoint;
pub mod wire;

pub use command::{run, run_in, ChildGuard};
pub use error::HarnessError;
pub use netns::Netns;
pub use skip::require_root;
pub use topology::{Node, Pod, Topology, TopologyBuilder, NAME_PREFIX, POD_GATEWAY};
