//! One request, from the client to an endpoint and back:
//!
//! 1. refuse what is never forwarded (plain CONNECT: a tunnel inside the
//!    tunnel would make the waypoint an open relay);
//! 2. strip hop-by-hop fields, add `x-request-id`, propagate `traceparent`;
//! 3. resolve the backend against the current snapshot, pick an endpoint,
//!    send over a pooled connection; a request that never reached the
//!    endpoint (connect failure, a stale pooled connection) tries another,
//!    at most [`MAX_ATTEMPTS`] times and within the retry budget;
//! 4. report the outcome for outlier ejection and stream the response
//!    back, closing the request's record when it ends; a `101` (or a `2xx`
//!    to an extended CONNECT) splices the two upgraded streams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use futures::FutureExt;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use mesh_model::ResponseFlag;

use crate::body::{full, grpc_status, DownBody, RequestBody, ResponseBody};
use crate::headers;
use crate::proxy::Stream;
use crate::record::Record;
use crate::route::{self, Backend};
use crate::upstream::balancer::{Chosen, InFlight};
use crate::upstream::dial;
use crate::upstream::pool::{SendError, Version};

/// Attempts per request when earlier ones never reached an endpoint
/// (Istio's default: the first try and two retries).
pub const MAX_ATTEMPTS: usize = 3;

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
    let extended = req.extensions().get::<hyper::ext::Protocol>().is_some();
    if req.method() == Method::CONNECT && !extended {
        rec.fail(
            ResponseFlag::None,
            "connect_refused",
            "CONNECT is not forwarded",
        );
        // An HTTP/1.1 CONNECT ends the request stream: close after it.
        return Ok(local_reply(
            rec,
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not forwarded by the waypoint\n",
            grpc,
            s.version == Version::Http1,
        ));
    }
    let upgrade = headers::is_upgrade(req.method(), req.headers(), extended);
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let ids = headers::identify(&mut parts.headers);
    rec.event.request_id = Some(ids.request_id);
    rec.event.trace_id = Some(ids.trace_id);
    if s.version == Version::Http1 {
        parts.uri = headers::origin_form(&parts.uri);
    }
    let snap = proxy.snapshot();
    let backend = match route::default_backend(&snap, &s.target) {
        Ok(b) => b,
        Err(e) => {
            rec.fail(ResponseFlag::Connect, e.reason(), &e);
            return Ok(local_reply(
                rec,
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream\n",
                grpc,
                false,
            ));
        }
    };
    let request_bytes = Arc::new(AtomicU64::new(0));
    let body = RequestBody::new(body, request_bytes.clone()).boxed();
    let request = Request::from_parts(parts, body);
    let sent = send(&s, &backend, request, &mut rec).await;
    let (resp, chosen) = match sent {
        Ok(r) => r,
        Err((status, body)) => {
            return Ok(local_reply(rec, status, body, grpc, upgrade));
        }
    };
    Ok(respond(Answer {
        s: &s,
        resp,
        rec,
        chosen,
        inflight,
        request_bytes,
        down_upgrade,
    }))
}

