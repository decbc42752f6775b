//! Gateway API routes as a Kubernetes API server serves them: an
//! `HTTPRoute` or `GRPCRoute`'s `spec` goes through the same checked
//! conversion as the file's `routes:` (and xDS), so a cluster, the file and
//! the control plane's stream accept exactly the same routes.
//!
//! Only `parentRefs` to a Service (`group: ""`, `kind: Service`) are the
//! mesh's (GAMMA). An absent group or kind is, as the Gateway API CRDs
//! default them, `gateway.networking.k8s.io` / `Gateway`: an ingress
//! route, not ours. A route with no Service parent is not the mesh's
//! (`Ok(None)`).

use serde::{Deserialize, Deserializer};

use super::route::{from_field, route_key_path, to_message};
use super::route_doc::{MetadataDoc, RefDoc, RouteDoc, RouteKindDoc, RouteSpecDoc};
use super::ConfigError;
use crate::route::{Route, RouteKind};

/// Why a route from a cluster is refused.
#[derive(Debug, thiserror::Error)]
pub enum KubeRouteError {
    /// The spec has a field we do not apply, or a value of the wrong type.
    #[error("spec: {0}")]
    Spec(String),
    /// A value is not valid (the key names it, as in the file).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Whether a `parentRefs[]` entry names a Service (the CRDs' defaults for
/// an absent group and kind are the Gateway's).
fn is_service_parent(p: &RefDoc) -> bool {
    p.group.as_deref() == Some("") && p.kind.as_deref() == Some("Service")
}

/// `spec` of the route `namespace/name` → the domain route, with only its
/// Service parents; `None` when it has none (not a mesh route).
/// `created` is `metadata.creationTimestamp` (RFC 3339).
pub fn route_from_spec<'de, D: Deserializer<'de>>(
    kind: RouteKind,
    namespace: &str,
    name: &str,
    created: Option<&str>,
    spec: D,
) -> Result<Option<Route>, KubeRouteError> {
    let mut spec =
        RouteSpecDoc::deserialize(spec).map_err(|e| KubeRouteError::Spec(e.to_string()))?;
    spec.parent_refs.retain(is_service_parent);
    if spec.parent_refs.is_empty() {
        return Ok(None);
    }
    let doc = RouteDoc {
        api_version: None,
        kind: match kind {
            RouteKind::Http => RouteKindDoc::Http,
            RouteKind::Grpc => RouteKindDoc::Grpc,
        },
        metadata: MetadataDoc {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            creation_timestamp: created.map(str::to_owned),
            labels: Default::default(),
        },
        spec,
    };
    // Errors name the key under the route: `HTTPRoute/shop/r.spec.rules[0]...`.
    let at = format!("{}/{namespace}/{name}", kind.as_str());
    let message = to_message(&at, doc)?;
    let route = Route::try_from(&message).map_err(|e| from_field(&at, e, route_key_path))?;
    Ok(Some(route))
}
