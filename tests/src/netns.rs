//! A named network namespace (`/run/netns/<name>`) and ways to act inside it:
//! shell commands, child processes, and, most importantly, in-process sockets.
//!
//! Sockets belong to the namespace they were created in, not to the thread that
//! uses them. [`Netns::run`] runs a closure on a short-lived thread that has
//! `setns`-ed into the namespace, so a listener or socket created there stays
//! in the namespace and can be used by tokio tasks of the test afterwards.

use std::fs::File;
use std::io;
use std::net::SocketAddr;

use nix::sched::CloneFlags;

use crate::command::{run_in, ChildGuard};
use crate::HarnessError;

/// A network namespace by name. It does not own the namespace: the
/// [`Topology`](crate::Topology) that created it deletes it.
/// Accept queue of listeners made with [`Netns::std_listener`].
pub const LISTEN_BACKLOG: i32 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Refers to an existing namespace `/run/netns/<name>`.
    pub fn from_name(name: impl Into<String>) -> Netns {
        Netns { name: name.into() }
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `cmd` with `sh -c` inside this namespace; returns stdout.
    pub fn exec(&self, cmd: &str) -> Result<String, HarnessError> {
        run_in(&self.name, cmd)
    }

    /// Spawns a long-running process in this namespace; killed when the guard
    /// drops.
    pub fn spawn(&self, argv: &[&str]) -> Result<ChildGuard, HarnessError> {
        ChildGuard::spawn(&self.name, argv)
    }

    /// Runs `f` on a fresh thread that has entered this namespace and returns
    /// its result. Sockets created inside `f` live in this namespace for good.
    /// When called from within a tokio runtime, the runtime is entered on that
    /// thread too, so `tokio::net::*::from_std` works inside `f`. Commands
    /// spawned inside `f` (`std::process::Command`) also run in the namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T, HarnessError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let handle = tokio::runtime::Handle::try_current().ok();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter_current_thread()?;
                    let _guard = handle.as_ref().map(tokio::runtime::Handle::enter);
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn enter_current_thread(&self) -> Result<(), HarnessError> {
        let enter_err = |source| HarnessError::Enter {
            name: self.name.clone(),
            source,
        };
        let file = File::open(format!("/run/netns/{}", self.name)).map_err(enter_err)?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|errno| enter_err(io::Error::from(errno)))
    }

    /// A std listener bound to `addr` inside this namespace, with a deep
    /// accept queue (std's default of 128 overflows when a test opens
    /// hundreds of connections at once, and the kernel then resets some).
    pub fn std_listener(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        self.run(|| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(LISTEN_BACKLOG)?;
            Ok(socket.into())
        })
        .map_err(io::Error::other)?
    }

    /// A blocking std connection to `addr` made from inside this namespace.
    pub fn std_connect(&self, addr: SocketAddr) -> io::Result<std::net::TcpStream> {
        self.run(|| std::net::TcpStream::connect(addr))
            .map_err(io::Error::other)?
    }

    /// A tokio listener bound to `addr` inside this namespace. Needs a runtime.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let listener = self.std_listener(addr)?;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// A fresh, unconnected IPv4 tokio socket created inside this namespace;
    /// bind or set options on it, then `connect` from any task.
    pub fn tcp_socket_v4(&self) -> io::Result<tokio::net::TcpSocket> {
        self.run(tokio::net::TcpSocket::new_v4)
            .map_err(io::Error::other)?
    }

    /// Connects to `addr` from inside this namespace.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let socket = match addr {
            SocketAddr::V4(_) => self.tcp_socket_v4()?,
            SocketAddr::V6(_) => self
                .run(tokio::net::TcpSocket::new_v6)
                .map_err(io::Error::other)??,
        };
        socket.connect(addr).await
    }
}
