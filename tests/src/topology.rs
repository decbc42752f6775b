//! Nodes and pods as network namespaces, wired like a Calico cluster (the
//! default) or like a Flannel one ([`TopologyBuilder::flannel`]).
//!
//! Calico (routed veths):
//! - Node `i` (1-based, at most two) is a namespace with `10.0.0.i`. Two nodes
//!   are joined by a veth pair `peer0` (`10.0.0.i/24`); each routes the other's
//!   pod range `10.1.j.0/24` via `10.0.0.j`. A single node carries `10.0.0.1/32`
//!   on `lo`.
//! - Pod `k` on node `i` is a namespace with `eth0` = `10.1.i.(10+k)/32`, a
//!   link-scope route to `169.254.1.1` and `default via 169.254.1.1`. The node
//!   side of its veth (`caliN`) has proxy_arp=1 and a /32 host route to the pod.
//!   Nodes have a route `169.254.1.1/32 dev lo`, so proxy ARP answers for the
//!   gateway, as Calico nodes do with their default route.
//! - Nodes forward (`ip_forward=1`) with `rp_filter=0`.
//!
//! Flannel (its `vxlan` backend, as deployed by its manifest):
//! - Node `i` has a Linux bridge `cni0` with `10.1.i.1/24`, the pods'
//!   gateway, and `net.bridge.bridge-nf-call-iptables` set to 1 (Flannel's
//!   and kube-proxy's requirement; [`TopologyBuilder::br_netfilter`] sets 0
//!   to model a node without it). Two nodes are joined by `peer0`
//!   (`10.0.0.i/24`, the underlay) and by a VXLAN device `flannel.1` (VNI 1,
//!   UDP 8472, `nolearning`, `10.1.i.0/32`) over it, with Flannel's static
//!   entries: a route `10.1.j.0/24 via 10.1.j.0 dev flannel.1 onlink`, a
//!   permanent neighbour for `10.1.j.0`, and an fdb entry sending that MAC
//!   to `10.0.0.j`.
//! - Pod `k` on node `i` has `eth0` = `10.1.i.(10+k)/24` (MTU 1450, the
//!   VXLAN overhead taken off) and `default via 10.1.i.1`; the node side of
//!   its veth (`vethN`) is a port of `cni0`. Pods of one node reach each
//!   other over the bridge (layer 2, not routed by the node).
//!
//! Veths are created directly inside their namespaces; nothing appears in the
//! root namespace. Dropping the [`Topology`] kills the children it spawned and
//! deletes all its namespaces (which removes veths, routes, rules and nft
//! tables), also when a test panics.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::command::{run, ChildGuard};
use crate::netns::Netns;
use crate::HarnessError;

/// Every namespace the harness creates starts with this, then `<pid>-`.
pub const NAME_PREFIX: &str = "amt";
/// The gateway address pods use (Calico's convention).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const MAX_NODES: usize = 2;
/// Flannel's VXLAN device MTU (and its pods'): 1500 less the 50-byte
/// VXLAN encapsulation.
const FLANNEL_MTU: u32 = 1450;

/// How pods are wired to their node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Wiring {
    /// Calico: a /32 per pod behind a routed veth, proxy ARP, nodes routed
    /// over `peer0`.
    #[default]
    Routed,
    /// Flannel: pods on a bridge `cni0`, nodes joined by VXLAN `flannel.1`;
    /// `br_netfilter`: `net.bridge.bridge-nf-call-iptables` on the nodes.
    Bridge { br_netfilter: bool },
}

static TOPOLOGY_SEQ: AtomicUsize = AtomicUsize::new(0);
/// Serialises `ip netns add` within this process: the first ever call may
/// (re)mount /run/netns, which would race with concurrent adds.
static NETNS_ADD: Mutex<()> = Mutex::new(());

