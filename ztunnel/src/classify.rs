//! Where an outbound connection goes: the routing decision for a connection
//! captured on port 15001. Pure: no I/O, no clock, no locks.
//!
//! | Destination | Route |
//! |---|---|
//! | Service VIP or pod with a waypoint | [`Route::Waypoint`]: HBONE to the waypoint, `:authority` = the original destination |
//! | ambient pod on this node | [`Route::Local`]: the in-process inbound path |
//! | ambient pod elsewhere, or a pod with its own sidecar (`native_tunnel`) anywhere | [`Route::Hbone`]: HBONE to `podIP:15008`, `:authority` = `podIP:targetPort` |
//! | anything else | [`Route::Passthrough`]: plain TCP |
//!
//! Sidecar mode routes with [`classify_sidecar`] instead (no waypoints, no
//! in-process path).
//!
//! A Service VIP is resolved to one endpoint first
//! ([`mesh_model::pick::pick_endpoint`], with the caller's `pick`) and its
//! port mapped to the target port. A waypoint on the Service applies
//! to VIP traffic; a waypoint on the pod applies to traffic addressed to the
//! pod's IP; the namespace label applies to both unless overridden.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hbone::SpiffeId;

use mesh_model::pick::{pick_endpoint, PickError};
use mesh_model::state::{ServedPod, Service, Snapshot, Workload};
use mesh_model::HBONE_PORT;

/// The decision for one outbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The destination is an ambient pod on this node: run the inbound path
    /// in-process (identity checks and policy, no TLS hop).
    Local {
        source: Arc<Workload>,
        dest: Arc<Workload>,
        /// `podIP:targetPort` to connect to.
        dst: SocketAddr,
        /// The Service FQDN when a VIP was dialled (`forwarded: ...;host=`).
        forwarded_host: Option<String>,
    },
    /// HBONE straight to the destination pod's ztunnel.
    Hbone {
        source: Arc<Workload>,
        dest: Arc<Workload>,
        /// `podIP:15008`.
        via: SocketAddr,
        /// `podIP:targetPort`, the CONNECT `:authority`.
        authority: SocketAddr,
        /// The identity the server certificate must carry.
        expect: SpiffeId,
        forwarded_host: Option<String>,
    },
    /// HBONE to the destination's waypoint.
    Waypoint {
        source: Arc<Workload>,
        /// `waypointIP:15008`.
        via: SocketAddr,
        /// The original destination (VIP:port or podIP:port).
        authority: SocketAddr,
        /// The waypoint's identity.
        expect: SpiffeId,
        forwarded_host: Option<String>,
    },
    /// Plain TCP, not tunnelled: the destination is outside the mesh. `dst`
    /// is the original destination, or the chosen endpoint for a VIP.
    Passthrough {
        source: Arc<Workload>,
        dst: SocketAddr,
    },
}

impl Route {
    /// The client workload the connection came from.
    pub fn source(&self) -> &Arc<Workload> {
        match self {
            Route::Local { source, .. }
            | Route::Hbone { source, .. }
            | Route::Waypoint { source, .. }
            | Route::Passthrough { source, .. } => source,
        }
    }
}

/// Why a captured connection cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("source {0} is not a known ambient workload")]
    UnknownSource(IpAddr),
    #[error("the served workload {0} is not in the config")]
    UnknownWorkload(String),
    #[error("source {src} runs on node {node:?}, not this one")]
    SourceNotLocal { src: IpAddr, node: String },
    #[error("service {service} does not expose port {port}")]
    UnknownServicePort { service: String, port: u16 },
    #[error("service {service} has no endpoints")]
    NoEndpoints { service: String },
    #[error("{0} is this sidecar's own listener; forwarding it would loop")]
    OwnListener(SocketAddr),
}

impl From<PickError> for ClassifyError {
    fn from(e: PickError) -> Self {
        match e {
            PickError::UnknownPort { service, port } => {
                ClassifyError::UnknownServicePort { service, port }
            }
            PickError::NoEndpoints { service } => ClassifyError::NoEndpoints { service },
        }
    }
}

impl ClassifyError {
    /// Every value [`ClassifyError::reason`] takes: the label values of
    /// `ztunnel_outbound_refused_total`.
    pub const REASONS: [&'static str; 5] = [
        "unknown_source",
        "source_not_local",
        "unknown_service_port",
        "no_endpoints",
        "own_listener",
    ];

