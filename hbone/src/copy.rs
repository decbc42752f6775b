//! Bidirectional copy with half-close propagation and byte counts.
//!
//! Each direction reads into a buffer that starts small and doubles after
//! consecutive full reads up to a fixed cap (bulk transfers make few, large
//! syscalls). Memory per connection is therefore bounded by
//! `2 * MAX_BUFFER`, plus what HTTP/2 flow control lets a stream hold.
//!
//! An idle connection holds no buffer at all: a reader that can say when
//! it is readable ([`CopyIo::poll_read_ready`], a `TcpStream`) gets a
//! buffer only once it is, each buffer is handed whole to the writer and
//! freed once written, and no written-out `Bytes` is kept (an empty one
//! still pins the allocation it was cut from: our read buffer, or the
//! HTTP/2 connection's). Held idle, 10,000 connections used to keep two
//! 4 KiB buffers each in every plain-read direction, and a buffer grown by
//! a burst stayed grown.
//!
//! An HBONE stream ([`H2Stream`]) on either side is moved without copying:
//! DATA frames received are written straight from h2's buffer (no read
//! buffer at all in that direction), and bytes read for the stream are
//! handed to h2 as the very buffer they were read into. See [`CopyIo`].

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stream::H2Stream;

pub const INITIAL_BUFFER: usize = 4 * 1024;
pub const MAX_BUFFER: usize = 256 * 1024;
/// Full reads in a row before the buffer doubles.
const GROW_AFTER: u8 = 2;

/// A byte stream [`copy_bidirectional`] can move data through. Only
/// [`H2Stream`] overrides [`CopyIo::as_h2`], which lets the copy skip the
/// copies that `AsyncRead`/`AsyncWrite` would force on it.
pub trait CopyIo: AsyncRead + AsyncWrite + Unpin {
    fn as_h2(&mut self) -> Option<&mut H2Stream> {
        None
    }

    /// Ready once a read would not wait (data, EOF or an error). The copy
    /// holds no read buffer until then. The default is always ready: the
    /// buffer is then taken for the read and given back if it waits.
    fn poll_read_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl CopyIo for H2Stream {
    fn as_h2(&mut self) -> Option<&mut H2Stream> {
        Some(self)
    }
}

impl CopyIo for tokio::net::TcpStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}
impl CopyIo for tokio::io::DuplexStream {}
impl<S: AsyncRead + AsyncWrite + Unpin> CopyIo for tokio_rustls::client::TlsStream<S> {}
impl<S: AsyncRead + AsyncWrite + Unpin> CopyIo for tokio_rustls::server::TlsStream<S> {}

impl<T: CopyIo + ?Sized> CopyIo for &mut T {
    fn as_h2(&mut self) -> Option<&mut H2Stream> {
        (**self).as_h2()
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
}

impl<T: CopyIo + ?Sized> CopyIo for Box<T> {
    fn as_h2(&mut self) -> Option<&mut H2Stream> {
        (**self).as_h2()
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
}

/// Live byte counters, readable while the copy runs (for metrics on
/// long-lived connections and for access logs after an error).
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: AtomicU64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.a_to_b.load(Ordering::Relaxed),
            self.b_to_a.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    AToB,
    BToA,
}

#[derive(Debug, thiserror::Error)]
#[error("copying {direction:?}")]
pub struct CopyError {
    pub direction: Direction,
    #[source]
    pub source: io::Error,
}

struct Half {
    /// Where a read from a plain reader lands; empty (no allocation) except
    /// during the read. The filled buffer becomes `out` whole.
    buf: BytesMut,
    /// Read, not yet written; reset to an empty `Bytes` of no allocation
    /// once written.
    out: Bytes,
    /// How much the next plain read asks for.
    read_size: usize,
    read_done: bool,
    finished: bool,
    need_flush: bool,
    full_reads: u8,
    /// The largest read asked for (tests).
    peak: usize,
}

impl Half {
    fn new() -> Self {
        Half {
            buf: BytesMut::new(),
            out: Bytes::new(),
            read_size: INITIAL_BUFFER,
            read_done: false,
            finished: false,
            need_flush: false,
            full_reads: 0,
            peak: 0,
        }
    }

