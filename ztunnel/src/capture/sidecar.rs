//! Sidecar-mode capture (DESIGN §4, last bullet): one nftables table in the
//! pod's own network namespace that REDIRECTs the pod's TCP to a proxy
//! running beside it.
//!
//! - [`ruleset`] is pure and returns the `nft -f -` script, so another proxy
//!   (say an Envoy sidecar whose sockets carry the same mark) can be given
//!   the identical rules with `ip netns exec <pod> nft -f -`;
//! - [`install`] and [`remove`] apply it in the calling thread's namespace.
//!
//! ztunnel builds its [`SidecarRules`] from its listener flags
//! (`crate::app::Listeners::sidecar_rules`).
//!
//! The original destination is then read with `SO_ORIGINAL_DST`
//! ([`super::redirected_orig_dst`]).
//!
//! The app shares the proxy's network namespace, so the proxy's admin port
//! (127.0.0.1:15000: `/quitquitquit`, `/config_dump`) would be the app's to
//! use too: the table also rejects, with a reset, any connection to a
//! [`SidecarRules::proxy_only_ports`] port on a local address from a socket
//! that is neither owned by the proxy's uid nor marked with its mark.
//!
//! REDIRECT is IPv4: a dual-stack pod's IPv6 TCP would go around the
//! sidecar (no mTLS, no STRICT, no policy). A second table,
//! [`TABLE6`] (family `ip6`), resets IPv6 TCP into the pod and the SYNs of
//! the pod's own IPv6 connections (not the resets the input chain sends),
//! other than over loopback, counted in its named counter
//! [`IPV6_COUNTER`]; it is in the same script, so in the same transaction.

use std::net::Ipv4Addr;

use super::{apply_nft, CaptureError};

/// The table sidecar capture owns.
pub const TABLE: &str = "ambient_sidecar";
/// Its family: nat REDIRECT of IPv4 (pods are IPv4-only for now).
pub const FAMILY: &str = "ip";
/// The table refusing the pod's IPv6 TCP (family `ip6`).
pub const TABLE6: &str = "ambient_sidecar6";
/// Its named counter of refused packets.
pub const IPV6_COUNTER: &str = "ipv6_refused";

/// What the rules redirect, and what they leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarRules {
    /// nat OUTPUT redirects the pod's outgoing TCP here.
    pub outbound_port: u16,
    /// nat PREROUTING redirects incoming TCP here.
    pub inbound_port: u16,
    /// Packets from sockets with this `SO_MARK` (the proxy's own) are never
    /// redirected.
    pub mark: u32,
    /// Incoming TCP to these ports is delivered as is (HBONE, admin,
    /// metrics, readiness).
    pub inbound_exclude: Vec<u16>,
    /// Incoming TCP from these addresses is delivered as is: the node's own
    /// IP, whence kubelet probes come (DESIGN §4: not captured, so STRICT
    /// cannot refuse them).
    pub inbound_exempt_sources: Vec<Ipv4Addr>,
    /// Local ports only the proxy may connect to (its admin port).
    pub proxy_only_ports: Vec<u16>,
    /// The uid the proxy runs as: its sockets (and the operator's, when
    /// they share it) may reach `proxy_only_ports`; the app runs as
    /// another.
    pub proxy_uid: u32,
}

