//! xDS resources (Istio's workload API) → domain types, pure:
//!
//! - [`convert`]: `istio.workload.Address` and `istio.security.Authorization`
//!   → domain types (every field checked);
//! - [`l7convert`]: the waypoint's `ambient.mesh.v1.Route` and
//!   `L7Authorization` ↔ domain routes and L7 policies (both ways);
//! - [`store`]: the resources held, delta application with per-resource
//!   rejection, and the [`crate::state::Snapshot`] built from them.
//!
//! The delta-ADS client that feeds the store is in `mesh-runtime`.

pub mod convert;
pub mod l7convert;
pub mod store;
