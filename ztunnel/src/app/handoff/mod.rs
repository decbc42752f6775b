//! Zero-drop upgrade: a new node ztunnel takes over the running one's
//! listening sockets, so no connection is refused during a rollout, and the
//! old one drains its established connections before it exits.
//!
//! The running ztunnel listens on `<state dir>/handoff.sock` (a
//! `SOCK_SEQPACKET` Unix socket; the directory is created 0700). A new
//! ztunnel started with the same flags connects to it before binding,
//! receives every listening socket (the transparent 15001, 15006 and 15008,
//! and 15000, 15020 and 15021) with `SCM_RIGHTS`, together with the handoff
//! socket itself, and accepts on them at once; then it tells the old one to
//! drain. Both processes hold the *same* sockets, so nothing is closed and
//! no accept queue is lost: closing one listener of a `SO_REUSEPORT` group
//! instead would reset the connections waiting in its queue (unless
//! `net.ipv4.tcp_migrate_req=1`). With no ztunnel answering at the path,
//! the new one binds as usual. The exchange is [`protocol`]; this module
//! does the socket work.
//!
//! Safety: both sides check the peer's uid (`SO_PEERCRED`), the running one
//! refuses a peer in another network namespace, for another node or with
//! other listen addresses, and the new one checks each descriptor is a
//! listening socket bound where it asked.

pub mod protocol;
#[cfg(test)]
mod tests;

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hbone::drain::Drain;
use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;

use protocol::{Identity, Message, NetnsId, Offer, OfferError};

