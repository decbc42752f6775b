//! The handoff: table tests of the pure protocol, then the real exchange
//! over a Unix socket in one process (loopback TCP listeners, no root).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::protocol::*;
use super::*;
use crate::app::Listeners;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn identity(node: &str, ports: [u16; 6]) -> Identity {
    Identity {
        node: node.into(),
        netns: NetnsId {
            dev: 4,
            ino: 4026531840,
        },
        listeners: Role::ALL
            .iter()
            .zip(ports)
            .map(|(&role, port)| Listener {
                role,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            })
            .collect(),
    }
}

#[test]
fn listeners_name_each_flag_in_role_order() {
    let l = Listeners::default();
    let got: Vec<(Role, SocketAddr)> = listeners(&l).iter().map(|l| (l.role, l.addr)).collect();
    assert_eq!(
        got,
        [
            (Role::Outbound, addr("0.0.0.0:15001")),
            (Role::InboundPlaintext, addr("0.0.0.0:15006")),
            (Role::Hbone, addr("0.0.0.0:15008")),
            (Role::Admin, addr("127.0.0.1:15000")),
            (Role::Metrics, addr("0.0.0.0:15020")),
            (Role::Readiness, addr("0.0.0.0:15021")),
        ]
    );
    let transparent: Vec<Role> = Role::ALL.into_iter().filter(|r| r.transparent()).collect();
    assert_eq!(
        transparent,
        [Role::Outbound, Role::InboundPlaintext, Role::Hbone]
    );
    assert_eq!(MAX_FDS, 7, "six listeners and the handoff socket");
}

#[test]
fn messages_round_trip_and_the_wire_form_is_pinned() {
    let id = identity("node1", [1, 2, 3, 4, 5, 6]);
    let messages = [
        Message::Request {
            version: VERSION,
            pid: 42,
            identity: id.clone(),
        },
        Message::Offer(Offer {
            pid: 7,
            listeners: id.listeners.clone(),
        }),
        Message::Refused {
            reason: "no".into(),
        },
        Message::Drain,
        Message::Draining {
            open_connections: 3,
        },
    ];
    for msg in messages {
        let bytes = encode(&msg);
        assert!(bytes.len() <= MAX_MESSAGE, "{msg:?}");
        assert_eq!(decode(&bytes), Ok(msg));
    }
    // Two versions of ztunnel must agree on these bytes.
    assert_eq!(encode(&Message::Drain), b"ztho{\"type\":\"drain\"}");
    assert_eq!(
        encode(&Message::Draining {
            open_connections: 2
        }),
        b"ztho{\"type\":\"draining\",\"open_connections\":2}"
    );
}

/// Whether a decoding error is the expected one.
type Expect = fn(&FrameError) -> bool;

#[test]
fn undecodable_packets() {
    let cases: [(&[u8], Expect); 5] = [
        (b"", |e| *e == FrameError::NoMagic),
        (b"{\"type\":\"drain\"}", |e| *e == FrameError::NoMagic),
        (b"ztho", |e| matches!(e, FrameError::Malformed(_))),
        (b"ztho{\"type\":\"explode\"}", |e| {
            matches!(e, FrameError::Malformed(_))
        }),
        (b"ztho{\"type\":\"drain\"", |e| {
            matches!(e, FrameError::Malformed(_))
        }),
    ];
    for (packet, want) in cases {
        let err = decode(packet).unwrap_err();
        assert!(want(&err), "{packet:?}: {err:?}");
    }
    let long = [b'z'; MAX_MESSAGE + 1];
    assert_eq!(decode(&long), Err(FrameError::TooLong(MAX_MESSAGE + 1)));
}

