//! Opaque TCP: a stream that is not HTTP is forwarded whole to one endpoint
//! (chosen as a request would be), after L4 policy
//! ([`mesh_model::policy::authorize`]) allows the client's identity to
//! reach that endpoint's port. The bytes read while sniffing go first.

use std::sync::Arc;

use bytes::Bytes;
use hbone::copy::{copy_bidirectional, Counters};
use hbone::drain::Watch;
use hbone::stream::H2Stream;
use mesh_model::policy::{authorize, ConnCtx, Decision};
use mesh_model::ResponseFlag;
use tokio::io::AsyncWriteExt;

use crate::proxy::Stream;
use crate::record::Record;
use crate::route;
use crate::upstream::balancer::InFlight;
use crate::upstream::dial::{self, UpstreamIo};

/// Forwards `down` (whose first bytes were `prefix`) to an endpoint of the
/// stream's target.
pub async fn forward(s: Stream, mut down: H2Stream, prefix: Bytes, _watch: Watch) {
    let proxy = s.proxy.clone();
    let mut rec = Record::start(&proxy.telemetry, &s.down, "TCP");
    let snap = proxy.snapshot();
    let backend = match route::default_backend(&snap, &s.target) {
        Ok(b) => b,
        Err(e) => {
            rec.fail(ResponseFlag::Connect, e.reason(), &e);
            down.reset(h2::Reason::REFUSED_STREAM);
            return;
        }
    };
    let _inflight = proxy.balancer.request();
    let mut tried = Vec::new();
    let mut _retry: Option<InFlight> = None;
    let (mut up, chosen) = loop {
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
            down.reset(h2::Reason::REFUSED_STREAM);
            return;
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
                down.reset(h2::Reason::REFUSED_STREAM);
                return;
            }
        }
        let mut meta = s.meta.clone();
        meta.traceparent = Some(hbone::headers::new_traceparent());
        match dial::dial(&proxy.hbone, &proxy.identity, &ep, meta).await {
            Ok(up) => {
                proxy.balancer.report(&chosen, &backend.endpoints, false);
                break (up, chosen);
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
                    _ => {
                        down.reset(h2::Reason::REFUSED_STREAM);
                        return;
                    }
                }
            }
        }
    };
    _retry = None;
    rec.flag = ResponseFlag::None;
    rec.event.reason = None;
    rec.event.error = None;
    rec.tcp_opened();
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
    drop(chosen);
    drop::<UpstreamIo>(up);
    rec.finish();
}