/// A node: a namespace that forwards between its pods and the other node.
#[derive(Debug)]
pub struct Node {
    /// 1-based node index.
    pub index: usize,
    /// The node's network namespace.
    pub ns: Netns,
    /// The node's own address, `10.0.0.<index>`.
    pub ip: Ipv4Addr,
}

/// A pod: a namespace with one `eth0` routed through its node.
#[derive(Debug)]
pub struct Pod {
    /// The name given to the builder.
    pub name: String,
    /// 1-based index of the node it runs on.
    pub node: usize,
    /// The pod's network namespace.
    pub ns: Netns,
    /// The pod IP (`10.1.<node>.<10+k>`).
    pub ip: Ipv4Addr,
    /// The node-side veth of this pod (inside the node namespace).
    pub host_veth: String,
}

/// Describes a topology; [`TopologyBuilder::build`] creates it.
#[derive(Debug, Default)]
pub struct TopologyBuilder {
    nodes: usize,
    pods: Vec<(String, usize)>,
    wiring: Wiring,
    br_netfilter: Option<bool>,
}

impl TopologyBuilder {
    /// Number of nodes: 1 or 2 (default 2).
    pub fn nodes(mut self, count: usize) -> Self {
        self.nodes = count;
        self
    }

    /// Wires pods and nodes as Flannel's VXLAN backend does (module docs)
    /// instead of Calico's routed veths.
    pub fn flannel(mut self) -> Self {
        self.wiring = Wiring::Bridge { br_netfilter: true };
        self
    }

    /// With [`TopologyBuilder::flannel`]: `net.bridge.bridge-nf-call-iptables`
    /// on every node (default on, as Flannel requires). Off, frames bridged
    /// between two pods of a node skip the node's IP hooks (nftables).
    pub fn br_netfilter(mut self, on: bool) -> Self {
        self.br_netfilter = Some(on);
        self
    }

    /// Adds pod `name` on node `node` (1-based).
    pub fn pod(mut self, name: &str, node: usize) -> Self {
        self.pods.push((name.to_owned(), node));
        self
    }

    /// Creates the namespaces, links, addresses and routes. On error, whatever
    /// was created is removed again.
    pub fn build(self) -> Result<Topology, HarnessError> {
        let nodes = if self.nodes == 0 { 2 } else { self.nodes };
        if nodes > MAX_NODES {
            return Err(HarnessError::Topology("at most two nodes are supported"));
        }
        if self.pods.iter().any(|(_, n)| *n == 0 || *n > nodes) {
            return Err(HarnessError::Topology("pod on a node that does not exist"));
        }
        for (i, (name, _)) in self.pods.iter().enumerate() {
            if self.pods[..i].iter().any(|(other, _)| other == name) {
                return Err(HarnessError::Topology("duplicate pod name"));
            }
        }
        let wiring = match (self.wiring, self.br_netfilter) {
            (Wiring::Routed, Some(_)) => {
                return Err(HarnessError::Topology(
                    "br_netfilter needs the bridge wiring (flannel)",
                ))
            }
            (Wiring::Bridge { .. }, Some(on)) => Wiring::Bridge { br_netfilter: on },
            (w, None) => w,
        };
        sweep_stale();
        let mut topo = Topology::empty(wiring);
        for index in 1..=nodes {
            topo.add_node(index, nodes)?;
        }
        if nodes == 2 {
            topo.link_nodes()?;
        }
        for (name, node) in self.pods {
            topo.add_pod(&name, node)?;
        }
        Ok(topo)
    }
}

/// Live nodes and pods; everything is torn down on drop.
#[derive(Debug)]
pub struct Topology {
    id: String,
    wiring: Wiring,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    created: Vec<String>,
    children: Mutex<Vec<ChildGuard>>,
}

