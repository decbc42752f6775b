//! The listening sockets: bound afresh, or taken over from the running
//! node ztunnel ([`super::handoff`]), which then drains.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use super::handoff::{self, protocol, Predecessor, Server};
use super::{AppError, Config, Mode};
use crate::capture::transparent_std_listener;

/// The control thread's listeners.
pub struct ControlListeners {
    pub admin: std::net::TcpListener,
    pub metrics: std::net::TcpListener,
    pub readiness: std::net::TcpListener,
}

/// Every listener of the process, non-blocking, not yet registered with a
/// runtime.
pub struct Bound {
    pub outbound: std::net::TcpListener,
    pub inbound_plaintext: std::net::TcpListener,
    pub hbone: std::net::TcpListener,
    pub control: ControlListeners,
    /// Node mode with capture: answers the next upgrade once this process
    /// serves.
    pub handoff: Option<Server>,
    /// The ztunnel these listeners came from, to tell to drain once this
    /// process accepts on them.
    pub predecessor: Option<Predecessor>,
}

impl Config {
    /// A node ztunnel with capture hands its listeners to its successor: a
    /// sidecar restarts with its pod, and without capture (trying the proxy
    /// on loopback) there is no node to keep closed.
    pub fn hands_off(&self) -> bool {
        self.capture && self.mode == Mode::Node
    }
}

/// Takes the listeners over from the ztunnel answering at the handoff
/// socket, or binds them when none does. Needs a tokio runtime context.
pub async fn open(cfg: &Config) -> Result<Bound, AppError> {
    let transparent = cfg.capture && cfg.mode == Mode::Node;
    if !cfg.hands_off() {
        let [outbound, inbound_plaintext, hbone, admin, metrics, readiness] =
            bind_all(cfg, transparent)?;
        return Ok(Bound {
            outbound,
            inbound_plaintext,
            hbone,
            control: ControlListeners {
                admin,
                metrics,
                readiness,
            },
            handoff: None,
            predecessor: None,
        });
    }
    let identity = protocol::Identity {
        node: cfg.node.clone(),
        netns: handoff::own_netns().map_err(AppError::Netns)?,
        listeners: protocol::listeners(&cfg.listeners),
    };
    let path = cfg.state_dir.join(handoff::SOCKET_NAME);
    let (listeners, handoff_fd, predecessor) = match handoff::take_over(&path, &identity)
        .await
        .map_err(AppError::Handoff)?
    {
        Some(mut p) => {
            let listeners: [std::net::TcpListener; 6] = std::mem::take(&mut p.listeners)
                .try_into()
                .expect("checked: one listener per role");
            let fd = p.handoff.try_clone().map_err(AppError::Dup)?;
            (listeners, fd, Some(p))
        }
        None => {
            let listeners = bind_all(cfg, transparent)?;
            let fd = handoff::bind(&cfg.state_dir).map_err(AppError::Handoff)?;
            (listeners, fd, None)
        }
    };
    let mut sockets = listeners
        .iter()
        .map(|l| l.try_clone().map(OwnedFd::from))
        .collect::<Result<Vec<OwnedFd>, _>>()
        .map_err(AppError::Dup)?;
    sockets.push(handoff_fd.try_clone().map_err(AppError::Dup)?);
    let server = Server::new(handoff_fd, path, identity, sockets).map_err(AppError::Dup)?;
    let [outbound, inbound_plaintext, hbone, admin, metrics, readiness] = listeners;
    Ok(Bound {
        outbound,
        inbound_plaintext,
        hbone,
        control: ControlListeners {
            admin,
            metrics,
            readiness,
        },
        handoff: Some(server),
        predecessor,
    })
}

/// Binds every listener, in [`protocol::Role::ALL`] order; the data-path
/// ones transparent (TPROXY) in node mode with capture.
fn bind_all(cfg: &Config, transparent: bool) -> Result<[std::net::TcpListener; 6], AppError> {
    let l = &cfg.listeners;
    Ok([
        listen(l.outbound, transparent)?,
        listen(l.inbound_plaintext, transparent)?,
        listen(l.hbone, transparent)?,
        listen(l.admin, false)?,
        listen(l.metrics, false)?,
        listen(l.readiness, false)?,
    ])
}

/// Binds one non-blocking listener: transparent (TPROXY) or plain.
fn listen(addr: SocketAddr, transparent: bool) -> Result<std::net::TcpListener, AppError> {
    let bound = if transparent {
        transparent_std_listener(addr)
    } else {
        std::net::TcpListener::bind(addr).and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(l)
        })
    };
    bound.map_err(|source| AppError::Bind { addr, source })
}
