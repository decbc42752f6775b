//! Which workloads a ztunnel process serves: every ambient pod of a node
//! (node mode), or one pod whose network namespace it runs in (sidecar
//! mode). The scope decides inbound admission, the certificates presented
//! and held, and which outbound sources are accepted.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Snapshot, Workload};

/// A workload named by the `<namespace>/<name>` the operator gave; the
/// uid is left out because it is source-specific (the file defaults it to
/// `<namespace>/<name>`, a Kubernetes control plane prefixes it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadName {
    pub namespace: String,
    pub name: String,
}

/// `--workload` is not `<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workload {0:?} is not <namespace>/<name>")]
pub struct WorkloadNameError(pub String);

impl std::str::FromStr for WorkloadName {
    type Err = WorkloadNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(WorkloadName {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(WorkloadNameError(s.to_owned())),
        }
    }
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The pod a sidecar serves: its name, on its node. A workload of that name
/// on another node (rescheduled, or a misconfigured `--node`) is not it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPod {
    pub workload: WorkloadName,
    pub node: String,
}

impl ServedPod {
    /// The served pod in `snap`, if it is there and on this node. Pure.
    pub fn find<'a>(&self, snap: &'a Snapshot) -> Option<&'a Arc<Workload>> {
        snap.workload_by_name(&self.workload.namespace, &self.workload.name)
            .filter(|w| self.is(w))
    }

    /// Whether `w` is the served pod.
    pub fn is(&self, w: &Workload) -> bool {
        w.namespace == self.workload.namespace
            && w.name == self.workload.name
            && w.node == self.node
    }

    /// Whether `dst` is one of this sidecar's own listeners: a port of
    /// `proxy_ports` on the served pod's IP or on loopback. Forwarding to it
    /// would land back on the proxy, which would forward it again, without
    /// end (a marked dial is not redirected, and `SO_ORIGINAL_DST` of an
    /// unredirected connection is its own destination). Pure.
    pub fn is_own_listener(&self, snap: &Snapshot, dst: SocketAddr, proxy_ports: &[u16]) -> bool {
        if !proxy_ports.contains(&dst.port()) {
            return false;
        }
        let ip = dst.ip();
        ip.is_loopback()
            || ip.is_unspecified()
            || self.find(snap).is_some_and(|w| w.ips.contains(&ip))
    }
}

impl fmt::Display for ServedPod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on node {}", self.workload, self.node)
    }
}

/// What one ztunnel process serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Node mode: every ambient (HBONE) pod on this node.
    Node(String),
    /// Sidecar mode: exactly this pod on this node, whatever its tunnel
    /// protocol (a sidecar-injected pod is not ambient).
    Pod(ServedPod),
}

impl Scope {
    /// Whether `w` is served by this process. Pure.
    pub fn serves(&self, snap: &Snapshot, w: &Workload) -> bool {
        match self {
            Scope::Node(node) => &w.node == node && snap.is_ambient(w),
            Scope::Pod(pod) => pod.is(w),
        }
    }

    /// Every served workload in `snap`.
    pub fn served<'a>(&'a self, snap: &'a Snapshot) -> Vec<&'a Arc<Workload>> {
        match self {
            Scope::Node(_) => snap.workloads().filter(|w| self.serves(snap, w)).collect(),
            Scope::Pod(_) => self.pod(snap).into_iter().collect(),
        }
    }

    /// The served pod of a sidecar, if it is in `snap`; `None` in node mode.
    pub fn pod<'a>(&self, snap: &'a Snapshot) -> Option<&'a Arc<Workload>> {
        match self {
            Scope::Node(_) => None,
            Scope::Pod(pod) => pod.find(snap),
        }
    }

    /// [`ServedPod::is_own_listener`] for a sidecar; always `false` in node
    /// mode, whose listeners are not in the pods. Pure.
    pub fn is_own_listener(&self, snap: &Snapshot, dst: SocketAddr, proxy_ports: &[u16]) -> bool {
        match self {
            Scope::Node(_) => false,
            Scope::Pod(pod) => pod.is_own_listener(snap, dst, proxy_ports),
        }
    }

    /// Whether this is sidecar mode.
    pub fn is_sidecar(&self) -> bool {
        matches!(self, Scope::Pod(_))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Node(node) => write!(f, "node {node}"),
            Scope::Pod(pod) => write!(f, "pod {pod}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn served(workload: &str, node: &str) -> ServedPod {
        ServedPod {
            workload: workload.parse().unwrap(),
            node: node.into(),
        }
    }

    #[test]
    fn node_serves_local_ambient_pods_and_pod_serves_itself() {
        let snap = config::parse(
            r#"
nodes: [{name: n1, ip: 10.0.0.1}, {name: n2, ip: 10.0.0.2}]
namespaces:
  - {name: shop, labels: {istio.io/dataplane-mode: ambient}}
  - {name: bank}
workloads:
  - {name: a, namespace: shop, ip: 10.1.1.10, node: n1}
  - {name: b, namespace: shop, ip: 10.1.2.10, node: n2}
  - {name: s, namespace: bank, ip: 10.1.1.11, node: n1, labels: {security.istio.io/tlsMode: istio}}
"#,
        )
        .unwrap();
        let pod = |s: &str, node: &str| Scope::Pod(served(s, node));
        let cases = [
            (Scope::Node("n1".into()), vec!["a"]),
            (Scope::Node("n2".into()), vec!["b"]),
            (Scope::Node("n3".into()), vec![]),
            (pod("bank/s", "n1"), vec!["s"]),
            (pod("shop/b", "n2"), vec!["b"]),
            (pod("shop/s", "n1"), vec![]),
            // The same name on another node is not the served pod.
            (pod("shop/b", "n1"), vec![]),
            (pod("bank/s", "n2"), vec![]),
        ];
        for (scope, want) in cases {
            let got: Vec<&str> = scope
                .served(&snap)
                .iter()
                .map(|w| w.name.as_str())
                .collect();
            assert_eq!(got, want, "{scope}");
        }
    }

    #[test]
    fn own_listeners_are_the_served_pods_proxy_ports() {
        let snap = config::parse(
            r#"
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces: [{name: bank}]
workloads:
  - {name: s, namespace: bank, ip: 10.1.1.11, node: n1}
  - {name: t, namespace: bank, ip: 10.1.1.12, node: n1}
"#,
        )
        .unwrap();
        let ports = [15001, 15006];
        let pod = Scope::Pod(served("bank/s", "n1"));
        let node = Scope::Node("n1".into());
        let cases = [
            (&pod, "10.1.1.11:15001", true),
            (&pod, "10.1.1.11:15006", true),
            (&pod, "127.0.0.1:15001", true),
            (&pod, "127.0.0.53:15006", true),
            (&pod, "0.0.0.0:15006", true),
            (&pod, "[::1]:15001", true),
            (&pod, "10.1.1.11:8080", false),
            (&pod, "10.1.1.11:15008", false),
            (&pod, "127.0.0.1:8080", false),
            (&pod, "10.1.1.12:15001", false),
            (&node, "10.1.1.11:15001", false),
            (&node, "127.0.0.1:15006", false),
        ];
        for (scope, dst, want) in cases {
            let got = scope.is_own_listener(&snap, dst.parse().unwrap(), &ports);
            assert_eq!(got, want, "{scope} {dst}");
        }
    }

    #[test]
    fn workload_names() {
        for (s, ok) in [
            ("shop/a", true),
            ("shop", false),
            ("/a", false),
            ("shop/", false),
            ("a/b/c", false),
        ] {
            assert_eq!(s.parse::<WorkloadName>().is_ok(), ok, "{s}");
        }
    }
}
