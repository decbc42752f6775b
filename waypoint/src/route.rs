//! Where a request (or an opaque connection) may go, as endpoints. The
//! default route ([`default_backend`]): a Service with no route goes to all
//! its ready endpoints on the port's target port; a pod dialled directly
//! goes to that pod. A route's backend or mirror names a Service and port
//! ([`service_backend`]). Pure; resolved against the snapshot of each
//! request, so endpoint changes apply to the next request.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_model::route::ServiceRef;
use mesh_model::state::{Service, Snapshot, Workload};

use crate::admit::Target;
use crate::upstream::dial::Endpoint;

/// The endpoints one request chooses among.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Names the set for round robin and outlier accounting
    /// (`namespace/name` of the Service or pod).
    pub group: String,
    pub endpoints: Vec<Endpoint>,
    /// The workload behind each endpoint, same order.
    pub workloads: Vec<Arc<Workload>>,
}

impl Backend {
    pub fn workload_at(&self, addr: SocketAddr) -> Option<&Arc<Workload>> {
        self.endpoints
            .iter()
            .position(|e| e.addr == addr)
            .map(|i| &self.workloads[i])
    }
}

/// Why there is nowhere to send a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoBackend {
    #[error("{0} is no longer in the config")]
    Gone(String),
    #[error("service {service} no longer exposes port {port}")]
    PortGone { service: String, port: u16 },
    #[error("{0} has no ready endpoints")]
    NoEndpoints(String),
}

impl NoBackend {
    pub fn reason(&self) -> &'static str {
        match self {
            NoBackend::Gone(_) | NoBackend::PortGone { .. } => "no_route",
            NoBackend::NoEndpoints(_) => "no_healthy_upstream",
        }
    }
}

/// The default route for `target` in `snap`.
pub fn default_backend(snap: &Snapshot, target: &Target) -> Result<Backend, NoBackend> {
    let (group, pairs): (String, Vec<(Endpoint, Arc<Workload>)>) = match target {
        Target::Service { service, port, .. } => {
            return service_port_backend(snap, &service.namespace, &service.name, *port)
        }
        Target::Workload { workload, port } => {
            let current = snap
                .workload_by_uid(&workload.uid)
                .ok_or_else(|| NoBackend::Gone(workload.key()))?;
            let pairs = Endpoint::of(snap, current, *port)
                .map(|e| (e, current.clone()))
                .into_iter()
                .collect();
            (current.key(), pairs)
        }
    };
    backend_of(group, pairs)
}

/// A route's backend (or mirror): the Service's ready endpoints on the
/// target port of `r.port`.
pub fn service_backend(snap: &Snapshot, r: &ServiceRef) -> Result<Backend, NoBackend> {
    service_port_backend(snap, &r.namespace, &r.name, r.port)
}

fn service_port_backend(
    snap: &Snapshot,
    namespace: &str,
    name: &str,
    port: u16,
) -> Result<Backend, NoBackend> {
    let key = || format!("{namespace}/{name}");
    let svc: &Service = snap
        .service_by_name(namespace, name)
        .ok_or_else(|| NoBackend::Gone(key()))?;
    let target_port = svc.target_port(port).ok_or_else(|| NoBackend::PortGone {
        service: key(),
        port,
    })?;
    let pairs = snap
        .endpoints(svc)
        .iter()
        .filter_map(|w| Some((Endpoint::of(snap, w, target_port)?, w.clone())))
        .collect();
    backend_of(svc.key(), pairs)
}

