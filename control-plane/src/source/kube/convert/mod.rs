//! Pure conversion: Kubernetes objects → what the mesh holds of them.
//!
//! Two steps, both plain functions:
//! 1. each watched object → a small `*Info` of the fields the mesh reads
//!    ([`pod_info`], [`service_info`], ...). The index stores these, and
//!    compares them: a pod status update that changes nothing the mesh
//!    reads (a container restart count) costs one comparison;
//! 2. infos → [`mesh_model::input::Object`]s ([`workload`], [`service`],
//!    [`namespace`]; policies in [`policy`]). A workload needs its
//!    namespace's labels (ambient enrolment); a service its EndpointSlices
//!    and the pods they name (readiness) or its selector selects (named
//!    target ports).
//!
//! ```text
//!  [ Namespace ]──labels──►[ Pod ]◄──targetRef──[ EndpointSlice ]──service-name──►[ Service ]
//!        ▲                    ▲                                                   │ named targetPort
//!  [ PeerAuthentication ]     └───────────────────── selector ─────────────────────┘
//! ```
//!
//! Kubernetes types stop here: `mesh-model` never sees them.

pub mod policy;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
pub mod waypoint;
#[cfg(test)]
mod waypoint_tests;

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_model::state::{
    default_tunnel, labels_match, AppProtocol, Labels, MtlsMode, Namespace, Service, ServicePort,
    Workload, DATAPLANE_MODE_LABEL, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL,
};

/// Istio's default cluster ID, the first part of a workload uid.
pub const CLUSTER_ID: &str = "Kubernetes";
/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Service account of a pod that names none.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A pod's workload uid, as Istio forms it: `Kubernetes//Pod/<ns>/<name>`
/// (an EndpointSlice's `targetRef` names the pod the same way).
pub fn workload_uid(namespace: &str, name: &str) -> String {
    format!("{CLUSTER_ID}//Pod/{namespace}/{name}")
}

/// `(namespace, name)` of a namespaced object.
pub type ObjectName = (String, String);

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    meta.name.clone().filter(|n| !n.is_empty())
}

pub(super) fn namespaced(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ObjectName> {
    Some((meta.namespace.clone()?, name_of(meta)?))
}

/// What the mesh reads of a Namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    /// Only the labels the mesh reads ([`MESH_NAMESPACE_LABELS`]): another
    /// label's change costs nothing.
    pub labels: Labels,
}

/// The namespace labels the mesh reads: ambient enrolment and waypoints.
pub const MESH_NAMESPACE_LABELS: [&str; 3] = [
    DATAPLANE_MODE_LABEL,
    USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL,
];

pub fn namespace_info(ns: &KubeNamespace) -> Option<NamespaceInfo> {
    let labels = ns
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| MESH_NAMESPACE_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(NamespaceInfo {
        name: name_of(&ns.metadata)?,
        labels,
    })
}

/// The mesh's namespace: its labels and its PeerAuthentication mode.
pub fn namespace(info: &NamespaceInfo, mtls: MtlsMode) -> Namespace {
    Namespace {
        name: info.name.clone(),
        labels: info.labels.clone(),
        mtls,
    }
}

/// What the mesh reads of a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `status.podIPs` (else `status.podIP`), the primary first.
    pub ips: Vec<IpAddr>,
    pub node: String,
    pub service_account: String,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// Neither finished (`Succeeded`, `Failed`) nor of unknown phase.
    pub live: bool,
    /// Shares its node's network: not a workload of its own.
    pub host_network: bool,
    /// Named TCP container ports, for Services' named `targetPort`s.
    pub named_ports: BTreeMap<String, u16>,
}

pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let (namespace, name) = namespaced(&pod.metadata)?;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    // Istio keeps a Pending pod that has an IP (its init containers may
    // need the mesh); a finished pod is gone.
    let live = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Running" | "Pending")
    );
    let named_ports = spec
        .into_iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    Some(PodInfo {
        namespace,
        name,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips,
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned()),
        ready,
        live,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        named_ports,
    })
}

/// The pod as a workload, or `None` when it is not one: finished, not
/// yet given an IP or a node, or on the host network (its IP is its
/// node's, shared with every other such pod; Istio leaves these out of
/// ambient too). `namespace_labels` decide ambient enrolment, with the
/// same defaulting as the file config ([`default_tunnel`]).
pub fn workload(pod: &PodInfo, namespace_labels: &Labels, trust_domain: &str) -> Option<Workload> {
    if !pod.live || pod.host_network || pod.ips.is_empty() || pod.node.is_empty() {
        return None;
    }
    let (tunnel, native_tunnel) = default_tunnel(namespace_labels, &pod.labels);
    Some(Workload {
        uid: workload_uid(&pod.namespace, &pod.name),
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        service_account: pod.service_account.clone(),
        trust_domain: trust_domain.to_owned(),
        ips: pod.ips.clone(),
        node: pod.node.clone(),
        tunnel,
        native_tunnel,
        labels: pod.labels.clone(),
        waypoint: None,
        authorization_policies: Vec::new(),
    })
}

/// A Service port's `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved against the selected pods.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub port: u16,
    pub target: TargetPort,
    /// Declared by `appProtocol`, else by the port name's prefix
    /// (`http-web`), as Istio reads them; what the waypoint speaks.
    pub app_protocol: Option<AppProtocol>,
}

