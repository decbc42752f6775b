//! Istio flags and reasons of tunnel errors.

use super::*;

/// Istio's flag for each failure, and the finer reason where it says
/// less.
#[test]
fn flags_are_istios_and_reasons_finer() {
    let addr: SocketAddr = "10.1.2.10:15008".parse().unwrap();
    let status = |status| TunnelError::Status {
        addr,
        authority: "10.1.2.10:8080".parse().unwrap(),
        status,
    };
    let cases = [
        (status(StatusCode::UNAUTHORIZED), ResponseFlag::Deny, "DENY"),
        (
            TunnelError::Shared(Arc::new(status(StatusCode::UNAUTHORIZED))),
            ResponseFlag::Deny,
            "DENY",
        ),
        (
            status(StatusCode::SERVICE_UNAVAILABLE),
            ResponseFlag::Connect,
            "CONNECT",
        ),
        (
            TunnelError::Timeout { addr },
            ResponseFlag::Connect,
            "CONNECT",
        ),
        (
            TunnelError::Tls {
                addr,
                source: std::io::Error::other("bad certificate"),
            },
            ResponseFlag::TlsFailure,
            "TLS_FAILURE",
        ),
        (
            TunnelError::Certificate {
                id: "spiffe://cluster.local/ns/a/sa/b".parse().unwrap(),
                source: CertError::Parse,
            },
            ResponseFlag::TlsFailure,
            "NO_CERT",
        ),
    ];
    for (err, flag, reason) in cases {
        assert_eq!((err.flag(), err.reason()), (flag, reason), "{err:?}");
    }
}
