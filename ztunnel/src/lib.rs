//! ztunnel: the ambient-mesh node proxy (and, with `--mode sidecar`, the
//! per-pod baseline it is benchmarked against).
//!
//! The domain (state, policy, config, xDS conversion) is `mesh-model`'s; the
//! config source, xDS and CA clients, admin server and access log are
//! `mesh-runtime`'s. This crate holds what only a node proxy does:
//! - [`classify`] (pure): where an outbound connection goes
//!   ([`classify::Route`]);
//! - [`capture`]: the `inet ambient` nftables table, ip rule and transparent
//!   listeners, and sidecar mode's `ip ambient_sidecar` REDIRECT table;
//! - [`proxy`]: the outbound (15001), inbound HBONE (15008) and inbound
//!   plaintext (15006) data paths, with live-connection revocation and one
//!   metrics record and access-log event per connection;
//! - [`metrics`]: Istio's TCP metrics;
//! - [`app`]: the process: two runtimes, sources, readiness, drain, and the
//!   listener handoff of a zero-drop upgrade.

pub mod app;
pub mod capture;
pub mod classify;
pub mod metrics;
pub mod proxy;
