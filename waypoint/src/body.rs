//! Bodies on their way through: counted, and the response's end (or
//! failure, or abandonment) closes the request's [`Record`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use mesh_model::ResponseFlag;

use crate::record::Record;
use crate::upstream::balancer::{Chosen, InFlight};
use crate::upstream::pool::BoxError;

/// The body of a response to the client.
pub type DownBody = BoxBody<Bytes, BoxError>;

/// A body of fixed bytes (local replies).
pub fn full(bytes: impl Into<Bytes>) -> DownBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// The `grpc-status` of a header or trailer map.
pub fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
}

impl RequestBody {
    pub fn new(inner: Incoming, bytes: Arc<AtomicU64>) -> Self {
        RequestBody { inner, bytes }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's response body on its way to the client; closes the
/// request's record when it ends.
pub struct ResponseBody {
    inner: Incoming,
    record: Option<Record>,
    request_bytes: Arc<AtomicU64>,
    /// Held while the response streams: the endpoint's request in flight
    /// (least request) and the request's (retry budget).
    _guards: Option<(Chosen, InFlight)>,
    /// `timeouts.request` covers the whole response: past it, the body
    /// is cut (an error frame: the stream is reset, or an HTTP/1.1
    /// connection closed).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The response body outlived `timeouts.request`.
#[derive(Debug, thiserror::Error)]
#[error("response not complete within timeouts.request")]
struct BodyTimeout;

impl ResponseBody {
    pub fn new(inner: Incoming, record: Record, request_bytes: Arc<AtomicU64>) -> Self {
        let mut body = ResponseBody {
            inner,
            record: Some(record),
            request_bytes,
            _guards: None,
            deadline: None,
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    pub fn with_guards(mut self, chosen: Chosen, inflight: InFlight) -> Self {
        self._guards = Some((chosen, inflight));
        self
    }

    /// Cuts the body at `at` (the request's `timeouts.request`).
    pub fn with_deadline(mut self, at: Option<tokio::time::Instant>) -> Self {
        self.deadline = at.map(|at| Box::pin(tokio::time::sleep_until(at)));
        self
    }

    fn finish(&mut self) {
        self._guards = None;
        self.deadline = None;
        if let Some(mut r) = self.record.take() {
            r.event.bytes_recv = self.request_bytes.load(Ordering::Relaxed);
            r.finish();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                if let Some(r) = this.record.as_mut() {
                    r.fail(ResponseFlag::None, "request_timeout", BodyTimeout);
                }
                this.finish();
                return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
            }
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(r) = this.record.as_mut() {
                    if let Some(d) = f.data_ref() {
                        r.event.bytes_sent += d.len() as u64;
                    } else if let Some(t) = f.trailers_ref() {
                        r.event.grpc_status = grpc_status(t).or(r.event.grpc_status);
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Some(Err(e)) => {
                if let Some(r) = this.record.as_mut() {
                    r.fail(ResponseFlag::Connect, "upstream_reset", e);
                }
                this.finish();
            }
            None => this.finish(),
        }
        Poll::Ready(frame.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(r) = self.record.as_mut() {
            if r.event.reason.is_none() {
                r.event.reason = Some("downstream_closed");
            }
        }
        self.finish();
    }
}
