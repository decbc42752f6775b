//! A Service port's declared application protocol: what the waypoint
//! speaks on it (Istio's `app_protocol` on `istio.workload.Port`).

/// The declared protocol of a port. Undeclared ports (`None` on
/// [`super::ServicePort::app_protocol`]) are detected by sniffing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum AppProtocol {
    Http11,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

impl AppProtocol {
    /// The declared protocol of a Kubernetes port: its `appProtocol` if it
    /// names one we know, else the prefix of its name (`http-web`,
    /// `grpc`, `tcp-db`), as Istio reads them. `None`: undeclared.
    pub fn declared(app_protocol: Option<&str>, port_name: Option<&str>) -> Option<AppProtocol> {
        if let Some(p) = app_protocol.and_then(Self::parse) {
            return Some(p);
        }
        let name = port_name?;
        let prefix = name.split_once('-').map_or(name, |(p, _)| p);
        Self::parse(prefix)
    }

    /// One protocol name (case-insensitive), Kubernetes' or Istio's.
    fn parse(name: &str) -> Option<AppProtocol> {
        Some(match name.to_ascii_lowercase().as_str() {
            "http" | "http1" | "http11" => AppProtocol::Http11,
            "http2" | "h2c" | "kubernetes.io/h2c" => AppProtocol::Http2,
            "grpc" | "grpc-web" | "kubernetes.io/grpc" => AppProtocol::Grpc,
            "tcp" | "kubernetes.io/tcp" | "mongo" | "mysql" | "redis" => AppProtocol::Tcp,
            "tls" | "https" => AppProtocol::Tls,
            _ => return None,
        })
    }

    /// Whether the waypoint parses HTTP on the port.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            AppProtocol::Http11 | AppProtocol::Http2 | AppProtocol::Grpc
        )
    }
}

#[cfg(test)]
mod tests {
    use super::AppProtocol::{self, *};

    #[test]
    fn declared_protocols() {
        let cases: &[(Option<&str>, Option<&str>, Option<AppProtocol>)] = &[
            (Some("http"), None, Some(Http11)),
            (Some("kubernetes.io/h2c"), Some("tcp-x"), Some(Http2)),
            (Some("GRPC"), None, Some(Grpc)),
            (None, Some("grpc-api"), Some(Grpc)),
            (None, Some("http2"), Some(Http2)),
            (None, Some("https-web"), Some(Tls)),
            (None, Some("tcp"), Some(Tcp)),
            (Some("custom.io/x"), Some("http-web"), Some(Http11)),
            (None, Some("web"), None),
            (None, Some("httpx-web"), None),
            (None, None, None),
        ];
        for (app, name, want) in cases {
            assert_eq!(
                AppProtocol::declared(*app, *name),
                *want,
                "{app:?} {name:?}"
            );
        }
        assert!(Grpc.is_http() && !Tls.is_http());
    }
}