impl Topology {
    /// Starts describing a topology.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    fn empty(wiring: Wiring) -> Topology {
        let seq = TOPOLOGY_SEQ.fetch_add(1, Ordering::Relaxed);
        let salt: u16 = rand::random();
        Topology {
            id: format!("{NAME_PREFIX}{}-{seq}{salt:04x}", std::process::id()),
            wiring,
            nodes: Vec::new(),
            pods: Vec::new(),
            created: Vec::new(),
            children: Mutex::new(Vec::new()),
        }
    }

    /// The unique prefix of this topology's namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Node `index` (1-based). Panics if there is no such node.
    pub fn node(&self, index: usize) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.index == index)
            .unwrap_or_else(|| panic!("no node {index}"))
    }

    /// The pod called `name`. Panics if there is no such pod.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// All nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// All pods.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Whether pods are on a bridge per node with a VXLAN overlay between
    /// nodes ([`TopologyBuilder::flannel`]), rather than routed veths.
    pub fn is_flannel(&self) -> bool {
        matches!(self.wiring, Wiring::Bridge { .. })
    }

    /// The address pods of node `index` route through: Calico's link-local
    /// gateway, or Flannel's `cni0` address `10.1.<index>.1`.
    pub fn pod_gateway(&self, index: usize) -> Ipv4Addr {
        match self.wiring {
            Wiring::Routed => POD_GATEWAY,
            Wiring::Bridge { .. } => Ipv4Addr::new(10, 1, index as u8, 1),
        }
    }

    /// Names of every namespace this topology created.
    pub fn namespaces(&self) -> Vec<String> {
        self.created.clone()
    }

    /// Spawns a long-running process in `ns`; it is killed when the topology
    /// drops (before the namespaces are deleted).
    pub fn spawn(&self, ns: &Netns, argv: &[&str]) -> Result<u32, HarnessError> {
        let child = ns.spawn(argv)?;
        let id = child.id();
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(child);
        Ok(id)
    }

    fn create_ns(&mut self, suffix: &str) -> Result<Netns, HarnessError> {
        let name = format!("{}-{suffix}", self.id);
        {
            let _serial = NETNS_ADD
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            run(&format!("ip netns add {name}"))?;
        }
        self.created.push(name.clone());
        let ns = Netns::from_name(name);
        ns.exec("ip link set lo up")?;
        Ok(ns)
    }

    fn add_node(&mut self, index: usize, count: usize) -> Result<(), HarnessError> {
        let ns = self.create_ns(&format!("n{index}"))?;
        let ip = Ipv4Addr::new(10, 0, 0, index as u8);
        let mut script = String::from(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
             net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.lo.rp_filter=0\n",
        );
        match self.wiring {
            Wiring::Routed => script.push_str(&format!("ip route add {POD_GATEWAY}/32 dev lo\n")),
            Wiring::Bridge { br_netfilter } => script.push_str(&format!(
                "ip link add cni0 type bridge\n\
                 ip addr add 10.1.{index}.1/24 dev cni0\n\
                 ip link set cni0 up\n\
                 sysctl -qw net.bridge.bridge-nf-call-iptables={}\n",
                u8::from(br_netfilter)
            )),
        }
        if count == 1 {
            script.push_str(&format!("ip addr add {ip}/32 dev lo\n"));
        }
        ns.exec(&script)?;
        self.nodes.push(Node { index, ns, ip });
        Ok(())
    }

    fn link_nodes(&mut self) -> Result<(), HarnessError> {
        let (a, b) = (self.node(1).ns.clone(), self.node(2).ns.clone());
        a.exec(&format!(
            "ip link add peer0 type veth peer name peer0 netns {}",
            b.name()
        ))?;
        for (me, other) in [(1usize, 2usize), (2, 1)] {
            let node = self.node(me);
            node.ns.exec(&format!(
                "sysctl -qw net.ipv4.conf.peer0.rp_filter=0\n\
                 ip addr add {}/24 dev peer0\n\
                 ip link set peer0 up",
                node.ip
            ))?;
            let overlay = match self.wiring {
                Wiring::Routed => {
                    format!("ip route add 10.1.{other}.0/24 via 10.0.0.{other} dev peer0")
                }
                Wiring::Bridge { .. } => flannel_vxlan(me, other),
            };
            node.ns.exec(&overlay)?;
        }
        Ok(())
    }

    fn add_pod(&mut self, name: &str, node: usize) -> Result<(), HarnessError> {
        let k = self.pods.len();
        let on_node = self.pods.iter().filter(|p| p.node == node).count();
        let ns = self.create_ns(&format!("p{k}"))?;
        let ip = Ipv4Addr::new(10, 1, node as u8, 10 + on_node as u8);
        let node_ns = self.node(node).ns.clone();
        if let Wiring::Bridge { .. } = self.wiring {
            let host_veth = format!("veth{k}");
            let gateway = self.pod_gateway(node);
            ns.exec(&format!(
                "set -e\n\
                 ip link add eth0 mtu {FLANNEL_MTU} type veth peer name {host_veth} netns {node_ns}\n\
                 ip addr add {ip}/24 dev eth0\n\
                 ip link set eth0 up\n\
                 ip route add default via {gateway} dev eth0",
                node_ns = node_ns.name()
            ))?;
            node_ns.exec(&format!(
                "ip link set {host_veth} mtu {FLANNEL_MTU} master cni0 up"
            ))?;
            self.pods.push(Pod {
                name: name.to_owned(),
                node,
                ns,
                ip,
                host_veth,
            });
            return Ok(());
        }
        let host_veth = format!("cali{k}");
        ns.exec(&format!(
            "ip link add eth0 type veth peer name {host_veth} netns {node_ns}\n\
             ip addr add {ip}/32 dev eth0\n\
             ip link set eth0 up\n\
             ip route add {POD_GATEWAY} dev eth0 scope link\n\
             ip route add default via {POD_GATEWAY} dev eth0",
            node_ns = node_ns.name()
        ))?;
        node_ns.exec(&format!(
            "sysctl -qw net.ipv4.conf.{host_veth}.proxy_arp=1 net.ipv4.conf.{host_veth}.rp_filter=0\n\
             ip link set {host_veth} up\n\
             ip route add {ip}/32 dev {host_veth}"
        ))?;
        self.pods.push(Pod {
            name: name.to_owned(),
            node,
            ns,
            ip,
            host_veth,
        });
        Ok(())
    }
}

