//! Which CONNECTs the waypoint serves (DESIGN §6): the `:authority` must be
//! a Service VIP:port or a pod IP:port whose waypoint is this one. Anything
//! else is refused, so a waypoint is never an open relay. Pure.
//!
//! | `:authority` | Answer |
//! |---|---|
//! | VIP of a Service bound to us, a port it exposes | [`Target::Service`] |
//! | VIP of a Service bound to us, another port | 400 |
//! | IP of a pod bound to us | [`Target::Workload`] |
//! | a Service or pod with another waypoint, or none | 400 |
//! | an address the mesh does not know | 400 |
//!
//! "Bound to us" compares the waypoint's identity: the snapshot resolves a
//! Service's or pod's `waypoint` to the waypoint workload's address and
//! identity, and every replica of one waypoint shares that identity.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::StatusCode;
use mesh_model::state::{Service, Snapshot, UseWaypoint, Workload};
use mesh_model::SpiffeId;

/// What a CONNECT is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Service VIP was dialled: each request picks an endpoint.
    Service {
        service: Arc<Service>,
        /// The Service port dialled.
        port: u16,
        /// The endpoints' port for it.
        target_port: u16,
    },
    /// A pod IP was dialled: every request goes to that pod.
    Workload { workload: Arc<Workload>, port: u16 },
}

impl Target {
    /// The port's declared protocol: a Service port's; a pod's ports
    /// declare nothing.
    pub fn app_protocol(&self) -> Option<mesh_model::state::AppProtocol> {
        match self {
            Target::Service { service, port, .. } => service
                .ports
                .iter()
                .find(|p| p.port == *port)
                .and_then(|p| p.app_protocol),
            Target::Workload { .. } => None,
        }
    }

    /// The Service's hostname, for metrics and the `forwarded` host.
    pub fn service_host(&self) -> Option<&str> {
        match self {
            Target::Service { service, .. } => Some(&service.hostname),
            Target::Workload { .. } => None,
        }
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} is neither a Service VIP nor a pod the mesh knows")]
    Unknown(IpAddr),
    #[error("service {service} does not expose port {port}")]
    UnknownServicePort { service: String, port: u16 },
    #[error("{owner} is not bound to this waypoint ({bound})")]
    NotBound { owner: String, bound: String },
}

impl Refusal {
    /// The HBONE response status: a request this waypoint cannot serve.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    /// A low-cardinality reason for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unknown(_) => "unknown_destination",
            Refusal::UnknownServicePort { .. } => "unknown_service_port",
            Refusal::NotBound { .. } => "not_bound",
        }
    }
}

/// Decides whether the waypoint with identity `me` serves a CONNECT to
/// `authority`. Pure.
pub fn admit(snap: &Snapshot, me: &SpiffeId, authority: SocketAddr) -> Result<Target, Refusal> {
    if let Some(service) = snap.service_by_vip(authority.ip()) {
        check_bound(service.waypoint.as_ref(), me, || service.key())?;
        let target_port =
            service
                .target_port(authority.port())
                .ok_or_else(|| Refusal::UnknownServicePort {
                    service: service.key(),
                    port: authority.port(),
                })?;
        return Ok(Target::Service {
            service: service.clone(),
            port: authority.port(),
            target_port,
        });
    }
    let workload = snap
        .workload_by_ip(authority.ip())
        .ok_or(Refusal::Unknown(authority.ip()))?;
    check_bound(workload.waypoint.as_ref(), me, || workload.key())?;
    Ok(Target::Workload {
        workload: workload.clone(),
        port: authority.port(),
    })
}

