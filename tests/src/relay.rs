//! A chain of two `tcp-relay` processes (`src/bin/tcp-relay.rs`) across the
//! nodes of a two-node [`Topology`]: the relay in node 1 listens on node 1's
//! address and forwards to the relay in node 2, which forwards to the
//! target pod, on the same port at every hop. A client pod that dials node
//! 1's address instead of the target's reaches the target through three TCP
//! legs, as ambient mode does, with no TLS, HTTP/2 or policy on the way:
//! `netns-bench`'s floor. With [`Hop::Tls`] the node-to-node leg is mutual
//! TLS 1.3 with HBONE's own configurations, and still no HTTP/2: the data
//! path of a sidecar mesh, `netns-bench`'s second floor. With [`Hop::Hbone`]
//! it is HBONE through the `hbone` library: ambient's tunnel without
//! capture, policy or telemetry.
//!
//! Each relay runs under `ip netns exec` in its node's namespace, with its
//! stderr in a file of the given directory. Dropping the chain kills and
//! reaps both processes (also on panic; [`crate::process::run_guarded`]
//! kills whatever is left in the namespaces after that).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::command::ChildGuard;
use crate::mesh::{terminate_proxy, ztunnel_bin};
use crate::topology::Topology;

/// What `tcp-relay` prints on stderr once every listener is bound.
const READY_LINE: &str = "tcp-relay: listening";
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The `tcp-relay` binary: `$TCP_RELAY_BIN`, or `tcp-relay` next to the
/// running executable (a harness binary in `target/<profile>/`), or next to
/// the `ztunnel` under test (a test executable in `target/<profile>/deps/`).
pub fn relay_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TCP_RELAY_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("own executable path");
    let candidates = [
        exe.with_file_name("tcp-relay"),
        ztunnel_bin().with_file_name("tcp-relay"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} is missing: build it (cargo build -p mesh-tests --bins) or set TCP_RELAY_BIN",
                candidates[0].display()
            )
        })
}

struct Relay {
    child: ChildGuard,
    stderr: PathBuf,
    who: String,
    /// 1 or 2.
    node: usize,
}

/// What the node-to-node leg of a [`RelayChain`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Plain TCP.
    Plain,
    /// Mutual TLS 1.3 (`tcp-relay --tls`), with certificates from a dev CA
    /// created in the chain's directory.
    Tls,
    /// HBONE (`tcp-relay --hbone`), the same CA: node 2's relay serves
    /// HBONE on 15008 instead of listening on the ports.
    Hbone,
}

impl Hop {
    /// `tcp-relay`'s flag for this hop, if any.
    fn flag(self) -> Option<&'static str> {
        match self {
            Hop::Plain => None,
            Hop::Tls => Some("--tls"),
            Hop::Hbone => Some("--hbone"),
        }
    }
}

/// Two running relays: node 1 -> node 2 -> target.
pub struct RelayChain {
    relays: Vec<Relay>,
    entry: Ipv4Addr,
}

impl RelayChain {
    /// Starts the relay in node 2 (to `target`) and then the one in node 1
    /// (to node 2), each listening on `ports` of its node's address, and
    /// waits until both listen. Stderr goes to `dir`, and with [`Hop::Tls`]
    /// the CA both relays load too.
    pub fn start(
        topo: &Topology,
        dir: &Path,
        target: Ipv4Addr,
        ports: &[u16],
        hop: Hop,
    ) -> RelayChain {
        let (n1, n2) = (topo.node(1), topo.node(2));
        let ca = dir.join("relay-ca");
        if hop != Hop::Plain {
            // Created here, so the two relays cannot race to create it.
            hbone::ca::DevCa::load_or_create(&ca).expect("create the relays' CA");
        }
        let ca = ca.to_str().expect("utf-8 path");
        let mut relays = Vec::with_capacity(2);
        for (node, next_hop, side) in [(n2, target, "accept"), (n1, n2.ip, "connect")] {
            let stderr = dir.join(format!("tcp-relay-node{}.stderr", node.index));
            let _ = std::fs::remove_file(&stderr);
            let bin = relay_bin();
            let ports = ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let (listen, next_hop) = (node.ip.to_string(), next_hop.to_string());
            // The stderr path travels as an argument, never as script text.
            let script = "log=$1; shift; exec \"$0\" \"$@\" 2>>\"$log\"";
            let mut argv = vec![
                "sh",
                "-c",
                script,
                bin.to_str().expect("utf-8 path"),
                stderr.to_str().expect("utf-8 path"),
                "--listen",
                &listen,
                "--next-hop",
                &next_hop,
                "--ports",
                &ports,
            ];
            if let Some(flag) = hop.flag() {
                argv.extend([flag, side, "--ca", ca]);
            }
            let child = node.ns.spawn(&argv).expect("spawn tcp-relay");
            let mut relay = Relay {
                child,
                stderr,
                who: format!("tcp-relay on node{}", node.index),
                node: node.index,
            };
            relay.wait_ready();
            relays.push(relay);
        }
        RelayChain {
            relays,
            entry: n1.ip,
        }
    }

    /// The address a client dials instead of the target's (node 1's).
    pub fn entry(&self) -> Ipv4Addr {
        self.entry
    }

    /// The relays' process ids (`ip netns exec` and `sh -c exec` both
    /// exec, so these are the relays themselves once they are ready).
    pub fn pids(&self) -> Vec<u32> {
        self.relays.iter().map(|r| r.child.id()).collect()
    }

    /// The relays' process ids by node: `[node 1's, node 2's]`.
    pub fn pids_by_node(&self) -> [u32; 2] {
        let pid = |node| {
            self.relays
                .iter()
                .find(|r| r.node == node)
                .map(|r| r.child.id())
                .expect("a relay in each node")
        };
        [pid(1), pid(2)]
    }

    /// Every line the relays printed besides the ready line: one per failed
    /// connection.
    pub fn errors(&self) -> Vec<String> {
        self.relays
            .iter()
            .flat_map(|r| {
                std::fs::read_to_string(&r.stderr)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| !l.starts_with(READY_LINE))
                    .map(|l| format!("{}: {l}", r.who))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// SIGTERMs both relays and checks that each exited with status 0.
    pub fn stop(mut self) {
        for relay in self.relays.drain(..) {
            let status = terminate_proxy(relay.child, &relay.who);
            assert!(status.success(), "{} exited with {status}", relay.who);
        }
    }
}

impl Relay {
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let log = || std::fs::read_to_string(&self.stderr).unwrap_or_default();
        loop {
            if log().lines().any(|l| l.starts_with(READY_LINE)) {
                return;
            }
            if !self.child.is_running() {
                panic!("{} exited during startup:\n{}", self.who, log());
            }
            if Instant::now() > deadline {
                panic!("{} not ready after {READY_TIMEOUT:?}:\n{}", self.who, log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