fn backend_of(group: String, pairs: Vec<(Endpoint, Arc<Workload>)>) -> Result<Backend, NoBackend> {
    if pairs.is_empty() {
        return Err(NoBackend::NoEndpoints(group));
    }
    let (endpoints, workloads) = pairs.into_iter().unzip();
    Ok(Backend {
        group,
        endpoints,
        workloads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admit::admit;
    use mesh_model::config;

    fn snap(extra_pod: &str) -> Snapshot {
        config::parse(&format!(
            r#"
nodes: [{{name: n1, ip: 10.0.0.1}}]
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
  - {{name: legacy}}
workloads:
  - {{name: wp, namespace: shop, serviceAccount: wp, ip: 10.1.1.2, node: n1, labels: {{istio.io/dataplane-mode: none}}}}
  - {{name: cart-1, namespace: shop, serviceAccount: cart, ip: 10.1.1.10, node: n1, labels: {{app: cart}}}}
  - {{name: cart-2, namespace: shop, serviceAccount: cart, ip: 10.1.1.11, node: n1, labels: {{app: cart}}}}
  - {{name: old, namespace: legacy, ip: 10.1.1.20, node: n1, labels: {{app: old, istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: shop}}}}
{extra_pod}
services:
  - {{name: cart, namespace: shop, vip: 10.96.0.10, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: cart}}, labels: {{istio.io/use-waypoint: wp}}}}
  - {{name: none, namespace: shop, vip: 10.96.0.11, ports: [{{port: 80}}], selector: {{app: nothing}}, labels: {{istio.io/use-waypoint: wp}}}}
"#
        ))
        .unwrap()
    }

    fn me() -> mesh_model::SpiffeId {
        "spiffe://cluster.local/ns/shop/sa/wp".parse().unwrap()
    }

    #[test]
    fn a_service_goes_to_every_endpoint_on_its_target_port() {
        let s = snap("");
        let t = admit(&s, &me(), "10.96.0.10:80".parse().unwrap()).unwrap();
        let b = default_backend(&s, &t).unwrap();
        assert_eq!(b.group, "shop/cart");
        let addrs: Vec<String> = b.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, ["10.1.1.10:8080", "10.1.1.11:8080"]);
        assert_eq!(
            b.endpoints[0].tunnel.as_ref().unwrap().to_string(),
            "spiffe://cluster.local/ns/shop/sa/cart",
            "ambient endpoints get HBONE with their identity"
        );
        assert_eq!(b.workload_at(b.endpoints[1].addr).unwrap().name, "cart-2");
    }

    #[test]
    fn endpoint_changes_apply_to_the_next_request() {
        let before = snap("");
        let t = admit(&before, &me(), "10.96.0.10:80".parse().unwrap()).unwrap();
        let after = snap(
            "  - {name: cart-3, namespace: shop, ip: 10.1.1.12, node: n1, labels: {app: cart}}",
        );
        assert_eq!(default_backend(&after, &t).unwrap().endpoints.len(), 3);
    }

    #[test]
    fn a_pod_outside_the_mesh_gets_plain_tcp() {
        let s = snap("");
        let t = admit(&s, &me(), "10.1.1.20:9000".parse().unwrap()).unwrap();
        let b = default_backend(&s, &t).unwrap();
        assert_eq!(b.endpoints[0].addr.to_string(), "10.1.1.20:9000");
        assert_eq!(b.endpoints[0].tunnel, None);
        assert_eq!(b.endpoints[0].dial_addr().to_string(), "10.1.1.20:9000");
    }

    #[test]
    fn a_route_backend_is_a_service_and_port() {
        let s = snap("");
        let r = ServiceRef {
            namespace: "shop".into(),
            name: "cart".into(),
            port: 80,
        };
        let b = service_backend(&s, &r).unwrap();
        assert_eq!(b.group, "shop/cart");
        assert_eq!(b.endpoints[1].addr.to_string(), "10.1.1.11:8080");
        let wrong_port = ServiceRef {
            port: 81,
            ..r.clone()
        };
        assert_eq!(
            service_backend(&s, &wrong_port).unwrap_err().reason(),
            "no_route"
        );
        let ghost = ServiceRef {
            name: "ghost".into(),
            ..r
        };
        assert_eq!(
            service_backend(&s, &ghost).unwrap_err().reason(),
            "no_route"
        );
    }

    #[test]
    fn no_endpoints_and_vanished_targets() {
        let s = snap("");
        let t = admit(&s, &me(), "10.96.0.11:80".parse().unwrap()).unwrap();
        assert_eq!(
            default_backend(&s, &t).unwrap_err().reason(),
            "no_healthy_upstream"
        );
        let cart = admit(&s, &me(), "10.96.0.10:80".parse().unwrap()).unwrap();
        let empty = config::parse("nodes: [{name: n1, ip: 10.0.0.1}]").unwrap();
        assert_eq!(
            default_backend(&empty, &cart).unwrap_err().reason(),
            "no_route"
        );
    }
}