    /// A low-cardinality label for metrics and access logs (one of
    /// [`ClassifyError::REASONS`]).
    pub fn reason(&self) -> &'static str {
        match self {
            ClassifyError::UnknownSource(_) | ClassifyError::UnknownWorkload(_) => "unknown_source",
            ClassifyError::SourceNotLocal { .. } => "source_not_local",
            ClassifyError::UnknownServicePort { .. } => "unknown_service_port",
            ClassifyError::NoEndpoints { .. } => "no_endpoints",
            ClassifyError::OwnListener(_) => "own_listener",
        }
    }
}

/// Routes a connection from pod IP `src` to `orig_dst`, captured by the
/// ztunnel on `local_node`. For a Service VIP, endpoint `pick % len` is
/// chosen ([`pick_endpoint`]); pass a random or round-robin number.
pub fn classify(
    snap: &Snapshot,
    src: IpAddr,
    orig_dst: SocketAddr,
    local_node: &str,
    pick: usize,
) -> Result<Route, ClassifyError> {
    let source = snap
        .workload_by_ip(src)
        .filter(|w| snap.is_ambient(w))
        .ok_or(ClassifyError::UnknownSource(src))?
        .clone();
    if source.node != local_node {
        return Err(ClassifyError::SourceNotLocal {
            src,
            node: source.node.clone(),
        });
    }
    let target = Target {
        snap,
        source,
        local_node,
    };
    if let Some(svc) = snap.service_by_vip(orig_dst.ip()) {
        return target.service(svc, orig_dst, pick);
    }
    match snap.workload_by_ip(orig_dst.ip()) {
        Some(dest) => Ok(target.pod(dest, orig_dst)),
        None => Ok(Route::Passthrough {
            source: target.source,
            dst: orig_dst,
        }),
    }
}

struct Target<'a> {
    snap: &'a Snapshot,
    source: Arc<Workload>,
    local_node: &'a str,
}

impl Target<'_> {
    fn service(
        self,
        svc: &Service,
        orig_dst: SocketAddr,
        pick: usize,
    ) -> Result<Route, ClassifyError> {
        let host = Some(svc.hostname.clone());
        if let Some(wp) = &svc.waypoint {
            return Ok(Route::Waypoint {
                source: self.source,
                via: wp.hbone_addr(),
                authority: orig_dst,
                expect: wp.identity.clone(),
                forwarded_host: host,
            });
        }
        let picked = pick_endpoint(self.snap, svc, orig_dst, pick)?;
        Ok(self.direct(picked.endpoint, picked.addr, host))
    }

    /// Traffic addressed to a pod IP: the pod's waypoint applies.
    fn pod(self, dest: &Arc<Workload>, dst: SocketAddr) -> Route {
        match &dest.waypoint {
            Some(wp) => Route::Waypoint {
                source: self.source,
                via: wp.hbone_addr(),
                authority: dst,
                expect: wp.identity.clone(),
                forwarded_host: None,
            },
            None => self.direct(dest, dst, None),
        }
    }

    /// No waypoint: straight to the pod, tunnelled if it is in the mesh. A
    /// pod with its own sidecar is never local: its sidecar, not this
    /// ztunnel, terminates the tunnel.
    fn direct(self, dest: &Arc<Workload>, dst: SocketAddr, host: Option<String>) -> Route {
        if !self.snap.accepts_hbone(dest) {
            return Route::Passthrough {
                source: self.source,
                dst,
            };
        }
        if dest.node == self.local_node && self.snap.is_ambient(dest) {
            return Route::Local {
                source: self.source,
                dest: dest.clone(),
                dst,
                forwarded_host: host,
            };
        }
        Route::Hbone {
            source: self.source,
            dest: dest.clone(),
            via: SocketAddr::new(dst.ip(), HBONE_PORT),
            authority: dst,
            expect: dest.identity(),
            forwarded_host: host,
        }
    }
}

