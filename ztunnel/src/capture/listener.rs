//! Listeners that accept TPROXY-ed connections, and reading the original
//! destination back.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

/// Listen backlog of capture listeners.
pub const LISTEN_BACKLOG: i32 = 1024;

/// A tokio listener bound to `addr` (normally `0.0.0.0:<port>`) with
/// IP_TRANSPARENT set before bind, so TPROXY can hand it connections for
/// addresses that are not local. Also SO_REUSEADDR, non-blocking. Needs
/// CAP_NET_ADMIN (or CAP_NET_RAW) and a tokio runtime context.
pub fn transparent_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(transparent_std_listener(addr)?)
}

/// [`transparent_listener`] as a std (non-blocking) listener, to register
/// with a runtime later or hand to another process.
pub fn transparent_std_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    match addr {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        SocketAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The original destination of a connection accepted through TPROXY: with
/// TPROXY (unlike REDIRECT) the accepted socket's local address *is* the
/// address the client dialled.
pub fn orig_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    stream.local_addr()
}

/// The original destination of a connection redirected by nat REDIRECT
/// (sidecar mode): conntrack's `SO_ORIGINAL_DST` (SOL_IP), since the
/// accepted socket's local address is the proxy's own port. IPv4 only.
pub fn redirected_orig_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sin = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst)
        .map_err(io::Error::from)?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
}
