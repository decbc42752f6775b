//! A connector for the control-plane channels whose sockets carry ztunnel's
//! `SO_MARK`. A sidecar shares its pod's network namespace, where nat OUTPUT
//! redirects every unmarked TCP connection to the sidecar itself: without
//! the mark, its own xDS and CA connections would loop through its outbound
//! listener (and hang before that listener accepts).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hbone::socket::{dial, DialOptions};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// How long one connection attempt to the control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Dials the control plane with `SO_MARK = mark` (TLS is layered on top by
/// tonic, from the endpoint's config).
#[derive(Debug, Clone, Copy)]
pub struct MarkedConnector {
    pub mark: u32,
}

impl tonic::codegen::Service<http::Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let mark = self.mark;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in the URI"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, host.clone()))?;
            let opts = DialOptions {
                mark: Some(mark),
                source: None,
                transparent: false,
            };
            let stream = dial(addr, opts, CONNECT_TIMEOUT)
                .await
                .map_err(io::Error::other)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// A channel that connects on first use, with marked sockets when `mark`
/// is set.
pub fn connect_lazy(endpoint: &Endpoint, mark: Option<u32>) -> Channel {
    match mark {
        Some(mark) => endpoint.connect_with_connector_lazy(MarkedConnector { mark }),
        None => endpoint.connect_lazy(),
    }
}

/// Connects now, with marked sockets when `mark` is set.
pub async fn connect(
    endpoint: &Endpoint,
    mark: Option<u32>,
) -> Result<Channel, tonic::transport::Error> {
    match mark {
        Some(mark) => {
            endpoint
                .connect_with_connector(MarkedConnector { mark })
                .await
        }
        None => endpoint.connect().await,
    }
}