/// Where a node ztunnel keeps its handoff socket, by default.
pub const DEFAULT_STATE_DIR: &str = "/var/run/ztunnel";
/// The handoff socket's name in the state directory.
pub const SOCKET_NAME: &str = "handoff.sock";
/// How long either side waits for the other's next message.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the running ztunnel waits, after its offer, for the new one to
/// start accepting and ask it to drain; past that it keeps serving.
pub const DRAIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("{what} {path}")]
    Path {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the other ztunnel")]
    Exchange(#[source] io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("the other ztunnel closed the connection while this one waited for {0}")]
    Closed(&'static str),
    #[error("decoding a message")]
    Frame(#[source] protocol::FrameError),
    #[error("expected {expected}, got {got:?}")]
    Unexpected {
        expected: &'static str,
        got: Box<Message>,
    },
    #[error("the running ztunnel refused the handoff: {0}")]
    Refused(String),
    #[error("refusing a handoff to pid {pid}: {refusal}")]
    Refusing {
        pid: u32,
        refusal: protocol::Refusal,
    },
    #[error("unusable offer")]
    Offer(#[source] OfferError),
    #[error("descriptor {index} of the offer is not a listening socket bound to {want}")]
    NotListening { index: usize, want: String },
    #[error("the other ztunnel runs as uid {peer}, this one as {own}")]
    PeerUid { peer: u32, own: u32 },
}

/// The network namespace this process runs in.
pub fn own_netns() -> io::Result<NetnsId> {
    let meta = std::fs::metadata("/proc/self/ns/net")?;
    Ok(NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// One handoff connection: a non-blocking `SOCK_SEQPACKET` socket.
struct Conn(AsyncFd<OwnedFd>);

/// Registers a non-blocking socket with the runtime.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open for as long as it lives, and its
    // `as_raw_fd` always returns that same descriptor.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

impl Conn {
    fn new(fd: OwnedFd) -> io::Result<Conn> {
        Ok(Conn(register(fd)?))
    }

    /// The peer must run as this process's user (root, for a node ztunnel).
    fn check_peer_uid(&self) -> Result<(), HandoffError> {
        let creds = socket::getsockopt(self.0.get_ref(), sockopt::PeerCredentials)
            .map_err(|e| HandoffError::Exchange(e.into()))?;
        let own = nix::unistd::geteuid().as_raw();
        if creds.uid() != own {
            return Err(HandoffError::PeerUid {
                peer: creds.uid(),
                own,
            });
        }
        Ok(())
    }

    /// Sends `msg` as one packet, with `fds` attached.
    async fn send(&self, msg: &Message, fds: &[RawFd]) -> Result<(), HandoffError> {
        let bytes = protocol::encode(msg);
        loop {
            let mut guard = self.0.writable().await.map_err(HandoffError::Exchange)?;
            let sent = guard.try_io(|fd| {
                let iov = [IoSlice::new(&bytes)];
                let rights = [ControlMessage::ScmRights(fds)];
                let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
                socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(result) => return result.map(drop).map_err(HandoffError::Exchange),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message (and any descriptors with it) within `timeout`.
    async fn recv(
        &self,
        what: &'static str,
        timeout: Duration,
    ) -> Result<(Message, Vec<OwnedFd>), HandoffError> {
        let (packet, fds) = tokio::time::timeout(timeout, self.recv_packet())
            .await
            .map_err(|_| HandoffError::Timeout(what))?
            .map_err(HandoffError::Exchange)?;
        if packet.is_empty() {
            return Err(HandoffError::Closed(what));
        }
        let msg = protocol::decode(&packet).map_err(HandoffError::Frame)?;
        Ok((msg, fds))
    }

    async fn recv_packet(&self) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| recv_now(fd.as_raw_fd())) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// One `recvmsg`: the packet (empty at EOF) and the descriptors it
/// carried, owned (close-on-exec) even when the packet is then rejected.
fn recv_now(fd: RawFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; protocol::MAX_MESSAGE + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; protocol::MAX_FDS]);
    let (bytes, truncated, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this
                // process for us; nothing else owns them.
                fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, truncated, fds)
    };
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "handoff message or its descriptors truncated",
        ));
    }
    buf.truncate(bytes);
    Ok((buf, fds))
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?)
}

/// Creates `state_dir` (0700) and listens on its handoff socket, replacing
/// a stale one (no process answered at it).
pub fn bind(state_dir: &Path) -> Result<OwnedFd, HandoffError> {
    let path_err = |what, path: &Path| {
        let path = path.to_owned();
        move |source| HandoffError::Path { what, path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(path_err("creating", state_dir))?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(path_err("restricting", state_dir))?;
    let path = state_dir.join(SOCKET_NAME);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(path_err("removing the stale", &path)(e))
        }
        _ => {}
    }
    let bind = || -> io::Result<OwnedFd> {
        let fd = seqpacket_socket()?;
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(&path)?)?;
        socket::listen(&fd, Backlog::new(8)?)?;
        Ok(fd)
    };
    bind().map_err(path_err("listening on", &path))
}

/// The running ztunnel's side: answers handoff requests on its socket.
pub struct Server {
    listener: AsyncFd<OwnedFd>,
    path: PathBuf,
    identity: Identity,
    /// The sockets to hand over, in `identity.listeners` order, then the
    /// handoff socket itself. Dropped when serving ends, so a ztunnel that
    /// drains without a successor closes its listeners.
    sockets: Vec<OwnedFd>,
}

/// How [`Server::serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Drained without a successor: the socket path was removed.
    Drained,
    /// A new ztunnel (this pid) accepts on the listeners and asked this one
    /// to drain.
    HandedOff { pid: u32 },
}

impl Server {
    /// `listener` is the handoff socket at `path`; `sockets` the listeners
    /// to offer (in `identity.listeners` order) followed by a duplicate of
    /// the handoff socket. Needs a tokio runtime context.
    pub fn new(
        listener: OwnedFd,
        path: PathBuf,
        identity: Identity,
        sockets: Vec<OwnedFd>,
    ) -> io::Result<Server> {
        Ok(Server {
            listener: register(listener)?,
            path,
            identity,
            sockets,
        })
    }

    /// Answers requests until one hands over (the new ztunnel now accepts;
    /// the caller drains) or `drain` is signalled (the path is removed, so a
    /// later ztunnel binds afresh). A failed exchange is logged and the
    /// listeners stay with this process. `open_connections` is reported to
    /// the successor.
    pub async fn serve(self, drain: &Drain, open_connections: impl Fn() -> u64) -> Served {
        let mut watch = drain.watch();
        loop {
            let accepted = tokio::select! {
                a = self.accept() => a,
                () = watch.signaled() => return self.drained(),
            };
            let conn = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "handoff accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let mut offered = false;
            let exchange = self.exchange(&conn, &open_connections, &mut offered);
            let result = tokio::select! {
                r = exchange => r,
                // Drained mid-exchange: once offered, the other process holds
                // the sockets, and the path is its way to them.
                () = watch.signaled() => {
                    return if offered { Served::Drained } else { self.drained() };
                }
            };
            match result {
                Ok(pid) => return Served::HandedOff { pid },
                Err(e) => {
                    tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "handoff failed; keeping the listeners");
                }
            }
        }
    }

    fn drained(&self) -> Served {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "removing the handoff socket");
        }
        Served::Drained
    }

    async fn accept(&self) -> io::Result<Conn> {
        loop {
            let mut guard = self.listener.readable().await?;
            let accepted = guard.try_io(|fd| {
                socket::accept4(
                    fd.as_raw_fd(),
                    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                )
                .map_err(io::Error::from)
            });
            match accepted {
                // SAFETY: accept4 returned a new descriptor that we own.
                Ok(fd) => return Conn::new(unsafe { OwnedFd::from_raw_fd(fd?) }),
                Err(_would_block) => continue,
            }
        }
    }

    /// Request → offer → drain request → draining. Returns the new pid.
    async fn exchange(
        &self,
        conn: &Conn,
        open_connections: &impl Fn() -> u64,
        offered: &mut bool,
    ) -> Result<u32, HandoffError> {
        conn.check_peer_uid()?;
        let (msg, _fds) = conn.recv("a request", EXCHANGE_TIMEOUT).await?;
        let Message::Request {
            version,
            pid,
            identity,
        } = msg
        else {
            return Err(unexpected("a request", msg));
        };
        if let Err(refusal) = protocol::check_request(&self.identity, version, &identity) {
            let reason = refusal.to_string();
            let _ = conn.send(&Message::Refused { reason }, &[]).await;
            return Err(HandoffError::Refusing { pid, refusal });
        }
        let offer = Message::Offer(Offer {
            pid: std::process::id(),
            listeners: self.identity.listeners.clone(),
        });
        let fds: Vec<RawFd> = self.sockets.iter().map(AsRawFd::as_raw_fd).collect();
        conn.send(&offer, &fds).await?;
        *offered = true;
        tracing::info!(new_pid = pid, "listeners offered to a new ztunnel");
        let (msg, _fds) = conn
            .recv("the drain request", DRAIN_REQUEST_TIMEOUT)
            .await?;
        if msg != Message::Drain {
            return Err(unexpected("the drain request", msg));
        }
        let open_connections = open_connections();
        conn.send(&Message::Draining { open_connections }, &[])
            .await?;
        Ok(pid)
    }
}