/// What the mesh reads of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `spec.clusterIPs` (else `spec.clusterIP`); empty when headless.
    pub vips: Vec<IpAddr>,
    /// TCP ports only: the mesh carries TCP.
    pub ports: Vec<PortInfo>,
    /// The Kubernetes selector, used only to resolve named target ports
    /// (endpoints come from EndpointSlices).
    pub selector: Labels,
    pub publish_not_ready: bool,
    /// `type: ExternalName`: a DNS alias, not a mesh service.
    pub external_name: bool,
}

impl ServiceInfo {
    /// Whether a named target port makes this Service depend on its pods'
    /// container ports.
    pub fn has_named_ports(&self) -> bool {
        self.ports
            .iter()
            .any(|p| matches!(p.target, TargetPort::Named(_)))
    }
}

pub fn service_info(svc: &KubeService) -> Option<ServiceInfo> {
    let (namespace, name) = namespaced(&svc.metadata)?;
    let spec = svc.spec.clone().unwrap_or_default();
    let mut ips: Vec<String> = spec.cluster_ips.unwrap_or_default();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip);
    }
    let vips = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    let ports = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
            let target = match p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => {
                    TargetPort::Number(u16::try_from(n).ok().filter(|n| *n != 0)?)
                }
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) if n != 0 => TargetPort::Number(n),
                    _ => TargetPort::Named(s),
                },
            };
            Some(PortInfo {
                port,
                target,
                app_protocol: AppProtocol::declared(p.app_protocol.as_deref(), p.name.as_deref()),
            })
        })
        .collect();
    Some(ServiceInfo {
        namespace,
        name,
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        vips,
        ports,
        selector: spec.selector.unwrap_or_default(),
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        external_name: spec.type_.as_deref() == Some("ExternalName"),
    })
}

/// One endpoint of an EndpointSlice that names a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub pod: String,
    /// `conditions.ready`, which Kubernetes defines as true when unset.
    pub ready: bool,
}

/// What the mesh reads of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub namespace: String,
    pub name: String,
    /// Its `kubernetes.io/service-name` label.
    pub service: Option<String>,
    pub endpoints: Vec<SliceEndpoint>,
}

pub fn slice_info(slice: &EndpointSlice) -> Option<SliceInfo> {
    let (namespace, name) = namespaced(&slice.metadata)?;
    let endpoints = slice
        .endpoints
        .iter()
        .filter_map(|e| {
            let target = e.target_ref.as_ref()?;
            if target.kind.as_deref() != Some("Pod") {
                return None;
            }
            if target
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != namespace)
            {
                return None;
            }
            Some(SliceEndpoint {
                pod: target.name.clone()?,
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            })
        })
        .collect();
    Some(SliceInfo {
        service: slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL).cloned()),
        namespace,
        name,
        endpoints,
    })
}

/// The mesh's service, or `None` for an ExternalName Service.
///
/// - endpoints: the pods its EndpointSlices list as ready, and (unless
///   `publishNotReadyAddresses`) whose own `Ready` condition, when the pod
///   is known, agrees: a pod going unready leaves at once, before the
///   EndpointSlice controller catches up. The mesh's selector stays
///   empty, so readiness decides;
/// - a named `targetPort` resolves to the first of `selected` (pods of
///   its namespace, in name order) that declares a TCP container port of
///   that name; a port none declares is left out (nothing could take it).
///   The mesh holds one target port per Service port, where Istio sends one
///   per workload: pods that number the same name differently all get the
///   first one's number.
pub fn service<'a>(
    svc: &ServiceInfo,
    slices: impl IntoIterator<Item = &'a SliceInfo>,
    pod: impl Fn(&str) -> Option<&'a PodInfo>,
    selected: impl IntoIterator<Item = &'a PodInfo>,
) -> Option<Service> {
    if svc.external_name {
        return None;
    }
    let mut endpoint_uids: Vec<String> = slices
        .into_iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.ready)
        .filter(|e| svc.publish_not_ready || pod(&e.pod).is_none_or(|p| p.ready))
        .map(|e| workload_uid(&svc.namespace, &e.pod))
        .collect();
    endpoint_uids.sort();
    endpoint_uids.dedup();
    let ports = resolve_ports(svc, selected);
    Some(Service {
        name: svc.name.clone(),
        namespace: svc.namespace.clone(),
        hostname: Service::fqdn(&svc.name, &svc.namespace),
        vips: svc.vips.clone(),
        ports,
        selector: Labels::new(),
        endpoint_uids,
        labels: svc.labels.clone(),
        waypoint: None,
    })
}

fn resolve_ports<'a>(
    svc: &ServiceInfo,
    selected: impl IntoIterator<Item = &'a PodInfo>,
) -> Vec<ServicePort> {
    let named: Vec<&PodInfo> = if svc.has_named_ports() && !svc.selector.is_empty() {
        selected
            .into_iter()
            .filter(|p| p.namespace == svc.namespace && labels_match(&svc.selector, &p.labels))
            .collect()
    } else {
        Vec::new()
    };
    svc.ports
        .iter()
        .filter_map(|p| {
            let target_port = match &p.target {
                TargetPort::Number(n) => *n,
                TargetPort::Named(name) => {
                    *named.iter().find_map(|pod| pod.named_ports.get(name))?
                }
            };
            Some(ServicePort {
                port: p.port,
                target_port,
                app_protocol: p.app_protocol,
            })
        })
        .collect()
}
