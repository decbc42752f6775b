//! The local YAML config file: nodes, namespaces, workloads, services and
//! authorization policies, parsed into a [`Snapshot`].
//!
//! ```yaml
//! trustDomain: cluster.local        # default cluster.local
//! rootNamespace: istio-system       # policies here are mesh-wide; default istio-system
//! nodes:      [{name: node1, ip: 10.0.0.1}]
//! namespaces: [{name: shop, labels: {istio.io/dataplane-mode: ambient}, mtls: STRICT}]
//! workloads:
//!   - {name: cart-1, namespace: shop, serviceAccount: cart, ip: 10.1.1.11, node: node1,
//!      labels: {app: cart}}        # uid defaults to shop/cart-1, tunnel to HBONE if ambient
//!   - {name: pay-1, namespace: bank, ip: 10.1.1.20, node: node1,
//!      labels: {security.istio.io/tlsMode: istio}}  # runs its own sidecar: nativeTunnel
//!                                   # defaults to true (and tunnel to HBONE); node ztunnels
//!                                   # do not capture it and send it HBONE directly.
//!                                   # `nativeTunnel: true|false` says so explicitly.
//! services:
//!   - {name: cart, namespace: shop, vip: 10.96.0.10, ports: [{port: 80, targetPort: 8080}],
//!      selector: {app: cart}}
//! policies:                         # Istio AuthorizationPolicy, L4 fields only
//!   - name: deny-outsiders
//!     namespace: shop
//!     selector: {matchLabels: {app: cart}}
//!     action: DENY
//!     rules: [{from: [{source: {notNamespaces: [shop]}}], to: [{operation: {ports: ["8080"]}}]}]
//! ```
//!
//!
//! The waypoint's configuration: `routes:` (HTTPRoute and GRPCRoute
//! objects, see `route_doc.rs`) and L7 fields on `policies:` entries that
//! have `targetRefs` (see `l7policy.rs`).
//!
//! See `ztunnel/examples/demo-config.yaml` for a complete file.

mod convert;
mod incremental;
mod kube;
#[cfg(test)]
mod l7_tests;
mod l7policy;
mod locate;
mod model;
mod route;
mod route_doc;
#[cfg(test)]
mod tests;
mod time;

use std::net::{AddrParseError, IpAddr};
use std::path::{Path, PathBuf};

use crate::identity::SpiffeIdError;

use crate::input::Object;
use crate::state::{CidrError, Snapshot, StateError};

pub use incremental::{IncrementalParser, ParseStats};
pub use kube::{route_from_spec, KubeRouteError};

/// The namespace whose policies apply mesh-wide, unless configured.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// A config file that cannot be used. Semantic errors name the offending key
/// (for example `workloads[2].node`) and its value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or does not fit the schema; the reason is the
    /// source error. `line` and `column` are 1-based, 0 when unknown.
    #[error("malformed config at line {line}, column {column}")]
    Syntax {
        line: usize,
        column: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{key}: {value:?} is defined more than once")]
    Duplicate { key: String, value: String },
    #[error("{key}: IP {value} is already used by {first}")]
    DuplicateIp {
        key: String,
        value: IpAddr,
        first: String,
    },
    #[error("{key}: unknown namespace {value:?}")]
    UnknownNamespace { key: String, value: String },
    #[error("{key}: unknown service {value:?}")]
    UnknownService { key: String, value: String },
    /// A route or L7 policy field that is not valid.
    #[error("{key}: {problem}")]
    Invalid {
        key: String,
        value: String,
        problem: crate::xds::l7convert::Problem,
    },
    #[error("{key}: unknown node {value:?}")]
    UnknownNode { key: String, value: String },
    #[error("{key}: {value:?} is not an IP address")]
    BadIp {
        key: String,
        value: String,
        #[source]
        source: AddrParseError,
    },
    #[error("{key}: {value:?} is not a CIDR block")]
    BadCidr {
        key: String,
        value: String,
        #[source]
        source: CidrError,
    },
    #[error("{key}: {value} is not a port from 1 to 65535")]
    BadPort { key: String, value: String },
    #[error("{key}: {value:?} cannot be part of a SPIFFE identity")]
    BadName {
        key: String,
        value: String,
        #[source]
        source: SpiffeIdError,
    },
    #[error("config is inconsistent")]
    State(#[source] StateError),
    /// A semantic error, with the line it was found on.
    #[error("line {line}: {error}")]
    At {
        line: usize,
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The key path and value a semantic error is about.
    fn key_value(&self) -> Option<(&str, String)> {
        match self {
            // `ns/name` (or `service/ns/name`) is reported whole but written
            // as `name: ...` in the item: look for the name.
            ConfigError::Duplicate { key, value } | ConfigError::UnknownService { key, value } => {
                Some((
                    key,
                    value
                        .rsplit_once('/')
                        .map_or(value.as_str(), |(_, n)| n)
                        .to_owned(),
                ))
            }
            ConfigError::UnknownNamespace { key, value }
            | ConfigError::Invalid { key, value, .. }
            | ConfigError::UnknownNode { key, value }
            | ConfigError::BadIp { key, value, .. }
            | ConfigError::BadCidr { key, value, .. }
            | ConfigError::BadPort { key, value }
            | ConfigError::BadName { key, value, .. } => Some((key, value.clone())),
            ConfigError::DuplicateIp { key, value, .. } => Some((key, value.to_string())),
            _ => None,
        }
    }

    /// Wraps a semantic error with its line in `text`, when it can be found.
    fn located(self, text: &str) -> ConfigError {
        let line = self
            .key_value()
            .and_then(|(key, value)| locate::locate(text, key, &value));
        match line {
            Some(line) => ConfigError::At {
                line,
                error: Box::new(self),
            },
            None => self,
        }
    }
}

/// Parses a config document into a snapshot.
pub fn parse(yaml: &str) -> Result<Snapshot, ConfigError> {
    build(parse_file(yaml)?, yaml)
}

/// A config document as keyed objects for [`crate::input::MeshInput`]:
/// checked (names, addresses, references, duplicates), not yet resolved
/// (label selectors and waypoints are resolved when a snapshot is built).
#[derive(Debug, Clone)]
pub struct Objects {
    pub trust_domain: String,
    pub objects: Vec<Object>,
}

/// Parses a config document into keyed objects.
pub fn parse_objects(yaml: &str) -> Result<Objects, ConfigError> {
    objects(parse_file(yaml)?, yaml)
}

fn parse_file(yaml: &str) -> Result<model::File, ConfigError> {
    // An empty document (or one with only comments) is an empty mesh.
    let file: Option<model::File> = serde_yaml_ng::from_str(yaml).map_err(|source| {
        let (line, column) = source
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        ConfigError::Syntax {
            line,
            column,
            source,
        }
    })?;
    Ok(file.unwrap_or_default())
}

/// The checks after parsing, and the objects; `yaml` locates errors.
fn objects(file: model::File, yaml: &str) -> Result<Objects, ConfigError> {
    let parts = convert::to_parts(file).map_err(|e| e.located(yaml))?;
    let trust_domain = parts.trust_domain.clone();
    let objects = crate::input::objects_of(parts);
    Ok(Objects {
        trust_domain,
        objects,
    })
}

/// The checks after parsing and the snapshot; `yaml` locates errors.
fn build(file: model::File, yaml: &str) -> Result<Snapshot, ConfigError> {
    let parts = convert::to_parts(file).map_err(|e| e.located(yaml))?;
    Snapshot::build(parts).map_err(ConfigError::State)
}

/// Reads and parses the config file at `path`.
pub fn load(path: &Path) -> Result<Snapshot, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text)
}
