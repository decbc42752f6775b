//! A request body that can be sent again: as the first attempt streams it
//! upstream, up to [`RETRY_BUFFER`] bytes are kept, so a retry replays
//! them and then goes on reading from the client. A body longer than that
//! is not kept (and the request is no longer retried): retries never hold
//! more than the bound in memory.
//!
//! Attempts are sequential: starting one makes every earlier one's body
//! fail, so two attempts never read the client's body at once.
//!
//! The same kept bytes feed request mirrors: [`Replay::on_complete`] hands
//! over the whole body once the client has sent it, if it fit.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch;

use crate::upstream::pool::{BoxError, UpBody};

/// The most of a request body kept for retries (Envoy's default buffer).
pub const RETRY_BUFFER: usize = 64 * 1024;

struct Shared {
    source: UpBody,
    /// What the client sent so far, while it fits.
    chunks: Vec<Bytes>,
    buffered: usize,
    /// More than [`RETRY_BUFFER`] was read: not replayable.
    overflowed: bool,
    /// The client's body ended (with these trailers, if any).
    ended: bool,
    trailers: Option<HeaderMap>,
    /// The attempt allowed to read.
    current: u32,
    /// Told the whole body once it ended within the bound; dropped (so
    /// its receivers see the end) when it overflowed or the request ends.
    complete: Option<watch::Sender<Option<Kept>>>,
}

/// A whole request body, as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    pub chunks: Vec<Bytes>,
    pub trailers: Option<HeaderMap>,
}

impl Shared {
    /// The client's body ended: tell whoever waits for it.
    fn end(&mut self) {
        self.ended = true;
        if let Some(tx) = self.complete.take() {
            if !self.overflowed {
                let _ = tx.send(Some(Kept {
                    chunks: self.chunks.clone(),
                    trailers: self.trailers.clone(),
                }));
            }
        }
    }
}

/// The client's request body, shared by the attempts of one request.
#[derive(Clone)]
pub struct Replay(Arc<Mutex<Shared>>);

impl Replay {
    pub fn new(source: UpBody) -> Self {
        Replay(Arc::new(Mutex::new(Shared {
            source,
            chunks: Vec::new(),
            buffered: 0,
            overflowed: false,
            ended: false,
            trailers: None,
            current: 0,
            complete: None,
        })))
    }

    /// The whole body, once the client has sent it: `Some` on the
    /// receiver then; the sender is dropped instead if the body outgrew
    /// [`RETRY_BUFFER`] or the request ended without it.
    pub fn on_complete(&self) -> watch::Receiver<Option<Kept>> {
        let mut s = self.0.lock().expect("replay poisoned");
        let (tx, rx) = watch::channel(None);
        if s.ended && !s.overflowed {
            let _ = tx.send(Some(Kept {
                chunks: s.chunks.clone(),
                trailers: s.trailers.clone(),
            }));
        } else if !s.overflowed {
            s.complete = Some(tx);
        }
        rx
    }

    /// The body for the next attempt; earlier attempts' bodies fail from
    /// now on.
    pub fn attempt(&self) -> ReplayBody {
        let mut s = self.0.lock().expect("replay poisoned");
        s.current += 1;
        ReplayBody {
            shared: self.0.clone(),
            attempt: s.current,
            next: 0,
            trailers_sent: false,
        }
    }

    /// Whether another attempt could send the whole body again.
    pub fn replayable(&self) -> bool {
        !self.0.lock().expect("replay poisoned").overflowed
    }
}

/// One attempt's view of the body.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    attempt: u32,
    /// The next kept chunk to send.
    next: usize,
    trailers_sent: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("a later attempt took over the request body")]
struct Superseded;

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.shared.lock().expect("replay poisoned");
        if s.current != this.attempt {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(chunk) = s.chunks.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if s.ended {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(s.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let frame = match Pin::new(&mut s.source).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(f) => f,
        };
        match frame {
            None => {
                s.end();
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    if !s.overflowed && s.buffered + data.len() <= RETRY_BUFFER {
                        s.buffered += data.len();
                        s.chunks.push(data.clone());
                        this.next += 1;
                    } else if !s.overflowed {
                        s.overflowed = true;
                        s.chunks = Vec::new();
                        s.complete = None;
                        this.next = 0;
                    }
                    // A client body of known length ends with its last
                    // byte: an HTTP/1.1 upstream stops polling there.
                    if s.source.is_end_stream() {
                        s.end();
                    }
                } else if let Some(t) = f.trailers_ref() {
                    s.trailers = Some(t.clone());
                    s.end();
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(f)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock().expect("replay poisoned");
        s.ended && self.next >= s.chunks.len() && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.shared.lock().expect("replay poisoned");
        if s.ended && !s.overflowed {
            let left: usize = s.chunks[self.next.min(s.chunks.len())..]
                .iter()
                .map(Bytes::len)
                .sum();
            return SizeHint::with_exact(left as u64);
        }
        if self.next == 0 && s.chunks.is_empty() {
            // Nothing read yet: what the client's body says of itself.
            return s.source.size_hint();
        }
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests;
