//! ztunnel: the ambient-mesh node proxy.
//!
//! This library holds the pure core, with no sockets, clock or locks:
//! - [`state`]: domain types (workloads, services, namespaces, policies) and
//!   the immutable, indexed [`state::Snapshot`];
//! - [`config`]: the local YAML config file, parsed into a `Snapshot`;
//! - [`classify`]: where an outbound connection goes ([`classify::Route`]);
//! - [`policy`]: L4 authorization at the destination ([`policy::Decision`]).
//!
//! The I/O shell (capture, outbound, inbound, admin) is built on top.

pub mod classify;
pub mod config;
pub mod policy;
pub mod state;
