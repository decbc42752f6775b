//! Caller authentication in local mode: per-node bootstrap tokens.
//!
//! The tokens file is YAML mapping node name → token:
//!
//! ```yaml
//! node1: 3f9c0e...   # any string; use 32+ random bytes, hex or base64
//! node2: 77ab41...
//! ```
//!
//! A caller sends `authorization: Bearer <token>` as gRPC metadata on every
//! xDS stream and CA call; the token names its node. A CA request is then
//! only signed for identities with a workload on that node. (A Kubernetes
//! service-account token is a later source of the same answer.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tonic::metadata::MetadataMap;

/// The node a caller authenticated as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeName(pub String);

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("reading tokens file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokens file {path} is not a YAML map of node name to token")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("tokens file {path}: node {node:?} has an empty token")]
    Empty { path: PathBuf, node: String },
}

/// Why a caller was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("unknown bearer token")]
    Unknown,
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        tonic::Status::unauthenticated(e.to_string())
    }
}

/// Node bootstrap tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens(BTreeMap<String, String>);

impl Tokens {
    pub fn new(map: BTreeMap<String, String>) -> Self {
        Tokens(map)
    }

    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        let map: BTreeMap<String, String> = serde_yaml_ng::from_str::<Option<_>>(&text)
            .map_err(|source| TokensError::Parse {
                path: path.to_owned(),
                source,
            })?
            .unwrap_or_default();
        if let Some((node, _)) = map.iter().find(|(_, t)| t.is_empty()) {
            return Err(TokensError::Empty {
                path: path.to_owned(),
                node: node.clone(),
            });
        }
        Ok(Tokens(map))
    }

    /// The node whose token is `token`. Compares every entry in constant
    /// time per byte, so timing does not reveal a prefix.
    pub fn node_for(&self, token: &str) -> Option<NodeName> {
        let mut found = None;
        for (node, t) in &self.0 {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(NodeName(node.clone()));
            }
        }
        found
    }

    /// Authenticates a gRPC call by its `authorization` metadata.
    pub fn authenticate(&self, md: &MetadataMap) -> Result<NodeName, AuthError> {
        let value = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .ok_or(AuthError::Missing)?
            .trim();
        self.node_for(token).ok_or(AuthError::Unknown)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(BTreeMap::from([
            ("node1".into(), "tok-1".into()),
            ("node2".into(), "tok-2".into()),
        ]))
    }

    #[test]
    fn authenticate_table() {
        let cases: &[(Option<&str>, Result<&str, AuthError>)] = &[
            (Some("Bearer tok-1"), Ok("node1")),
            (Some("Bearer tok-2"), Ok("node2")),
            (Some("Bearer tok-3"), Err(AuthError::Unknown)),
            (Some("Bearer tok-"), Err(AuthError::Unknown)),
            (Some("tok-1"), Err(AuthError::Missing)),
            (None, Err(AuthError::Missing)),
        ];
        for (header, want) in cases {
            let mut md = MetadataMap::new();
            if let Some(h) = header {
                md.insert("authorization", h.parse().unwrap());
            }
            let got = tokens().authenticate(&md);
            assert_eq!(got, want.map(|n| NodeName(n.into())), "{header:?}");
        }
    }

    #[test]
    fn load_rejects_empty_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, "node1: abc\nnode2: ''\n").unwrap();
        assert!(matches!(
            Tokens::load(&path),
            Err(TokensError::Empty { .. })
        ));
        std::fs::write(&path, "node1: abc\n").unwrap();
        assert_eq!(
            Tokens::load(&path).unwrap().node_for("abc"),
            Some(NodeName("node1".into()))
        );
    }
}
