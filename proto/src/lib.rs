//! Protobuf types for ambient-mesh, wire-compatible with Istio and Envoy.
//!
//! The `.proto` files live in `proto/protos/`; the Rust code in
//! `src/gen/` is generated from them and checked in, so building needs no
//! `protoc`. `tests/codegen.rs` fails when regenerating would change it, and
//! `MESH_PROTO_REGENERATE=1 cargo test -p mesh-proto --test codegen`
//! rewrites it.
//!
//! `Workload.services` is a `BTreeMap`, so a resource encodes
//! deterministically (the control plane versions resources by a hash of
//! their bytes).
//!
//! These types stop at the edge: the control plane converts its domain
//! snapshot into them, and ztunnel converts them back with `TryFrom`.

#![allow(clippy::all)]

// Modules mirror the proto packages, as the generated code expects.
pub mod istio {
    pub mod workload {
        include!("gen/istio.workload.rs");
    }
    pub mod security {
        include!("gen/istio.security.rs");
    }
    pub mod v1 {
        pub mod auth {
            include!("gen/istio.v1.auth.rs");
        }
    }
}

pub mod envoy {
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                include!("gen/envoy.service.discovery.v3.rs");
            }
        }
    }
}

pub mod google {
    pub mod rpc {
        include!("gen/google.rpc.rs");
    }
}

/// Short names for the packages.
pub use envoy::service::discovery::v3 as discovery;
pub use istio::security;
pub use istio::v1::auth as ca;
pub use istio::workload;

/// `type.googleapis.com/istio.workload.Address`.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// `type.googleapis.com/istio.security.Authorization`.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";
/// The metadata key Istio's ztunnel uses to name the identity it asks a
/// certificate for, on behalf of a local workload.
pub const IMPERSONATED_IDENTITY_KEY: &str = "ImpersonatedIdentity";
