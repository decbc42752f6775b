//! Upstream HTTP connections, pooled per (endpoint, HTTP version).
//!
//! - HTTP/1.1: keep-alive connections are reused, one request at a time
//!   each; a request finds an idle one or opens another. At most
//!   [`MAX_IDLE_PER_ENDPOINT`] are kept per endpoint, none longer than
//!   [`IDLE_TIMEOUT`].
//! - HTTP/2: one multiplexed connection per endpoint, opened once however
//!   many requests arrive together.
//!
//! A pooled connection the upstream closed in the meantime hands the
//! request back untouched (hyper's `try_send_request`) and it goes out on
//! a fresh one; a request that could not be sent at all comes back to the
//! caller ([`SendError::NotSent`]), so it may try another endpoint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::dial::{DialError, Endpoint, UpstreamIo};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of a request sent upstream.
pub type UpBody = BoxBody<Bytes, BoxError>;

/// How long an idle HTTP/1.1 connection is kept for reuse.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 64;
/// HTTP/2 keepalive PINGs to upstreams (a dead one is noticed without a
/// request failing on it).
const H2_KEEPALIVE: Duration = Duration::from_secs(10);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP version spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Version {
    Http1,
    Http2,
}

impl Version {
    /// As the access log names it.
    pub fn label(self) -> &'static str {
        match self {
            Version::Http1 => "HTTP/1.1",
            Version::Http2 => "HTTP/2",
        }
    }
}

