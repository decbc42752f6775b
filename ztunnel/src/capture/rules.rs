//! The nftables ruleset for node-level TPROXY capture, rendered as text.
//! Pure: no I/O. [`super::Capture`] applies it with `nft -f -`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use mesh_model::HBONE_PORT;

/// The nftables table ztunnel owns (family `inet`).
pub const TABLE: &str = "ambient";
/// The set of local ambient pod IPs.
pub const POD_SET: &str = "ambient_pods";
/// Packets to deliver locally (to a ztunnel socket) carry this fwmark.
pub const CAPTURE_MARK: u32 = 0x400;
/// The mask the `ip rule` matches [`CAPTURE_MARK`] under.
pub const CAPTURE_MASK: u32 = 0xfff;
/// `SO_MARK` of every socket ztunnel opens; the rules never capture it.
pub const ZTUNNEL_MARK: u32 = 0x539;
/// The routing table holding `local 0.0.0.0/0 dev lo`.
pub const ROUTE_TABLE: u32 = 100;
/// The default outbound listener (`--outbound-addr`): traffic leaving a
/// local ambient pod.
pub const OUTBOUND_PORT: u16 = 15001;
/// The default inbound plaintext listener (`--inbound-plaintext-addr`):
/// non-HBONE traffic to a local ambient pod.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;

/// The ports of ztunnel's capture listeners: where the rules deliver
/// (`tproxy to :port`). They follow `--outbound-addr`,
/// `--inbound-plaintext-addr` and `--hbone-addr`. HBONE from other nodes is
/// still *matched* on the mesh's port, [`mesh_model::HBONE_PORT`], which is
/// what peers dial whatever this ztunnel listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerPorts {
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub hbone: u16,
}

impl Default for ListenerPorts {
    /// DESIGN §2: 15001, 15006, 15008.
    fn default() -> Self {
        ListenerPorts {
            outbound: OUTBOUND_PORT,
            inbound_plaintext: INBOUND_PLAINTEXT_PORT,
            hbone: HBONE_PORT,
        }
    }
}

/// Renders the complete `nft -f -` script that atomically replaces table
/// `inet ambient` (create-if-missing, delete, define: one transaction).
///
/// prerouting (priority mangle), first match wins:
/// 1. non-TCP, and ztunnel's own marked packets, pass untouched;
/// 2. connections whose ct mark is ztunnel's (replies to its spoofed-source
///    sockets) get the capture mark so they route back to ztunnel;
/// 3. other reply-direction packets, and packets to the node's own addresses
///    (kubelet probes), pass;
/// 4. from a pod in the set → `:ports.outbound` (15001); to a pod in the
///    set, dport 15008 → `:ports.hbone` (15008); to a pod in the set, other
///    TCP → `:ports.inbound_plaintext` (15006).
///
/// output (route, priority mangle) saves ztunnel's socket mark into the ct
/// mark, which step 2 restores on replies.
pub fn render_ruleset(pods: &BTreeSet<Ipv4Addr>, ports: &ListenerPorts) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_ruleset(&mut s, pods, ports);
    s
}

fn write_ruleset(
    s: &mut String,
    pods: &BTreeSet<Ipv4Addr>,
    ports: &ListenerPorts,
) -> std::fmt::Result {
    let capture = format!("meta mark set {CAPTURE_MARK:#x}");
    let ListenerPorts {
        outbound,
        inbound_plaintext,
        hbone,
    } = ports;
    writeln!(s, "table inet {TABLE} {{}}")?;
    writeln!(s, "delete table inet {TABLE}")?;
    writeln!(s, "table inet {TABLE} {{")?;
    writeln!(s, "\tset {POD_SET} {{")?;
    writeln!(s, "\t\ttype ipv4_addr")?;
    if !pods.is_empty() {
        let elements: Vec<String> = pods.iter().map(Ipv4Addr::to_string).collect();
        writeln!(s, "\t\telements = {{ {} }}", elements.join(", "))?;
    }
    writeln!(s, "\t}}")?;
    writeln!(s, "\tchain prerouting {{")?;
    writeln!(
        s,
        "\t\ttype filter hook prerouting priority mangle; policy accept;"
    )?;
    writeln!(s, "\t\tmeta l4proto != tcp return")?;
    writeln!(s, "\t\tmeta mark {ZTUNNEL_MARK:#x} return")?;
    writeln!(s, "\t\tct mark {ZTUNNEL_MARK:#x} {capture} return")?;
    writeln!(s, "\t\tct direction reply return")?;
    writeln!(s, "\t\tfib daddr type local return")?;
    writeln!(
        s,
        "\t\tmeta l4proto tcp ip saddr @{POD_SET} {capture} tproxy ip to :{outbound} accept"
    )?;
    writeln!(
        s,
        "\t\tip daddr @{POD_SET} tcp dport {HBONE_PORT} {capture} tproxy ip to :{hbone} accept"
    )?;
    writeln!(
        s,
        "\t\tmeta l4proto tcp ip daddr @{POD_SET} {capture} tproxy ip to :{inbound_plaintext} accept"
    )?;
    writeln!(s, "\t}}")?;
    writeln!(s, "\tchain output {{")?;
    writeln!(
        s,
        "\t\ttype route hook output priority mangle; policy accept;"
    )?;
    writeln!(
        s,
        "\t\tmeta mark {ZTUNNEL_MARK:#x} ct mark set {ZTUNNEL_MARK:#x}"
    )?;
    writeln!(s, "\t}}")?;
    writeln!(s, "}}")
}

/// The nft script that deletes the table if present (idempotent).
pub fn render_delete() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

/// The `ip rule` selector, as both `ip rule add` takes it and `ip rule list`
/// prints it.
pub fn ip_rule_selector() -> String {
    format!("fwmark {CAPTURE_MARK:#x}/{CAPTURE_MASK:#x} lookup {ROUTE_TABLE}")
}
