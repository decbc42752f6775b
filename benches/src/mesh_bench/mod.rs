//! The pure parts of the netns macro-benchmark (`mesh-bench`): how each mode
//! is configured, the statistics, and the report. No sockets, no processes,
//! no clock: the binary (`src/bin/mesh-bench.rs`) does the I/O.
//!
//! - [`envoy`]: the static bootstrap of an Envoy sidecar, shaped like the one
//!   Istio generates (outbound 15001, inbound 15006, mutual TLS 1.3 with
//!   SPIFFE SAN checks, SO_MARK on upstream sockets), captured by the same
//!   nft rules as `ztunnel --mode sidecar`
//!   (`ztunnel::capture::sidecar::ruleset`);
//! - [`stats`]: percentiles, min/median/max, ratios;
//! - [`report`]: the JSON document and the self-contained HTML report.

pub mod envoy;
pub mod report;
pub mod stats;

use serde::{Deserialize, Serialize};

/// Trust domain of every identity in the benchmark.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// Kubernetes namespace of every benchmark pod.
pub const NAMESPACE: &str = "bench";
/// Mark a sidecar puts on its own sockets so capture skips them (DESIGN §4):
/// the one ztunnel's sidecar rules skip.
pub const PROXY_MARK: u32 = ztunnel::capture::rules::ZTUNNEL_MARK;
/// Sidecar outbound capture port (where the shared ruleset redirects).
pub const OUTBOUND_PORT: u16 = ztunnel::capture::rules::OUTBOUND_PORT;
/// Sidecar inbound capture port (where the shared ruleset redirects).
pub const INBOUND_PORT: u16 = ztunnel::capture::rules::INBOUND_PLAINTEXT_PORT;
/// HBONE port (never captured inbound).
pub const HBONE_PORT: u16 = mesh_model::HBONE_PORT;
/// Admin port (Envoy: `/ready`, `/stats`; localhost only; ztunnel's too,
/// so the shared rules leave it alone).
pub const ADMIN_PORT: u16 = 15000;

/// The capture an Envoy pod on the node at `node_ip` gets: exactly the
/// table a `ztunnel --mode sidecar` with default listeners installs there
/// (REDIRECT to 15001/15006, mark 0x539 and loopback skipped, 15008/15000/
/// 15020/15021 and the node's own IP not captured inbound). Pure.
pub fn envoy_capture(node_ip: std::net::Ipv4Addr) -> ztunnel::capture::sidecar::SidecarRules {
    ztunnel::app::Listeners::default().sidecar_rules(vec![node_ip])
}

/// The data paths compared, in the order they alternate within a repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Plain TCP pod to pod, no proxy.
    NoMesh,
    /// One `ztunnel --mode sidecar` per pod.
    Sidecar,
    /// One Envoy per pod, configured like an Istio sidecar.
    Envoy,
    /// A floor, not a mesh: the client dials node 1, where a `tcp-relay`
    /// forwards over mutual TLS 1.3 (HBONE's rustls configurations and
    /// sealing, no HTTP/2) to one in node 2, which dials the server pod
    /// (`mesh_tests::relay::RelayChain` with `Hop::Tls`). No capture, no
    /// policy, no per-pod proxy: only the perf phase runs.
    TlsRelay,
    /// One ztunnel per node.
    Ambient,
}

impl Mode {
    /// Every mode, in alternation order.
    pub const ALL: [Mode; 5] = [
        Mode::NoMesh,
        Mode::Sidecar,
        Mode::Envoy,
        Mode::TlsRelay,
        Mode::Ambient,
    ];

    /// The JSON key (`no_mesh`, `sidecar`, `envoy`, `tls_relay`, `ambient`).
    pub fn key(self) -> &'static str {
        match self {
            Mode::NoMesh => "no_mesh",
            Mode::Sidecar => "sidecar",
            Mode::Envoy => "envoy",
            Mode::TlsRelay => "tls_relay",
            Mode::Ambient => "ambient",
        }
    }

    /// A label for tables and charts.
    pub fn label(self) -> &'static str {
        match self {
            Mode::NoMesh => "no mesh",
            Mode::Sidecar => "ztunnel sidecar",
            Mode::Envoy => "Envoy sidecar",
            Mode::TlsRelay => "TLS relay (floor)",
            Mode::Ambient => "ambient",
        }
    }

    /// Parses [`Mode::key`] (also `none` and `nomesh`).
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "no_mesh" | "nomesh" | "none" | "no-mesh" => Some(Mode::NoMesh),
            "sidecar" => Some(Mode::Sidecar),
            "envoy" => Some(Mode::Envoy),
            "tls_relay" | "tls-relay" => Some(Mode::TlsRelay),
            "ambient" => Some(Mode::Ambient),
            _ => None,
        }
    }

    /// Whether traffic crosses a proxy in this mode.
    pub fn is_meshed(self) -> bool {
        self != Mode::NoMesh
    }

    /// Whether the mode runs only the perf phase (bulk, closed and open
    /// loop, churn at the first pod count): it has no per-pod proxies, so
    /// the memory-vs-pods and time-to-start figures have no entry for it
    /// (absent, not zero).
    pub fn perf_only(self) -> bool {
        self == Mode::TlsRelay
    }
}

/// `spiffe://cluster.local/ns/bench/sa/<service account>`.
pub fn spiffe_uri(service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service_account}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// The Envoy pods get ztunnel's sidecar rules: their redirects must land
    /// on Envoy's listeners and skip Envoy's marked sockets and admin port.
    #[test]
    fn keys_parse_back_and_all_is_in_alternation_order() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.key()), Some(m));
        }
        let mut sorted = Mode::ALL;
        sorted.sort_unstable();
        assert_eq!(sorted, Mode::ALL, "--modes are sorted into this order");
        assert_eq!(
            Mode::ALL.iter().filter(|m| m.perf_only()).count(),
            1,
            "only the TLS relay floor skips the per-pod-count phases"
        );
    }

    #[test]
    fn envoy_ports_are_where_the_shared_sidecar_rules_redirect() {
        let node = Ipv4Addr::new(10, 0, 0, 2);
        let rules = envoy_capture(node);
        assert_eq!(rules.outbound_port, OUTBOUND_PORT);
        assert_eq!(rules.inbound_port, INBOUND_PORT);
        assert_eq!(rules.mark, PROXY_MARK);
        assert!(rules.inbound_exclude.contains(&ADMIN_PORT));
        assert!(rules.inbound_exclude.contains(&HBONE_PORT));
        assert_eq!(rules.inbound_exempt_sources, vec![node]);
    }
}
