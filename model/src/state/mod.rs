//! Domain types for the mesh as ztunnel sees it, and the immutable
//! [`Snapshot`] that indexes them.
//!
//! These types are what every pure decision (`classify`, `authorize`) works
//! on. They are produced from the local YAML file ([`crate::config`]) or from
//! xDS, and never carry generated protobuf types.

mod authz;
mod cidr;
mod delta;
mod l7;
mod protocol;
mod pset;
mod scope;
mod snapshot;
#[cfg(test)]
mod tests;
mod waypoint;

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::identity::SpiffeId;

/// Serializes a value by its `Display` form (identities, CIDRs).
pub(crate) fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub use authz::{
    Clause, Match, Policies, Policy, PolicyAction, PolicyKey, PolicyScope, Rule,
    ServiceAccountMatch, StringMatch,
};
pub use cidr::{Cidr, CidrError};
pub use delta::SnapshotDelta;
pub use protocol::AppProtocol;
pub use pset::{Iter as PSetIter, Keyed, PSet};
pub use scope::{Scope, ServedPod, WorkloadName, WorkloadNameError};
pub(crate) use snapshot::WaypointResolver;
pub use snapshot::{SharedParts, Snapshot, SnapshotParts, StateError};
pub use waypoint::{MissingWaypoint, UseWaypoint, Waypoint};

/// Kubernetes-style labels. Ordered so that dumps and tests are stable.
pub type Labels = BTreeMap<String, String>;

/// Namespace (and pod) label that enrols workloads in ambient mode.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Value of [`DATAPLANE_MODE_LABEL`] on a namespace that enrols its pods.
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
/// Value of [`DATAPLANE_MODE_LABEL`] on a pod that opts out.
pub const DATAPLANE_MODE_NONE: &str = "none";
/// Pod label Istio's sidecar injector sets on pods with a sidecar. The
/// local config turns it into [`Workload::native_tunnel`]; labels do not
/// travel over xDS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Value of [`TLS_MODE_LABEL`] on a pod that accepts mutual TLS (HBONE
/// from our sidecars).
pub const TLS_MODE_ISTIO: &str = "istio";
/// Label on a namespace, Service or pod naming the waypoint to use.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Optional companion of [`USE_WAYPOINT_LABEL`]: the waypoint's namespace
/// when it is not the labelled object's own.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// Value of [`USE_WAYPOINT_LABEL`] that opts a pod or Service out of a
/// namespace-wide waypoint.
pub const USE_WAYPOINT_NONE: &str = "none";
/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// DNS suffix of Service hostnames: `<name>.<ns>.svc.<domain>`.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// How a workload receives mesh traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Tunnel {
    /// Plain TCP: not in the mesh.
    #[default]
    None,
    /// HBONE on port 15008.
    Hbone,
}

/// Whether a namespace accepts plaintext inbound traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum MtlsMode {
    /// Plaintext inbound (port 15006) is allowed, subject to policy.
    #[default]
    Permissive,
    /// Plaintext inbound is denied.
    Strict,
}

/// A node running one ztunnel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
}

/// A namespace: its labels decide ambient enrolment and the default waypoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
    pub mtls: MtlsMode,
}

/// A pod (or VM) that can send or receive traffic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Workload {
    /// Unique key; `<namespace>/<name>` when the source gives none.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    /// At least one address for a routable pod; the first is the primary.
    pub ips: Vec<IpAddr>,
    /// Name of the node the pod runs on.
    pub node: String,
    pub tunnel: Tunnel,
    /// The pod's own proxy (a sidecar) terminates HBONE on its 15008 (xDS
    /// `native_tunnel`). Node ztunnels must not capture such a pod, and
    /// send it HBONE directly, as sidecars do; see
    /// [`Snapshot::is_ambient`] and [`Snapshot::accepts_hbone`].
    pub native_tunnel: bool,
    pub labels: Labels,
    /// The waypoint for traffic addressed to this pod: ready, or named but
    /// missing (traffic that must cross it is refused, never sent around
    /// it). When built from labels, [`Snapshot::build`] fills this in.
    pub waypoint: Option<UseWaypoint>,
    /// The `WORKLOAD_SELECTOR` policies that select this workload, as the
    /// control plane resolved them (xDS `authorization_policies`); the local
    /// config resolves selectors into this list when it is parsed.
    pub authorization_policies: Vec<PolicyKey>,
}

