//! The waypoint: the L7 proxy of ambient mesh (DESIGN §6).
//!
//! ```text
//!  ztunnel ══HBONE══► :15008 HboneServer (the waypoint's own identity)
//!                        │ admit: :authority is a Service VIP:port or pod IP:port bound to us
//!                        ▼
//!                     protocol: declared, or sniffed (HTTP/2 preface, HTTP/1 method, 200 ms)
//!              HTTP/1.1 ─┤ h1::guard (strict framing, head timeout) ─► hyper server
//!              HTTP/2 ───┤ hyper server (rapid-reset limits)
//!                        │   per request: http::plan (L7 authz, route rule, fault, filters,
//!                        │   backend, mirrors), http::attempt (endpoint per attempt, retries,
//!                        │   timeouts), pooled HTTP connection ─► HBONE to podIP:15008
//!              opaque ───┘ L4 policy, pick an endpoint, copy both ways
//! ```
//!
//! Pure decisions, table-tested: [`admit`] (which CONNECTs we serve),
//! [`protocol`] (declared or sniffed), [`lb`] (endpoint choice, outlier
//! ejection, retry budget), [`h1::framing`] (strict HTTP/1.1 framing),
//! [`headers`] (what a request carries upstream), [`route`] and
//! [`http::plan`] (what the L7 configuration decides). The I/O shell:
//! [`inbound`], [`http`], [`upstream`], [`tcp`], [`app`].

pub mod admit;
pub mod app;
pub mod body;
pub mod h1;
pub mod headers;
pub mod http;
pub mod inbound;
pub mod lb;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod record;
pub mod route;
pub mod tcp;
pub mod upstream;
