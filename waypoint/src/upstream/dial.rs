//! Reaching one endpoint: HBONE to `podIP:15008` with `:authority`
//! `podIP:targetPort`, under the waypoint's identity and expecting the
//! endpoint's (DESIGN §6), or plain TCP to an endpoint outside the mesh.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hbone::client::{ConnectRequest, HboneClient, TunnelError};
use hbone::headers::ConnectMeta;
use hbone::stream::H2Stream;
use mesh_model::state::{Snapshot, Workload};
use mesh_model::{ResponseFlag, SpiffeId, HBONE_PORT};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a plain TCP connect to an endpoint outside the mesh may take.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One endpoint of a request: where to connect and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `podIP:targetPort`.
    pub addr: SocketAddr,
    /// The endpoint's identity when it takes HBONE (an ambient pod, or one
    /// with its own sidecar); `None`: plain TCP.
    pub tunnel: Option<SpiffeId>,
}

impl Endpoint {
    /// `w` on `port`, reached the way the snapshot says it accepts traffic.
    /// `None` when `w` has no address.
    pub fn of(snap: &Snapshot, w: &Workload, port: u16) -> Option<Endpoint> {
        let ip = w.primary_ip()?;
        Some(Endpoint {
            addr: SocketAddr::new(ip, port),
            tunnel: snap.accepts_hbone(w).then(|| w.identity()),
        })
    }

    /// Where the TCP connection goes: `podIP:15008` or the endpoint itself.
    pub fn dial_addr(&self) -> SocketAddr {
        match self.tunnel {
            Some(_) => SocketAddr::new(self.addr.ip(), HBONE_PORT),
            None => self.addr,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("HBONE tunnel")]
    Tunnel(#[source] TunnelError),
    #[error("connecting to {addr}")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr} timed out")]
    Timeout { addr: SocketAddr },
}

impl DialError {
    pub fn flag(&self) -> ResponseFlag {
        match self {
            DialError::Tunnel(e) => match e.reason() {
                "DENY" => ResponseFlag::Deny,
                "TLS_FAILURE" => ResponseFlag::TlsFailure,
                _ => ResponseFlag::Connect,
            },
            _ => ResponseFlag::Connect,
        }
    }
}

/// A connection to an endpoint.
#[derive(Debug)]
pub enum UpstreamIo {
    Hbone(H2Stream),
    Tcp(TcpStream),
}

/// Opens a connection to `ep`: a tunnel from `me`, or plain TCP.
pub async fn dial(
    client: &Arc<HboneClient>,
    me: &SpiffeId,
    ep: &Endpoint,
    meta: ConnectMeta,
) -> Result<UpstreamIo, DialError> {
    match &ep.tunnel {
        Some(id) => {
            let req = ConnectRequest {
                source: me.clone(),
                source_ip: None,
                expected: vec![id.clone()],
                via: ep.dial_addr(),
                authority: ep.addr,
                meta,
            };
            client
                .connect(&req)
                .await
                .map(UpstreamIo::Hbone)
                .map_err(DialError::Tunnel)
        }
        None => {
            let addr = ep.addr;
            match tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(UpstreamIo::Tcp(s))
                }
                Ok(Err(source)) => Err(DialError::Tcp { addr, source }),
                Err(_) => Err(DialError::Timeout { addr }),
            }
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Hbone(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Hbone(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Hbone(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Hbone(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl hbone::copy::CopyIo for UpstreamIo {
    fn as_h2(&mut self) -> Option<&mut H2Stream> {
        match self {
            UpstreamIo::Hbone(s) => Some(s),
            UpstreamIo::Tcp(_) => None,
        }
    }
}
