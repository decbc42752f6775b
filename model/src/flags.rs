//! Istio's `response_flags` (DESIGN §7): a fixed set, so dashboards built for
//! Istio keep working. Each proxy puts a finer, bounded `reason` beside it
//! in its access log.

use std::fmt;

/// What went wrong with a connection or request, in Istio's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum ResponseFlag {
    /// `-`: nothing went wrong.
    #[default]
    None,
    /// `DENY`: refused by policy (an authorization policy, STRICT mTLS).
    Deny,
    /// `CONNECT`: the upstream or the tunnel could not be reached, or no
    /// route was found.
    Connect,
    /// `TLS_FAILURE`: the mutual-TLS handshake failed.
    TlsFailure,
}

impl ResponseFlag {
    /// Every value, for tests and for pre-registering metric series.
    pub const ALL: [ResponseFlag; 4] = [
        ResponseFlag::None,
        ResponseFlag::Deny,
        ResponseFlag::Connect,
        ResponseFlag::TlsFailure,
    ];

    /// The label value Istio uses.
    pub const fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::None => "-",
            ResponseFlag::Deny => "DENY",
            ResponseFlag::Connect => "CONNECT",
            ResponseFlag::TlsFailure => "TLS_FAILURE",
        }
    }
}

impl fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ResponseFlag;

    #[test]
    fn istio_values() {
        let values: Vec<&str> = ResponseFlag::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(values, ["-", "DENY", "CONNECT", "TLS_FAILURE"]);
        assert_eq!(ResponseFlag::default().to_string(), "-");
    }
}
