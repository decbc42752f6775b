//! The ambient-mesh control plane: one source of truth for a fleet of
//! ztunnels, served over Istio-compatible APIs.
//!
//! Pure core (no sockets, clock or locks; table-tested):
//! - [`convert`]: a domain `Snapshot` → `istio.workload.Address` and
//!   `istio.security.Authorization` resources;
//! - [`resources`]: the versioned resource set (versions are content hashes);
//! - [`delta`]: per-client delta-xDS bookkeeping: subscriptions, what the
//!   client holds, and the diff to push;
//! - [`ca::authorize`]: whether a node may obtain a certificate for an
//!   identity;
//! - [`view`]: what a waypoint's stream carries (only what it serves).
//!
//! I/O shell:
//! - [`source`]: where snapshots come from (the local YAML file, or a
//!   Kubernetes cluster's watches: [`source::kube`], whose conversion and
//!   index are pure);
//! - [`xds`]: the `DeltaAggregatedResources` gRPC service;
//! - [`ca`]: the `CreateCertificate` gRPC service; [`auth`]: the bootstrap
//!   tokens of nodes and of waypoints; [`kube_auth`]: service-account
//!   tokens reviewed by the API server (Kubernetes mode);
//! - [`leader`]: leader election with a Lease (Kubernetes mode);
//! - [`accept`]: the front of 15012: connection caps, the handshake
//!   deadline, back-off when `accept` fails;
//! - [`serve`]: TLS on 15012 for both, plus metrics and readiness.

pub mod accept;
pub mod auth;
pub mod ca;
pub mod convert;
pub mod delta;
pub mod kube_auth;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod serve;
pub mod source;
pub mod tls;
pub mod view;
pub mod waypoint_controller;
pub mod xds;
