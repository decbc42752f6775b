//! The nat REDIRECT capture of a sidecar inside its pod's network namespace
//! (DESIGN §4, sidecar mode), applied for the Envoy pods with
//! `nft -f -` inside the pod.
//!
//! - OUTPUT: TCP from the app goes to the outbound port, except the proxy's
//!   own sockets (mark [`PROXY_MARK`]) and loopback destinations;
//! - PREROUTING: TCP arriving for the pod goes to the inbound port, except
//!   the HBONE, admin, metrics and readiness ports.
//!
//! This mirrors the rules `ztunnel --mode sidecar` installs for itself, so
//! both sidecar rows pay the same capture cost.

use super::{
    ADMIN_PORT, HBONE_PORT, INBOUND_PORT, METRICS_PORT, OUTBOUND_PORT, PROXY_MARK, READINESS_PORT,
};

/// The nft table the benchmark owns inside an Envoy pod.
pub const TABLE: &str = "bench_sidecar";

/// An `nft -f` script that replaces the table with the capture rules.
pub fn render_ruleset() -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tmeta mark {PROXY_MARK:#x} return\n\
         \t\tip daddr 127.0.0.0/8 return\n\
         \t\tmeta l4proto tcp redirect to :{OUTBOUND_PORT}\n\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority -100; policy accept;\n\
         \t\ttcp dport {{ {HBONE_PORT}, {ADMIN_PORT}, {METRICS_PORT}, {READINESS_PORT} }} return\n\
         \t\tmeta l4proto tcp redirect to :{INBOUND_PORT}\n\
         \t}}\n\
         }}\n"
    )
}

/// An `nft -f` script that removes the table (and succeeds if it is absent).
pub fn render_delete() -> String {
    format!("table ip {TABLE}\ndelete table ip {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_redirects_both_directions_and_skips_the_proxy() {
        let r = render_ruleset();
        // Replaces atomically: declare, delete, recreate in one script.
        assert!(r.starts_with("table ip bench_sidecar\ndelete table ip bench_sidecar\n"));
        assert!(r.contains("type nat hook output priority -100"));
        assert!(r.contains("type nat hook prerouting priority -100"));
        assert!(r.contains("meta mark 0x539 return"));
        assert!(r.contains("ip daddr 127.0.0.0/8 return"));
        assert!(r.contains("redirect to :15001"));
        assert!(r.contains("tcp dport { 15008, 15000, 15020, 15021 } return"));
        assert!(r.contains("redirect to :15006"));
        // The exceptions come before the redirects in each chain.
        let out = r.find("chain output").unwrap();
        assert!(r[out..].find("meta mark").unwrap() < r[out..].find("redirect").unwrap());
        let pre = r.find("chain prerouting").unwrap();
        assert!(r[pre..].find("tcp dport {").unwrap() < r[pre..].find("redirect").unwrap());
    }

    #[test]
    fn delete_is_idempotent_script() {
        assert_eq!(
            render_delete(),
            "table ip bench_sidecar\ndelete table ip bench_sidecar\n"
        );
    }
}
