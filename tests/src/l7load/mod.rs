//! L7 benchmark load (`waypoint-bench`): an echo app for HTTP/1.1 and
//! gRPC (HTTP/2, unary), a client that checks every response body
//! byte-exact, and an open-loop generator ([`open`]) at a fixed rate with
//! coordinated-omission correction.
//!
//! Each request `i` carries a 1 KiB body with `i` in its first 8 bytes
//! ([`body`]); the app answers with the same bytes (gRPC: the same
//! length-prefixed message, then trailers `grpc-status: 0`), so a response
//! to the wrong request, a truncated or a corrupted one is an error.

pub mod open;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};

use crate::echo::payload;
use crate::netns::Netns;

/// The app's port in its pod.
pub const APP_PORT: u16 = 8080;
/// Body of every request and response (the gRPC message, without its
/// 5-byte prefix).
pub const BODY_LEN: usize = 1024;
/// The gRPC method every call uses.
pub const GRPC_PATH: &str = "/bench.Echo/Unary";
/// The HTTP/1.1 path every request uses.
pub const HTTP_PATH: &str = "/echo";

/// The protocol of a load run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// HTTP/1.1 POSTs, keep-alive, one request per connection at a time.
    Http1,
    /// gRPC unary calls multiplexed on one HTTP/2 connection.
    Grpc,
}

impl Proto {
    pub const ALL: [Proto; 2] = [Proto::Http1, Proto::Grpc];

    pub fn key(self) -> &'static str {
        match self {
            Proto::Http1 => "http1",
            Proto::Grpc => "grpc",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Proto::Http1 => "HTTP/1.1",
            Proto::Grpc => "gRPC (h2, unary)",
        }
    }

    pub fn parse(s: &str) -> Option<Proto> {
        Proto::ALL.into_iter().find(|p| p.key() == s)
    }
}

/// The body of request `i`: a fixed 1 KiB pattern with `i` in its first 8
/// bytes.
pub fn body(i: u64) -> Vec<u8> {
    let mut b = payload(BODY_LEN);
    b[..8].copy_from_slice(&i.to_le_bytes());
    b
}

/// A gRPC length-prefixed message (uncompressed).
pub fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + msg.len());
    f.push(0);
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

/// What the client sends for request `i` under `proto`.
pub fn request_bytes(proto: Proto, i: u64) -> Vec<u8> {
    match proto {
        Proto::Http1 => body(i),
        Proto::Grpc => grpc_frame(&body(i)),
    }
}

/// Checks a response: status, body byte-exact, gRPC status trailer.
pub fn check_response(
    proto: Proto,
    i: u64,
    status: u16,
    got: &[u8],
    grpc_status: Option<&str>,
) -> Result<(), String> {
    if status != 200 {
        return Err(format!("request {i}: status {status}"));
    }
    // An error answer (Envoy's trailers-only UNAVAILABLE when it sheds
    // load) is a failed request, not a corrupted one.
    if proto == Proto::Grpc && grpc_status != Some("0") {
        return Err(format!("request {i}: grpc-status {grpc_status:?}"));
    }
    let want = request_bytes(proto, i);
    if got != want.as_slice() {
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        return Err(format!(
            "request {i}: body of {} bytes differs from the {} sent (first difference at {:?})",
            got.len(),
            want.len(),
            first
        ));
    }
    Ok(())
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Serves the echo app on `port` of `ns` (HTTP/1.1 and HTTP/2 with prior
/// knowledge) on `rt` until the runtime drops.
pub fn serve(rt: &tokio::runtime::Runtime, ns: &Netns, port: u16) {
    let _enter = rt.enter();
    let listener = ns
        .listen(SocketAddr::from(([0, 0, 0, 0], port)))
        .expect("echo app listener");
    rt.spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(answer);
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(sock), svc).await;
            });
        }
    });
}