#[test]
fn the_running_side_refuses_what_is_not_the_same_node_proxy() {
    let ours = identity("node1", [1, 2, 3, 4, 5, 6]);
    let mut other_ns = ours.clone();
    other_ns.netns.ino += 1;
    let other_node = identity("node2", [1, 2, 3, 4, 5, 6]);
    let other_port = identity("node1", [1, 2, 3, 4, 5, 7]);
    let mut reordered = ours.clone();
    reordered.listeners.swap(0, 1);
    let cases: [(u32, &Identity, Option<&str>); 6] = [
        (VERSION, &ours, None),
        (VERSION + 1, &ours, Some("protocol version 2")),
        (VERSION, &other_ns, Some("another network namespace")),
        (VERSION, &other_node, Some("node \"node2\"")),
        (VERSION, &other_port, Some("differ")),
        (VERSION, &reordered, Some("differ")),
    ];
    for (version, theirs, want) in cases {
        let got = check_request(&ours, version, theirs).map_err(|r| r.to_string());
        match (got, want) {
            (Ok(()), None) => {}
            (Err(reason), Some(want)) => assert!(reason.contains(want), "{reason}"),
            (got, want) => panic!("{theirs:?} v{version}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn the_new_side_takes_only_what_it_asked_for() {
    let wanted = identity("n", [1, 2, 3, 4, 5, 6]).listeners;
    let offer = |listeners: Vec<Listener>| Offer { pid: 1, listeners };
    assert_eq!(check_offer(&wanted, &offer(wanted.clone()), 7), Ok(()));
    assert!(matches!(
        check_offer(&wanted, &offer(wanted.clone()), 6),
        Err(OfferError::Descriptors {
            fds: 6,
            listeners: 6
        })
    ));
    assert!(matches!(
        check_offer(&wanted, &offer(wanted[..5].to_vec()), 6),
        Err(OfferError::Listeners { .. })
    ));
    let moved = identity("n", [1, 2, 3, 4, 5, 9]).listeners;
    assert!(matches!(
        check_offer(&wanted, &offer(moved), 7),
        Err(OfferError::Listeners { .. })
    ));
}

/// A fresh state directory under the temp dir, removed on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> StateDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ztunnel-handoff-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        StateDir(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join(SOCKET_NAME)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Six loopback listeners and the identity naming them.
fn loopback_listeners() -> (Vec<std::net::TcpListener>, Identity) {
    let listeners: Vec<std::net::TcpListener> = (0..6)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let mut id = identity("node1", ports.try_into().unwrap());
    id.netns = own_netns().unwrap();
    (listeners, id)
}

/// A running side serving `listeners` at `dir`, as a task.
fn spawn_server(
    dir: &StateDir,
    listeners: &[std::net::TcpListener],
    id: &Identity,
    drain: &Drain,
) -> tokio::task::JoinHandle<Served> {
    let handoff = bind(&dir.0).unwrap();
    let mut sockets: Vec<OwnedFd> = listeners
        .iter()
        .map(|l| OwnedFd::from(l.try_clone().unwrap()))
        .collect();
    sockets.push(handoff.try_clone().unwrap());
    let server = Server::new(handoff, dir.socket(), id.clone(), sockets).unwrap();
    let drain = drain.clone();
    tokio::spawn(async move { server.serve(&drain, || 5).await })
}

#[tokio::test]
async fn a_new_process_takes_over_the_listeners_with_their_accept_queues() {
    let dir = StateDir::new();
    let (listeners, id) = loopback_listeners();
    let drain = Drain::new();
    let served = spawn_server(&dir, &listeners, &id, &drain);
    let mode = std::fs::metadata(&dir.0).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "state dir is private");

    // Connections wait in the accept queue of the running side's sockets.
    let waiting: Vec<std::net::TcpStream> = id
        .listeners
        .iter()
        .map(|l| std::net::TcpStream::connect(l.addr).unwrap())
        .collect();
    let taken = take_over(&dir.socket(), &id)
        .await
        .unwrap()
        .expect("a running ztunnel answers");
    assert_eq!(taken.pid, std::process::id());
    // The same sockets: the new side accepts what was queued before.
    for ((l, want), client) in taken.listeners.iter().zip(&id.listeners).zip(&waiting) {
        assert_eq!(l.local_addr().unwrap(), want.addr);
        l.set_nonblocking(false).unwrap();
        let (_conn, peer) = l.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }
    assert!(is_listening(&taken.handoff, SockType::SeqPacket));
    assert!(
        !served.is_finished(),
        "the old side serves until told to drain"
    );
    assert_eq!(
        taken.drain().await.unwrap(),
        5,
        "it reports its open connections"
    );
    assert_eq!(
        served.await.unwrap(),
        Served::HandedOff {
            pid: std::process::id()
        }
    );
    assert!(dir.socket().exists(), "the path now leads to the new side");
}

#[tokio::test]
async fn a_refused_or_abandoned_handoff_leaves_the_listeners_with_the_running_side() {
    let dir = StateDir::new();
    let (listeners, id) = loopback_listeners();
    let drain = Drain::new();
    let served = spawn_server(&dir, &listeners, &id, &drain);

    let mut other = id.clone();
    other.node = "node2".into();
    match take_over(&dir.socket(), &other).await {
        Err(HandoffError::Refused(reason)) => assert!(reason.contains("node2"), "{reason}"),
        other => panic!(
            "expected a refusal, got {:?}",
            other.map(|p| p.map(|p| p.pid))
        ),
    }
    // Taken, then dropped without asking it to drain (the new side died).
    let abandoned = take_over(&dir.socket(), &id).await.unwrap().unwrap();
    drop(abandoned);
    // Still serving: a later successor completes the handoff.
    let taken = take_over(&dir.socket(), &id).await.unwrap().unwrap();
    taken.drain().await.unwrap();
    assert!(matches!(served.await.unwrap(), Served::HandedOff { .. }));
}

#[tokio::test]
async fn without_a_running_side_the_new_one_binds_afresh() {
    let dir = StateDir::new();
    let (_listeners, id) = loopback_listeners();
    assert!(
        take_over(&dir.socket(), &id).await.unwrap().is_none(),
        "no socket"
    );
    // A stale socket file left by a crash: nobody answers.
    let stale = bind(&dir.0).unwrap();
    drop(stale);
    assert!(dir.socket().exists());
    assert!(
        take_over(&dir.socket(), &id).await.unwrap().is_none(),
        "stale socket"
    );
    let again = bind(&dir.0).expect("binding replaces the stale socket");
    drop(again);
}

#[tokio::test]
async fn a_drained_running_side_removes_its_socket() {
    let dir = StateDir::new();
    let (listeners, id) = loopback_listeners();
    let drain = Drain::new();
    let served = spawn_server(&dir, &listeners, &id, &drain);
    drain.signal();
    assert_eq!(served.await.unwrap(), Served::Drained);
    assert!(!dir.socket().exists());
    assert!(take_over(&dir.socket(), &id).await.unwrap().is_none());
}
