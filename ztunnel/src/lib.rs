//! ztunnel: the ambient-mesh node proxy.
//!
//! This library holds the pure core, with no sockets, clock or locks:
//! - [`state`]: domain types (workloads, services, namespaces, policies) and
//!   the immutable, indexed [`state::Snapshot`];
//! - [`config`]: the local YAML config file, parsed into a `Snapshot`;
//! - [`classify`]: where an outbound connection goes ([`classify::Route`]);
//! - [`policy`]: L4 authorization at the destination ([`policy::Decision`]).
//!
//! The I/O shell at the edges:
//! - [`capture`]: the `inet ambient` nftables table, ip rule and transparent
//!   listeners, and sidecar mode's `ip ambient_sidecar` REDIRECT table;
//! - [`metrics`] (Istio names), [`accesslog`] (one JSON line per connection)
//!   and [`admin`] (admin, metrics and readiness HTTP endpoints).
//!
//! Not built yet: the outbound and inbound data paths and the `ztunnel`
//! binary that wires these together.

pub mod accesslog;
pub mod admin;
pub mod allocator;
pub mod app;
pub mod capture;
pub mod classify;
pub mod config;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod source;
pub mod state;
pub mod xds;
