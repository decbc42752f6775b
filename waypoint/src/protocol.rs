//! What runs inside a CONNECT stream: HTTP/1.x, HTTP/2, or opaque TCP.
//!
//! The Service port's declared protocol decides ([`decide`], from the
//! port's [`AppProtocol`]). An undeclared port is sniffed ([`detect`]): the
//! HTTP/2 client preface or an HTTP/1.x method and a space mean HTTP;
//! anything else, or nothing within [`DETECT_TIMEOUT`], means opaque TCP,
//! so a protocol whose server speaks first (MySQL, SMTP) is forwarded
//! instead of waiting for a client byte that never comes. Pure; the bytes
//! read while sniffing are replayed by [`Rewind`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use mesh_model::state::AppProtocol;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long an undeclared port waits for the client's first bytes before
/// treating the stream as opaque TCP. A client-first protocol sends its
/// first bytes in the same round trip as the tunnel opens (well under this);
/// a server-first protocol pays this once per connection, so it is short.
/// Istio sniffs with the same order of magnitude (100 ms).
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(200);
/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Request methods that mark HTTP/1.x (RFC 9110 §9 and PATCH), each
/// followed by a space on the wire.
const H1_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];
/// The most bytes [`detect`] needs to decide.
pub const DETECT_MAX: usize = H2_PREFACE.len();

/// What to expect on a port, from what it declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Nothing declared: sniff, with a deadline, falling back to TCP.
    Sniff,
    /// HTTP (either version, told apart by the preface), no TCP fallback.
    Http,
    /// HTTP/2 with prior knowledge (also gRPC).
    Http2,
    /// Opaque TCP: L4 policy, forwarded whole.
    Tcp,
}

/// The decision for a port declaring `declared` (`None`: undeclared).
/// TLS is opaque to the waypoint: it cannot read inside it.
pub fn decide(declared: Option<AppProtocol>) -> Decision {
    match declared {
        None => Decision::Sniff,
        Some(AppProtocol::Http11) => Decision::Http,
        Some(AppProtocol::Http2 | AppProtocol::Grpc) => Decision::Http2,
        Some(AppProtocol::Tcp | AppProtocol::Tls) => Decision::Tcp,
    }
}

/// The result of looking at a stream's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Opaque,
    /// Still a prefix of something HTTP: read more.
    NeedMore,
}

/// Classifies the first bytes of a stream. Pure.
pub fn detect(prefix: &[u8]) -> Detected {
    if prefix.is_empty() {
        return Detected::NeedMore;
    }
    if prefix.starts_with(H2_PREFACE) {
        return Detected::Http2;
    }
    if H1_METHODS.iter().any(|m| prefix.starts_with(m)) {
        return Detected::Http1;
    }
    let could_be = |whole: &[u8]| whole.starts_with(prefix);
    if could_be(H2_PREFACE) || H1_METHODS.iter().any(|m| could_be(m)) {
        Detected::NeedMore
    } else {
        Detected::Opaque
    }
}

/// A stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }

    /// The bytes not yet read again, and the stream.
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn detect_table() {
        use Detected::*;
        let cases: &[(&[u8], Detected)] = &[
            (b"", NeedMore),
            (b"G", NeedMore),
            (b"GET", NeedMore),
            (b"GET ", Http1),
            (b"GET / HTTP/1.1\r\n", Http1),
            (b"DELETE /x HTTP/1.0\r\n", Http1),
            (b"PATCH ", Http1),
            (b"P", NeedMore),
            (b"PRI * HTTP/2.0\r\n", NeedMore),
            (H2_PREFACE, Http2),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", Http2),
            (b"PRI * HTTP/1.1\r\n", Opaque),
            (b"GETX", Opaque),
            (b"get / HTTP/1.1\r\n", Opaque),
            (b"\x16\x03\x01\x02\x00", Opaque), // a TLS ClientHello
            (b"\x00\x00\x00\x01", Opaque),
            (b"SSH-2.0-OpenSSH\r\n", Opaque),
            (b"\r\nGET / HTTP/1.1", Opaque),
        ];
        for (bytes, want) in cases {
            assert_eq!(detect(bytes), *want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn decide_table() {
        for (declared, want) in [
            (None, Decision::Sniff),
            (Some(AppProtocol::Http11), Decision::Http),
            (Some(AppProtocol::Http2), Decision::Http2),
            (Some(AppProtocol::Grpc), Decision::Http2),
            (Some(AppProtocol::Tcp), Decision::Tcp),
            (Some(AppProtocol::Tls), Decision::Tcp),
        ] {
            assert_eq!(decide(declared), want, "{declared:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn detection_is_monotonic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            // Once decided, more bytes never change the answer.
            let mut decided = None;
            for n in 0..=bytes.len() {
                let d = detect(&bytes[..n]);
                if let Some(prev) = decided {
                    proptest::prop_assert_eq!(d, prev);
                } else if d != Detected::NeedMore {
                    decided = Some(d);
                }
            }
            if bytes.len() >= DETECT_MAX {
                proptest::prop_assert_ne!(detect(&bytes), Detected::NeedMore);
            }
        }
    }

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .unwrap();
        drop(a);
        let mut r = Rewind::new(Bytes::from_static(b"hello"), b);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
