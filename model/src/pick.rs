//! Endpoint picking: which endpoint of a Service a connection (ztunnel) or
//! a request (the waypoint) to one of its VIPs goes to, and on which port.
//! Pure: no clock, no random source; the caller passes the choice in (a
//! random number, or a round-robin counter).
//!
//! ```text
//!  VIP:port ─► [ Service ] ─ports─► targetPort
//!                  │ endpoints (sorted by uid, with an address)
//!                  ▼
//!            endpoint `pick % n` ─► endpointIP:targetPort (the VIP's family)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::state::{Service, Snapshot, Workload};

/// The endpoint chosen for a connection to a Service VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked<'a> {
    pub endpoint: &'a Arc<Workload>,
    /// `endpointIP:targetPort`: an address of the endpoint in the VIP's
    /// family when it has one (else its first), and the Service's target
    /// port for the port dialled.
    pub addr: SocketAddr,
}

/// Why no endpoint can take a connection to a VIP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("service {service} does not expose port {port}")]
    UnknownPort { service: String, port: u16 },
    #[error("service {service} has no endpoints")]
    NoEndpoints { service: String },
}

/// The endpoints of `svc` that can take a connection: those with an
/// address, in [`Snapshot::endpoints`]' order (by uid, so an index into
/// them is stable from one snapshot to the next).
pub fn usable_endpoints<'a>(snap: &'a Snapshot, svc: &Service) -> Vec<&'a Arc<Workload>> {
    snap.endpoints(svc)
        .iter()
        .filter(|w| !w.ips.is_empty())
        .collect()
}

/// Resolves a connection to `vip_dst` (a VIP of `svc`, and the port
/// dialled): the target port for that port, and endpoint `pick % n` of the
/// [`usable_endpoints`].
pub fn pick_endpoint<'a>(
    snap: &'a Snapshot,
    svc: &Service,
    vip_dst: SocketAddr,
    pick: usize,
) -> Result<Picked<'a>, PickError> {
    let target_port = svc
        .target_port(vip_dst.port())
        .ok_or_else(|| PickError::UnknownPort {
            service: svc.key(),
            port: vip_dst.port(),
        })?;
    let endpoints = usable_endpoints(snap, svc);
    let endpoint = *endpoints
        .get(pick % endpoints.len().max(1))
        .ok_or_else(|| PickError::NoEndpoints { service: svc.key() })?;
    let ip = same_family_ip(endpoint, vip_dst.ip()).expect("usable endpoints have an address");
    Ok(Picked {
        endpoint,
        addr: SocketAddr::new(ip, target_port),
    })
}

/// The endpoint's address in the same family as the VIP, else its first.
fn same_family_ip(w: &Workload, vip: IpAddr) -> Option<IpAddr> {
    w.ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == vip.is_ipv4())
        .or_else(|| w.primary_ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::state::SnapshotParts;

    const CONFIG: &str = r#"
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces: [{name: shop, labels: {istio.io/dataplane-mode: ambient}}]
workloads:
  - {name: cart-c, namespace: shop, ip: 10.1.1.13, node: n1, labels: {app: cart}}
  - {name: cart-a, namespace: shop, ip: 10.1.1.11, node: n1, labels: {app: cart}}
  - {name: cart-b, namespace: shop, ip: 10.1.1.12, node: n1, labels: {app: cart}}
  - {name: other, namespace: shop, ip: 10.1.1.20, node: n1, labels: {app: other}}
services:
  - {name: cart, namespace: shop, vip: 10.96.0.10, ports: [{port: 80, targetPort: 8080}, {port: 443}], selector: {app: cart}}
  - {name: empty, namespace: shop, vip: 10.96.0.11, ports: [{port: 80}]}
"#;

    fn pick(snap: &Snapshot, dst: &str, pick: usize) -> Result<(String, String), PickError> {
        let dst: SocketAddr = dst.parse().unwrap();
        let svc = snap.service_by_vip(dst.ip()).unwrap();
        pick_endpoint(snap, svc, dst, pick).map(|p| (p.endpoint.name.clone(), p.addr.to_string()))
    }

    #[test]
    fn by_index_over_endpoints_sorted_by_uid() {
        let snap = config::parse(CONFIG).unwrap();
        let ok = |name: &str, addr: &str| Ok((name.to_owned(), addr.to_owned()));
        let cases = [
            ("10.96.0.10:80", 0, ok("cart-a", "10.1.1.11:8080")),
            ("10.96.0.10:80", 1, ok("cart-b", "10.1.1.12:8080")),
            ("10.96.0.10:80", 2, ok("cart-c", "10.1.1.13:8080")),
            // Wraps around: a counter or any random number will do.
            ("10.96.0.10:80", 3, ok("cart-a", "10.1.1.11:8080")),
            ("10.96.0.10:80", usize::MAX, ok("cart-a", "10.1.1.11:8080")),
            // No targetPort: the port itself.
            ("10.96.0.10:443", 1, ok("cart-b", "10.1.1.12:443")),
            (
                "10.96.0.10:81",
                0,
                Err(PickError::UnknownPort {
                    service: "shop/cart".into(),
                    port: 81,
                }),
            ),
            (
                "10.96.0.11:80",
                0,
                Err(PickError::NoEndpoints {
                    service: "shop/empty".into(),
                }),
            ),
            // The port is checked before the endpoints.
            (
                "10.96.0.11:81",
                0,
                Err(PickError::UnknownPort {
                    service: "shop/empty".into(),
                    port: 81,
                }),
            ),
        ];
        for (dst, n, want) in cases {
            assert_eq!(pick(&snap, dst, n), want, "{dst} pick={n}");
        }
    }

    /// Over xDS an endpoint may be dual-stack, or carry no address at all.
    #[test]
    fn the_vips_family_and_only_endpoints_with_an_address() {
        let base = config::parse(CONFIG).unwrap();
        let mut parts = SnapshotParts {
            namespaces: base.namespaces().cloned().collect(),
            workloads: base.workloads().map(|w| (**w).clone()).collect(),
            services: base.services().map(|s| (**s).clone()).collect(),
            ..SnapshotParts::default()
        };
        for w in &mut parts.workloads {
            match w.name.as_str() {
                "cart-a" => w.ips.clear(),
                "cart-b" => w.ips.insert(0, "fd00::12".parse().unwrap()),
                _ => {}
            }
        }
        for s in &mut parts.services {
            if s.name == "cart" {
                s.vips.push("fd00::10".parse().unwrap());
            }
        }
        let snap = Snapshot::build(parts).unwrap();
        let cases = [
            // cart-a has no address: cart-b and cart-c share the picks.
            ("10.96.0.10:80", 0, ("cart-b", "10.1.1.12:8080")),
            ("10.96.0.10:80", 1, ("cart-c", "10.1.1.13:8080")),
            ("10.96.0.10:80", 2, ("cart-b", "10.1.1.12:8080")),
            ("[fd00::10]:80", 0, ("cart-b", "[fd00::12]:8080")),
            // No IPv6 address: its first.
            ("[fd00::10]:80", 1, ("cart-c", "10.1.1.13:8080")),
        ];
        for (dst, n, (name, addr)) in cases {
            let want = Ok((name.to_owned(), addr.to_owned()));
            assert_eq!(pick(&snap, dst, n), want, "{dst} pick={n}");
        }
    }
}
