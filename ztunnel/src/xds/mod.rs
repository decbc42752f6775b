//! Configuration over delta xDS, wire-compatible with Istio's ztunnel API.
//!
//! - [`convert`]: `istio.workload.Address` and `istio.security.Authorization`
//!   → domain types (pure, every field checked);
//! - [`store`]: the resources held, delta application with per-resource
//!   rejection, and the [`crate::state::Snapshot`] built from them (pure).
//!
//! Not built yet: the gRPC client that drives the store (ADS stream, ACK and
//! NACK, backoff, `initial_resource_versions`) and the CA client.

pub mod client;
pub mod convert;
pub mod store;
