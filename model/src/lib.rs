//! The ambient-mesh domain, shared by ztunnel, the waypoint and the control
//! plane. Pure: no async runtime, no sockets, no clock, no locks.
//!
//! ```text
//!  config file ─(config::parse)──┐
//!  xDS resources ─(xds::store)───┼─► state::Snapshot ─► policy::authorize
//!                                │     [Namespace] ◄─ [Workload] ─► [Service]
//!                                │         ▲              │ authorization_policies
//!                                │         └── [Policy] ◄─┘
//! ```
//!
//! - [`identity`]: `SpiffeId` and its strict parser;
//! - [`state`]: workloads, services, namespaces, policies and the immutable,
//!   indexed [`state::Snapshot`] with its delta patching;
//! - [`policy`]: L4 authorization (`authorize`, DESIGN §5) and admission
//!   at the destination (`admit_peer`: STRICT mTLS, then `authorize`);
//! - [`pick`]: which endpoint of a Service a connection or request goes to
//!   (the caller passes the random number or round-robin counter in);
//! - [`route`]: the waypoint's L7 routing (Gateway API HTTPRoute and
//!   GRPCRoute): rule selection, backends, filters, faults, retries;
//! - [`l7policy`]: the waypoint's L7 authorization (`authorize_request`);
//! - [`config`]: the local YAML config file → `Snapshot`, with line numbers;
//! - [`xds`]: `istio.workload.Address` / `istio.security.Authorization` →
//!   domain types, and the delta store that builds snapshots from them;
//! - [`flags`]: Istio's `response_flags` values.

// Untrusted xDS and config input must not panic the proxy; tests may unwrap
// (allow-unwrap-in-tests in model/clippy.toml).
#![warn(clippy::unwrap_used)]

pub mod config;
pub mod flags;
pub mod identity;
pub mod input;
pub mod l7policy;
pub mod pick;
pub mod policy;
pub mod route;
pub mod state;
pub mod xds;

pub use flags::ResponseFlag;
pub use identity::SpiffeId;

/// The HBONE port, inbound at ztunnel and at waypoints (DESIGN §2).
pub const HBONE_PORT: u16 = 15008;
