//! Gateway API (`gateway.networking.k8s.io/v1`) resources the mesh reads,
//! as typed structs of ours: the kube-rs project's `gateway-api` crate
//! follows kube 4 and k8s-openapi 0.28 (and Rust 1.92), where the
//! workspace is pinned to kube 2, k8s-openapi 0.26 and Rust 1.88.
//!
//! A route's `spec` is kept as JSON: `mesh_model::config::route_from_spec`
//! reads it with the same schema (and checks) as the config file's
//! `routes:`. A Gateway is read for its class and name, and written by
//! the waypoint controller (its status).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The version we read.
pub const VERSION: &str = "v1";
/// The GatewayClass of waypoints (Istio's).
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The label Istio (and our controller) puts on a waypoint's pods and
/// Service: the Gateway's name.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

macro_rules! gateway_resource {
    ($ty:ident, $spec:ty, $kind:literal, $plural:literal) => {
        #[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
        pub struct $ty {
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: $spec,
            /// Read by the waypoint controller (to write only what changed).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<serde_json::Value>,
        }

        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(VERSION)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

gateway_resource!(Gateway, GatewaySpec, "Gateway", "gateways");
gateway_resource!(HttpRoute, serde_json::Value, "HTTPRoute", "httproutes");
gateway_resource!(GrpcRoute, serde_json::Value, "GRPCRoute", "grpcroutes");

/// The part of a Gateway's spec the mesh reads.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub gateway_class_name: String,
}
