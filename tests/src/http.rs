//! HTTP for the waypoint tests: an app that answers each request with its
//! own name and records what it saw (HTTP/1.1 and HTTP/2, WebSocket-style
//! upgrades echoed), and clients over any byte stream.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The body of an app's answers.
pub type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A gRPC-shaped answer: `name` as a message, then trailers with
/// `grpc-status` = the last path segment's number (so a call to
/// `/pkg.Svc/5` fails with NOT_FOUND).
fn grpc_answer(name: &str, path: &str) -> Response<AppBody> {
    let code = path
        .rsplit('/')
        .next()
        .and_then(|c| c.parse::<u32>().ok())
        .unwrap_or(0);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", code.into());
    trailers.insert(
        "grpc-message",
        http::HeaderValue::from_static("from the app"),
    );
    let frames: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> = vec![
        Ok(hyper::body::Frame::data(Bytes::from(format!("{name}\n")))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed())
        .unwrap()
}

/// One request an app saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An HTTP app: answers `<name>\n` to every request (`200`, or the status
/// in a `/status/<code>` path; 503 to every third request under `/flaky`;
/// a gRPC call gets a message and the status its path ends with;
/// after a pause for `/delay/<ms>`; the body's last line after a pause for
/// `/drip/<ms>`), echoes the
/// upgraded stream of a request with `Upgrade` (or of an HTTP/2 extended
/// CONNECT, RFC 8441), and records every request.
pub struct HttpApp {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl HttpApp {
    /// Serves on `listener` (HTTP/1.1 and HTTP/2 with prior knowledge).
    pub fn serve(listener: TcpListener, name: &'static str) -> HttpApp {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(req, name, log.clone()));
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    builder.http2().enable_connect_protocol();
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        HttpApp { seen, task }
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests seen for `path`.
    pub fn seen_path(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut req: Request<Incoming>,
    name: &'static str,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<AppBody>, Infallible> {
    let extended_connect = req.method() == http::Method::CONNECT
        && req.extensions().get::<hyper::ext::Protocol>().is_some();
    let upgrade = req.headers().contains_key(http::header::UPGRADE) || extended_connect;
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = if upgrade {
        Bytes::new()
    } else {
        body.collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    };
    log.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
    });
    if let Some(on_upgrade) = on_upgrade {
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = if extended_connect {
            Response::new(Full::new(Bytes::new()).boxed())
        } else {
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(http::header::CONNECTION, "upgrade")
                .header(http::header::UPGRADE, "echo")
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        };
        return Ok(resp);
    }
    if parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
    {
        return Ok(grpc_answer(name, parts.uri.path()));
    }
    if parts.uri.path().starts_with("/flaky") {
        // Every third request here fails (this one is already logged).
        let n = log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with("/flaky"))
            .count();
        if n % 3 == 0 {
            return Ok(Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Full::new(Bytes::from(format!("{name} flaked\n"))).boxed())
                .unwrap());
        }
    }
    if let Some(ms) = parts
        .uri
        .path()
        .strip_prefix("/drip/")
        .and_then(|m| m.parse().ok())
    {
        // The head and a first line at once, the last line after a pause.
        let frames = futures::stream::unfold(0u8, move |i| async move {
            let data = match i {
                0 => Bytes::from(format!("{name} drip\n")),
                1 => {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    Bytes::from_static(b"drip end\n")
                }
                _ => return None,
            };
            Some((Ok::<_, Infallible>(hyper::body::Frame::data(data)), i + 1))
        });
        return Ok(Response::new(
            http_body_util::StreamBody::new(frames).boxed(),
        ));
    }
    if let Some(ms) = parts
        .uri
        .path()
        .strip_prefix("/delay/")
        .and_then(|m| m.parse().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let status = parts
        .uri
        .path()
        .strip_prefix("/status/")
        .and_then(|c| c.parse().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(format!("{name}\n"))).boxed())
        .unwrap())
}

/// A request's answer: status, body and headers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub headers: HeaderMap,
    pub trailers: Option<HeaderMap>,
}

/// An HTTP/1.1 client connection over `io`.
pub async fn h1_client<S>(io: S) -> hyper::Result<http1::SendRequest<Full<Bytes>>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// An HTTP/2 (prior knowledge) client connection over `io`.
pub async fn h2_client<S>(io: S) -> hyper::Result<http2::SendRequest<Full<Bytes>>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// `GET http://<host><path>` as a request.
pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("http://{host}{path}"))
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Sends on an HTTP/1.1 connection (origin-form target) and reads it all.
pub async fn send_h1(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    mut req: Request<Full<Bytes>>,
) -> hyper::Result<Answer> {
    sender.ready().await?;
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *req.uri_mut() = pq.parse().unwrap();
    collect(sender.send_request(req).await?).await
}

/// Sends on an HTTP/2 connection and reads it all.
pub async fn send_h2(
    sender: &mut http2::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> hyper::Result<Answer> {
    sender.ready().await?;
    collect(sender.send_request(req).await?).await
}

async fn collect(resp: Response<Incoming>) -> hyper::Result<Answer> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
        headers: parts.headers,
        trailers,
    })
}

/// Writes `raw` on `io` and reads until the peer closes (or 10 s pass):
/// for requests hyper's client would refuse to send.
pub async fn raw_exchange<S>(mut io: S, raw: &[u8]) -> std::io::Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(raw).await?;
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), io.read_to_end(&mut out));
    match read.await {
        Ok(r) => r.map(|_| ())?,
        Err(_) => return Err(std::io::Error::other("no close within 10 s")),
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
