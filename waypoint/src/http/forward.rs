//! One request, from the client to an endpoint and back:
//!
//! 1. refuse what is never forwarded (plain CONNECT: a tunnel inside the
//!    tunnel would make the waypoint an open relay);
//! 2. strip hop-by-hop fields, add `x-request-id`, propagate `traceparent`;
//! 3. apply the L7 configuration against the current snapshot
//!    ([`super::plan`]): authorization, the route's rule, its fault,
//!    filters, backend and mirrors;
//! 4. send, retrying as the rule allows ([`super::attempt`]), over pooled
//!    connections; report each outcome for outlier ejection;
//! 5. stream the response back through the rule's response filters,
//!    closing the request's record when it ends; a `101` (or a `2xx` to an
//!    extended CONNECT) splices the two upgraded streams.

use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::header::{HeaderValue, CONNECTION, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use mesh_model::route::apply_response_filters;
use mesh_model::ResponseFlag;

use super::attempt::{self, Policy};
use super::plan::{plan, Plan, PlanCtx};
use super::reply::{local_reply, Local};
use crate::body::{full, grpc_status, DownBody, RequestBody, ResponseBody};
use crate::headers;
use crate::proxy::Stream;
use crate::record::Record;
use crate::upstream::balancer::{Chosen, InFlight};
use crate::upstream::pool::Version;

/// Attempts per opaque TCP connection when earlier ones could not connect
/// (as requests on the default route: [`attempt::DEFAULT_ATTEMPTS`]).
pub const MAX_ATTEMPTS: usize = attempt::DEFAULT_ATTEMPTS as usize;

/// Serves one request of `s`.
pub async fn handle(
    s: Arc<Stream>,
    mut req: Request<Incoming>,
) -> Result<Response<DownBody>, Infallible> {
    let proxy = &s.proxy;
    let inflight = proxy.balancer.request();
    let mut rec = Record::start(&proxy.telemetry, &s.down, s.version.label());
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let grpc = headers::is_grpc(req.headers());
    rec.request(req.method(), req.uri(), authority.as_deref(), grpc);
    let h1 = s.version == Version::Http1;
    let extended = req.extensions().get::<hyper::ext::Protocol>().is_some();
    if req.method() == Method::CONNECT && !extended {
        rec.fail(
            ResponseFlag::None,
            "connect_refused",
            "CONNECT is not forwarded",
        );
        // An HTTP/1.1 CONNECT ends the request stream: close after it.
        let local = Local::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not forwarded by the waypoint\n",
        );
        return Ok(local_reply(rec, local.closing(h1), grpc));
    }
    let upgrade = headers::is_upgrade(req.method(), req.headers(), extended);
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let ids = headers::identify(&mut parts.headers);
    rec.event.request_id = Some(ids.request_id);
    rec.event.trace_id = Some(ids.trace_id);
    let snap = proxy.snapshot();
    let ctx = PlanCtx {
        snap: &snap,
        target: &s.target,
        gateway: &proxy.gateway,
        peer: &s.down.identity,
        source_ip: s.down.addr.ip(),
        authority: s.authority,
    };
    let forward = match plan(&ctx, &mut parts, &mut rand::random) {
        Plan::Forward(f) => f,
        Plan::Reply(r) => {
            rec.fail(r.flag, r.reason, &r.error);
            let local = Local {
                status: r.status,
                body: r.body,
                location: r.location,
                grpc_status: r.grpc_status,
                close: upgrade && h1,
            };
            return Ok(local_reply(rec, local, grpc));
        }
    };
    rec.event.route = forward.route.as_ref().map(ToString::to_string);
    if h1 {
        parts.uri = headers::origin_form(&parts.uri);
    }
    if let Some(delay) = forward.delay {
        tokio::time::sleep(delay).await;
    }
    let bodyless = hyper::body::Body::is_end_stream(&body);
    let request_bytes = Arc::new(AtomicU64::new(0));
    let replay = super::replay::Replay::new(RequestBody::new(body, request_bytes.clone()).boxed());
    if !forward.mirrors.is_empty() {
        if bodyless {
            super::mirror::send_copies(&s, &parts, forward.mirrors, None);
        } else {
            super::mirror::send_with_body(&s, &parts, forward.mirrors, replay.on_complete());
        }
    }
    let policy = Policy::of(forward.rule);
    let deadline = policy.deadline.map(|d| tokio::time::Instant::now() + d);
    let sent = attempt::send(&s, &forward.backend, &parts, &replay, &policy, &mut rec).await;
    let (mut resp, chosen) = match sent {
        Ok(r) => r,
        Err(f) => {
            let local = Local::new(f.status, f.body).closing(upgrade && h1);
            return Ok(local_reply(rec, local, grpc));
        }
    };
    if let Some(rule) = forward.rule {
        apply_response_filters(resp.headers_mut(), rule);
    }
    Ok(respond(Answer {
        s: &s,
        resp,
        rec,
        chosen,
        inflight,
        request_bytes,
        down_upgrade,
        deadline,
    }))
}

struct Answer<'a> {
    s: &'a Stream,
    resp: Response<Incoming>,
    rec: Record,
    chosen: Chosen,
    inflight: InFlight,
    request_bytes: Arc<AtomicU64>,
    down_upgrade: Option<OnUpgrade>,
    /// `timeouts.request`: the whole response within it.
    deadline: Option<tokio::time::Instant>,
}

/// The upstream's response, on its way to the client.
fn respond(a: Answer<'_>) -> Response<DownBody> {
    let Answer {
        s,
        mut resp,
        mut rec,
        chosen,
        inflight,
        request_bytes,
        down_upgrade,
        deadline,
    } = a;
    let status = resp.status();
    rec.event.status = status.as_u16();
    rec.event.grpc_status = grpc_status(resp.headers());
    let switching = down_upgrade.is_some()
        && (status == StatusCode::SWITCHING_PROTOCOLS
            || (s.version == Version::Http2 && status.is_success()));
    let up_upgrade = switching.then(|| hyper::upgrade::on(&mut resp));
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, switching);
    if down_upgrade.is_some() && !switching && s.version == Version::Http1 {
        // The rest of this connection may be the refused protocol's.
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if let (Some(up), Some(down)) = (up_upgrade, down_upgrade.filter(|_| switching)) {
        tokio::spawn(splice(up, down, rec, chosen, inflight));
        return Response::from_parts(parts, full(bytes::Bytes::new()));
    }
    let body = ResponseBody::new(body, rec, request_bytes)
        .with_guards(chosen, inflight)
        .with_deadline(deadline);
    Response::from_parts(parts, body.boxed())
}

/// Copies between the two sides of an upgraded request until both close.
async fn splice(
    up: OnUpgrade,
    down: OnUpgrade,
    mut rec: Record,
    _chosen: Chosen,
    _inflight: InFlight,
) {
    let (up, down) = tokio::join!(up, down);
    let (up, down) = match (up, down) {
        (Ok(u), Ok(d)) => (u, d),
        (Err(e), _) | (_, Err(e)) => {
            rec.fail(
                ResponseFlag::Connect,
                "upgrade_failed",
                mesh_runtime::error_chain(&e),
            );
            return rec.finish();
        }
    };
    let (mut up, mut down) = (TokioIo::new(up), TokioIo::new(down));
    match tokio::io::copy_bidirectional(&mut down, &mut up).await {
        Ok((sent, received)) => {
            rec.event.bytes_recv = sent;
            rec.event.bytes_sent = received;
        }
        Err(e) => rec.fail(ResponseFlag::Connect, "upgraded_stream_error", e),
    }
    rec.finish();
}
