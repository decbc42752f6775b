//! SPIFFE identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing is strict because identities arrive from untrusted certificates and
//! config: every malformed form has its own error.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

const SCHEME: &str = "spiffe://";
/// Kubernetes names are at most 253 bytes; trust domains at most 255 (SPIFFE spec).
const MAX_SEGMENT_LEN: usize = 253;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A workload identity in Istio's SPIFFE form. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(Arc<Parts>);

#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parts {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("identity does not start with \"spiffe://\"")]
    Scheme,
    #[error("identity has an empty or invalid trust domain {0:?}")]
    TrustDomain(String),
    #[error("identity path must be /ns/<namespace>/sa/<service-account>, got {0:?}")]
    Path(String),
    #[error("identity segment {0:?} is empty, too long or has invalid characters")]
    Segment(String),
}

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(trust_domain)?;
        validate_segment(namespace)?;
        validate_segment(service_account)?;
        Ok(SpiffeId(Arc::new(Parts {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })))
    }

    pub fn trust_domain(&self) -> &str {
        &self.0.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.0.service_account
    }

    /// The URI form, as it appears in a certificate SAN.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| SpiffeIdError::Path(String::new()))?;
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["ns", ns, "sa", sa] => SpiffeId::new(td, ns, sa),
            _ => Err(SpiffeIdError::Path(format!("/{path}"))),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.0.trust_domain, self.0.namespace, self.0.service_account
        )
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    let ok = !td.is_empty()
        && td.len() <= MAX_TRUST_DOMAIN_LEN
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    ok.then_some(())
        .ok_or_else(|| SpiffeIdError::TrustDomain(td.to_owned()))
}

/// Kubernetes namespace and service-account names: lowercase RFC 1123 labels
/// and subdomains. We also accept '_' and uppercase letters, which Istio does
/// not reject, but never '/', '%', or control bytes.
fn validate_segment(seg: &str) -> Result<(), SpiffeIdError> {
    let ok = !seg.is_empty()
        && seg.len() <= MAX_SEGMENT_LEN
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    ok.then_some(())
        .ok_or_else(|| SpiffeIdError::Segment(seg.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-ratings");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
        );
    }

    #[test]
    fn rejects_malformed() {
        let cases: &[(&str, SpiffeIdError)] = &[
            ("http://td/ns/a/sa/b", SpiffeIdError::Scheme),
            ("spiffe://", SpiffeIdError::Path(String::new())),
            ("spiffe://td", SpiffeIdError::Path(String::new())),
            ("spiffe:///ns/a/sa/b", SpiffeIdError::TrustDomain("".into())),
            (
                "spiffe://TD/ns/a/sa/b",
                SpiffeIdError::TrustDomain("TD".into()),
            ),
            ("spiffe://td/ns/a", SpiffeIdError::Path("/ns/a".into())),
            (
                "spiffe://td/ns/a/sa/b/c",
                SpiffeIdError::Path("/ns/a/sa/b/c".into()),
            ),
            (
                "spiffe://td/sa/a/ns/b",
                SpiffeIdError::Path("/sa/a/ns/b".into()),
            ),
            ("spiffe://td/ns//sa/b", SpiffeIdError::Segment("".into())),
            ("spiffe://td/ns/a/sa/", SpiffeIdError::Segment("".into())),
            (
                "spiffe://td/ns/a%2F/sa/b",
                SpiffeIdError::Segment("a%2F".into()),
            ),
            (
                "spiffe://td/ns/a b/sa/b",
                SpiffeIdError::Segment("a b".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<SpiffeId>().unwrap_err(), *want, "{input}");
        }
    }

    #[test]
    fn overlong_segment_is_rejected() {
        let long = "a".repeat(MAX_SEGMENT_LEN + 1);
        let err = format!("spiffe://td/ns/{long}/sa/b")
            .parse::<SpiffeId>()
            .unwrap_err();
        assert!(matches!(err, SpiffeIdError::Segment(_)));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,300}") {
            let _ = s.parse::<SpiffeId>();
        }

        #[test]
        fn roundtrip(td in "[a-z0-9.-]{1,40}", ns in "[a-z0-9-]{1,40}", sa in "[a-z0-9-]{1,40}") {
            let id = SpiffeId::new(&td, &ns, &sa).unwrap();
            let back: SpiffeId = id.to_string().parse().unwrap();
            proptest::prop_assert_eq!(back, id);
        }

        #[test]
        fn parsed_ids_roundtrip(s in "spiffe://[a-z.]{0,5}/(ns|sa|x)/[a-z/]{0,5}/(sa|ns)/[a-z/]{0,4}") {
            if let Ok(id) = s.parse::<SpiffeId>() {
                proptest::prop_assert_eq!(id.to_string(), s);
            }
        }
    }
}
