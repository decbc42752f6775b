//! The resource types the test API server serves, and the discovery
//! documents (`/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`)
//! that kubectl and kube-rs read to find them.

use serde_json::{json, Value};

/// One served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Has a `status` subresource: a write of the object keeps the stored
    /// status, and `/status` writes only the status.
    pub status: bool,
}

impl ResourceType {
    /// `v1` or `<group>/<version>`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The `kind` of a list of these.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

/// `(group, version)`, `(kind, plural, singular)`, namespaced, short
/// names, has a status subresource.
const fn rt(
    (group, version): (&'static str, &'static str),
    (kind, plural, singular): (&'static str, &'static str, &'static str),
    namespaced: bool,
    short_names: &'static [&'static str],
    status: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        status,
    }
}

/// Everything served. Add a row to serve another type.
#[rustfmt::skip]
pub const RESOURCES: &[ResourceType] = &[
    rt(CORE, ("Namespace", "namespaces", "namespace"), false, &["ns"], true),
    rt(CORE, ("Node", "nodes", "node"), false, &["no"], true),
    rt(CORE, ("Pod", "pods", "pod"), true, &["po"], true),
    rt(CORE, ("Service", "services", "service"), true, &["svc"], true),
    rt(CORE, ("ServiceAccount", "serviceaccounts", "serviceaccount"), true, &["sa"], false),
    rt(CORE, ("ConfigMap", "configmaps", "configmap"), true, &["cm"], false),
    rt(CORE, ("Secret", "secrets", "secret"), true, &[], false),
    rt(APPS, ("Deployment", "deployments", "deployment"), true, &["deploy"], true),
    rt(DISCOVERY, ("EndpointSlice", "endpointslices", "endpointslice"), true, &[], false),
    rt(ISTIO_SECURITY, ("AuthorizationPolicy", "authorizationpolicies", "authorizationpolicy"), true, &["ap"], true),
    rt(ISTIO_SECURITY, ("PeerAuthentication", "peerauthentications", "peerauthentication"), true, &["pa"], true),
    rt(GATEWAY, ("Gateway", "gateways", "gateway"), true, &["gtw"], true),
    rt(GATEWAY, ("HTTPRoute", "httproutes", "httproute"), true, &[], true),
    rt(GATEWAY, ("GRPCRoute", "grpcroutes", "grpcroute"), true, &[], true),
    rt(COORDINATION, ("Lease", "leases", "lease"), true, &[], false),
];

const CORE: (&str, &str) = ("", "v1");
const APPS: (&str, &str) = ("apps", "v1");
const DISCOVERY: (&str, &str) = ("discovery.k8s.io", "v1");
const ISTIO_SECURITY: (&str, &str) = ("security.istio.io", "v1");
const GATEWAY: (&str, &str) = ("gateway.networking.k8s.io", "v1");
const COORDINATION: (&str, &str) = ("coordination.k8s.io", "v1");

/// The type served under `group`/`version` as `plural`.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The type of an object with this `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// `GET /api`.
pub fn api_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

fn group_doc(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({
        "name": group,
        "versions": [gv.clone()],
        "preferredVersion": gv,
    })
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(|(g, v)| group_doc(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`.
pub fn api_group(group: &str) -> Option<Value> {
    let (g, v) = groups().into_iter().find(|(g, _)| *g == group)?;
    let mut doc = group_doc(g, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "shortNames": r.short_names,
        }));
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// `GET /openapi/v3`: where each group-version's document is.
pub fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut add = |gv_path: String| {
        let url = format!("/openapi/v3/{gv_path}");
        paths.insert(gv_path, json!({"serverRelativeURL": url}));
    };
    add("api/v1".to_owned());
    for (g, v) in groups() {
        add(format!("apis/{g}/{v}"));
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`: no
/// schemas, only each object's PATCH operation with its
/// `x-kubernetes-group-version-kind` and the `fieldValidation` parameter,
/// which is what kubectl looks for before it lets the server validate
/// (it sends `fieldValidation=Strict`; this server accepts and ignores it).
pub fn openapi_v3_group(group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let op = json!({
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(path, json!({"patch": op.clone(), "put": op}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (ambient-mesh test API server)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
