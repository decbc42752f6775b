//! What the L7 configuration decides for one request before anything is
//! sent, in the order Istio's waypoint applies it:
//!
//! 1. L7 authorization: the policies bound to this waypoint's Gateway and
//!    to the Service addressed ([`authorize_request`]); a denial is 403
//!    `RBAC: access denied`.
//! 2. The route: for a Service, the rule its attached routes select
//!    (Gateway API precedence, [`select_route`]); no route attached: the
//!    default (all ready endpoints); routes but no match: 404. A pod
//!    dialled directly always gets the default.
//! 3. The rule's fault (delay and/or abort), its request filters (header
//!    changes, rewrites, or a redirect to answer with), its weighted
//!    backend, and the mirrors this request falls into.
//!
//! Pure: the snapshot and the request head in, a [`Plan`] out; every
//! random choice comes from `draw`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, StatusCode};
use mesh_model::l7policy::{authorize_request, RequestCtx};
use mesh_model::policy::Decision;
use mesh_model::route::{
    apply_request_filters, pick_backend, select_route, AbortStatus, FilterOutcome, RedirectCtx,
    RequestView, RouteKey, RouteRule, Selection,
};
use mesh_model::state::Snapshot;
use mesh_model::{ResponseFlag, SpiffeId};

use crate::admit::Target;
use crate::route::{default_backend, service_backend, Backend};

/// The body of an L7 denial (DESIGN §6, as Istio's).
pub const DENIED_BODY: &str = "RBAC: access denied";

/// The waypoint's own Gateway: what policies bind to with `targetRefs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub namespace: String,
    pub name: String,
}

/// Who sent the request and where it was addressed.
#[derive(Debug, Clone, Copy)]
pub struct PlanCtx<'a> {
    pub snap: &'a Snapshot,
    pub target: &'a Target,
    pub gateway: &'a Gateway,
    /// The tunnel peer's verified identity.
    pub peer: &'a SpiffeId,
    /// The tunnel's source address (the client pod).
    pub source_ip: IpAddr,
    /// The CONNECT `:authority`: the Service VIP:port or pod IP:port.
    pub authority: SocketAddr,
}

/// The outcome.
#[derive(Debug)]
pub enum Plan<'a> {
    /// Answer without forwarding.
    Reply(Reply),
    Forward(Forward<'a>),
}

/// A local answer and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: &'static str,
    /// A redirect's `Location`.
    pub location: Option<HeaderValue>,
    /// A gRPC status to answer with (a fault's), else one from `status`.
    pub grpc_status: Option<u32>,
    pub flag: ResponseFlag,
    pub reason: &'static str,
    pub error: String,
}

impl Reply {
    fn new(status: StatusCode, body: &'static str, reason: &'static str, error: String) -> Self {
        Reply {
            status,
            body,
            location: None,
            grpc_status: None,
            flag: ResponseFlag::None,
            reason,
            error,
        }
    }
}

/// Where to send the request, and the rule's policies for it.
#[derive(Debug)]
pub struct Forward<'a> {
    pub backend: Backend,
    /// The rule that matched; `None` for the default route.
    pub rule: Option<&'a RouteRule>,
    pub route: Option<RouteKey>,
    /// Wait this long first (fault injection).
    pub delay: Option<Duration>,
    /// Where copies go (mirrors this request falls into).
    pub mirrors: Vec<Backend>,
}

/// Decides what to do with the request whose head is `parts` (filters may
/// change it).
pub fn plan<'a>(
    ctx: &PlanCtx<'a>,
    parts: &mut http::request::Parts,
    draw: &mut dyn FnMut() -> u64,
) -> Plan<'a> {
    let snap = ctx.snap;
    let service = match ctx.target {
        Target::Service { service, .. } => snap.service_by_name(&service.namespace, &service.name),
        Target::Workload { .. } => None,
    };
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let request = RequestCtx {
        source_identity: Some(ctx.peer),
        source_ip: ctx.source_ip,
        remote_ip: ctx.source_ip,
        destination_ip: ctx.authority.ip(),
        destination_port: ctx.authority.port(),
        host,
        method: parts.method.as_str(),
        path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &parts.headers,
    };
    let policies = snap.l7_policies_for(
        &ctx.gateway.namespace,
        &ctx.gateway.name,
        service.map(|s| &**s),
    );
    if let Decision::Deny(d) = authorize_request(policies, &request) {
        let mut r = Reply::new(
            StatusCode::FORBIDDEN,
            DENIED_BODY,
            d.reason(),
            d.to_string(),
        );
        r.flag = ResponseFlag::Deny;
        return Plan::Reply(r);
    }
    let default = || match default_backend(snap, ctx.target) {
        Ok(backend) => Plan::Forward(Forward {
            backend,
            rule: None,
            route: None,
            delay: None,
            mirrors: Vec::new(),
        }),
        Err(e) => Plan::Reply(no_backend(&e)),
    };
    let (Some(svc), Target::Service { port, .. }) = (service, ctx.target) else {
        return default();
    };
    let view = RequestView::new(parts);
    let m = match select_route(snap.routes_for(svc, *port), &view) {
        Selection::Default => return default(),
        Selection::NotFound => {
            return Plan::Reply(Reply::new(
                StatusCode::NOT_FOUND,
                "route not found",
                "no_route_match",
                "no rule of the Service's routes matches".into(),
            ))
        }
        Selection::Matched(m) => m,
    };
    let mut delay = None;
    if let Some(fault) = &m.rule.fault {
        let action = fault.decide(draw(), draw());
        if let Some(abort) = action.abort {
            let mut r = Reply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "fault filter abort",
                "fault_abort",
                format!("{}: fault injected", m.route.key()),
            );
            match abort {
                AbortStatus::Http(code) => {
                    r.status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
                }
                AbortStatus::Grpc(code) => r.grpc_status = Some(code),
            }
            return Plan::Reply(r);
        }
        delay = action.delay;
    }
    let redirect = RedirectCtx {
        scheme: "http",
        port: ctx.authority.port(),
    };
    match apply_request_filters(parts, &m, &redirect) {
        FilterOutcome::Forward => {}
        FilterOutcome::Redirect(to) => {
            let mut r = Reply::new(to.status, "", "redirect", String::new());
            r.location = HeaderValue::from_str(&to.location).ok();
            return Plan::Reply(r);
        }
        FilterOutcome::InvalidRewrite => {
            return Plan::Reply(Reply::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "invalid rewrite",
                "invalid_rewrite",
                format!("{}: the rewrite made an invalid URI", m.route.key()),
            ))
        }
    }
    let Some(chosen) = pick_backend(&m.rule.backends, draw()) else {
        return Plan::Reply(Reply::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no backend",
            "no_backend",
            format!("{}: every backend has weight 0", m.route.key()),
        ));
    };
    let backend = match service_backend(snap, &chosen.service) {
        Ok(b) => b,
        Err(e) => return Plan::Reply(no_backend(&e)),
    };
    let mirrors = m
        .rule
        .mirrors()
        .filter(|mirror| mirror.fraction.hits(draw()))
        .filter_map(|mirror| service_backend(snap, &mirror.service).ok())
        .collect();
    Plan::Forward(Forward {
        backend,
        rule: Some(m.rule),
        route: Some(m.route.key()),
        delay,
        mirrors,
    })
}

fn no_backend(e: &crate::route::NoBackend) -> Reply {
    let mut r = Reply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no healthy upstream",
        e.reason(),
        e.to_string(),
    );
    r.flag = ResponseFlag::Connect;
    r
}

#[cfg(test)]
mod tests;
