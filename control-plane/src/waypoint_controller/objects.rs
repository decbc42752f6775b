//! What a waypoint Gateway should own, and the status it should show.
//! Pure: a Gateway in, JSON objects out (applied server-side as they are).

use serde_json::{json, Value};

use crate::source::kube::gateway::{Gateway, GATEWAY_NAME_LABEL, GROUP, VERSION};

/// The field manager of every write (server-side apply).
pub const FIELD_MANAGER: &str = "ambient-mesh-waypoint-controller";
/// The controller name in Gateway status (as Istio's `istio.io/gateway-controller`).
pub const CONTROLLER_NAME: &str = "ambient-mesh.io/waypoint-controller";
/// HBONE, the waypoint's one listener.
pub const HBONE_PORT: u16 = mesh_model::HBONE_PORT;
/// Where the projected token (audience `istio-ca`) and the root are mounted.
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const ROOT_DIR: &str = "/var/run/secrets/istio";

/// How waypoints are deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The waypoint container image.
    pub image: String,
    /// The control plane as waypoints reach it (`https://<svc>.<ns>.svc:15012`).
    pub xds_address: String,
    pub trust_domain: String,
    /// The ConfigMap in each namespace holding the mesh root
    /// (`root-cert.pem`), as Istio's `istio-ca-root-cert`.
    pub root_cert_configmap: String,
    /// `imagePullSecrets` of the waypoint pods.
    pub image_pull_secrets: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "ghcr.io/ambient-mesh/waypoint:latest".into(),
            xds_address: "https://control-plane.istio-system.svc:15012".into(),
            trust_domain: mesh_model::state::DEFAULT_TRUST_DOMAIN.into(),
            root_cert_configmap: "istio-ca-root-cert".into(),
            image_pull_secrets: Vec::new(),
        }
    }
}

/// The Gateway's name, namespace and uid (the owner of what it makes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Owner {
    pub fn of(gw: &Gateway) -> Option<Owner> {
        Some(Owner {
            namespace: gw.metadata.namespace.clone()?,
            name: gw.metadata.name.clone()?,
            uid: gw.metadata.uid.clone()?,
        })
    }

    fn metadata(&self, extra_labels: Value) -> Value {
        let mut labels = json!({
            GATEWAY_NAME_LABEL: self.name,
            "app.kubernetes.io/managed-by": FIELD_MANAGER,
        });
        if let (Some(l), Some(extra)) = (labels.as_object_mut(), extra_labels.as_object()) {
            l.extend(extra.clone());
        }
        json!({
            "name": self.name,
            "namespace": self.namespace,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": "Gateway",
                "name": self.name,
                "uid": self.uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        })
    }
}

/// The waypoint's ServiceAccount: named after the Gateway, so its
/// identity is `spiffe://<td>/ns/<namespace>/sa/<gateway>` (the control
/// plane finds the Gateway's policies by it).
pub fn service_account(o: &Owner) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": o.metadata(json!({})),
    })
}

/// The waypoint's Service: HBONE on 15008 to its pods. It never uses a
/// waypoint itself (`istio.io/use-waypoint: none`).
pub fn service(o: &Owner) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": o.metadata(json!({"istio.io/use-waypoint": "none"})),
        "spec": {
            "selector": {GATEWAY_NAME_LABEL: o.name},
            "ports": [{"name": "mesh", "port": HBONE_PORT, "targetPort": HBONE_PORT, "protocol": "TCP", "appProtocol": "all"}],
        },
    })
}

