//! The generated mesh: `workloads` pods over [`NODES`] nodes and 20
//! ambient namespaces, `services` services selecting 10 pods each (when
//! there are ten times as many workloads), and one marker workload whose
//! name changes with each edit.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Value};

/// Nodes the workloads are spread over (and simulated clients' names).
pub const NODES: usize = 50;
const NAMESPACES: usize = 20;
const APPS: usize = 1000;
/// The node of the ztunnel measured for memory: it runs no workload, so it
/// fetches no certificate and holds only config.
pub const OBSERVER_NODE: &str = "observer";
/// The marker workload's address, looked up by the clients.
pub const MARKER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1));

#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub workloads: usize,
    pub services: usize,
}

impl Scale {
    pub fn small() -> Scale {
        Scale {
            workloads: 100,
            services: 10,
        }
    }

    pub fn large() -> Scale {
        Scale {
            workloads: 10_000,
            services: 1_000,
        }
    }

    /// Workloads in the config: the generated ones and the marker.
    pub fn total_workloads(&self) -> usize {
        self.workloads + 1
    }

    pub fn to_json(self) -> Value {
        json!({"workloads": self.workloads, "services": self.services})
    }
}

/// The marker workload's name in config generation `generation`.
pub fn marker_name(generation: usize) -> String {
    format!("marker-{generation}")
}

/// Node names: `node1`..`node50`.
pub fn node_name(i: usize) -> String {
    format!("node{}", i % NODES + 1)
}

fn workload_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 128 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

/// The control plane's config file for `scale` at `generation`.
pub fn config(scale: &Scale, generation: usize) -> String {
    let mut y = String::with_capacity(scale.workloads * 160 + 4096);
    y.push_str("trustDomain: cluster.local\nnodes:\n");
    for n in 0..NODES {
        let _ = writeln!(
            y,
            "  - {{name: {}, ip: 10.0.{}.{}}}",
            node_name(n),
            n / 200,
            n % 200 + 1
        );
    }
    let _ = writeln!(y, "  - {{name: {OBSERVER_NODE}, ip: 10.0.255.1}}");
    y.push_str("namespaces:\n");
    for ns in 0..NAMESPACES {
        let _ = writeln!(
            y,
            "  - {{name: ns{ns}, labels: {{istio.io/dataplane-mode: ambient}}}}"
        );
    }
    y.push_str("workloads:\n");
    for i in 0..scale.workloads {
        let _ = writeln!(
            y,
            "  - {{name: w{i}, namespace: ns{}, serviceAccount: sa{}, ip: {}, node: {}, labels: {{app: app{}}}}}",
            i % NAMESPACES,
            i % 50,
            workload_ip(i),
            node_name(i),
            i % APPS
        );
    }
    let _ = writeln!(
        y,
        "  - {{name: {}, namespace: ns0, serviceAccount: marker, ip: {MARKER_IP}, node: {}}}",
        marker_name(generation),
        node_name(0)
    );
    if scale.services > 0 {
        y.push_str("services:\n");
    }
    for j in 0..scale.services {
        // app{j} pods are in namespace j % 20 (APPS is a multiple of 20).
        let _ = writeln!(
            y,
            "  - {{name: s{j}, namespace: ns{}, vip: 10.96.{}.{}, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: app{}}}}}",
            j % NAMESPACES,
            j / 250,
            j % 250 + 1,
            j % APPS
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_parses_with_the_expected_shape() {
        let snap = mesh_model::config::parse(&config(
            &Scale {
                workloads: 2000,
                services: 200,
            },
            7,
        ))
        .unwrap();
        assert_eq!(snap.workloads().count(), 2001);
        assert_eq!(snap.services().count(), 200);
        assert_eq!(snap.workload_by_ip(MARKER_IP).unwrap().name, "marker-7");
        for s in snap.services() {
            assert_eq!(snap.endpoints(s).len(), 2, "{}", s.name);
        }
        assert!(snap.workloads().all(|w| snap.is_ambient(w)));
    }
}
