//! Admin (15000, localhost only), metrics (15020) and readiness (15021).
//!
//! A tiny HTTP/1.1 server on hyper; each port serves a fixed set of paths
//! from a routing function, so the handlers stay plain functions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use hbone::drain::Drain;

pub type Reply = (StatusCode, &'static str, String);
pub type Route = Arc<dyn Fn(&Method, &str) -> Reply + Send + Sync>;

pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    (status, "text/plain; charset=utf-8", body.into())
}

pub fn json(body: String) -> Reply {
    (StatusCode::OK, "application/json", body)
}

/// Serve `route` on `listener` until drained.
pub async fn serve(listener: TcpListener, route: Route, drain: Drain) {
    let mut watch = drain.watch();
    loop {
        let (sock, _peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = watch.signaled() => return,
        };
        let route = route.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (status, ctype, body) = route(req.method(), req.uri().path());
                let resp = Response::builder()
                    .status(status)
                    .header("content-type", ctype)
                    .body(Full::new(Bytes::from(body)))
                    .expect("valid response");
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_routes_over_real_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let route: Route = Arc::new(|_m, path| match path {
            "/healthz/ready" => text(StatusCode::OK, "ready"),
            _ => text(StatusCode::NOT_FOUND, "no"),
        });
        let drain = Drain::new();
        tokio::spawn(serve(listener, route, drain.clone()));
        for (path, want) in [("/healthz/ready", "200 OK"), ("/nope", "404 Not Found")] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {want}")), "{out}");
        }
        drain.signal();
    }
}