async fn answer(req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !grpc {
        return Ok(Response::new(Full::new(body).boxed()));
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> = vec![
        Ok(hyper::body::Frame::data(body)),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    Ok(Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed())
        .expect("response"))
}

/// A client of the echo app at `to` (a Service VIP or a pod IP), from the
/// namespace the calling thread is in: HTTP/1.1 over a pool of keep-alive
/// connections (one request at a time each, opened on demand), or gRPC
/// over one HTTP/2 connection.
pub struct Client {
    proto: Proto,
    to: SocketAddr,
    idle: Mutex<Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
    h2: Mutex<Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>>,
    opened: std::sync::atomic::AtomicU64,
}

impl Client {
    pub fn new(proto: Proto, to: SocketAddr) -> Arc<Client> {
        Arc::new(Client {
            proto,
            to,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            opened: Default::default(),
        })
    }

    /// Connections opened so far.
    pub fn connections(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn dial(&self) -> Result<TokioIo<tokio::net::TcpStream>, String> {
        let s = tokio::net::TcpStream::connect(self.to)
            .await
            .map_err(|e| format!("connect {}: {e}", self.to))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(TokioIo::new(s))
    }

    async fn h2_sender(
        &self,
    ) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, String> {
        if let Some(s) = self.h2.lock().unwrap().as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let io = self.dial().await?;
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        *self.h2.lock().unwrap() = Some(send.clone());
        Ok(send)
    }

    async fn h1_sender(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        loop {
            let Some(s) = self.idle.lock().unwrap().pop() else {
                break;
            };
            if !s.is_closed() {
                return Ok(s);
            }
        }
        let io = self.dial().await?;
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// Sends request `i` and checks its response byte-exact.
    pub async fn call(&self, i: u64) -> Result<(), String> {
        let payload = Bytes::from(request_bytes(self.proto, i));
        let authority = self.to.to_string();
        let (status, body, grpc_status) = match self.proto {
            Proto::Http1 => {
                let mut send = self.h1_sender().await?;
                send.ready().await.map_err(|e| format!("h1 ready: {e}"))?;
                let req = Request::post(HTTP_PATH)
                    .header(http::header::HOST, &authority)
                    .header(http::header::CONTENT_TYPE, "application/octet-stream")
                    .body(Full::new(payload))
                    .expect("request");
                let resp = send
                    .send_request(req)
                    .await
                    .map_err(|e| format!("request {i}: {e}"))?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("request {i} body: {e}"))?
                    .to_bytes();
                self.idle.lock().unwrap().push(send);
                (status, body, None)
            }
            Proto::Grpc => {
                let mut send = self.h2_sender().await?;
                send.ready().await.map_err(|e| format!("h2 ready: {e}"))?;
                let req = Request::post(format!("http://{authority}{GRPC_PATH}"))
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .header("te", "trailers")
                    .body(Full::new(payload))
                    .expect("request");
                let resp = send
                    .send_request(req)
                    .await
                    .map_err(|e| format!("call {i}: {e}"))?;
                let status = resp.status().as_u16();
                let collected = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("call {i} body: {e}"))?;
                let grpc_status = collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                (status, collected.to_bytes(), grpc_status)
            }
        };
        check_response(self.proto, i, status, &body, grpc_status.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_index_and_grpc_frames_their_length() {
        assert_eq!(body(7).len(), BODY_LEN);
        assert_eq!(&body(7)[..8], &7u64.to_le_bytes());
        assert_eq!(body(7)[8..], body(8)[8..]);
        let f = grpc_frame(&body(1));
        assert_eq!(&f[..5], &[0, 0, 0, 4, 0]);
        assert_eq!(&f[5..], body(1).as_slice());
    }

    #[test]
    fn responses_are_checked_byte_exact() {
        let h1 = request_bytes(Proto::Http1, 3);
        let g = request_bytes(Proto::Grpc, 3);
        let mut flipped = h1.clone();
        flipped[600] ^= 1;
        // (protocol, status, body, grpc-status, accepted)
        type Case<'a> = (Proto, u16, &'a [u8], Option<&'a str>, bool);
        let cases: [Case<'_>; 9] = [
            (Proto::Http1, 200, &h1, None, true),
            (Proto::Http1, 503, &h1, None, false),
            (Proto::Http1, 200, &flipped, None, false),
            (Proto::Http1, 200, &h1[..1000], None, false),
            (
                Proto::Http1,
                200,
                &request_bytes(Proto::Http1, 4),
                None,
                false,
            ),
            (Proto::Grpc, 200, &g, Some("0"), true),
            (Proto::Grpc, 200, &g, None, false),
            (Proto::Grpc, 200, &g, Some("14"), false),
            (Proto::Grpc, 200, b"", Some("14"), false),
        ];
        for (proto, status, got, grpc, ok) in cases {
            assert_eq!(
                check_response(proto, 3, status, got, grpc).is_ok(),
                ok,
                "{proto:?} {status} {} bytes {grpc:?}",
                got.len()
            );
        }
        // Only a body that is not what was sent is called corrupted (the
        // benchmark stops at once on those).
        let shed = check_response(Proto::Grpc, 3, 200, b"", Some("14")).unwrap_err();
        assert!(!shed.contains("differs"), "{shed}");
        let bad = check_response(Proto::Grpc, 3, 200, &g[..100], Some("0")).unwrap_err();
        assert!(bad.contains("differs"), "{bad}");
    }
}
