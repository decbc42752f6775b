//! The control-plane channels (xDS and the CA):
//!
//! - every one is hardened with [`ChannelOptions`]: a connect deadline
//!   (TCP and TLS), and HTTP/2 keepalive, so a control plane that stops
//!   answering without closing the connection (frozen, or a peer that
//!   vanished without a FIN) is detected and the channel reconnects;
//! - a connector whose sockets carry ztunnel's `SO_MARK`. A sidecar shares
//!   its pod's network namespace, where nat OUTPUT redirects every unmarked
//!   TCP connection to the sidecar itself: without the mark, its own xDS
//!   and CA connections would loop through its outbound listener (and hang
//!   before that listener accepts).

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
/// HTTP/2 PING this often, even with no call in flight (Istio's
/// keepalive time, which istiod's enforcement accepts)...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and a PING not answered within this closes the connection: a
/// silently dead control plane is noticed within 40 s.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a call to be answered (the ADS stream's response headers,
/// a certificate): the server must take the call, not finish it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadlines and keepalive of a control-plane channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelOptions {
    /// TCP connect plus the TLS handshake.
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// See [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            connect_timeout: CONNECT_TIMEOUT,
            keepalive_interval: KEEPALIVE_INTERVAL,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

impl ChannelOptions {
    /// `endpoint` with these deadlines and keepalive.
    pub fn apply(&self, endpoint: &Endpoint) -> Endpoint {
        endpoint
            .clone()
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
    }
}

/// Dials the control plane, with `SO_MARK = mark` when set (TLS is layered
/// on top by tonic, from the endpoint's config).
#[derive(Debug, Clone, Copy)]
pub struct ControlPlaneConnector {
    pub mark: Option<u32>,
}

impl tonic::codegen::Service<http::Uri> for ControlPlaneConnector {
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
                mark,
                source: None,
                transparent: false,
            };
            // The endpoint's connect timeout bounds TLS on top as well.
            let stream = dial(addr, opts, CONNECT_TIMEOUT)
                .await
                .map_err(io::Error::other)?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// A channel that connects on first use (and again after a failure), with
/// marked sockets when `mark` is set, and the default [`ChannelOptions`].
pub fn connect_lazy(endpoint: &Endpoint, mark: Option<u32>) -> Channel {
    connect_lazy_with(endpoint, mark, &ChannelOptions::default())
}

/// [`connect_lazy`] with `opts`.
pub fn connect_lazy_with(endpoint: &Endpoint, mark: Option<u32>, opts: &ChannelOptions) -> Channel {
    opts.apply(endpoint)
        .connect_with_connector_lazy(ControlPlaneConnector { mark })
}

/// Connects now, with marked sockets when `mark` is set, and the default
/// [`ChannelOptions`].
pub async fn connect(
    endpoint: &Endpoint,
    mark: Option<u32>,
) -> Result<Channel, tonic::transport::Error> {
    connect_with(endpoint, mark, &ChannelOptions::default()).await
}

/// [`connect`] with `opts`.
pub async fn connect_with(
    endpoint: &Endpoint,
    mark: Option<u32>,
    opts: &ChannelOptions,
) -> Result<Channel, tonic::transport::Error> {
    opts.apply(endpoint)
        .connect_with_connector(ControlPlaneConnector { mark })
        .await
}