impl Workload {
    /// `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    ///
    /// Falls back to the `default` service account if the stored one is not a
    /// valid SPIFFE segment; [`Snapshot::build`] rejects such workloads, so
    /// the fallback is never observed for workloads in a snapshot.
    pub fn identity(&self) -> SpiffeId {
        SpiffeId::new(&self.trust_domain, &self.namespace, &self.service_account)
            .or_else(|_| SpiffeId::new(DEFAULT_TRUST_DOMAIN, "default", "default"))
            .expect("constant identity is valid")
    }

    /// The first address, used when a pod must be named by one IP.
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.ips.first().copied()
    }

    /// `<namespace>/<name>`, for logs and errors.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A port a Service exposes, and the pod port it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
    /// The declared protocol; `None`: undeclared (the waypoint detects).
    pub app_protocol: Option<AppProtocol>,
}

/// A Kubernetes Service: virtual IPs load-balanced over endpoint pods.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// `<name>.<namespace>.svc.cluster.local`; sent as the `forwarded` host.
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Pods in the same namespace whose labels include all of these are
    /// endpoints. Empty selects nothing (as in Kubernetes).
    pub selector: Labels,
    /// Endpoints named explicitly by workload uid (as xDS sends them).
    pub endpoint_uids: Vec<String>,
    /// The Service's own labels (for [`USE_WAYPOINT_LABEL`]).
    pub labels: Labels,
    /// The waypoint for traffic addressed to a VIP (ready or missing, as
    /// for [`Workload::waypoint`]). When built from labels,
    /// [`Snapshot::build`] fills this in.
    pub waypoint: Option<UseWaypoint>,
}

impl Service {
    /// The standard hostname for a Service in `namespace`.
    pub fn fqdn(name: &str, namespace: &str) -> String {
        format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
    }

    /// The target port for `port`, if the Service exposes it.
    pub fn target_port(&self, port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.port == port)
            .map(|p| p.target_port)
    }

    /// `<namespace>/<name>`, for logs and errors.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// True when every `selector` label is present with the same value.
/// The `WORKLOAD_SELECTOR` policies (in `w`'s namespace) whose labels
/// select `w`, sorted: what the control plane sends as the workload's
/// `authorization_policies`.
pub fn selected_policies<'a>(
    policies: impl IntoIterator<Item = &'a Policy>,
    w: &Workload,
) -> Vec<PolicyKey> {
    let mut keys: Vec<PolicyKey> = policies
        .into_iter()
        .filter(|p| match &p.scope {
            PolicyScope::WorkloadSelector { match_labels } => {
                p.namespace == w.namespace && labels_match(match_labels, &w.labels)
            }
            _ => false,
        })
        .map(Policy::key)
        .collect();
    keys.sort();
    keys
}

pub fn labels_match(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Ambient enrolment from labels: the namespace says
/// `istio.io/dataplane-mode=ambient` and the pod does not say `none`.
pub fn ambient_enrolled(namespace_labels: &Labels, pod_labels: &Labels) -> bool {
    let mode = |l: &Labels| {
        l.get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some(DATAPLANE_MODE_AMBIENT)
    };
    let opted_out =
        pod_labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some(DATAPLANE_MODE_NONE);
    mode(namespace_labels) && !opted_out
}

/// Istio's injector labels a pod with a sidecar `security.istio.io/tlsMode:
/// istio`; that sidecar terminates HBONE itself ([`Workload::native_tunnel`]).
pub fn has_sidecar(pod_labels: &Labels) -> bool {
    pod_labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_ISTIO)
}

/// A workload's tunnel and `native_tunnel` when its source says nothing
/// more than labels (the file config without `tunnel`/`nativeTunnel`, and
/// every Kubernetes pod): HBONE for a pod enrolled in ambient
/// ([`ambient_enrolled`]) or with its own sidecar ([`has_sidecar`]).
pub fn default_tunnel(namespace_labels: &Labels, pod_labels: &Labels) -> (Tunnel, bool) {
    let native = has_sidecar(pod_labels);
    let tunnel = if native || ambient_enrolled(namespace_labels, pod_labels) {
        Tunnel::Hbone
    } else {
        Tunnel::None
    };
    (tunnel, native)
}
