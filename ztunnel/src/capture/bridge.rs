//! Bridge CNIs (Flannel's `cni0`): what node-level capture cannot see there,
//! said at start.
//!
//! Capture is TPROXY in the node's routing path. Pods on a Linux bridge
//! reach each other at layer 2, so traffic between two pods of one node
//! never meets ztunnel (no mTLS, no policy), and with
//! `bridge-nf-call-iptables=1` captured traffic that enters through the
//! bridge loses its TPROXY socket and is refused (`tests/tests/flannel.rs`
//! pins both). [`assess`] decides what to say from what [`detect`] reads.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

/// What the node looks like to capture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeView {
    /// Bridges that route at least one captured pod (by `ip route get`).
    pub pod_bridges: BTreeSet<String>,
    /// `net.bridge.bridge-nf-call-iptables`; `None` when br_netfilter is
    /// not loaded in this namespace.
    pub nf_call_iptables: Option<bool>,
}

/// One finding: a short reason (a fixed set, for logs and tests) and the
/// sentence a user reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub reason: &'static str,
    pub message: String,
}

/// What capture cannot promise on this node.
pub fn assess(view: &BridgeView) -> Vec<Finding> {
    if view.pod_bridges.is_empty() {
        return Vec::new();
    }
    let bridges = view
        .pod_bridges
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",");
    let mut out = vec![Finding {
        reason: "pods_on_bridge",
        message: format!(
            "captured pods sit on bridge {bridges}: traffic between two pods of this node is \
             switched at layer 2 and never reaches ztunnel (no mTLS, no policy), and a pod \
             answering ztunnel's same-node delivery replies over the bridge; use a routed CNI \
             (a /32 per pod) for full coverage"
        ),
    }];
    if view.nf_call_iptables == Some(true) {
        out.push(Finding {
            reason: "br_netfilter_call_iptables",
            message: format!(
                "net.bridge.bridge-nf-call-iptables=1 with pods on bridge {bridges}: captured \
                 traffic entering through the bridge is refused (TPROXY runs in br_netfilter's \
                 pass and its socket is lost)"
            ),
        });
    }
    out
}

/// The bridge names in `ip -j link show type bridge` output.
pub fn parse_bridges(json: &str) -> BTreeSet<String> {
    let links: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    links
        .iter()
        .filter_map(|l| l.get("ifname")?.as_str().map(str::to_owned))
        .collect()
}

/// The output device in `ip -j route get <ip>` output.
pub fn parse_route_dev(json: &str) -> Option<String> {
    let routes: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    routes.first()?.get("dev")?.as_str().map(str::to_owned)
}

/// Reads the calling thread's namespace (the node's): its bridges, the
/// devices routing up to `sample` captured pods, and the br_netfilter
/// sysctl. Best effort: what cannot be read counts as absent.
pub fn detect(pods: &BTreeSet<IpAddr>, sample: usize) -> BridgeView {
    let ip_json = |args: &[&str]| -> Option<String> {
        let out = Command::new("ip").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let bridges = ip_json(&["-j", "link", "show", "type", "bridge"])
        .map(|j| parse_bridges(&j))
        .unwrap_or_default();
    let mut pod_bridges = BTreeSet::new();
    if !bridges.is_empty() {
        for pod in pods.iter().filter(|ip| ip.is_ipv4()).take(sample) {
            let dev = ip_json(&["-j", "route", "get", &pod.to_string()])
                .and_then(|j| parse_route_dev(&j));
            if let Some(dev) = dev.filter(|d| bridges.contains(d)) {
                pod_bridges.insert(dev);
            }
        }
    }
    let nf_call_iptables = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .ok()
        .map(|v| v.trim() == "1");
    BridgeView {
        pod_bridges,
        nf_call_iptables,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(bridges: &[&str], nf: Option<bool>) -> BridgeView {
        BridgeView {
            pod_bridges: bridges.iter().map(|s| s.to_string()).collect(),
            nf_call_iptables: nf,
        }
    }

    #[test]
    fn findings_table() {
        struct Case {
            view: BridgeView,
            reasons: &'static [&'static str],
        }
        let cases = [
            // Routed veths (Calico): nothing to say, whatever the sysctl.
            Case {
                view: view(&[], None),
                reasons: &[],
            },
            Case {
                view: view(&[], Some(true)),
                reasons: &[],
            },
            // Flannel with br_netfilter off or not loaded.
            Case {
                view: view(&["cni0"], Some(false)),
                reasons: &["pods_on_bridge"],
            },
            Case {
                view: view(&["cni0"], None),
                reasons: &["pods_on_bridge"],
            },
            // Flannel as kube-proxy sets it up.
            Case {
                view: view(&["cni0"], Some(true)),
                reasons: &["pods_on_bridge", "br_netfilter_call_iptables"],
            },
        ];
        for c in cases {
            let got: Vec<_> = assess(&c.view).iter().map(|f| f.reason).collect();
            assert_eq!(got, c.reasons, "{:?}", c.view);
        }
        let msg = &assess(&view(&["cni0", "docker0"], None))[0].message;
        assert!(msg.contains("cni0,docker0"), "{msg}");
    }

    #[test]
    fn parses_iproute2_json() {
        let links = r#"[{"ifindex":3,"ifname":"cni0","flags":["UP"],"link_type":"ether"},
                        {"ifindex":4,"ifname":"br-x"}]"#;
        assert_eq!(
            parse_bridges(links),
            ["br-x", "cni0"].map(String::from).into()
        );
        assert!(parse_bridges("").is_empty());
        assert!(parse_bridges("[]").is_empty());
        let route = r#"[{"dst":"10.244.1.5","dev":"cni0","prefsrc":"10.244.1.1","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(parse_route_dev(route).as_deref(), Some("cni0"));
        assert_eq!(parse_route_dev("[]"), None);
        assert_eq!(parse_route_dev("not json"), None);
    }
}
