//! The control plane's side of configuration and certificates,
//! wire-compatible with Istio's ztunnel API:
//!
//! - [`client`]: the delta ADS stream (ACK/NACK, backoff, resync with
//!   `initial_resource_versions`) into a [`mesh_model::xds::store::XdsStore`];
//! - [`ca`]: the CA client, a [`hbone::cert::CertProvider`] over
//!   `CreateCertificate`;
//! - [`connector`]: marked control-plane sockets (sidecar mode);
//! - [`token`]: the bearer token, fixed or re-read from a file on each use.

pub mod ca;
pub mod client;
pub mod connector;
pub mod token;
