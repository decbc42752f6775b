//! L4 authorization policy, shaped like Istio's `istio.security.Authorization`
//! xDS resource: policy → rules → clauses → matches.
//!
//! Evaluation lives in [`crate::policy`]; this module only holds the data.

use std::fmt;

use super::{Cidr, Labels};

/// Which workloads a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum PolicyScope {
    /// Every workload in the mesh (policies in the root namespace).
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Workloads in the policy's namespace whose labels match.
    WorkloadSelector { match_labels: Labels },
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// `<namespace>/<name>` of a policy, as carried by a denial.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PolicyKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One authorization policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: PolicyScope,
    pub action: PolicyAction,
    /// The policy matches when any rule matches. No rules: never matches
    /// (so an ALLOW policy without rules allows nothing).
    pub rules: Vec<Rule>,
}

impl Policy {
    pub fn key(&self) -> PolicyKey {
        PolicyKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// A rule matches when all of its clauses match (no clauses: always).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Rule {
    pub clauses: Vec<Clause>,
}

/// A clause matches when any of its matches match (no matches: never).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Clause {
    pub matches: Vec<Match>,
}

/// Conditions on one connection. Every non-empty field must hold: a positive
/// list holds when any entry matches, a `not_` list when none does. An empty
/// `Match` matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    /// Matched against `<td>/ns/<ns>/sa/<sa>` (no `spiffe://`).
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    pub source_ips: Vec<Cidr>,
    pub not_source_ips: Vec<Cidr>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

/// Istio's `StringMatch`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any value, as long as one is present (Istio's `*`).
    Presence,
}

impl StringMatch {
    /// Istio's AuthorizationPolicy string form: `*` is presence, `abc*` a
    /// prefix, `*abc` a suffix, anything else exact.
    pub fn from_pattern(pattern: &str) -> StringMatch {
        if pattern == "*" {
            StringMatch::Presence
        } else if let Some(rest) = pattern.strip_prefix('*') {
            StringMatch::Suffix(rest.to_owned())
        } else if let Some(rest) = pattern.strip_suffix('*') {
            StringMatch::Prefix(rest.to_owned())
        } else {
            StringMatch::Exact(pattern.to_owned())
        }
    }

    /// The pattern [`StringMatch::from_pattern`] reads back as this match
    /// (for matches that came from a pattern).
    pub fn to_pattern(&self) -> String {
        match self {
            StringMatch::Exact(s) => s.clone(),
            StringMatch::Prefix(s) => format!("{s}*"),
            StringMatch::Suffix(s) => format!("*{s}"),
            StringMatch::Presence => "*".to_owned(),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

/// Istio's `ServiceAccountMatch`: an exact namespace and service account.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// All authorization policies of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Policies(Vec<Policy>);

impl Policies {
    pub fn new(policies: Vec<Policy>) -> Self {
        Policies(policies)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Policy> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Policies {
    type Item = &'a Policy;
    type IntoIter = std::slice::Iter<'a, Policy>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_match_patterns() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "anything", true),
            ("*", "", false),
            ("cluster.local/*", "cluster.local/ns/a/sa/b", true),
            ("cluster.local/*", "other/ns/a/sa/b", false),
            ("*/sa/b", "cluster.local/ns/a/sa/b", true),
            ("*/sa/b", "cluster.local/ns/a/sa/bb", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("", "", true),
        ];
        for (pattern, value, want) in cases {
            let m = StringMatch::from_pattern(pattern);
            assert_eq!(m.matches(value), *want, "{pattern:?} vs {value:?}");
        }
    }
}