/// The uid this process runs as (effective), for
/// [`SidecarRules::proxy_uid`].
pub fn own_uid() -> u32 {
    // SAFETY: geteuid takes nothing, cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Matches TCP packets other than a connection's opening SYN. Connections
/// that were open before the table existed have no conntrack entry (the
/// namespace had no conntrack user), so conntrack picks them up mid-stream
/// as new; redirecting such a packet would reset a live connection (the
/// sidecar's own xDS stream, or the app's). Only a SYN starts a redirect.
const MID_STREAM: &str = "tcp flags & (fin | syn | rst | ack) != syn";

/// The complete `nft -f -` script that atomically creates or replaces table
/// `ip ambient_sidecar` (create-if-missing, delete, define: one
/// transaction, so a restart after a crash leaves exactly one table):
///
/// - output (nat, priority -100, dstnat): non-TCP, packets other than a
///   SYN (connections open before the table), the proxy's own marked
///   packets and anything to 127.0.0.0/8 pass; other TCP →
///   `redirect to :outbound_port`;
/// - prerouting (nat, priority -100, dstnat): non-TCP, non-SYN, TCP from an
///   exempt source (the node: kubelet probes) and TCP to an excluded port
///   pass; other TCP → `redirect to :inbound_port`;
/// - proxy_only (filter output, priority 0, after the redirects): TCP to a
///   `proxy_only_ports` port on a local address (127.0.0.1, the pod's own)
///   from a socket not owned by `proxy_uid` and not marked `mark` →
///   `reject with tcp reset`. Without proxy-only ports, no such chain.
///
/// Pure.
pub fn ruleset(rules: &SidecarRules) -> String {
    let SidecarRules {
        outbound_port,
        inbound_port,
        mark,
        inbound_exclude,
        inbound_exempt_sources,
        proxy_only_ports,
        proxy_uid,
    } = rules;
    let excluded: Vec<String> = inbound_exclude.iter().map(u16::to_string).collect();
    let exclude = if excluded.is_empty() {
        String::new()
    } else {
        format!("\t\ttcp dport {{ {} }} return\n", excluded.join(", "))
    };
    let exempt: Vec<String> = inbound_exempt_sources
        .iter()
        .map(Ipv4Addr::to_string)
        .collect();
    let exempt = if exempt.is_empty() {
        String::new()
    } else {
        format!("\t\tip saddr {{ {} }} return\n", exempt.join(", "))
    };
    let proxy_only = if proxy_only_ports.is_empty() {
        String::new()
    } else {
        let ports: Vec<String> = proxy_only_ports.iter().map(u16::to_string).collect();
        format!(
            "\tchain proxy_only {{\n\
             \t\ttype filter hook output priority 0; policy accept;\n\
             \t\ttcp dport {{ {} }} fib daddr type local meta skuid != {proxy_uid} meta mark != {mark:#x} reject with tcp reset\n\
             \t}}\n",
            ports.join(", ")
        )
    };
    format!(
        "table {FAMILY} {TABLE} {{}}\n\
         delete table {FAMILY} {TABLE}\n\
         table {FAMILY} {TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tmeta l4proto != tcp return\n\
         \t\t{MID_STREAM} return\n\
         \t\tmeta mark {mark:#x} return\n\
         \t\tip daddr 127.0.0.0/8 return\n\
         \t\tmeta l4proto tcp redirect to :{outbound_port}\n\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority -100; policy accept;\n\
         \t\tmeta l4proto != tcp return\n\
         \t\t{MID_STREAM} return\n\
         {exempt}\
         {exclude}\
         \t\tmeta l4proto tcp redirect to :{inbound_port}\n\
         \t}}\n\
         {proxy_only}\
         }}\n\
         table ip6 {TABLE6} {{}}\n\
         delete table ip6 {TABLE6}\n\
         table ip6 {TABLE6} {{\n\
         \tcounter {IPV6_COUNTER} {{}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\tiif lo accept\n\
         \t\tmeta l4proto tcp counter name {IPV6_COUNTER} reject with tcp reset\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority 0; policy accept;\n\
         \t\toif lo accept\n\
         \t\ttcp flags & (fin | syn | rst | ack) == syn counter name {IPV6_COUNTER} reject with tcp reset\n\
         \t}}\n\
         }}\n"
    )
}

/// The nft script that deletes both tables if present (idempotent).
pub fn render_delete() -> String {
    format!(
        "table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n\
         table ip6 {TABLE6} {{}}\ndelete table ip6 {TABLE6}\n"
    )
}

/// Installs (or atomically replaces) the sidecar table in the current
/// network namespace. An nft error names the failing rule (nft's stderr).
pub fn install(rules: &SidecarRules) -> Result<(), CaptureError> {
    apply_nft(&ruleset(rules), &format!("replace table {FAMILY} {TABLE}"))
}

/// Removes the sidecar table from the current network namespace; absent is
/// not an error.
pub fn remove() -> Result<(), CaptureError> {
    apply_nft(
        &render_delete(),
        &format!("delete tables {FAMILY} {TABLE} and ip6 {TABLE6}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listeners' default ports (DESIGN §2) and ztunnel's mark.
    fn default_rules() -> SidecarRules {
        SidecarRules {
            outbound_port: 15001,
            inbound_port: 15006,
            mark: 0x539,
            inbound_exclude: vec![15008, 15000, 15020, 15021],
            inbound_exempt_sources: vec![],
            proxy_only_ports: vec![15000],
            proxy_uid: 1337,
        }
    }

    #[test]
    fn default_ruleset_text() {
        let want = "\
table ip ambient_sidecar {}
delete table ip ambient_sidecar
table ip ambient_sidecar {
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta l4proto != tcp return
\t\ttcp flags & (fin | syn | rst | ack) != syn return
\t\tmeta mark 0x539 return
\t\tip daddr 127.0.0.0/8 return
\t\tmeta l4proto tcp redirect to :15001
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tmeta l4proto != tcp return
\t\ttcp flags & (fin | syn | rst | ack) != syn return
\t\ttcp dport { 15008, 15000, 15020, 15021 } return
\t\tmeta l4proto tcp redirect to :15006
\t}
\tchain proxy_only {
\t\ttype filter hook output priority 0; policy accept;
\t\ttcp dport { 15000 } fib daddr type local meta skuid != 1337 meta mark != 0x539 reject with tcp reset
\t}
}
table ip6 ambient_sidecar6 {}
delete table ip6 ambient_sidecar6
table ip6 ambient_sidecar6 {
\tcounter ipv6_refused {}
\tchain input {
\t\ttype filter hook input priority 0; policy accept;
\t\tiif lo accept
\t\tmeta l4proto tcp counter name ipv6_refused reject with tcp reset
\t}
\tchain output {
\t\ttype filter hook output priority 0; policy accept;
\t\toif lo accept
\t\ttcp flags & (fin | syn | rst | ack) == syn counter name ipv6_refused reject with tcp reset
\t}
}
";
        assert_eq!(ruleset(&default_rules()), want);
    }

    #[test]
    fn node_ips_are_exempt_from_inbound_capture() {
        let text = ruleset(&SidecarRules {
            inbound_exempt_sources: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 9)],
            ..default_rules()
        });
        let prerouting = text.split("chain prerouting").nth(1).expect("prerouting");
        let want = "\
\t\ttcp flags & (fin | syn | rst | ack) != syn return
\t\tip saddr { 10.0.0.2, 10.0.0.9 } return
\t\ttcp dport { 15008, 15000, 15020, 15021 } return
\t\tmeta l4proto tcp redirect to :15006
";
        assert!(prerouting.contains(want), "{text}");
        let output = text.split("chain prerouting").next().expect("output");
        assert!(!output.contains("saddr"), "probes are inbound only: {text}");
    }

    #[test]
    fn custom_ports_and_no_exclusions() {
        let text = ruleset(&SidecarRules {
            outbound_port: 16001,
            inbound_port: 16006,
            mark: 0x1,
            inbound_exclude: vec![],
            inbound_exempt_sources: vec![],
            proxy_only_ports: vec![],
            proxy_uid: 0,
        });
        assert!(text.contains("meta mark 0x1 return"), "{text}");
        assert!(text.contains("redirect to :16001"), "{text}");
        assert!(text.contains("redirect to :16006"), "{text}");
        assert!(!text.contains("dport {"), "{text}");
        assert!(!text.contains("saddr"), "{text}");
        assert!(!text.contains("proxy_only"), "{text}");
    }

    #[test]
    fn delete_is_idempotent_text() {
        assert_eq!(
            render_delete(),
            "table ip ambient_sidecar {}\ndelete table ip ambient_sidecar\n\
             table ip6 ambient_sidecar6 {}\ndelete table ip6 ambient_sidecar6\n"
        );
    }
}
