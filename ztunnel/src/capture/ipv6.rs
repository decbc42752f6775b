//! IPv6 of captured pods is refused, never let through. Pure: renders nft
//! text, no I/O.
//!
//! Capture is IPv4 (TPROXY to ztunnel's IPv4 listeners). A dual-stack pod
//! could otherwise reach, or be reached, over IPv6 around ztunnel: no mTLS,
//! no STRICT, no authorization policy. The `forward` chain rendered here
//! answers TCP from or to a captured pod's IPv6 addresses with a reset, and
//! counts it in the named counter [`COUNTER`] (`nft list counter inet
//! ambient ipv6_refused`); other IPv6 of those pods is dropped, as capture
//! covers TCP only. The pods' IPv6 addresses are in set [`POD_SET6`].
//!
//! The block is appended to the script that replaces the table, so it
//! lands in the same transaction as the IPv4 capture rules.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv6Addr;

use super::rules::TABLE;

/// The set of local ambient pods' IPv6 addresses.
pub const POD_SET6: &str = "ambient_pods6";
/// The forward chain refusing them.
pub const CHAIN: &str = "refuse_ipv6";
/// The named counter of refused IPv6 packets.
pub const COUNTER: &str = "ipv6_refused";

/// The nft block refusing IPv6 from and to `pods` (their IPv6 addresses),
/// to append to the script that (re)creates the table.
pub fn render_refuse_ipv6(pods: &BTreeSet<Ipv6Addr>) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_refuse_ipv6(&mut s, pods);
    s
}

fn write_refuse_ipv6(s: &mut String, pods: &BTreeSet<Ipv6Addr>) -> std::fmt::Result {
    writeln!(s, "table inet {TABLE} {{")?;
    writeln!(s, "\tset {POD_SET6} {{")?;
    writeln!(s, "\t\ttype ipv6_addr")?;
    if !pods.is_empty() {
        let elements: Vec<String> = pods.iter().map(Ipv6Addr::to_string).collect();
        writeln!(s, "\t\telements = {{ {} }}", elements.join(", "))?;
    }
    writeln!(s, "\t}}")?;
    writeln!(s, "\tcounter {COUNTER} {{}}")?;
    writeln!(s, "\tchain {CHAIN} {{")?;
    writeln!(
        s,
        "\t\ttype filter hook forward priority filter; policy accept;"
    )?;
    for dir in ["saddr", "daddr"] {
        writeln!(
            s,
            "\t\tmeta l4proto tcp ip6 {dir} @{POD_SET6} counter name {COUNTER} reject with tcp reset"
        )?;
        writeln!(s, "\t\tip6 {dir} @{POD_SET6} counter name {COUNTER} drop")?;
    }
    writeln!(s, "\t}}")?;
    writeln!(s, "}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(script: &str) -> Vec<&str> {
        script.lines().map(str::trim).collect()
    }

    #[test]
    fn ipv6_from_or_to_a_pod_is_reset_and_counted() {
        let pods = ["fd00::1:1", "fd00::1:2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            lines(&render_refuse_ipv6(&pods)),
            [
                "table inet ambient {",
                "set ambient_pods6 {",
                "type ipv6_addr",
                "elements = { fd00::1:1, fd00::1:2 }",
                "}",
                "counter ipv6_refused {}",
                "chain refuse_ipv6 {",
                "type filter hook forward priority filter; policy accept;",
                "meta l4proto tcp ip6 saddr @ambient_pods6 counter name ipv6_refused reject with tcp reset",
                "ip6 saddr @ambient_pods6 counter name ipv6_refused drop",
                "meta l4proto tcp ip6 daddr @ambient_pods6 counter name ipv6_refused reject with tcp reset",
                "ip6 daddr @ambient_pods6 counter name ipv6_refused drop",
                "}",
                "}",
            ]
        );
    }

    #[test]
    fn no_ipv6_pods_leaves_an_empty_set() {
        let s = render_refuse_ipv6(&BTreeSet::new());
        assert!(!s.contains("elements"), "{s}");
        assert!(!s.contains("delete") && !s.contains("flush"), "{s}");
    }

    #[test]
    fn applied_in_the_same_script_as_capture() {
        let pods = ["10.1.1.1", "fd00::1:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let s = crate::capture::render_script(&pods, &crate::capture::ListenerPorts::default());
        assert_eq!(s.matches("delete").count(), 1, "{s}");
        assert!(s.find("delete").unwrap() < s.find("chain refuse_ipv6").unwrap());
        assert!(s.contains("elements = { fd00::1:1 }"), "{s}");
        assert!(s.contains("elements = { 10.1.1.1 }"), "{s}");
    }
}