/// The commands that give node `me` Flannel's VXLAN device and its static
/// entries for node `other` (flanneld writes the same from the other node's
/// lease: `VtepMAC` and `PublicIP`).
fn flannel_vxlan(me: usize, other: usize) -> String {
    let mac = |n: usize| format!("0e:6d:00:00:00:{n:02x}");
    format!(
        "set -e\n\
         ip link add flannel.1 address {my_mac} mtu {FLANNEL_MTU} type vxlan id 1 \
         local 10.0.0.{me} dev peer0 dstport 8472 nolearning\n\
         ip addr add 10.1.{me}.0/32 dev flannel.1\n\
         ip link set flannel.1 up\n\
         ip route add 10.1.{other}.0/24 via 10.1.{other}.0 dev flannel.1 onlink\n\
         ip neigh replace 10.1.{other}.0 lladdr {other_mac} dev flannel.1 nud permanent\n\
         bridge fdb append {other_mac} dev flannel.1 dst 10.0.0.{other}",
        my_mac = mac(me),
        other_mac = mac(other),
    )
}

impl Drop for Topology {
    fn drop(&mut self) {
        let mut children = self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for child in children.iter_mut() {
            child.kill();
        }
        children.clear();
        for name in self.created.iter().rev() {
            if let Err(err) = run(&format!("ip netns del {name}")) {
                eprintln!("mesh-tests: deleting namespace {name}: {err}");
            }
        }
    }
}

/// Deletes namespaces left behind by harness processes that no longer exist
/// (a test binary killed with SIGKILL cannot run its destructors).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&format!("ip netns del {name}"));
        }
    }
}
