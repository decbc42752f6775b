//! Where an outbound connection goes: the routing decision for a connection
//! captured on port 15001. Pure: no I/O, no clock, no locks.
//!
//! | Destination | Route |
//! |---|---|
//! | Service VIP or pod with a waypoint | [`Route::Waypoint`]: HBONE to the waypoint, `:authority` = the original destination |
//! | Service VIP or pod whose waypoint is missing | [`ClassifyError::WaypointMissing`]: refused (`CONNECT`, reason `waypoint_missing`), never sent around the waypoint |
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
use mesh_model::state::{ServedPod, Service, Snapshot, UseWaypoint, Workload};
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
    /// `target` (a Service or pod) uses a waypoint that does not exist or
    /// is not known yet: its traffic is refused rather than sent around
    /// the waypoint's L7 policy.
    #[error(
        "{target} uses waypoint {waypoint}, which is missing; refusing rather than bypassing it"
    )]
    WaypointMissing { target: String, waypoint: String },
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
    pub const REASONS: [&'static str; 6] = [
        "unknown_source",
        "source_not_local",
        "unknown_service_port",
        "no_endpoints",
        "own_listener",
        "waypoint_missing",
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
            ClassifyError::WaypointMissing { .. } => "waypoint_missing",
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
        Some(dest) => target.pod(dest, orig_dst),
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
            return self.waypoint(wp, svc.key(), orig_dst, host);
        }
        let picked = pick_endpoint(self.snap, svc, orig_dst, pick)?;
        Ok(self.direct(picked.endpoint, picked.addr, host))
    }

    /// Traffic addressed to a pod IP: the pod's waypoint applies.
    fn pod(self, dest: &Arc<Workload>, dst: SocketAddr) -> Result<Route, ClassifyError> {
        match &dest.waypoint {
            Some(wp) => self.waypoint(wp, dest.key(), dst, None),
            None => Ok(self.direct(dest, dst, None)),
        }
    }

    /// To `target`'s waypoint, with the original destination as the
    /// authority; refused when the waypoint is missing (never sent around
    /// it: that would skip its L7 policy).
    fn waypoint(
        self,
        wp: &UseWaypoint,
        target: String,
        dst: SocketAddr,
        host: Option<String>,
    ) -> Result<Route, ClassifyError> {
        match wp {
            UseWaypoint::Ready(wp) => Ok(Route::Waypoint {
                source: self.source,
                via: wp.hbone_addr(),
                authority: dst,
                expect: wp.identity.clone(),
                forwarded_host: host,
            }),
            UseWaypoint::Missing(m) => Err(ClassifyError::WaypointMissing {
                target,
                waypoint: m.to_string(),
            }),
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
mod tests;
