//! Answers the waypoint gives itself (denials, no route, faults, upstream
//! failures, redirects). A gRPC client gets a trailers-only response with
//! the matching `grpc-status` instead of an HTTP error, as Envoy answers.

use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, LOCATION};
use http::{Response, StatusCode};

use crate::body::{full, DownBody};
use crate::record::Record;

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub status: StatusCode,
    pub body: &'static str,
    pub location: Option<HeaderValue>,
    /// The gRPC status for a gRPC client; `None`: from `status`.
    pub grpc_status: Option<u32>,
    /// Add `connection: close` (HTTP/1.1: the connection cannot go on).
    pub close: bool,
}

impl Local {
    pub fn new(status: StatusCode, body: &'static str) -> Self {
        Local {
            status,
            body,
            location: None,
            grpc_status: None,
            close: false,
        }
    }

    pub fn closing(mut self, close: bool) -> Self {
        self.close = close;
        self
    }
}

/// gRPC's code for an HTTP status the waypoint answers itself (as Envoy
/// maps them).
pub fn grpc_code(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 | 405 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// The answer for `local`; closes the record.
pub fn local_reply(mut rec: Record, local: Local, grpc: bool) -> Response<DownBody> {
    let mut builder = Response::builder();
    if local.close {
        builder = builder.header(CONNECTION, "close");
    }
    let resp = if grpc {
        let code = local.grpc_status.unwrap_or_else(|| grpc_code(local.status));
        rec.event.status = 200;
        rec.event.grpc_status = Some(code);
        builder
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "application/grpc")
            .header("grpc-status", code)
            .header("grpc-message", local.body.trim_end())
            .body(full(bytes::Bytes::new()))
    } else {
        rec.event.status = local.status.as_u16();
        rec.event.bytes_sent = local.body.len() as u64;
        if let Some(l) = local.location {
            builder = builder.header(LOCATION, l);
        }
        builder
            .status(local.status)
            .header(CONTENT_TYPE, "text/plain")
            .body(full(local.body))
    };
    rec.finish();
    resp.expect("a valid local reply")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::{Downstream, Telemetry};

    fn rec() -> Record {
        let t = Telemetry {
            metrics: crate::metrics::Metrics::new(),
            access_log: Arc::new(mesh_runtime::accesslog::AccessLog::sink()),
        };
        let down = Arc::new(Downstream {
            addr: "10.1.1.10:4000".parse().unwrap(),
            identity: "spiffe://cluster.local/ns/shop/sa/client".parse().unwrap(),
            workload: None,
            service: None,
        });
        Record::start(&t, &down, "HTTP/2")
    }

    #[test]
    fn grpc_clients_get_a_status_in_a_trailers_only_reply() {
        for (status, code) in [
            (StatusCode::SERVICE_UNAVAILABLE, "14"),
            (StatusCode::BAD_REQUEST, "13"),
            (StatusCode::FORBIDDEN, "7"),
            (StatusCode::METHOD_NOT_ALLOWED, "12"),
            (StatusCode::INTERNAL_SERVER_ERROR, "2"),
        ] {
            let r = local_reply(rec(), Local::new(status, "why\n"), true);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["grpc-status"], code, "{status}");
            assert_eq!(r.headers()["grpc-message"], "why");
        }
        let fault = Local {
            grpc_status: Some(4),
            ..Local::new(StatusCode::SERVICE_UNAVAILABLE, "fault filter abort")
        };
        assert_eq!(
            local_reply(rec(), fault, true).headers()["grpc-status"],
            "4"
        );
        let plain = local_reply(
            rec(),
            Local::new(StatusCode::SERVICE_UNAVAILABLE, "why\n").closing(true),
            false,
        );
        assert_eq!(plain.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(plain.headers()["connection"], "close");
        let redirect = Local {
            location: Some(HeaderValue::from_static("http://a/b")),
            ..Local::new(StatusCode::MOVED_PERMANENTLY, "")
        };
        assert_eq!(
            local_reply(rec(), redirect, false).headers()["location"],
            "http://a/b"
        );
    }
}
