//! The I/O side of [`super::framing`]: a stream wrapper that hands hyper only
//! bytes the framer released, times out slow request heads (slowloris), and
//! answers a refused request itself.
//!
//! When the framer refuses a head, or a head takes longer than the header
//! timeout, hyper is given end-of-stream instead of the bad bytes: it
//! finishes the responses it owes, then shuts the stream down, and at that
//! point [`Guarded`] writes the refusal (400, 408 or 431, with
//! `connection: close`). hyper never saw the request, so it reached no
//! upstream. A bad chunk inside a body hyper is already reading ends that
//! body early; the request handler sees the body fail and reads why from
//! [`Verdicts`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::framing::{Framer, Malformed};

/// How long a client may take to send a whole request head, once it has
/// sent its first byte (Envoy's `request_headers_timeout`; hyper's default
/// is 30 s).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the stream per call.
const READ_CHUNK: usize = 16 * 1024;

/// Why the guard stopped a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Verdict {
    #[error("{0}")]
    Malformed(Malformed),
    #[error("the request head was not complete within {HEAD_TIMEOUT:?}")]
    HeadTimeout,
}

impl Verdict {
    pub fn status(&self) -> StatusCode {
        match self {
            Verdict::Malformed(m) => m.status(),
            Verdict::HeadTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Malformed(m) => m.reason(),
            Verdict::HeadTimeout => "head_timeout",
        }
    }
}

/// The verdict of one connection, shared with its request handler.
pub type Verdicts = Arc<OnceLock<Verdict>>;

/// Called once when the guard itself answers a request (for metrics and
/// the access log).
pub type OnRefused = Box<dyn FnOnce(Verdict) + Send + Sync>;

/// A client stream as hyper's HTTP/1 server sees it.
pub struct Guarded<T> {
    inner: T,
    framer: Framer,
    released: BytesMut,
    verdict: Verdicts,
    head_timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Something was written since the last head was released.
    wrote_since_head: bool,
    /// The refused request never reached hyper: the guard answers it.
    answer_self: bool,
    heads_seen: u64,
    /// The refusal still to be written at shutdown.
    refusal: Option<Bytes>,
    on_refused: Option<OnRefused>,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, head_timeout: Duration, on_refused: OnRefused) -> Self {
        Guarded {
            inner,
            framer: Framer::default(),
            released: BytesMut::new(),
            verdict: Verdicts::default(),
            head_timeout,
            deadline: None,
            wrote_since_head: false,
            answer_self: false,
            heads_seen: 0,
            refusal: None,
            on_refused: Some(on_refused),
        }
    }

    pub fn verdicts(&self) -> Verdicts {
        self.verdict.clone()
    }

    fn set_verdict(&mut self, v: Verdict) {
        let _ = self.verdict.set(v);
        self.deadline = None;
    }

    /// The head timer runs while a head is partly received.
    fn arm_deadline(&mut self) {
        if !self.framer.in_partial_head() {
            self.deadline = None;
        } else if self.deadline.is_none() {
            self.deadline = Some(Box::pin(tokio::time::sleep(self.head_timeout)));
        }
        if self.framer.heads() != self.heads_seen {
            self.heads_seen = self.framer.heads();
            self.wrote_since_head = false;
        }
    }
}

/// The response the guard writes for `v`.
pub fn refusal_response(v: &Verdict) -> Bytes {
    let status = v.status();
    let body = format!("{v}\n");
    Bytes::from(format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    ))
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.released.is_empty() {
                let n = this.released.len().min(buf.remaining());
                buf.put_slice(&this.released[..n]);
                this.released.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.verdict.get().is_some() {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if let Some(d) = this.deadline.as_mut() {
                        if d.as_mut().poll(cx).is_ready() {
                            this.answer_self = true;
                            this.set_verdict(Verdict::HeadTimeout);
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // The client closed; a partial head dies with it.
                    this.deadline = None;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => {
                    let r = this.framer.feed(rb.filled(), &mut this.released);
                    this.arm_deadline();
                    if let Err(m) = r {
                        this.answer_self = this.framer.failed_before_release();
                        this.set_verdict(Verdict::Malformed(m));
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.wrote_since_head = true;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(v) = this.verdict.get().copied() {
            // A bad chunk in a body hyper already answered needs nothing
            // more; one it never answered gets the refusal.
            let answer = this.answer_self || !this.wrote_since_head;
            if let Some(cb) = this.on_refused.take().filter(|_| answer) {
                this.refusal = Some(refusal_response(&v));
                cb(v);
            }
        }
        while let Some(r) = this.refusal.as_mut().filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, r))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            r.advance(n);
        }
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn recorder() -> (Arc<Mutex<Vec<Verdict>>>, OnRefused) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (seen, Box::new(move |v| s.lock().unwrap().push(v)))
    }

    #[tokio::test]
    async fn a_bad_head_reads_as_eof_and_shutdown_answers_it() {
        let (mut client, server) = tokio::io::duplex(4096);
        let (seen, cb) = recorder();
        let mut g = Guarded::new(server, HEAD_TIMEOUT, cb);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\nHost: a\n\n")
            .await
            .unwrap();
        let mut got = vec![0u8; 100];
        let n = g.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            g.read(&mut got).await.unwrap(),
            0,
            "EOF instead of the bad head"
        );
        g.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("connection: close\r\n"));
        assert_eq!(
            *seen.lock().unwrap(),
            [Verdict::Malformed(Malformed::BareLineEnding)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_times_out_with_408() {
        let (mut client, server) = tokio::io::duplex(4096);
        let (seen, cb) = recorder();
        let mut g = Guarded::new(server, Duration::from_secs(10), cb);
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let mut got = vec![0u8; 100];
        let started = tokio::time::Instant::now();
        assert_eq!(g.read(&mut got).await.unwrap(), 0);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        g.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer}"
        );
        assert_eq!(*seen.lock().unwrap(), [Verdict::HeadTimeout]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_not_a_slow_head() {
        let (_client, server) = tokio::io::duplex(4096);
        let (_seen, cb) = recorder();
        let mut g = Guarded::new(server, Duration::from_secs(10), cb);
        let mut got = vec![0u8; 100];
        let r = tokio::time::timeout(Duration::from_secs(60), g.read(&mut got)).await;
        assert!(r.is_err(), "still waiting for a first byte");
        assert!(g.verdicts().get().is_none());
    }

    #[tokio::test]
    async fn a_clean_close_writes_nothing() {
        let (mut client, server) = tokio::io::duplex(4096);
        let (seen, cb) = recorder();
        let mut g = Guarded::new(server, HEAD_TIMEOUT, cb);
        client.shutdown().await.unwrap();
        let mut got = vec![0u8; 10];
        assert_eq!(g.read(&mut got).await.unwrap(), 0);
        g.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.is_empty());
        assert!(seen.lock().unwrap().is_empty());
    }
}
