//! xDS resources (Istio's workload API) → domain types, pure:
//!
//! - [`convert`]: `istio.workload.Address` and `istio.security.Authorization`
//!   → domain types (every field checked);
//! - [`store`]: the resources held, delta application with per-resource
//!   rejection, and the [`crate::state::Snapshot`] built from them.
//!
//! The delta-ADS client that feeds the store is in `mesh-runtime`.

pub mod convert;
pub mod store;
