//! The handoff protocol, pure: which listener is which, the messages and
//! their framing, and the checks each side makes. No sockets, no clock.
//!
//! One exchange over a `SOCK_SEQPACKET` Unix connection (each message is
//! one packet, so framing is the packet):
//!
//! ```text
//! new ztunnel                               running ztunnel
//!   Request {version, pid, identity}  --->
//!                                      <---  Offer {pid, listeners}
//!                                            + SCM_RIGHTS: each listener in
//!                                              order, then the handoff socket
//!   (accepts on them)
//!   Drain                             --->
//!                                      <---  Draining {open_connections}
//!                                            (stops accepting, drains, exits)
//! ```
//!
//! or `Refused {reason}` instead of the offer. A message is [`MAGIC`]
//! followed by JSON, at most [`MAX_MESSAGE`] bytes.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change; both sides must agree.
pub const VERSION: u32 = 1;
/// Every message starts with these bytes.
pub const MAGIC: &[u8; 4] = b"ztho";
/// The largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 4096;
/// The most descriptors an offer carries: every role and the handoff socket.
pub const MAX_FDS: usize = Role::ALL.len() + 1;

/// What a listening socket is for. Every TCP socket a node ztunnel
/// listens on is handed over, so the new process binds nothing the old one
/// holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// 15001, transparent: traffic leaving a local pod.
    Outbound,
    /// 15006, transparent: plaintext to a local pod.
    InboundPlaintext,
    /// 15008, transparent: HBONE to a local pod.
    Hbone,
    /// 15000 (loopback).
    Admin,
    /// 15020.
    Metrics,
    /// 15021.
    Readiness,
}

impl Role {
    /// The order of the listeners in an offer and of its descriptors.
    pub const ALL: [Role; 6] = [
        Role::Outbound,
        Role::InboundPlaintext,
        Role::Hbone,
        Role::Admin,
        Role::Metrics,
        Role::Readiness,
    ];

    /// Whether the socket is transparent (IP_TRANSPARENT, for TPROXY).
    pub fn transparent(self) -> bool {
        matches!(self, Role::Outbound | Role::InboundPlaintext | Role::Hbone)
    }
}

/// One listening socket: its role and the address it is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub role: Role,
    pub addr: SocketAddr,
}

/// A network namespace, as `/proc/self/ns/net` identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

/// What must be equal on both sides for a handoff: the node, the network
/// namespace (the sockets live in it), and every listener's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node: String,
    pub netns: NetnsId,
    /// In [`Role::ALL`] order.
    pub listeners: Vec<Listener>,
}

/// The messages of the exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// New → running: hand me your listeners.
    Request {
        version: u32,
        pid: u32,
        identity: Identity,
    },
    /// Running → new, with the descriptors: [`Offer::listeners`]'s sockets
    /// in order, then the handoff socket.
    Offer(Offer),
    /// Running → new: no handoff, and why.
    Refused { reason: String },
    /// New → running: I accept on them now; stop accepting and drain.
    Drain,
    /// Running → new: draining this many connections, then exiting.
    Draining { open_connections: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub pid: u32,
    pub listeners: Vec<Listener>,
}

/// A message that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message of {0} bytes exceeds {MAX_MESSAGE}")]
    TooLong(usize),
    #[error("not a handoff message (no magic)")]
    NoMagic,
    #[error("malformed handoff message: {0}")]
    Malformed(String),
}

/// Encodes `msg` as one packet.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    // A Message is plain data: serializing it cannot fail.
    out.extend(serde_json::to_vec(msg).expect("handoff message serializes"));
    out
}

/// Decodes one packet.
pub fn decode(packet: &[u8]) -> Result<Message, FrameError> {
    if packet.len() > MAX_MESSAGE {
        return Err(FrameError::TooLong(packet.len()));
    }
    let body = packet.strip_prefix(MAGIC).ok_or(FrameError::NoMagic)?;
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Why the running ztunnel refuses a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("protocol version {theirs}, this ztunnel speaks {ours}")]
    Version { ours: u32, theirs: u32 },
    #[error("it runs in another network namespace (give each node its own --state-dir)")]
    OtherNetns,
    #[error("it is for node {theirs:?}, this ztunnel serves {ours:?}")]
    OtherNode { ours: String, theirs: String },
    #[error("its listeners {theirs:?} differ from this ztunnel's {ours:?} (restart instead of upgrading to change a listen address)")]
    Listeners {
        ours: Vec<Listener>,
        theirs: Vec<Listener>,
    },
}

/// The running side's check of a request: same protocol, namespace, node
/// and listener addresses, or a reason to refuse.
pub fn check_request(ours: &Identity, version: u32, theirs: &Identity) -> Result<(), Refusal> {
    if version != VERSION {
        return Err(Refusal::Version {
            ours: VERSION,
            theirs: version,
        });
    }
    if ours.netns != theirs.netns {
        return Err(Refusal::OtherNetns);
    }
    if ours.node != theirs.node {
        return Err(Refusal::OtherNode {
            ours: ours.node.clone(),
            theirs: theirs.node.clone(),
        });
    }
    if ours.listeners != theirs.listeners {
        return Err(Refusal::Listeners {
            ours: ours.listeners.clone(),
            theirs: theirs.listeners.clone(),
        });
    }
    Ok(())
}

/// An offer the new side cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    #[error("offered {offered:?}, asked for {wanted:?}")]
    Listeners {
        wanted: Vec<Listener>,
        offered: Vec<Listener>,
    },
    #[error("{fds} descriptors for {listeners} listeners and the handoff socket")]
    Descriptors { fds: usize, listeners: usize },
}

/// The new side's check of an offer carrying `fds` descriptors: exactly the
/// listeners asked for, in order, one descriptor each plus the handoff
/// socket's.
pub fn check_offer(wanted: &[Listener], offer: &Offer, fds: usize) -> Result<(), OfferError> {
    if offer.listeners != wanted {
        return Err(OfferError::Listeners {
            wanted: wanted.to_vec(),
            offered: offer.listeners.clone(),
        });
    }
    if fds != offer.listeners.len() + 1 {
        return Err(OfferError::Descriptors {
            fds,
            listeners: offer.listeners.len(),
        });
    }
    Ok(())
}

/// The listeners of a node ztunnel with these listen addresses, in
/// [`Role::ALL`] order.
pub fn listeners(l: &super::super::Listeners) -> Vec<Listener> {
    Role::ALL
        .iter()
        .map(|&role| Listener {
            role,
            addr: match role {
                Role::Outbound => l.outbound,
                Role::InboundPlaintext => l.inbound_plaintext,
                Role::Hbone => l.hbone,
                Role::Admin => l.admin,
                Role::Metrics => l.metrics,
                Role::Readiness => l.readiness,
            },
        })
        .collect()
}
