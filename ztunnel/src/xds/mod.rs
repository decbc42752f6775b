//! Configuration and certificates from the control plane, wire-compatible
//! with Istio's ztunnel API.
//!
//! - [`convert`]: `istio.workload.Address` and `istio.security.Authorization`
//!   → domain types (pure, every field checked);
//! - [`store`]: the resources held, delta application with per-resource
//!   rejection, and the [`crate::state::Snapshot`] built from them (pure);
//! - [`client`]: the delta ADS stream (ACK/NACK, backoff, resync with
//!   `initial_resource_versions`);
//! - [`ca`]: the CA client, a [`hbone::cert::CertProvider`] over
//!   `CreateCertificate`;
//! - [`connector`]: marked control-plane sockets (sidecar mode).
//!
//! `ztunnel --xds-address` uses all of these (`crate::app::sources`);
//! without it the binary reads a local config file and uses the dev CA.

pub mod ca;
pub mod client;
pub mod connector;
pub mod convert;
pub mod store;