    /// Fills `out`: a DATA chunk from an HBONE reader, or the bytes of one
    /// read from a plain one.
    fn poll_fill<R: CopyIo + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> Poll<io::Result<()>> {
        if let Some(h2) = reader.as_h2() {
            match ready!(h2.poll_recv_bytes(cx))? {
                Some(data) => self.out = data,
                None => self.read_done = true,
            }
            return Poll::Ready(Ok(()));
        }
        // No buffer is held while the reader has nothing for us.
        ready!(reader.poll_read_ready(cx))?;
        if self.full_reads >= GROW_AFTER && self.read_size < MAX_BUFFER {
            self.read_size = (self.read_size * 2).min(MAX_BUFFER);
            self.full_reads = 0;
        }
        self.buf.reserve(self.read_size);
        self.peak = self.peak.max(self.read_size);
        let spare = &mut self.buf.spare_capacity_mut()[..self.read_size];
        let mut rb = ReadBuf::uninit(spare);
        let read = Pin::new(&mut *reader).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        match read {
            Poll::Pending => {
                // Readiness was stale, or the reader cannot tell: give the
                // buffer back while it waits.
                self.buf = BytesMut::new();
                return Poll::Pending;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        if n == 0 {
            self.read_done = true;
            self.buf = BytesMut::new();
            return Poll::Ready(Ok(()));
        }
        // SAFETY: `poll_read` initialised the first `n` bytes of the spare
        // capacity (ReadBuf tracks it) and `n <= read_size <= spare len`.
        unsafe { self.buf.set_len(n) };
        self.full_reads = if n == self.read_size {
            self.full_reads.saturating_add(1)
        } else {
            0
        };
        // The whole allocation goes with the bytes, and is freed once they
        // are written.
        self.out = std::mem::take(&mut self.buf).freeze();
        Poll::Ready(Ok(()))
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        counter: &AtomicU64,
    ) -> Poll<io::Result<()>>
    where
        R: CopyIo + ?Sized,
        W: CopyIo + ?Sized,
    {
        loop {
            if self.out.is_empty() && !self.read_done && self.poll_fill(cx, reader)?.is_pending() {
                if self.need_flush {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
            while !self.out.is_empty() {
                let n = match writer.as_h2() {
                    Some(h2) => ready!(h2.poll_send_bytes(cx, &mut self.out))?,
                    None => {
                        let n = ready!(Pin::new(&mut *writer).poll_write(cx, &self.out))?;
                        self.out.advance(n.min(self.out.len()));
                        n
                    }
                };
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                if let Some(h2) = reader.as_h2() {
                    h2.release(n);
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
                self.need_flush = true;
            }
            // Written out: an empty `Bytes` still holds its allocation.
            self.out = Bytes::new();
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.finished = true;
                // Free the buffer: a half-closed connection may idle for long.
                self.buf = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Copy `a` → `b` and `b` → `a` until both sides reach EOF. EOF on one side
/// is propagated as a shutdown (half-close) of the other's write side.
pub async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    counters: &Arc<Counters>,
) -> Result<(), CopyError>
where
    A: CopyIo + ?Sized,
    B: CopyIo + ?Sized,
{
    let (mut ab, mut ba) = (Half::new(), Half::new());
    poll_fn(|cx| {
        if !ab.finished {
            if let Poll::Ready(Err(source)) = ab.poll_copy(cx, &mut *a, &mut *b, &counters.a_to_b) {
                return Poll::Ready(Err(CopyError {
                    direction: Direction::AToB,
                    source,
                }));
            }
        }
        if !ba.finished {
            if let Poll::Ready(Err(source)) = ba.poll_copy(cx, &mut *b, &mut *a, &counters.b_to_a) {
                return Poll::Ready(Err(CopyError {
                    direction: Direction::BToA,
                    source,
                }));
            }
        }
        if ab.finished && ba.finished {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_propagates_half_close() {
        let (mut client, mut proxy_a) = tokio::io::duplex(64 * 1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(64 * 1024);
        let counters = Arc::new(Counters::default());
        let c2 = counters.clone();
        let proxy =
            tokio::spawn(async move { copy_bidirectional(&mut proxy_a, &mut proxy_b, &c2).await });

        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            (server, got)
        });
        client.write_all(&payload).await.unwrap();
        client.shutdown().await.unwrap();
        let (mut server, got) = reader.await.unwrap();
        assert_eq!(got, payload);

        // The other direction still works after the first half-closed.
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");

        proxy.await.unwrap().unwrap();
        assert_eq!(counters.snapshot(), (300_000, 5));
    }

    #[tokio::test]
    async fn buffer_grows_only_under_bulk_and_is_capped() {
        let mut h = Half::new();
        let (mut w, r) = tokio::io::duplex(MAX_BUFFER * 4);
        let big = vec![7u8; MAX_BUFFER * 3];
        w.write_all(&big).await.unwrap();
        drop(w);
        // Room for everything, so the copy never waits on the writer.
        let (mut sink, _drain) = tokio::io::duplex(MAX_BUFFER * 4);
        let counter = AtomicU64::new(0);
        let mut r = r;
        poll_fn(|cx| h.poll_copy(cx, &mut r, &mut sink, &counter))
            .await
            .unwrap();
        assert_eq!(
            h.peak, MAX_BUFFER,
            "bulk transfer grows the buffer to the cap"
        );
        assert_eq!(h.buf.capacity(), 0, "a finished direction frees its buffer");
        assert_eq!(counter.load(Ordering::Relaxed), (MAX_BUFFER * 3) as u64);
    }

    /// Idle after an exchange, a direction holds no buffer: none while its
    /// reader (a TCP socket) has nothing to read, and no written-out bytes
    /// that still pin the allocation they were read into.
    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut reader, _) = listener.accept().await.unwrap();
        let (mut sink, mut drain) = tokio::io::duplex(1024);
        let counter = AtomicU64::new(0);
        let mut h = Half::new();
        for round in 0..3u64 {
            let msg = round.to_le_bytes();
            peer.write_all(&msg).await.unwrap();
            // Copy until the bytes are through and the reader waits again.
            poll_fn(
                |cx| match h.poll_copy(cx, &mut reader, &mut sink, &counter) {
                    Poll::Pending if counter.load(Ordering::Relaxed) == 8 * (round + 1) => {
                        Poll::Ready(())
                    }
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(r) => panic!("copy ended: {r:?}"),
                },
            )
            .await;
            let mut got = [0u8; 8];
            drain.read_exact(&mut got).await.unwrap();
            assert_eq!(got, msg);
            assert_eq!(h.buf.capacity(), 0, "no read buffer while idle");
            assert!(
                h.out.is_empty() && h.out.as_ptr() == Bytes::new().as_ptr(),
                "no written-out bytes kept (they pin their allocation)"
            );
        }
    }
}
