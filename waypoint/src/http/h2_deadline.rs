//! The HTTP/2 request-header timeout: a header block (HEADERS or
//! PUSH_PROMISE and its CONTINUATIONs, which RFC 9113 §6.10 requires to
//! be contiguous), or a frame header, started and not finished within
//! `--request-header-timeout` fails the connection. Without it a client
//! holds a stream (and, since nothing may interleave a header block, its
//! whole connection) by never sending `END_HEADERS`; hyper's HTTP/2
//! server has no such timer. [`HeaderScan`] follows the frame boundaries
//! of what the client sends (pure); [`HeaderDeadline`] runs the timer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where the client's byte stream is, frame-wise.
#[derive(Debug, Clone)]
pub struct HeaderScan {
    preface_left: usize,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    payload_left: u32,
    /// The current frame carries part of a header block.
    in_header_frame: bool,
    /// A header block is open: no `END_HEADERS` yet.
    in_block: bool,
}

impl Default for HeaderScan {
    fn default() -> Self {
        HeaderScan {
            preface_left: PREFACE_LEN,
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            payload_left: 0,
            in_header_frame: false,
            in_block: false,
        }
    }
}

impl HeaderScan {
    /// Follows `bytes`, the next the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = (self.payload_left as usize).min(bytes.len());
                self.payload_left -= n as u32;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.in_header_frame = false;
                }
            } else {
                let n = (FRAME_HEADER_LEN - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                self.head_len += n;
                bytes = &bytes[n..];
                if self.head_len == FRAME_HEADER_LEN {
                    self.head_len = 0;
                    self.frame_header();
                }
            }
        }
    }

    fn frame_header(&mut self) {
        let h = self.head;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (kind, flags) = (h[3], h[4]);
        let ends = flags & END_HEADERS != 0;
        match kind {
            HEADERS | PUSH_PROMISE => {
                self.in_block = !ends;
                self.in_header_frame = true;
            }
            CONTINUATION => {
                if ends {
                    self.in_block = false;
                }
                self.in_header_frame = true;
            }
            _ => self.in_header_frame = false,
        }
        self.payload_left = len;
        if len == 0 {
            self.in_header_frame = false;
        }
    }

    /// Headers are partly received: a header block without its end, a
    /// header frame's payload, or a frame header.
    pub fn open(&self) -> bool {
        self.in_block || self.in_header_frame || self.head_len > 0
    }
}

/// Called once when the timer fires (metrics, log).
pub type OnTimeout = Box<dyn FnOnce() + Send + Sync>;

/// A client stream as hyper's HTTP/2 server reads it, failed (a read
/// error: hyper closes the connection) when headers stay open past the
/// timeout.
pub struct HeaderDeadline<T> {
    inner: T,
    scan: HeaderScan,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    on_timeout: Option<OnTimeout>,
}

impl<T> HeaderDeadline<T> {
    pub fn new(inner: T, timeout: Duration, on_timeout: OnTimeout) -> Self {
        HeaderDeadline {
            inner,
            scan: HeaderScan::default(),
            timeout,
            deadline: None,
            on_timeout: Some(on_timeout),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeaderDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(d) = this.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                if let Some(f) = this.on_timeout.take() {
                    f();
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "HTTP/2 request headers not complete within {:?}",
                        this.timeout
                    ),
                )));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.scan.feed(&buf.filled()[before..]);
            if !this.scan.open() {
                this.deadline = None;
            } else if this.deadline.is_none() {
                this.deadline = Some(Box::pin(tokio::time::sleep(this.timeout)));
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload_len: usize) -> Vec<u8> {
        let len = (payload_len as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        f.extend(std::iter::repeat_n(0u8, payload_len));
        f
    }

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    /// Whether headers are open after the client sent `bytes`, fed in
    /// pieces of every size (the split must not matter).
    fn open_after(bytes: &[u8]) -> bool {
        let mut whole = HeaderScan::default();
        whole.feed(bytes);
        for size in 1..=bytes.len().max(1) {
            let mut s = HeaderScan::default();
            for piece in bytes.chunks(size) {
                s.feed(piece);
            }
            assert_eq!(s.open(), whole.open(), "split by {size}");
        }
        whole.open()
    }

    #[test]
    fn a_header_block_is_open_until_end_headers() {
        let settings = frame(0x4, 0, 6);
        let cases: Vec<(&str, Vec<Vec<u8>>, bool)> = vec![
            ("the preface alone", vec![], false),
            ("settings", vec![settings.clone()], false),
            (
                "complete HEADERS",
                vec![frame(HEADERS, END_HEADERS, 5)],
                false,
            ),
            (
                "HEADERS without END_HEADERS",
                vec![frame(HEADERS, 0, 5)],
                true,
            ),
            (
                "then a CONTINUATION without it",
                vec![frame(HEADERS, 0, 5), frame(CONTINUATION, 0, 3)],
                true,
            ),
            (
                "then the last CONTINUATION",
                vec![frame(HEADERS, 0, 5), frame(CONTINUATION, END_HEADERS, 3)],
                false,
            ),
            (
                "PUSH_PROMISE without END_HEADERS",
                vec![frame(PUSH_PROMISE, 0, 4)],
                true,
            ),
            (
                "DATA",
                vec![frame(HEADERS, END_HEADERS, 5), frame(0x0, 0, 100)],
                false,
            ),
        ];
        for (what, frames, want) in cases {
            let mut bytes = preface();
            bytes.extend(frames.concat());
            assert_eq!(open_after(&bytes), want, "{what}");
        }
    }

    #[test]
    fn a_partial_frame_header_or_header_payload_is_open() {
        let mut bytes = preface();
        bytes.extend(&frame(0x4, 0, 0)[..4]);
        assert!(open_after(&bytes), "4 of a frame header's 9 bytes");
        let mut bytes = preface();
        let headers = frame(HEADERS, END_HEADERS, 10);
        bytes.extend(&headers[..headers.len() - 3]);
        assert!(open_after(&bytes), "a HEADERS payload 3 bytes short");
        let mut bytes = preface();
        let data = frame(0x0, 0, 10);
        bytes.extend(&data[..data.len() - 3]);
        assert!(!open_after(&bytes), "a DATA payload is not headers");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_header_block_fails_the_read_at_the_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = fired.clone();
        let mut guarded = HeaderDeadline::new(
            server,
            Duration::from_secs(10),
            Box::new(move || f.store(true, std::sync::atomic::Ordering::SeqCst)),
        );
        let mut bytes = preface();
        bytes.extend(frame(HEADERS, END_HEADERS, 3));
        bytes.extend(frame(HEADERS, 0, 3));
        client.write_all(&bytes).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = guarded.read(&mut buf).await.unwrap();
        assert_eq!(n, bytes.len());
        let err = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(fired.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn complete_headers_leave_an_idle_connection_alone() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let mut guarded = HeaderDeadline::new(server, Duration::from_secs(10), Box::new(|| {}));
        let mut bytes = preface();
        bytes.extend(frame(HEADERS, END_HEADERS, 3));
        client.write_all(&bytes).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = guarded.read(&mut buf).await.unwrap();
        assert_eq!(n, bytes.len());
        let idle = tokio::time::timeout(Duration::from_secs(60), guarded.read(&mut buf)).await;
        assert!(idle.is_err(), "still waiting, not failed: {idle:?}");
    }
}