/// Picks endpoints and sends until one answers; on failure, the status and
/// body of the local reply (the record says why).
async fn send(
    s: &Stream,
    backend: &Backend,
    mut request: Request<crate::upstream::pool::UpBody>,
    rec: &mut Record,
) -> Result<(Response<Incoming>, Chosen), (StatusCode, &'static str)> {
    let proxy = &s.proxy;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut _retry: Option<InFlight> = None;
    loop {
        let Some(chosen) = proxy
            .balancer
            .choose(&backend.group, &backend.endpoints, &tried)
        else {
            if tried.is_empty() {
                rec.fail(
                    ResponseFlag::Connect,
                    "no_healthy_upstream",
                    "no endpoint to try",
                );
            }
            return Err((StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n"));
        };
        let ep = chosen.endpoint.clone();
        rec.event.attempts += 1;
        rec.event.upstream = Some(ep.addr.to_string());
        rec.upstream_workload = backend.workload_at(ep.addr).cloned();
        let meta = s.meta.clone();
        let client = proxy.hbone.clone();
        let me = proxy.identity.clone();
        let target = ep.clone();
        let dialer = move || {
            let mut meta = meta.clone();
            meta.traceparent = Some(hbone::headers::new_traceparent());
            let (client, me, target) = (client.clone(), me.clone(), target.clone());
            async move { dial::dial(&client, &me, &target, meta).await }.boxed()
        };
        match proxy.pool.send(&ep, s.version, request, &dialer).await {
            Ok(resp) => {
                let failed = resp.status().is_server_error();
                note_ejection(
                    s,
                    proxy.balancer.report(&chosen, &backend.endpoints, failed),
                );
                return Ok((resp, chosen));
            }
            Err(SendError::NotSent {
                error,
                request: back,
            }) => {
                note_ejection(s, proxy.balancer.report(&chosen, &backend.endpoints, true));
                let flag = match &error {
                    crate::upstream::pool::NotSentError::Dial(d) => d.flag(),
                    _ => ResponseFlag::Connect,
                };
                tracing::debug!(endpoint = %ep.addr, error = %mesh_runtime::error_chain(&error), "upstream not reached");
                rec.fail(
                    flag,
                    "upstream_connect_failure",
                    mesh_runtime::error_chain(&error),
                );
                tried.push(ep.addr);
                if tried.len() >= MAX_ATTEMPTS {
                    return Err((StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n"));
                }
                match proxy.balancer.retry() {
                    Some(g) => _retry = Some(g),
                    None => {
                        rec.event.reason = Some("retry_budget_exhausted");
                        return Err((StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n"));
                    }
                }
                request = *back;
            }
            Err(SendError::Failed(e)) => {
                if let Some(v) = s.verdicts.as_ref().and_then(|v| v.get()) {
                    rec.fail(ResponseFlag::None, v.reason(), v);
                    return Err((v.status(), "malformed request body\n"));
                }
                if e.is_user() {
                    // The client's body failed, not the endpoint.
                    rec.fail(
                        ResponseFlag::None,
                        "downstream_body_error",
                        mesh_runtime::error_chain(&e),
                    );
                    return Err((StatusCode::BAD_REQUEST, "request body failed\n"));
                }
                note_ejection(s, proxy.balancer.report(&chosen, &backend.endpoints, true));
                rec.fail(
                    ResponseFlag::Connect,
                    "upstream_reset",
                    mesh_runtime::error_chain(&e),
                );
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream reset before response\n",
                ));
            }
        }
    }
}

fn note_ejection(s: &Stream, ejected: Option<crate::upstream::balancer::Ejected>) {
    if let Some(e) = ejected {
        s.proxy.telemetry.metrics.ejections.inc();
        tracing::warn!(endpoint = %e.addr, period = ?e.period, "endpoint ejected after consecutive failures");
    }
}

struct Answer<'a> {
    s: &'a Stream,
    resp: Response<Incoming>,
    rec: Record,
    chosen: Chosen,
    inflight: InFlight,
    request_bytes: Arc<AtomicU64>,
    down_upgrade: Option<OnUpgrade>,
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
    let body = ResponseBody::new(body, rec, request_bytes).with_guards(chosen, inflight);
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

/// gRPC's code for an HTTP status the waypoint answers itself (as Envoy
/// maps them).
fn grpc_code(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 | 405 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// A reply from the waypoint itself; closes the record. gRPC clients get
/// a trailers-only response carrying the code instead.
pub fn local_reply(
    mut rec: Record,
    status: StatusCode,
    body: &'static str,
    grpc: bool,
    close: bool,
) -> Response<DownBody> {
    let mut builder = Response::builder();
    let resp = if grpc {
        let code = grpc_code(status);
        rec.event.status = 200;
        rec.event.grpc_status = Some(code);
        builder
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "application/grpc")
            .header("grpc-status", code)
            .header("grpc-message", body.trim_end())
            .body(full(bytes::Bytes::new()))
    } else {
        rec.event.status = status.as_u16();
        rec.event.bytes_sent = body.len() as u64;
        if close {
            builder = builder.header(CONNECTION, "close");
        }
        builder
            .status(status)
            .header(CONTENT_TYPE, "text/plain")
            .body(full(body))
    };
    rec.finish();
    resp.expect("a valid local reply")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Downstream, Telemetry};

    fn rec() -> Record {
        let t = Telemetry {
            metrics: crate::metrics::Metrics::new(),
            access_log: Arc::new(mesh_runtime::accesslog::AccessLog::sink()),
        };
        let down = Arc::new(Downstream {
            addr: "10.1.1.10:4000".parse().unwrap(),
            identity: "spiffe://cluster.local/ns/shop/sa/client".parse().unwrap(),
            workload: None,
            service: None,
        });
        Record::start(&t, &down, "HTTP/2")
    }

    #[test]
    fn grpc_clients_get_a_status_in_a_trailers_only_reply() {
        for (status, code) in [
            (StatusCode::SERVICE_UNAVAILABLE, "14"),
            (StatusCode::BAD_REQUEST, "13"),
            (StatusCode::FORBIDDEN, "7"),
            (StatusCode::METHOD_NOT_ALLOWED, "12"),
            (StatusCode::INTERNAL_SERVER_ERROR, "2"),
        ] {
            let r = local_reply(rec(), status, "why\n", true, false);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["grpc-status"], code, "{status}");
            assert_eq!(r.headers()["grpc-message"], "why");
        }
        let plain = local_reply(rec(), StatusCode::SERVICE_UNAVAILABLE, "why\n", false, true);
        assert_eq!(plain.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(plain.headers()["connection"], "close");
    }
}
