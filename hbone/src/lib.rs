//! HBONE: HTTP/2 CONNECT tunnels inside mutual TLS 1.3, keyed by SPIFFE
//! identity, wire-compatible with Istio's ztunnel.
//!
//! - [`identity`]: `SpiffeId` and its strict parser.
//! - [`ca`] and [`cert`]: the dev CA, workload certificates, and the store
//!   that rotates them at half-life.
//! - [`tls`]: rustls configurations (TLS 1.3, ALPN h2, no SNI, SAN checks);
//!   [`seal`]: how records are sealed (ring's AEADs, copied in short pieces).
//! - [`client`]: the pooled HBONE client; [`server`]: the HBONE server.
//! - [`stream`]: a CONNECT stream as `AsyncRead + AsyncWrite`;
//!   [`copy`]: bidirectional copy with half-close and byte counts.
//! - [`headers`]: `:authority`, `forwarded`, `traceparent` and `baggage`.
//! - [`limit`]: global and per-source connection caps checked at accept.

pub mod ca;
pub mod cert;
pub mod client;
pub mod copy;
pub mod drain;
pub mod headers;
pub mod limit;
pub use mesh_model::identity;
pub mod seal;
pub mod server;
pub mod socket;
pub mod stream;
pub mod tls;

pub use mesh_model::SpiffeId;

/// The HBONE port, inbound at ztunnel and waypoint.
pub use mesh_model::HBONE_PORT;
/// HTTP/2 flow-control windows and frame size (DESIGN §3).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Streams the client opens per connection; the server advertises more.
pub const CLIENT_MAX_STREAMS: usize = 100;
pub const SERVER_MAX_STREAMS: u32 = 200;
