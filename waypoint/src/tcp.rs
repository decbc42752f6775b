//! Opaque TCP: a stream that is not HTTP is forwarded whole to one endpoint
//! (chosen as a request would be), after L4 policy
//! ([`mesh_model::policy::authorize`]) allows the client's identity to
//! reach that endpoint's port.
//!
//! A port declared TCP is connected before the CONNECT is answered, so a
//! denial is a 401 and an unreachable endpoint a 503 (DESIGN §3); a sniffed
//! stream was accepted already and is reset instead. The bytes read while
//! sniffing go first.

use std::sync::Arc;

use bytes::Bytes;
use hbone::copy::{copy_bidirectional, Counters};
use hbone::drain::Watch;
use hbone::stream::H2Stream;
use http::StatusCode;
use mesh_model::policy::{authorize, ConnCtx, Decision};
use mesh_model::ResponseFlag;
use tokio::io::AsyncWriteExt;

use crate::proxy::Stream;
use crate::record::Record;
use crate::route;
use crate::upstream::balancer::{Chosen, InFlight};
use crate::upstream::dial::{self, UpstreamIo};

/// A connection to an endpoint, ready to carry the stream.
pub struct Connected {
    up: UpstreamIo,
    rec: Record,
    _chosen: Chosen,
    _inflight: InFlight,
}

/// Why no endpoint took the stream; the record is written when dropped.
pub struct Refused {
    pub status: StatusCode,
    _rec: Box<Record>,
}

/// Chooses an endpoint of the stream's target that policy lets the client
/// reach, and connects to it (trying others if a connect fails).
pub async fn connect(s: &Stream) -> Result<Connected, Refused> {
    let proxy = s.proxy.clone();
    let mut rec = Record::start(&proxy.telemetry, &s.down, "TCP");
    let refuse = |status, rec| {
        Err(Refused {
            status,
            _rec: Box::new(rec),
        })
    };
    let snap = proxy.snapshot();
    let backend = match route::default_backend(&snap, &s.target) {
        Ok(b) => b,
        Err(e) => {
            rec.fail(ResponseFlag::Connect, e.reason(), &e);
            return refuse(StatusCode::SERVICE_UNAVAILABLE, rec);
        }
    };
    let inflight = proxy.balancer.request();
    let mut tried = Vec::new();
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
            return refuse(StatusCode::SERVICE_UNAVAILABLE, rec);
        };
        let ep = chosen.endpoint.clone();
        let workload = backend.workload_at(ep.addr).cloned();
        rec.event.attempts += 1;
        rec.event.upstream = Some(ep.addr.to_string());
        rec.upstream_workload = workload.clone();
        if let Some(w) = &workload {
            let ctx = ConnCtx {
                src_identity: Some(s.down.identity.clone()),
                src_ip: s.down.addr.ip(),
                dst: w,
                dst_port: ep.addr.port(),
            };
            if let Decision::Deny(d) = authorize(snap.policies(), &ctx) {
                tracing::info!(client = %s.down.identity, endpoint = %ep.addr, reason = %d, "opaque TCP denied by policy");
                proxy.telemetry.metrics.refused("denied");
                rec.fail(ResponseFlag::Deny, d.reason(), &d);
                return refuse(StatusCode::UNAUTHORIZED, rec);
            }
        }
        let mut meta = s.meta.clone();
        meta.traceparent = Some(hbone::headers::new_traceparent());
        match dial::dial(&proxy.hbone, &proxy.identity, &ep, meta).await {
            Ok(up) => {
                proxy.balancer.report(&chosen, &backend.endpoints, false);
                rec.flag = ResponseFlag::None;
                rec.event.reason = None;
                rec.event.error = None;
                rec.tcp_opened();
                return Ok(Connected {
                    up,
                    rec,
                    _chosen: chosen,
                    _inflight: inflight,
                });
            }
            Err(e) => {
                proxy.balancer.report(&chosen, &backend.endpoints, true);
                rec.fail(
                    e.flag(),
                    "upstream_connect_failure",
                    mesh_runtime::error_chain(&e),
                );
                tried.push(ep.addr);
                match proxy.balancer.retry() {
                    Some(g) if tried.len() < crate::http::forward::MAX_ATTEMPTS => _retry = Some(g),
                    _ => return refuse(StatusCode::SERVICE_UNAVAILABLE, rec),
                }
            }
        }
    }
}

/// Copies between the client's stream (after `prefix`, the bytes read
/// while sniffing) and the endpoint until both sides close.
pub async fn relay(c: Connected, mut down: H2Stream, prefix: Bytes, _watch: Watch) {
    let Connected {
        mut up,
        mut rec,
        _chosen,
        _inflight,
    } = c;
    let counters = Arc::new(Counters::default());
    let result = async {
        if !prefix.is_empty() {
            up.write_all(&prefix).await?;
        }
        copy_bidirectional(&mut down, &mut up, &counters)
            .await
            .map_err(std::io::Error::other)
    }
    .await;
    let (to_up, to_down) = counters.snapshot();
    rec.event.bytes_recv = to_up + prefix.len() as u64;
    rec.event.bytes_sent = to_down;
    if let Err(e) = result {
        rec.fail(
            ResponseFlag::Connect,
            "stream_error",
            mesh_runtime::error_chain(&e),
        );
    }
    drop(up);
    rec.finish();
}

/// A stream already accepted (its protocol was sniffed): connect and relay,
/// or reset it.
pub async fn forward(s: Stream, mut down: H2Stream, prefix: Bytes, watch: Watch) {
    match connect(&s).await {
        Ok(c) => relay(c, down, prefix, watch).await,
        Err(_refused) => down.reset(h2::Reason::REFUSED_STREAM),
    }
}
