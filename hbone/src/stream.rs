//! One HBONE stream (an HTTP/2 CONNECT stream) as an `AsyncRead + AsyncWrite`.
//!
//! Reads hand back DATA frames and return their flow-control credit as they
//! are consumed; writes wait for send capacity, so a slow reader pushes back
//! on the writer instead of growing buffers. `poll_shutdown` sends
//! END_STREAM (a TCP half-close); dropping the stream early resets it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest single write handed to h2: one max-size frame.
const MAX_WRITE: usize = crate::MAX_FRAME_SIZE as usize;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    recv_eof: bool,
    send_closed: bool,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id())
            .field("pending", &self.pending.len())
            .field("recv_eof", &self.recv_eof)
            .field("send_closed", &self.send_closed)
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            recv_eof: false,
            send_closed: false,
            _guard: guard,
        }
    }

    /// Abort the stream with RST_STREAM (used when policy revokes it).
    pub fn reset(&mut self, reason: Reason) {
        self.send.send_reset(reason);
    }
}

pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().expect("is_io");
    }
    let kind = match e.reason() {
        Some(Reason::CANCEL) | Some(Reason::STREAM_CLOSED) | Some(Reason::NO_ERROR) => {
            io::ErrorKind::ConnectionReset
        }
        Some(Reason::REFUSED_STREAM) => io::ErrorKind::ConnectionRefused,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                let _ = self.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            if self.recv_eof {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_next_chunk(cx))?;
        }
    }
}

impl H2Stream {
    /// The next received DATA chunk, handed over without copying; `None` at
    /// the end of the stream. Its flow-control credit is not returned until
    /// the caller calls [`H2Stream::release`], so a slow consumer still
    /// pushes back on the sender.
    pub fn poll_recv_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            if !self.pending.is_empty() {
                return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
            }
            if self.recv_eof {
                return Poll::Ready(Ok(None));
            }
            ready!(self.poll_next_chunk(cx))?;
        }
    }

    /// Returns `n` consumed bytes of flow-control credit to the peer.
    pub fn release(&mut self, n: usize) {
        let _ = self.recv.flow_control().release_capacity(n);
    }

    /// Sends a prefix of `data` as one DATA frame, without copying, once
    /// the peer's window allows; returns how many bytes were sent (split
    /// off the front of `data`).
    pub fn poll_send_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        self.poll_send_with(cx, data.len(), |n| data.split_to(n))
    }

    fn poll_next_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(self.recv.poll_data(cx)) {
            Some(Ok(data)) => self.pending = data,
            Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => self.recv_eof = true,
            Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
            None => self.recv_eof = true,
        }
        Poll::Ready(Ok(()))
    }

    /// Waits for send capacity for up to `len` bytes (one frame at most),
    /// then sends `take(n)` for the `n` granted.
    fn poll_send_with(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        take: impl FnOnce(usize) -> Bytes,
    ) -> Poll<io::Result<usize>> {
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.send_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.send.reserve_capacity(len.min(MAX_WRITE));
        let sent = loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue, // re-poll registers the waker
                Some(Ok(n)) => {
                    let n = n.min(len);
                    break self.send.send_data(take(n), false).ok().map(|()| n);
                }
                Some(Err(_)) | None => break None,
            }
        };
        if let Some(n) = sent {
            return Poll::Ready(Ok(n));
        }
        // The stream failed; poll_reset says why.
        let err = match ready!(self.send.poll_reset(cx)) {
            Ok(Reason::NO_ERROR) | Ok(Reason::CANCEL) | Ok(Reason::STREAM_CLOSED) => {
                io::ErrorKind::BrokenPipe.into()
            }
            Ok(reason) => io::Error::other(h2::Error::from(reason)),
            Err(e) => h2_to_io(e),
        };
        Poll::Ready(Err(err))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send_with(cx, buf.len(), |n| Bytes::copy_from_slice(&buf[..n]))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task flushes; there is nothing buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.send_closed {
            return Poll::Ready(Ok(()));
        }
        self.send_closed = true;
        match self.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            // Already reset by the peer: the half-close is moot.
            Err(e) if e.reason().is_some() => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(h2_to_io(e))),
        }
    }
}
