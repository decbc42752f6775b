//! HBONE in: each CONNECT is admitted ([`crate::admit`]) or refused with
//! 400, then its stream is served as HTTP/1.1, HTTP/2 or opaque TCP, as
//! the port declares or as its first bytes say ([`crate::protocol`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use hbone::headers::ConnectMeta;
use hbone::server::{Handler, InboundRequest, ServerError};
use hbone::stream::H2Stream;
use tokio::io::AsyncReadExt;

use crate::admit::{admit, Refusal, Target};
use crate::protocol::{self, Decision, Detected, Rewind};
use crate::proxy::{Proxy, Stream, Tuning};
use crate::record::{Downstream, RequestEvent};
use crate::upstream::pool::Version;

/// The HBONE CONNECT handler.
pub struct Inbound(pub Arc<Proxy>);

impl Handler for Inbound {
    fn handle(&self, req: InboundRequest) -> BoxFuture<'static, ()> {
        Box::pin(serve(self.0.clone(), req))
    }

    fn connection_failed(&self, peer: SocketAddr, local: SocketAddr, err: &ServerError) {
        tracing::warn!(%peer, %local, error = %mesh_runtime::error_chain(err), "inbound HBONE connection refused");
        self.0.telemetry.metrics.refused(err.reason());
    }
}

/// Counts a stream being served, for the gauge.
struct Active(Arc<Proxy>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.telemetry.metrics.active_streams.dec();
    }
}

async fn serve(proxy: Arc<Proxy>, req: InboundRequest) {
    let snap = proxy.snapshot();
    let target = match admit(&snap, &proxy.identity, req.authority) {
        Ok(t) => t,
        Err(refusal) => {
            tracing::info!(peer = %req.peer, authority = %req.authority, reason = refusal.reason(), error = %refusal, "CONNECT refused");
            proxy.telemetry.metrics.refused(refusal.reason());
            log_refusal(&proxy, &snap, &req, &refusal);
            req.reject(refusal.status());
            return;
        }
    };
    let peer_ip = req.peer_addr.ip();
    // ztunnel dials from the client pod's own address (and names it in
    // `forwarded`): the workload there, if its identity is the peer's.
    let client = req
        .meta
        .client
        .filter(|c| c.ip() == peer_ip && c.port() != 0);
    let down = Arc::new(Downstream {
        addr: client.unwrap_or(req.peer_addr),
        identity: req.peer.clone(),
        workload: snap
            .workload_by_ip(peer_ip)
            .filter(|w| w.identity() == req.peer)
            .cloned(),
        service: match &target {
            Target::Service { service, .. } => Some(service.clone()),
            Target::Workload { .. } => None,
        },
    });
    let meta = ConnectMeta {
        client: Some(down.addr),
        host: target.service_host().map(str::to_owned),
        traceparent: None,
        baggage: req.meta.baggage.clone(),
    };
    let decision = protocol::decide(target.app_protocol());
    let mut stream = Stream {
        proxy: proxy.clone(),
        target,
        down,
        meta,
        version: Version::Http1,
        verdicts: None,
        authority: req.authority,
    };
    proxy.telemetry.metrics.active_streams.inc();
    let _active = Active(proxy.clone());
    let watch = proxy.drain.watch();
    if decision == Decision::Tcp {
        // Declared TCP: answer the CONNECT only once connected (DESIGN §3).
        let connected = match crate::tcp::connect(&stream).await {
            Ok(c) => c,
            Err(refused) => return req.reject(refused.status),
        };
        if let Ok(io) = req.accept() {
            crate::tcp::relay(connected, io, Bytes::new(), watch).await;
        }
        return;
    }
    let mut io = match req.accept() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT stream gone before it was answered");
            return;
        }
    };
    let (detected, prefix) = match sniff(&mut io, decision, proxy.tuning).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "stream failed before its protocol was known");
            return;
        }
    };
    if detected == Detected::Http2 {
        stream.version = Version::Http2;
    }
    match detected {
        Detected::Http1 => crate::http::serve_h1(stream, Rewind::new(prefix, io), watch).await,
        Detected::Http2 => crate::http::serve_h2(stream, Rewind::new(prefix, io), watch).await,
        Detected::Opaque | Detected::NeedMore => {
            crate::tcp::forward(stream, io, prefix, watch).await
        }
    }
}

/// The access-log line of a CONNECT refused at admission (protocol
/// `HBONE`, method `CONNECT`, the refusal's status and reason).
fn log_refusal(
    proxy: &Proxy,
    snap: &mesh_model::state::Snapshot,
    req: &InboundRequest,
    refusal: &Refusal,
) {
    let event = RequestEvent {
        src_addr: req.peer_addr.to_string(),
        src_workload: snap
            .workload_by_ip(req.peer_addr.ip())
            .filter(|w| w.identity() == req.peer)
            .map(|w| w.key()),
        src_identity: req.peer.to_string(),
        protocol: "HBONE",
        method: Some("CONNECT".to_owned()),
        authority: Some(req.authority.to_string()),
        status: refusal.status().as_u16(),
        response_flags: mesh_model::flags::ResponseFlag::None.as_str(),
        reason: Some(refusal.reason()),
        error: Some(refusal.to_string()),
        ..RequestEvent::default()
    };
    proxy.telemetry.access_log.log_event(&event);
}

/// Reads the first bytes and decides; returns them for replay. An
/// undeclared port that stays silent for [`Tuning::detect_timeout`] is
/// opaque; a port declared HTTP waits as long as a request head may take.
async fn sniff(
    io: &mut H2Stream,
    decision: Decision,
    tuning: Tuning,
) -> std::io::Result<(Detected, Bytes)> {
    let deadline = match decision {
        Decision::Tcp => return Ok((Detected::Opaque, Bytes::new())),
        Decision::Http2 => return Ok((Detected::Http2, Bytes::new())),
        Decision::Sniff => tuning.detect_timeout,
        Decision::Http => tuning.head_timeout,
    };
    let deadline = tokio::time::Instant::now() + deadline;
    let mut buf = BytesMut::with_capacity(protocol::DETECT_MAX);
    loop {
        let detected = protocol::detect(&buf);
        if detected != Detected::NeedMore {
            return Ok((detected, buf.freeze()));
        }
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Err(_) => {
                let fallback = match decision {
                    Decision::Http if !buf.is_empty() => Detected::Http1,
                    _ => Detected::Opaque,
                };
                return Ok((fallback, buf.freeze()));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}