/// Routes a connection that the sidecar of pod `served` captured on its
/// outbound port (the source is always that pod). Sidecars, like Istio's,
/// never route through waypoints:
///
/// | Destination | Route |
/// |---|---|
/// | the served pod itself, or loopback, on one of `proxy_ports` (the sidecar's capture listeners) | [`ClassifyError::OwnListener`]: it would loop |
/// | the served pod itself | [`Route::Passthrough`] |
/// | pod, or VIP endpoint, that accepts HBONE (ambient, or its own sidecar: `native_tunnel`) | [`Route::Hbone`] to `podIP:15008`, `:authority` = `podIP:targetPort` |
/// | anything else | [`Route::Passthrough`] (to the chosen endpoint for a VIP) |
///
/// Pure, like [`classify`].
pub fn classify_sidecar(
    snap: &Snapshot,
    served: &ServedPod,
    orig_dst: SocketAddr,
    proxy_ports: &[u16],
    pick: usize,
) -> Result<Route, ClassifyError> {
    let source = served
        .find(snap)
        .ok_or_else(|| ClassifyError::UnknownWorkload(served.workload.to_string()))?
        .clone();
    if served.is_own_listener(snap, orig_dst, proxy_ports) {
        return Err(ClassifyError::OwnListener(orig_dst));
    }
    let (dest, dst, host) = match snap.service_by_vip(orig_dst.ip()) {
        Some(svc) => {
            let picked = pick_endpoint(snap, svc, orig_dst, pick)?;
            (
                Some(picked.endpoint),
                picked.addr,
                Some(svc.hostname.clone()),
            )
        }
        None => (snap.workload_by_ip(orig_dst.ip()), orig_dst, None),
    };
    match dest {
        Some(dest) if dest.uid != source.uid && snap.accepts_hbone(dest) => Ok(Route::Hbone {
            via: SocketAddr::new(dst.ip(), HBONE_PORT),
            authority: dst,
            expect: dest.identity(),
            forwarded_host: host,
            dest: dest.clone(),
            source,
        }),
        _ => Ok(Route::Passthrough { source, dst }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_model::config;

    const DEMO: &str = include_str!("../examples/demo-config.yaml");

    /// One line per route, so the table below reads like the design's table.
    fn describe(r: &Route) -> String {
        let host = |h: &Option<String>| h.clone().unwrap_or_else(|| "-".into());
        match r {
            Route::Local {
                dest,
                dst,
                forwarded_host,
                ..
            } => format!("local {} {dst} host={}", dest.uid, host(forwarded_host)),
            Route::Hbone {
                via,
                authority,
                expect,
                forwarded_host,
                ..
            } => format!(
                "hbone via={via} auth={authority} expect={} host={}",
                expect.service_account(),
                host(forwarded_host)
            ),
            Route::Waypoint {
                via,
                authority,
                expect,
                forwarded_host,
                ..
            } => format!(
                "waypoint via={via} auth={authority} expect={} host={}",
                expect.service_account(),
                host(forwarded_host)
            ),
            Route::Passthrough { dst, .. } => format!("passthrough {dst}"),
        }
    }

    #[test]
    fn routes_from_frontend_on_node1() {
        let snap = config::parse(DEMO).unwrap();
        let src: IpAddr = "10.1.1.10".parse().unwrap();
        let cases: &[(&str, usize, &str)] = &[
            // Service VIP: endpoint by pick (sorted by uid), port 80 -> 8080.
            (
                "10.96.0.10:80",
                0,
                "local shop/cart-1 10.1.1.11:8080 host=cart.shop.svc.cluster.local",
            ),
            (
                "10.96.0.10:80",
                1,
                "hbone via=10.1.2.11:15008 auth=10.1.2.11:8080 expect=cart host=cart.shop.svc.cluster.local",
            ),
            (
                "10.96.0.10:80",
                5,
                "hbone via=10.1.2.12:15008 auth=10.1.2.12:8080 expect=cart host=cart.shop.svc.cluster.local",
            ),
            // A pod dialled directly: no port mapping, no forwarded host.
            ("10.1.1.11:8080", 0, "local shop/cart-1 10.1.1.11:8080 host=-"),
            (
                "10.1.2.11:9000",
                0,
                "hbone via=10.1.2.11:15008 auth=10.1.2.11:9000 expect=cart host=-",
            ),
            // bank uses a waypoint: the authority is what was dialled.
            (
                "10.96.0.20:443",
                0,
                "waypoint via=10.1.1.30:15008 auth=10.96.0.20:443 expect=waypoint host=ledger.bank.svc.cluster.local",
            ),
            (
                "10.1.2.20:8443",
                0,
                "waypoint via=10.1.1.30:15008 auth=10.1.2.20:8443 expect=waypoint host=-",
            ),
            // Not in the mesh.
            ("10.1.1.40:80", 0, "passthrough 10.1.1.40:80"),
            ("10.1.1.30:15021", 0, "passthrough 10.1.1.30:15021"),
            ("8.8.8.8:443", 0, "passthrough 8.8.8.8:443"),
        ];
        for (dst, pick, want) in cases {
            let route = classify(&snap, src, dst.parse().unwrap(), "node1", *pick).unwrap();
            assert_eq!(describe(&route), *want, "{dst} pick={pick}");
            assert_eq!(route.source().name, "frontend");
        }
    }

    #[test]
    fn the_same_endpoint_is_remote_from_the_other_node() {
        let snap = config::parse(DEMO).unwrap();
        let src: IpAddr = "10.1.2.11".parse().unwrap(); // cart-2 on node2
        let route = classify(&snap, src, "10.1.1.11:8080".parse().unwrap(), "node2", 0).unwrap();
        assert_eq!(
            describe(&route),
            "hbone via=10.1.1.11:15008 auth=10.1.1.11:8080 expect=cart host=-"
        );
        let route = classify(&snap, src, "10.1.2.12:8080".parse().unwrap(), "node2", 0).unwrap();
        assert_eq!(describe(&route), "local shop/cart-3 10.1.2.12:8080 host=-");
    }

    #[test]
    fn errors() {
        // The demo file plus a Service that selects nothing.
        let extra = DEMO.replace(
            "services:\n",
            "services:\n  - {name: empty, namespace: shop, vip: 10.96.0.99, ports: [{port: 80}]}\n",
        );
        let snap = config::parse(&extra).unwrap();
        let cases: &[(&str, &str, &str, ClassifyError)] = &[
            (
                "10.9.9.9",
                "10.96.0.10:80",
                "node1",
                ClassifyError::UnknownSource("10.9.9.9".parse().unwrap()),
            ),
            // legacy is not ambient, and the waypoint pod opted out.
            (
                "10.1.1.40",
                "10.96.0.10:80",
                "node1",
                ClassifyError::UnknownSource("10.1.1.40".parse().unwrap()),
            ),
            (
                "10.1.1.30",
                "10.96.0.10:80",
                "node1",
                ClassifyError::UnknownSource("10.1.1.30".parse().unwrap()),
            ),
            (
                "10.1.2.11",
                "10.96.0.10:80",
                "node1",
                ClassifyError::SourceNotLocal {
                    src: "10.1.2.11".parse().unwrap(),
                    node: "node2".into(),
                },
            ),
            (
                "10.1.1.10",
                "10.96.0.10:81",
                "node1",
                ClassifyError::UnknownServicePort {
                    service: "shop/cart".into(),
                    port: 81,
                },
            ),
            (
                "10.1.1.10",
                "10.96.0.99:80",
                "node1",
                ClassifyError::NoEndpoints {
                    service: "shop/empty".into(),
                },
            ),
        ];
        for (src, dst, node, want) in cases {
            let got = classify(&snap, src.parse().unwrap(), dst.parse().unwrap(), node, 0);
            assert_eq!(got.as_ref().unwrap_err(), want, "{src} -> {dst}");
        }
        assert_eq!(cases[3].3.reason(), "source_not_local");
    }

    fn served_pod(workload: &str, node: &str) -> ServedPod {
        ServedPod {
            workload: workload.parse().unwrap(),
            node: node.into(),
        }
    }

    /// A sidecar's capture listeners (outbound, inbound plaintext).
    const PROXY_PORTS: &[u16] = &[15001, 15006];

    const SIDECARS: &str = r#"
nodes: [{name: node1, ip: 10.0.0.1}, {name: node2, ip: 10.0.0.2}]
namespaces:
  - {name: mesh}
  - {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
  - {name: legacy}
workloads:
  - {name: client, namespace: mesh, serviceAccount: client, ip: 10.1.1.10, node: node1, labels: {security.istio.io/tlsMode: istio}}
  - {name: server, namespace: mesh, serviceAccount: server, ip: 10.1.2.10, node: node2, labels: {app: server, security.istio.io/tlsMode: istio}}
  - {name: amb, namespace: shop, serviceAccount: amb, ip: 10.1.2.11, node: node2}
  - {name: wp, namespace: shop, serviceAccount: wp, ip: 10.1.1.30, node: node1, labels: {istio.io/dataplane-mode: none}}
  - {name: plain, namespace: legacy, ip: 10.1.1.40, node: node1, labels: {app: plain}}
  - {name: native, namespace: legacy, serviceAccount: native, ip: 10.1.1.41, node: node1, nativeTunnel: true}
  - {name: optout, namespace: legacy, ip: 10.1.1.42, node: node1, nativeTunnel: false, labels: {security.istio.io/tlsMode: istio}}
  - {name: both, namespace: shop, serviceAccount: both, ip: 10.1.2.13, node: node2, labels: {security.istio.io/tlsMode: istio, istio.io/use-waypoint: none}}
  - {name: amb2, namespace: shop, serviceAccount: amb2, ip: 10.1.2.14, node: node2, labels: {istio.io/use-waypoint: none}}
services:
  - {name: server, namespace: mesh, vip: 10.96.0.10, ports: [{port: 80, targetPort: 8080}], selector: {app: server}}
  - {name: plain, namespace: legacy, vip: 10.96.0.40, ports: [{port: 80, targetPort: 8080}], selector: {app: plain}}
  - {name: empty, namespace: mesh, vip: 10.96.0.99, ports: [{port: 80}]}
"#;

    #[test]
    fn sidecar_routes_from_client() {
        let snap = config::parse(SIDECARS).unwrap();
        let served = served_pod("mesh/client", "node1");
        let cases: &[(&str, &str)] = &[
            // A sidecar pod (tlsMode label, so native_tunnel): HBONE to
            // its own 15008.
            (
                "10.1.2.10:8080",
                "hbone via=10.1.2.10:15008 auth=10.1.2.10:8080 expect=server host=-",
            ),
            // Its VIP: endpoint picked, port mapped, host forwarded.
            (
                "10.96.0.10:80",
                "hbone via=10.1.2.10:15008 auth=10.1.2.10:8080 expect=server host=server.mesh.svc.cluster.local",
            ),
            // An ambient pod: HBONE to it directly, its waypoint ignored.
            (
                "10.1.2.11:9000",
                "hbone via=10.1.2.11:15008 auth=10.1.2.11:9000 expect=amb host=-",
            ),
            // native_tunnel set explicitly, or in an ambient namespace.
            (
                "10.1.1.41:80",
                "hbone via=10.1.1.41:15008 auth=10.1.1.41:80 expect=native host=-",
            ),
            (
                "10.1.2.13:80",
                "hbone via=10.1.2.13:15008 auth=10.1.2.13:80 expect=both host=-",
            ),
            // The label overridden with nativeTunnel: false: not meshed.
            ("10.1.1.42:80", "passthrough 10.1.1.42:80"),
            // The waypoint pod opted out: not meshed.
            ("10.1.1.30:15008", "passthrough 10.1.1.30:15008"),
            // Outside the mesh: plain TCP, to the endpoint for a VIP.
            ("10.1.1.40:80", "passthrough 10.1.1.40:80"),
            ("10.96.0.40:80", "passthrough 10.1.1.40:8080"),
            ("8.8.8.8:443", "passthrough 8.8.8.8:443"),
            // The served pod itself, and its other proxy-looking ports.
            ("10.1.1.10:8080", "passthrough 10.1.1.10:8080"),
            ("10.1.1.10:15008", "passthrough 10.1.1.10:15008"),
            // Another pod's 15001 is not ours.
            ("10.1.1.40:15001", "passthrough 10.1.1.40:15001"),
        ];
        for (dst, want) in cases {
            let route =
                classify_sidecar(&snap, &served, dst.parse().unwrap(), PROXY_PORTS, 0).unwrap();
            assert_eq!(describe(&route), *want, "{dst}");
            assert_eq!(route.source().name, "client", "{dst}");
        }
        // A plain pod with a sidecar still tunnels to meshed destinations.
        let plain = served_pod("legacy/plain", "node1");
        let route = classify_sidecar(
            &snap,
            &plain,
            "10.1.2.10:8080".parse().unwrap(),
            PROXY_PORTS,
            0,
        )
        .unwrap();
        assert_eq!(
            describe(&route),
            "hbone via=10.1.2.10:15008 auth=10.1.2.10:8080 expect=server host=-"
        );
    }

    /// An ambient client (node mode) reaching pods that run their own
    /// sidecar: HBONE straight to the pod's 15008 with its identity, never
    /// the in-process path, even on the same node or in an ambient
    /// namespace.
    #[test]
    fn ambient_client_to_native_tunnel_pods() {
        let snap = config::parse(SIDECARS).unwrap();
        let src: IpAddr = "10.1.2.14".parse().unwrap(); // amb2 on node2
        let cases: &[(&str, &str)] = &[
            // Same node as the client.
            (
                "10.1.2.10:8080",
                "hbone via=10.1.2.10:15008 auth=10.1.2.10:8080 expect=server host=-",
            ),
            (
                "10.96.0.10:80",
                "hbone via=10.1.2.10:15008 auth=10.1.2.10:8080 expect=server host=server.mesh.svc.cluster.local",
            ),
            (
                "10.1.2.13:80",
                "hbone via=10.1.2.13:15008 auth=10.1.2.13:80 expect=both host=-",
            ),
            // The other node.
            (
                "10.1.1.10:8080",
                "hbone via=10.1.1.10:15008 auth=10.1.1.10:8080 expect=client host=-",
            ),
            (
                "10.1.1.41:80",
                "hbone via=10.1.1.41:15008 auth=10.1.1.41:80 expect=native host=-",
            ),
            // An ambient pod on this node stays local; no sidecar, no mesh.
            ("10.1.2.11:9000", "waypoint via=10.1.1.30:15008 auth=10.1.2.11:9000 expect=wp host=-"),
            ("10.1.1.42:80", "passthrough 10.1.1.42:80"),
            ("10.1.1.40:80", "passthrough 10.1.1.40:80"),
        ];
        for (dst, want) in cases {
            let route = classify(&snap, src, dst.parse().unwrap(), "node2", 0).unwrap();
            assert_eq!(describe(&route), *want, "{dst}");
        }
        let route = classify(&snap, src, "10.1.2.14:80".parse().unwrap(), "node2", 0).unwrap();
        assert_eq!(describe(&route), "local shop/amb2 10.1.2.14:80 host=-");
        // A pod with its own sidecar is no node ztunnel's source.
        for (src, node) in [("10.1.2.13", "node2"), ("10.1.1.10", "node1")] {
            let src: IpAddr = src.parse().unwrap();
            let got = classify(&snap, src, "10.1.2.14:80".parse().unwrap(), node, 0);
            assert_eq!(got, Err(ClassifyError::UnknownSource(src)), "{src}");
        }
    }

    #[test]
    fn sidecar_errors() {
        let snap = config::parse(SIDECARS).unwrap();
        let cases: &[(&str, &str, ClassifyError)] = &[
            (
                "mesh/gone",
                "10.1.2.10:8080",
                ClassifyError::UnknownWorkload("mesh/gone".into()),
            ),
            // A same-named pod on another node is not the served one.
            (
                "mesh/server",
                "10.1.1.40:80",
                ClassifyError::UnknownWorkload("mesh/server".into()),
            ),
            (
                "mesh/client",
                "10.96.0.10:81",
                ClassifyError::UnknownServicePort {
                    service: "mesh/server".into(),
                    port: 81,
                },
            ),
            (
                "mesh/client",
                "10.96.0.99:80",
                ClassifyError::NoEndpoints {
                    service: "mesh/empty".into(),
                },
            ),
            // Its own capture listeners, on its IP or loopback: a loop.
            (
                "mesh/client",
                "10.1.1.10:15001",
                ClassifyError::OwnListener("10.1.1.10:15001".parse().unwrap()),
            ),
            (
                "mesh/client",
                "10.1.1.10:15006",
                ClassifyError::OwnListener("10.1.1.10:15006".parse().unwrap()),
            ),
            (
                "mesh/client",
                "127.0.0.1:15001",
                ClassifyError::OwnListener("127.0.0.1:15001".parse().unwrap()),
            ),
        ];
        for (served, dst, want) in cases {
            let served = served_pod(served, "node1");
            let got = classify_sidecar(&snap, &served, dst.parse().unwrap(), PROXY_PORTS, 0);
            assert_eq!(got.as_ref().unwrap_err(), want, "{served} -> {dst}");
        }
        assert_eq!(cases[0].2.reason(), "unknown_source");
        assert_eq!(cases[4].2.reason(), "own_listener");
    }

    proptest::proptest! {
        #[test]
        fn classify_never_panics(
            src in proptest::sample::select(vec!["10.1.1.10", "10.1.1.11", "10.1.2.11", "10.9.9.9"]),
            dst in proptest::sample::select(vec!["10.96.0.10", "10.96.0.20", "10.1.2.20", "10.1.1.40", "1.2.3.4"]),
            port: u16,
            pick: usize,
            node in proptest::sample::select(vec!["node1", "node2", "elsewhere"]),
        ) {
            let snap = config::parse(DEMO).unwrap();
            let dst = SocketAddr::new(dst.parse().unwrap(), port);
            let _ = classify(&snap, src.parse().unwrap(), dst, node, pick);
        }
    }
}