/// The waypoint's Deployment. Its pods do their own HBONE
/// (`istio.io/dataplane-mode: none`: ztunnel never captures them),
/// authenticate with a projected token of audience `istio-ca`, and run
/// unprivileged. Replicas are left to the user (or an autoscaler).
pub fn deployment(o: &Owner, s: &Settings) -> Value {
    let pod_labels = json!({
        GATEWAY_NAME_LABEL: o.name,
        "istio.io/dataplane-mode": "none",
    });
    let pull_secrets: Vec<Value> = s
        .image_pull_secrets
        .iter()
        .map(|n| json!({"name": n}))
        .collect();
    let mut d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": o.metadata(json!({})),
        "spec": {
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: o.name}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "15020",
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": o.name,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1337, "runAsGroup": 1337},
                    "containers": [{
                        "name": "waypoint",
                        "image": s.image,
                        "env": [
                            {"name": "WAYPOINT_NAME", "value": o.name},
                            {"name": "WAYPOINT_NAMESPACE", "value": o.namespace},
                            {"name": "WAYPOINT_TRUST_DOMAIN", "value": s.trust_domain},
                            {"name": "WAYPOINT_XDS_ADDRESS", "value": s.xds_address},
                            {"name": "WAYPOINT_ROOT_CERT", "value": format!("{ROOT_DIR}/root-cert.pem")},
                            {"name": "WAYPOINT_TOKEN_FILE", "value": format!("{TOKEN_DIR}/istio-token")},
                        ],
                        "ports": [
                            {"name": "mesh", "containerPort": HBONE_PORT, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 15020, "protocol": "TCP"},
                            {"name": "status", "containerPort": 15021, "protocol": "TCP"},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 2},
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "istio-token", "mountPath": TOKEN_DIR, "readOnly": true},
                            {"name": "istio-ca-root-cert", "mountPath": ROOT_DIR, "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token",
                        }}]}},
                        {"name": "istio-ca-root-cert", "configMap": {"name": s.root_cert_configmap}},
                    ],
                },
            },
        },
    });
    if !pull_secrets.is_empty() {
        d["spec"]["template"]["spec"]["imagePullSecrets"] = Value::from(pull_secrets);
    }
    d
}

/// One Gateway condition, as the Gateway API defines them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The conditions after a reconcile: Accepted (the class is ours), and
/// Programmed (its Deployment, Service and ServiceAccount are applied;
/// `Err` is why not).
pub fn conditions(applied: &Result<(), String>) -> Vec<Condition> {
    let programmed = match applied {
        Ok(()) => Condition {
            type_: "Programmed",
            status: true,
            reason: "Programmed",
            message: "waypoint Deployment, Service and ServiceAccount applied".into(),
        },
        Err(why) => Condition {
            type_: "Programmed",
            status: false,
            reason: "Invalid",
            message: why.clone(),
        },
    };
    vec![
        Condition {
            type_: "Accepted",
            status: true,
            reason: "Accepted",
            message: format!("handled by {CONTROLLER_NAME}"),
        },
        programmed,
    ]
}

/// The status to apply, or `None` when the Gateway already shows it (a
/// write that changes nothing would wake every watcher for nothing).
/// A condition that keeps its status keeps its `lastTransitionTime`.
pub fn status_patch(
    gw: &Gateway,
    status: Option<&Value>,
    wanted: &[Condition],
    address: Option<&str>,
    now: &str,
) -> Option<Value> {
    let generation = gw.metadata.generation.unwrap_or(0);
    let current = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let find = |t: &str| current.iter().find(|c| c["type"] == t);
    let mut same = true;
    let conditions: Vec<Value> = wanted
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let old = find(c.type_);
            let unchanged_status = old.is_some_and(|o| o["status"] == status);
            same &= unchanged_status
                && old.is_some_and(|o| {
                    o["reason"] == c.reason
                        && o["message"] == c.message.as_str()
                        && o["observedGeneration"] == generation
                });
            let since = match old {
                Some(o) if unchanged_status => o["lastTransitionTime"].clone(),
                _ => Value::from(now),
            };
            json!({
                "type": c.type_,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": generation,
                "lastTransitionTime": since,
            })
        })
        .collect();
    let addresses: Vec<Value> = address
        .map(|a| json!({"type": "IPAddress", "value": a}))
        .into_iter()
        .collect();
    let old_addresses = status
        .and_then(|s| s.get("addresses"))
        .cloned()
        .unwrap_or(json!([]));
    if same && old_addresses == Value::from(addresses.clone()) {
        return None;
    }
    Some(json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "Gateway",
        "status": {"conditions": conditions, "addresses": addresses},
    }))
}
