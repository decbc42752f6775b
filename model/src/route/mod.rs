//! L7 routing for the waypoint: Gateway API v1 `HTTPRoute` and `GRPCRoute`
//! attached to a Service (mesh mode, `parentRefs: [{group: "", kind:
//! Service, name: <svc>}]`), and the pure decisions a waypoint takes per
//! request. No I/O, no clock, no randomness of its own: every random
//! choice takes its draw as an argument.
//!
//! ```text
//!  CONNECT VIP:port ─► Snapshot::service_by_vip ─► Snapshot::routes_for(svc, port)
//!                                                        │
//!  request head ─► RequestView::new(&parts) ─► select_route(routes, &view)
//!       ├─ Selection::Default   no route attached: the Service itself, all ready endpoints
//!       ├─ Selection::NotFound  routes attached, none matched: 404 (gRPC: UNIMPLEMENTED)
//!       └─ Selection::Matched(m)
//!             ├─ m.rule.fault → Fault::decide(draw, draw)    delay and/or abort
//!             ├─ apply_request_filters(&mut parts, &m, &ctx) → Forward | Redirect(301/302/…)
//!             ├─ m.rule.mirrors() → Mirror::hits(draw)       fire-and-forget copies
//!             ├─ pick_backend(&m.rule.backends, draw)         None → 500 (all weights zero)
//!             ├─ m.rule.timeouts / m.rule.retry               deadlines, attempts, backoff
//!             └─ response: apply_response_filters(&mut headers, m.rule)
//! ```
//!
//! # The waypoint's API
//!
//! ```ignore
//! // State (crate::state::Snapshot; fed by config::parse / input::MeshInput or
//! // xds::store::XdsStore, which holds ROUTE_TYPE_URL and L7_AUTHORIZATION_TYPE_URL):
//! snap.service_by_vip(ip) -> Option<&Arc<Service>>
//! svc.ports[i].app_protocol -> Option<AppProtocol>                 // None: undeclared, detect
//! snap.routes_for(&svc, port) -> impl Iterator<Item = &Route>      // parentRefs with that port or none
//! snap.l7_policies_for(gw_namespace, gw_name, Some(&svc)) -> impl Iterator<Item = &L7Policy> + Clone
//!
//! // Selection (route::select):
//! RequestView::new(&parts) -> RequestView<'_>                       // method, path, query, headers
//! select_route<'a>(routes: impl IntoIterator<Item = &'a Route>, req: &RequestView<'_>) -> Selection<'a>
//! Matched { route: &Route, rule: &RouteRule, rule_index: usize, match_index: usize }
//!
//! // Backends and chance (route::choice):
//! pick_backend(backends: &[Backend], draw: u64) -> Option<&Backend>  // None: 500
//! Fraction::hits(&self, draw: u64) -> bool
//! Fault::decide(&self, delay_draw: u64, abort_draw: u64) -> FaultAction { delay, abort }
//! Retry::attempts(&self) -> u32; Retry::retries_status(&self, status: u16) -> bool
//! retry_backoff(base: Duration, retry: u32, draw: u64) -> Duration
//! Timeouts::request(&self) / Timeouts::backend_request(&self) -> Option<Duration> // "0s": None
//!
//! // Filters (route::filter):
//! apply_request_filters(parts: &mut http::request::Parts, m: &Matched<'_>, ctx: &RedirectCtx<'_>)
//!     -> FilterOutcome                                              // Forward | Redirect(Redirect)
//! apply_response_filters(headers: &mut http::HeaderMap, rule: &RouteRule)
//! RouteRule::mirrors(&self) -> impl Iterator<Item = &Mirror>
//!
//! // L7 authorization (crate::l7policy):
//! authorize_request<'a, I>(policies: I, ctx: &RequestCtx<'_>) -> policy::Decision
//!     where I: IntoIterator<Item = &'a L7Policy>, I::IntoIter: Clone
//! ```
//!
//! Precedence among rules is the Gateway API's ([`select_route`] has the list).
//! Conversions from the config file and from xDS fill in the API's
//! defaults, so a rule always has at least one match (`PathPrefix /` for
//! HTTP, "any method" for gRPC) and each backend its weight.

mod choice;
mod filter;
mod select;
mod types;

#[cfg(test)]
mod tests;

pub use choice::{pick_backend, retry_backoff, FaultAction};
pub use filter::{
    apply_request_filters, apply_response_filters, replace_prefix, FilterOutcome, Redirect,
    RedirectCtx,
};
pub use select::{select_route, Matched, RequestView, Selection};
pub use types::{
    grpc_status_code, AbortStatus, Backend, Fault, FaultAbort, FaultDelay, Filter, Fraction,
    GrpcMethodMatch, GrpcRouteMatch, HeaderMatch, HeaderModifier, HttpRouteMatch, Mirror,
    ParentRef, PathMatch, PathModifier, Pattern, PatternError, QueryParamMatch, RedirectScheme,
    RequestRedirect, Retry, Route, RouteKey, RouteKind, RouteRule, ServiceRef, Timeouts, Timestamp,
    UrlRewrite, ValueMatch, DEFAULT_RETRY_ATTEMPTS, GRPC_STATUS_NAMES, MAX_WEIGHT,
};