fn check_bound(
    waypoint: Option<&UseWaypoint>,
    me: &SpiffeId,
    owner: impl FnOnce() -> String,
) -> Result<(), Refusal> {
    let bound = match waypoint {
        Some(UseWaypoint::Ready(wp)) if wp.identity == *me => return Ok(()),
        Some(UseWaypoint::Ready(wp)) => format!("its waypoint is {}", wp.identity),
        Some(UseWaypoint::Missing(m)) => format!("its waypoint {m} is missing"),
        None => "it has no waypoint".to_owned(),
    };
    Err(Refusal::NotBound {
        owner: owner(),
        bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_model::config;

    const CONFIG: &str = r#"
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces:
  - {name: shop, labels: {istio.io/dataplane-mode: ambient}}
  - {name: bank, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: bank-wp}}
workloads:
  - {name: wp, namespace: shop, serviceAccount: wp, ip: 10.1.1.2, node: n1, labels: {istio.io/dataplane-mode: none}}
  - {name: wp-2, namespace: shop, serviceAccount: wp, ip: 10.1.1.3, node: n1, labels: {istio.io/dataplane-mode: none}}
  - {name: bank-wp, namespace: bank, serviceAccount: bank-wp, ip: 10.1.1.4, node: n1, labels: {istio.io/dataplane-mode: none}}
  - {name: cart-1, namespace: shop, ip: 10.1.1.10, node: n1, labels: {app: cart}}
  - {name: pinned, namespace: shop, ip: 10.1.1.11, node: n1, labels: {app: pinned, istio.io/use-waypoint: wp}}
  - {name: vault, namespace: bank, ip: 10.1.1.20, node: n1, labels: {app: vault}}
services:
  - {name: cart, namespace: shop, vip: 10.96.0.10, ports: [{port: 80, targetPort: 8080}], selector: {app: cart}, labels: {istio.io/use-waypoint: wp}}
  - {name: plain, namespace: shop, vip: 10.96.0.11, ports: [{port: 80}], selector: {app: cart}}
  - {name: vault, namespace: bank, vip: 10.96.0.20, ports: [{port: 443}], selector: {app: vault}}
  - {name: lost, namespace: shop, vip: 10.96.0.30, ports: [{port: 80}], selector: {app: cart}, labels: {istio.io/use-waypoint: ghost}}
"#;

    fn me() -> SpiffeId {
        "spiffe://cluster.local/ns/shop/sa/wp".parse().unwrap()
    }

    #[test]
    fn admit_table() {
        let snap = config::parse(CONFIG).unwrap();
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("10.96.0.10:80", Ok("service shop/cart port 80 -> 8080")),
            ("10.96.0.10:81", Err("unknown_service_port")),
            ("10.1.1.11:9090", Ok("workload shop/pinned port 9090")),
            // Bound to no waypoint: the VIP, and the pod behind the bound VIP.
            ("10.96.0.11:80", Err("not_bound")),
            ("10.1.1.10:8080", Err("not_bound")),
            // Bound to another waypoint (the namespace label).
            ("10.96.0.20:443", Err("not_bound")),
            ("10.1.1.20:443", Err("not_bound")),
            // Its waypoint is missing: refused, never served in its stead.
            ("10.96.0.30:80", Err("not_bound")),
            // The waypoint itself, and an address outside the mesh.
            ("10.1.1.2:15008", Err("not_bound")),
            ("192.0.2.1:80", Err("unknown_destination")),
        ];
        for (authority, want) in cases {
            let got = admit(&snap, &me(), authority.parse().unwrap());
            let got = match &got {
                Ok(Target::Service {
                    service,
                    port,
                    target_port,
                }) => Ok(format!(
                    "service {} port {port} -> {target_port}",
                    service.key()
                )),
                Ok(Target::Workload { workload, port }) => {
                    Ok(format!("workload {} port {port}", workload.key()))
                }
                Err(r) => Err(r.reason()),
            };
            assert_eq!(got, want.map(str::to_owned), "{authority}");
        }
    }

    #[test]
    fn another_waypoint_identity_is_not_us() {
        let snap = config::parse(CONFIG).unwrap();
        let bank: SpiffeId = "spiffe://cluster.local/ns/bank/sa/bank-wp".parse().unwrap();
        assert!(admit(&snap, &bank, "10.96.0.20:443".parse().unwrap()).is_ok());
        assert!(admit(&snap, &bank, "10.96.0.10:80".parse().unwrap()).is_err());
        let e = admit(&snap, &bank, "10.96.0.10:80".parse().unwrap()).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(
            e.to_string()
                .contains("spiffe://cluster.local/ns/shop/sa/wp"),
            "{e}"
        );
    }
}
