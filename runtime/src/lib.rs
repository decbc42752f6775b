//! What every ambient-mesh binary (ztunnel, the waypoint, the control plane)
//! runs around its own data path:
//!
//! ```text
//!  config file ──(source: poll, incremental parse, last good)──┐
//!  control plane ──(xds::client: delta ADS → XdsStore)─────────┴─► Snapshot
//!  control plane CA ◄──(xds::ca::RemoteCa: CSRs)── hbone::cert::CertStore
//!  admin :15000 / metrics :15020 / ready :15021 ◄── admin::serve
//!  accesslog: one JSON line per event, written by a thread of its own
//! ```
//!
//! The decisions these feed are pure and live in `mesh-model`.

pub mod accesslog;
pub mod admin;
pub mod allocator;
pub mod counters;
pub mod error;
pub mod limits;
pub mod source;
pub mod xds;

pub use error::{error_chain, Chain};
