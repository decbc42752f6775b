//! HTTP inside a CONNECT stream: hyper's server, HTTP/1.1 behind the strict
//! framing guard ([`crate::h1::guard`]) or HTTP/2 with h2's rapid-reset
//! limits and a request-header timeout ([`h2_deadline`]), each request handed to [`forward::handle`]. On drain, HTTP/2
//! sends GOAWAY and HTTP/1.1 answers the request in progress with
//! `connection: close`, then both finish what is in flight.

pub mod attempt;
pub mod forward;
pub mod h2_deadline;
pub mod mirror;
pub mod plan;
pub mod replay;
pub mod reply;

use std::sync::Arc;
use std::time::Duration;

use hbone::drain::Watch;
use hbone::stream::H2Stream;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::h1::framing::MAX_HEAD_BYTES;
use crate::h1::guard::Guarded;
use crate::protocol::Rewind;
use crate::proxy::Stream;

/// Concurrent requests per HTTP/2 connection from a client.
pub const MAX_CONCURRENT_STREAMS: u32 = 1000;
/// h2's rapid-reset limits (CVE-2023-44487): streams the client opens and
/// resets before we accept them, and streams we reset for its errors.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Keepalive PINGs to HTTP/2 clients.
const H2_KEEPALIVE: Duration = Duration::from_secs(10);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves HTTP/1.1 on `io` until the client is done or the drain finishes.
pub async fn serve_h1(stream: Stream, io: Rewind<H2Stream>, mut watch: Watch) {
    let telemetry = stream.proxy.telemetry.clone();
    let down = stream.down.clone();
    let on_refused = Box::new(move |v: crate::h1::guard::Verdict| {
        let mut rec = crate::record::Record::start(&telemetry, &down, "HTTP/1.1");
        rec.event.status = v.status().as_u16();
        rec.fail(mesh_model::ResponseFlag::None, v.reason(), v);
        tracing::info!(client = %down.addr, reason = v.reason(), "HTTP/1.1 request refused");
        rec.finish();
    });
    let guarded = Guarded::new(io, stream.proxy.tuning.head_timeout, on_refused);
    let mut stream = stream;
    stream.verdicts = Some(guarded.verdicts());
    let stream = Arc::new(stream);
    let svc = service_fn(move |req| forward::handle(stream.clone(), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // The guard times out request heads and holds them until complete.
        .header_read_timeout(None)
        .half_close(true)
        .max_buf_size(2 * MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(guarded), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = watch.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP/1.1 connection ended with an error");
    }
}

/// Serves HTTP/2 on `io` until the client is done or the drain finishes.
pub async fn serve_h2(stream: Stream, io: Rewind<H2Stream>, mut watch: Watch) {
    let proxy = stream.proxy.clone();
    let peer = stream.down.addr;
    let io = h2_deadline::HeaderDeadline::new(
        io,
        stream.proxy.tuning.head_timeout,
        Box::new(move || {
            tracing::info!(%peer, "HTTP/2 request headers not complete within the header timeout; connection closed");
            proxy.telemetry.metrics.refused("h2_header_timeout");
        }),
    );
    let stream = Arc::new(stream);
    let svc = service_fn(move |req| forward::handle(stream.clone(), req));
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .initial_stream_window_size(hbone::STREAM_WINDOW)
        .initial_connection_window_size(hbone::CONNECTION_WINDOW)
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .enable_connect_protocol()
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = watch.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}
