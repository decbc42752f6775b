//! Outgoing TCP sockets the way a node proxy needs them: optionally marked
//! (`SO_MARK`, so capture rules skip our own traffic) and optionally bound to
//! a non-local source address (`IP_TRANSPARENT`, so peers see the real pod).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DialOptions {
    /// `SO_MARK` for the socket.
    pub mark: Option<u32>,
    /// Bind to this source address (port 0: an ephemeral port); with
    /// `transparent`, it may be a pod's address.
    pub source: Option<SocketAddr>,
    pub transparent: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("preparing socket for {addr}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

impl DialError {
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            DialError::Socket { source, .. } | DialError::Connect { source, .. } => {
                Some(source.kind())
            }
            DialError::Timeout { .. } => Some(io::ErrorKind::TimedOut),
        }
    }
}

pub fn prepare(addr: SocketAddr, opts: DialOptions) -> io::Result<TcpSocket> {
    // Non-blocking from the start: one syscall fewer per dial.
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    sock.set_tcp_nodelay(true)?;
    if let Some(mark) = opts.mark {
        sock.set_mark(mark)?;
    }
    if opts.transparent {
        match addr {
            SocketAddr::V4(_) => sock.set_ip_transparent_v4(true)?,
            SocketAddr::V6(_) => sock.set_ip_transparent_v6(true)?,
        }
    }
    if let Some(source) = opts.source {
        // Several sockets may share a spoofed source; the 4-tuple stays unique.
        sock.set_reuse_address(true)?;
        sock.bind(&SockAddr::from(source))?;
    }
    Ok(TcpSocket::from_std_stream(sock.into()))
}

/// Connect to `addr` with `opts`, giving up after `timeout`.
pub async fn dial(
    addr: SocketAddr,
    opts: DialOptions,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let sock = prepare(addr, opts).map_err(|source| DialError::Socket { addr, source })?;
    match tokio::time::timeout(timeout, sock.connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(DialError::Connect { addr, source }),
        Err(_) => Err(DialError::Timeout { addr, timeout }),
    }
}
