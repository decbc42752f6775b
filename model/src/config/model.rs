//! The YAML document, as serde sees it. Field names follow Kubernetes and
//! Istio (`serviceAccount`, `targetPort`, `matchLabels`, `notPrincipals`).
//! Unknown keys are rejected so typos fail loudly.

use serde::Deserialize;

use super::l7policy::{ConditionDoc, TargetRefDoc};
use crate::state::Labels;

#[derive(Debug, Deserialize, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct File {
    #[serde(default)]
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub root_namespace: Option<String>,
    #[serde(default)]
    pub nodes: Vec<NodeDoc>,
    #[serde(default)]
    pub namespaces: Vec<NamespaceDoc>,
    #[serde(default)]
    pub workloads: Vec<WorkloadDoc>,
    #[serde(default)]
    pub services: Vec<ServiceDoc>,
    #[serde(default)]
    pub policies: Vec<PolicyDoc>,
    /// HTTPRoutes and GRPCRoutes (`config/route_doc.rs`).
    #[serde(default)]
    pub routes: Vec<super::route_doc::RouteDoc>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeDoc {
    pub name: String,
    pub ip: String,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq)]
pub(super) enum MtlsDoc {
    #[serde(rename = "STRICT")]
    Strict,
    #[serde(rename = "PERMISSIVE")]
    #[default]
    Permissive,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct NamespaceDoc {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub mtls: MtlsDoc,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq)]
pub(super) enum TunnelDoc {
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "HBONE")]
    Hbone,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct WorkloadDoc {
    #[serde(default)]
    pub uid: Option<String>,
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub service_account: Option<String>,
    pub ip: String,
    /// More addresses of the pod after `ip` (a dual-stack pod's IPv6).
    #[serde(default)]
    pub extra_ips: Vec<String>,
    pub node: String,
    #[serde(default)]
    pub labels: Labels,
    /// Default: HBONE for ambient pods and for pods with `nativeTunnel`,
    /// NONE otherwise.
    #[serde(default)]
    pub tunnel: Option<TunnelDoc>,
    /// The pod runs its own sidecar, which terminates HBONE on its 15008
    /// (xDS `native_tunnel`): node ztunnels do not capture it. Default:
    /// true when the pod is labelled `security.istio.io/tlsMode: istio`.
    #[serde(default)]
    pub native_tunnel: Option<bool>,
}

/// A port number, written as a number or (as Istio does) a string.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(untagged)]
pub(super) enum PortDoc {
    Number(i64),
    Text(String),
}

impl std::fmt::Display for PortDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortDoc::Number(n) => write!(f, "{n}"),
            PortDoc::Text(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ServicePortDoc {
    pub port: PortDoc,
    /// Default: the same as `port`.
    #[serde(default)]
    pub target_port: Option<PortDoc>,
    /// Istio reads the protocol from a name prefix (`http-web`, `grpc`).
    #[serde(default)]
    pub name: Option<String>,
    /// Kubernetes `appProtocol` (`http`, `kubernetes.io/h2c`, `grpc`, …).
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceDoc {
    pub name: String,
    pub namespace: String,
    pub vip: String,
    #[serde(default)]
    pub ports: Vec<ServicePortDoc>,
    #[serde(default)]
    pub selector: Labels,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq)]
pub(super) enum ActionDoc {
    #[serde(rename = "ALLOW")]
    #[default]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct SelectorDoc {
    #[serde(default)]
    pub match_labels: Labels,
}

/// Istio's `AuthorizationPolicy` (L4 subset): `spec` flattened into the
/// entry, alongside `name` and `namespace`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyDoc {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub selector: Option<SelectorDoc>,
    #[serde(default)]
    pub action: ActionDoc,
    #[serde(default)]
    pub rules: Vec<RuleDoc>,
    /// The waypoint's policies (`config/l7policy.rs`).
    #[serde(default, rename = "targetRefs")]
    pub target_refs: Vec<TargetRefDoc>,
    #[serde(default, rename = "targetRef")]
    pub target_ref: Option<TargetRefDoc>,
}

#[derive(Debug, Deserialize, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleDoc {
    #[serde(default)]
    pub from: Vec<FromDoc>,
    #[serde(default)]
    pub to: Vec<ToDoc>,
    /// L7 only.
    #[serde(default)]
    pub when: Vec<ConditionDoc>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct FromDoc {
    pub source: SourceDoc,
}

#[derive(Debug, Deserialize, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct SourceDoc {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// L7 only (as every field below).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct ToDoc {
    pub operation: OperationDoc,
}

#[derive(Debug, Deserialize, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct OperationDoc {
    #[serde(default)]
    pub ports: Vec<PortDoc>,
    #[serde(default)]
    pub not_ports: Vec<PortDoc>,
    /// L7 only (as every field below).
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}