fn unexpected(expected: &'static str, got: Message) -> HandoffError {
    HandoffError::Unexpected {
        expected,
        got: Box::new(got),
    }
}

/// What a new ztunnel received from the running one.
pub struct Predecessor {
    conn: Conn,
    /// The running ztunnel's process id.
    pub pid: u32,
    /// The listeners, in the requested order (non-blocking).
    pub listeners: Vec<std::net::TcpListener>,
    /// The handoff socket, listening: this process answers the next upgrade.
    pub handoff: OwnedFd,
}

impl Predecessor {
    /// Tells the old ztunnel to stop accepting and drain (call once this
    /// process accepts on the listeners). Returns how many connections it
    /// is draining.
    pub async fn drain(self) -> Result<u64, HandoffError> {
        self.conn.send(&Message::Drain, &[]).await?;
        match self.conn.recv("draining", EXCHANGE_TIMEOUT).await? {
            (Message::Draining { open_connections }, _) => Ok(open_connections),
            (other, _) => Err(unexpected("draining", other)),
        }
    }
}

/// The new ztunnel's side: asks the ztunnel answering at `path` for its
/// listeners. `None` when none answers (no socket, or a stale one): bind
/// afresh.
pub async fn take_over(
    path: &Path,
    identity: &Identity,
) -> Result<Option<Predecessor>, HandoffError> {
    let conn = match connect(path).await {
        Ok(conn) => conn,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
            ) =>
        {
            return Ok(None)
        }
        Err(source) => {
            return Err(HandoffError::Path {
                what: "connecting to",
                path: path.to_owned(),
                source,
            })
        }
    };
    conn.check_peer_uid()?;
    let request = Message::Request {
        version: protocol::VERSION,
        pid: std::process::id(),
        identity: identity.clone(),
    };
    conn.send(&request, &[]).await?;
    let (msg, mut fds) = conn.recv("the offer", EXCHANGE_TIMEOUT).await?;
    let offer = match msg {
        Message::Offer(offer) => offer,
        Message::Refused { reason } => return Err(HandoffError::Refused(reason)),
        other => return Err(unexpected("the offer", other)),
    };
    protocol::check_offer(&identity.listeners, &offer, fds.len()).map_err(HandoffError::Offer)?;
    let handoff = fds
        .pop()
        .expect("checked: one more descriptor than listeners");
    if !is_listening(&handoff, SockType::SeqPacket) {
        return Err(HandoffError::NotListening {
            index: fds.len(),
            want: path.display().to_string(),
        });
    }
    let listeners = fds
        .into_iter()
        .zip(&offer.listeners)
        .enumerate()
        .map(|(index, (fd, l))| tcp_listener(fd, l.addr, index))
        .collect::<Result<_, _>>()?;
    Ok(Some(Predecessor {
        conn,
        pid: offer.pid,
        listeners,
        handoff,
    }))
}

/// Connects to the handoff socket at `path`, retrying a full backlog
/// within [`EXCHANGE_TIMEOUT`].
async fn connect(path: &Path) -> io::Result<Conn> {
    let fd = seqpacket_socket()?;
    let addr = UnixAddr::new(path)?;
    let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
    loop {
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Conn::new(fd),
            Err(Errno::EAGAIN) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn is_listening(fd: &OwnedFd, kind: SockType) -> bool {
    socket::getsockopt(fd, sockopt::SockType).is_ok_and(|t| t == kind)
        && socket::getsockopt(fd, sockopt::AcceptConn).unwrap_or(false)
}

/// A received descriptor as a TCP listener, checked to listen on `want`.
fn tcp_listener(
    fd: OwnedFd,
    want: std::net::SocketAddr,
    index: usize,
) -> Result<std::net::TcpListener, HandoffError> {
    let not_listening = || HandoffError::NotListening {
        index,
        want: want.to_string(),
    };
    if !is_listening(&fd, SockType::Stream) {
        return Err(not_listening());
    }
    let listener = std::net::TcpListener::from(fd);
    if listener.local_addr().ok() != Some(want) {
        return Err(not_listening());
    }
    listener
        .set_nonblocking(true)
        .map_err(HandoffError::Exchange)?;
    Ok(listener)
}
