//! Fail closed: captured traffic that finds no ztunnel socket is refused
//! with a TCP reset. Pure: renders nft text, no I/O.
//!
//! TPROXY hands a packet to a transparent socket when one exists; when none
//! does (ztunnel crashed, or is between two processes) the `tproxy`
//! expression does not match, the packet keeps the capture mark set just
//! before it, and the `ip rule` delivers it to the node's own stack, where
//! the client's SYN goes unanswered until its own timeout. The `input` chain
//! rendered here makes that explicit and prompt: a packet carrying the
//! capture mark is accepted only if it belongs to a transparent socket
//! (`socket transparent 1` looks the socket up and does not match when there
//! is none); any other captured TCP packet is answered with a reset, so the
//! pod's connection is refused at once and no host service listening on
//! `0.0.0.0` of that port ever sees it.
//!
//! The chain is a separate block of the same `nft -f` script as
//! [`super::rules::render_ruleset`], so it lands in the same transaction.

use std::fmt::Write as _;

use super::rules::{CAPTURE_MARK, CAPTURE_MASK, TABLE, ZTUNNEL_MARK};

/// The input chain's name in table `inet ambient`.
pub const CHAIN: &str = "fail_closed";

/// The nft block adding the fail-closed `input` chain to table
/// `inet ambient`, to append to the script that (re)creates the table.
///
/// In order, first match wins:
/// 1. ztunnel's own connections (ct mark 0x539) pass: replies to its marked
///    sockets carry the capture mark too, and not every such socket is
///    transparent;
/// 2. packets without the capture mark pass;
/// 3. packets of a transparent socket (TPROXY found ztunnel) pass;
/// 4. the rest of captured TCP is reset; anything else captured is dropped.
pub fn render_fail_closed() -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_fail_closed(&mut s);
    s
}

fn write_fail_closed(s: &mut String) -> std::fmt::Result {
    writeln!(s, "table inet {TABLE} {{")?;
    writeln!(s, "\tchain {CHAIN} {{")?;
    writeln!(
        s,
        "\t\ttype filter hook input priority filter; policy accept;"
    )?;
    writeln!(s, "\t\tct mark {ZTUNNEL_MARK:#x} return")?;
    writeln!(
        s,
        "\t\tmeta mark & {CAPTURE_MASK:#x} != {CAPTURE_MARK:#x} return"
    )?;
    writeln!(s, "\t\tsocket transparent 1 accept")?;
    writeln!(s, "\t\tmeta l4proto tcp counter reject with tcp reset")?;
    writeln!(s, "\t\tcounter drop")?;
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
    fn input_chain_accepts_only_transparent_sockets_then_resets() {
        let s = render_fail_closed();
        assert_eq!(
            lines(&s),
            [
                "table inet ambient {",
                "chain fail_closed {",
                "type filter hook input priority filter; policy accept;",
                "ct mark 0x539 return",
                "meta mark & 0xfff != 0x400 return",
                "socket transparent 1 accept",
                "meta l4proto tcp counter reject with tcp reset",
                "counter drop",
                "}",
                "}",
            ]
        );
    }

    #[test]
    fn applied_in_the_same_script_after_the_table_is_replaced() {
        let s = crate::capture::render_script(
            &std::collections::BTreeSet::new(),
            &crate::capture::ListenerPorts::default(),
        );
        let delete = s.find("delete table inet ambient").expect("replacement");
        let chain = s.find("chain fail_closed").expect("fail-closed chain");
        assert!(delete < chain, "{s}");
        assert_eq!(s.matches("delete").count(), 1, "{s}");
    }

    #[test]
    fn never_deletes_or_flushes() {
        // It is appended to the script that replaces the table: it must only
        // add, so the whole script stays one atomic replacement.
        let s = render_fail_closed();
        assert!(!s.contains("delete") && !s.contains("flush"), "{s}");
    }
}