/// Why a request did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Nothing reached the upstream; the request is handed back.
    #[error("{error}")]
    NotSent {
        #[source]
        error: NotSentError,
        request: Box<Request<UpBody>>,
    },
    /// The request went out (perhaps in part) and the exchange failed.
    #[error("upstream request failed")]
    Failed(#[source] hyper::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum NotSentError {
    #[error("connecting to the endpoint")]
    Dial(#[source] DialError),
    #[error("HTTP handshake with the endpoint")]
    Handshake(#[source] hyper::Error),
    #[error("the endpoint's connection closed before the request was sent")]
    Closed(#[source] hyper::Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    ep: Endpoint,
    version: Version,
}

struct IdleH1 {
    sender: http1::SendRequest<UpBody>,
    since: Instant,
}

#[derive(Default)]
struct Slot {
    h1: Vec<IdleH1>,
    h2: Option<http2::SendRequest<UpBody>>,
    /// One HTTP/2 dial at a time per endpoint.
    dialing: Arc<tokio::sync::Mutex<()>>,
}

/// Opens a fresh connection to an endpoint.
pub type Dialer<'a> = &'a (dyn Fn() -> BoxFuture<'static, Result<UpstreamIo, DialError>> + Sync);

/// Pool statistics (config dump, tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    pub endpoints: usize,
    pub idle_http1: usize,
    pub http2: usize,
    pub opened: u64,
}

#[derive(Default)]
pub struct HttpPool {
    slots: Mutex<HashMap<Key, Slot>>,
    opened: AtomicU64,
}

impl HttpPool {
    /// Sends `req` to `ep` over a pooled or fresh connection made by `dial`.
    pub async fn send(
        &self,
        ep: &Endpoint,
        version: Version,
        req: Request<UpBody>,
        dial: Dialer<'_>,
    ) -> Result<Response<Incoming>, SendError> {
        let key = Key {
            ep: ep.clone(),
            version,
        };
        match version {
            Version::Http1 => self.send_h1(key, req, dial).await,
            Version::Http2 => self.send_h2(key, req, dial).await,
        }
    }

    async fn send_h1(
        &self,
        key: Key,
        mut req: Request<UpBody>,
        dial: Dialer<'_>,
    ) -> Result<Response<Incoming>, SendError> {
        while let Some(mut sender) = self.idle_h1(&key) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.keep_h1(&key, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // A stale connection: try the next one.
                    Some(back) => req = back,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        let io = match dial().await {
            Ok(io) => io,
            Err(e) => return Err(not_sent(NotSentError::Dial(e), req)),
        };
        let handshake = http1::Builder::new()
            .max_buf_size(1024 * 1024)
            .handshake::<_, UpBody>(TokioIo::new(io))
            .await;
        let (mut sender, conn) = match handshake {
            Ok(h) => h,
            Err(e) => return Err(not_sent(NotSentError::Handshake(e), req)),
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        match sender.try_send_request(req).await {
            Ok(resp) => {
                self.keep_h1(&key, sender);
                Ok(resp)
            }
            Err(mut e) => match e.take_message() {
                Some(back) => Err(not_sent(NotSentError::Closed(e.into_error()), back)),
                None => Err(SendError::Failed(e.into_error())),
            },
        }
    }

    /// An idle HTTP/1.1 connection ready for a request, if any; closed
    /// and expired ones are dropped on the way.
    fn idle_h1(&self, key: &Key) -> Option<http1::SendRequest<UpBody>> {
        let mut slots = self.slots.lock().expect("pool poisoned");
        let slot = slots.get_mut(key)?;
        let now = Instant::now();
        slot.h1
            .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
        let i = slot.h1.iter().position(|c| c.sender.is_ready())?;
        Some(slot.h1.swap_remove(i).sender)
    }

    /// Returns a connection to the pool once its response head arrived; it
    /// becomes ready again once that response's body is read.
    fn keep_h1(&self, key: &Key, sender: http1::SendRequest<UpBody>) {
        let mut slots = self.slots.lock().expect("pool poisoned");
        let slot = slots.entry(key.clone()).or_default();
        if slot.h1.len() < MAX_IDLE_PER_ENDPOINT {
            slot.h1.push(IdleH1 {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn send_h2(
        &self,
        key: Key,
        req: Request<UpBody>,
        dial: Dialer<'_>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = match self.h2_sender(&key, dial).await {
            Ok(s) => s,
            Err(e) => return Err(not_sent(e, req)),
        };
        if let Err(e) = sender.ready().await {
            self.forget_h2(&key);
            return Err(not_sent(NotSentError::Closed(e), req));
        }
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => {
                if sender.is_closed() {
                    self.forget_h2(&key);
                }
                match e.take_message() {
                    Some(back) => Err(not_sent(NotSentError::Closed(e.into_error()), back)),
                    None => Err(SendError::Failed(e.into_error())),
                }
            }
        }
    }

    async fn h2_sender(
        &self,
        key: &Key,
        dial: Dialer<'_>,
    ) -> Result<http2::SendRequest<UpBody>, NotSentError> {
        let lock = {
            let mut slots = self.slots.lock().expect("pool poisoned");
            let slot = slots.entry(key.clone()).or_default();
            if let Some(s) = slot.h2.as_ref().filter(|s| !s.is_closed()) {
                return Ok(s.clone());
            }
            slot.dialing.clone()
        };
        let _dialing = lock.lock().await;
        if let Some(s) = self.current_h2(key) {
            return Ok(s);
        }
        let io = dial().await.map_err(NotSentError::Dial)?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEPALIVE)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .initial_stream_window_size(hbone::STREAM_WINDOW)
            .initial_connection_window_size(hbone::CONNECTION_WINDOW)
            .handshake::<_, UpBody>(TokioIo::new(io))
            .await
            .map_err(NotSentError::Handshake)?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        let mut slots = self.slots.lock().expect("pool poisoned");
        slots.entry(key.clone()).or_default().h2 = Some(sender.clone());
        Ok(sender)
    }

    fn current_h2(&self, key: &Key) -> Option<http2::SendRequest<UpBody>> {
        let slots = self.slots.lock().expect("pool poisoned");
        slots
            .get(key)?
            .h2
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    fn forget_h2(&self, key: &Key) {
        if let Some(slot) = self.slots.lock().expect("pool poisoned").get_mut(key) {
            if slot.h2.as_ref().is_some_and(|s| s.is_closed()) {
                slot.h2 = None;
            }
        }
    }

    /// Drops closed and expired connections, and endpoints left with none.
    pub fn reap(&self) {
        let now = Instant::now();
        let mut slots = self.slots.lock().expect("pool poisoned");
        slots.retain(|_, slot| {
            slot.h1
                .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
            if slot.h2.as_ref().is_some_and(|s| s.is_closed()) {
                slot.h2 = None;
            }
            !slot.h1.is_empty() || slot.h2.is_some() || Arc::strong_count(&slot.dialing) > 1
        });
    }

    pub fn stats(&self) -> PoolStats {
        let slots = self.slots.lock().expect("pool poisoned");
        PoolStats {
            endpoints: slots.len(),
            idle_http1: slots.values().map(|s| s.h1.len()).sum(),
            http2: slots.values().filter(|s| s.h2.is_some()).count(),
            opened: self.opened.load(Ordering::Relaxed),
        }
    }
}

fn not_sent(error: NotSentError, request: Request<UpBody>) -> SendError {
    SendError::NotSent {
        error,
        request: Box::new(request),
    }
}
