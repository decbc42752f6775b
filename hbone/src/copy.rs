//! Bidirectional copy with half-close propagation and byte counts.
//!
//! Each direction owns one buffer that starts small (idle connections stay
//! cheap) and doubles after consecutive full reads up to a fixed cap (bulk
//! transfers make few, large syscalls). Memory per connection is therefore
//! bounded by `2 * MAX_BUFFER`.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub const INITIAL_BUFFER: usize = 4 * 1024;
pub const MAX_BUFFER: usize = 256 * 1024;
/// Full reads in a row before the buffer doubles.
const GROW_AFTER: u8 = 2;

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
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
    read_done: bool,
    finished: bool,
    need_flush: bool,
    full_reads: u8,
    peak: usize,
}

impl Half {
    fn new() -> Self {
        Half {
            buf: vec![0; INITIAL_BUFFER],
            pos: 0,
            cap: 0,
            read_done: false,
            finished: false,
            need_flush: false,
            full_reads: 0,
            peak: INITIAL_BUFFER,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        counter: &AtomicU64,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                if self.full_reads >= GROW_AFTER && self.buf.len() < MAX_BUFFER {
                    let len = (self.buf.len() * 2).min(MAX_BUFFER);
                    self.buf.resize(len, 0);
                    self.peak = self.peak.max(len);
                    self.full_reads = 0;
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.full_reads = if n == self.buf.len() {
                                self.full_reads.saturating_add(1)
                            } else {
                                0
                            };
                            self.pos = 0;
                            self.cap = n;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                counter.fetch_add(n as u64, Ordering::Relaxed);
                self.need_flush = true;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.finished = true;
                // Free the buffer: a half-closed connection may idle for long.
                self.buf = Vec::new();
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
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut ab, mut ba) = (Half::new(), Half::new());
    poll_fn(|cx| {
        if !ab.finished {
            if let Poll::Ready(Err(source)) =
                ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b), &counters.a_to_b)
            {
                return Poll::Ready(Err(CopyError {
                    direction: Direction::AToB,
                    source,
                }));
            }
        }
        if !ba.finished {
            if let Poll::Ready(Err(source)) =
                ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a), &counters.b_to_a)
            {
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
        let mut sink = tokio::io::sink();
        let counter = AtomicU64::new(0);
        let mut r = r;
        poll_fn(|cx| h.poll_copy(cx, Pin::new(&mut r), Pin::new(&mut sink), &counter))
            .await
            .unwrap();
        assert_eq!(
            h.peak, MAX_BUFFER,
            "bulk transfer grows the buffer to the cap"
        );
        assert!(h.buf.is_empty(), "a finished direction frees its buffer");
        assert_eq!(counter.load(Ordering::Relaxed), (MAX_BUFFER * 3) as u64);
    }
}
