//! What a request and its response carry across the waypoint. Pure.
//!
//! - Hop-by-hop fields (RFC 9110 §7.6.1: `connection` and the fields it
//!   names, `keep-alive`, `proxy-connection`, `transfer-encoding`, `te`
//!   other than `trailers`, `upgrade` unless upgrading) stay on their hop.
//! - `x-request-id` is added when absent; `traceparent` is propagated, or
//!   started when absent or malformed, so every request has a trace id.
//! - HTTP/1.1 goes upstream in origin form (`/path?query`, with `Host`);
//!   HTTP/2 keeps its `:scheme` and `:authority`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};

pub const X_REQUEST_ID: &str = "x-request-id";
pub const TRACEPARENT: &str = "traceparent";
/// Longest `x-request-id` kept as sent; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// What identifies a request in logs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestIds {
    pub request_id: String,
    pub trace_id: String,
}

/// Whether the request asks to switch protocols: HTTP/1.1 `Upgrade`
/// (WebSocket) or HTTP/2 extended CONNECT (RFC 8441).
pub fn is_upgrade(method: &Method, headers: &HeaderMap, extended_connect: bool) -> bool {
    if *method == Method::CONNECT {
        return extended_connect;
    }
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

/// Whether a request is gRPC (`content-type: application/grpc...`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn has_token(v: &HeaderValue, token: &str) -> bool {
    v.to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Removes hop-by-hop fields; an upgrade keeps `upgrade` and gets
/// `connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if !upgrade {
        headers.remove(header::UPGRADE);
    } else if headers.contains_key(header::UPGRADE) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let keep_te = headers
        .get_all(header::TE)
        .iter()
        .any(|v| has_token(v, "trailers"));
    headers.remove(header::TE);
    if keep_te {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Adds `x-request-id` when absent (or unusable) and propagates or starts
/// the W3C trace; returns both ids.
pub fn identify(headers: &mut HeaderMap) -> RequestIds {
    let request_id = match headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() && id.len() <= MAX_REQUEST_ID => id.to_owned(),
        _ => {
            let id = new_request_id();
            headers.insert(
                X_REQUEST_ID,
                HeaderValue::from_str(&id).expect("hex and dashes"),
            );
            id
        }
    };
    let trace_id = match headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id_of)
    {
        Some(t) => t.to_owned(),
        None => {
            let tp = hbone::headers::new_traceparent();
            let t = trace_id_of(&tp).expect("fresh traceparent").to_owned();
            headers.insert(
                TRACEPARENT,
                HeaderValue::from_str(&tp).expect("hex and dashes"),
            );
            t
        }
    };
    RequestIds {
        request_id,
        trace_id,
    }
}

/// The trace id of a W3C `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`), if well-formed and not all zeros.
pub fn trace_id_of(tp: &str) -> Option<&str> {
    let mut parts = tp.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(span, 16)
        && span.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    ok.then_some(trace)
}

/// A random UUID (version 4), as Envoy generates `x-request-id`.
pub fn new_request_id() -> String {
    let r: u128 = rand::random();
    let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The request target as an HTTP/1.1 upstream wants it: origin form.
pub fn origin_form(uri: &Uri) -> Uri {
    let pq = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("/");
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut n: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        n.sort();
        n
    }

    #[test]
    fn hop_by_hop_table() {
        type Case<'a> = (&'a [(&'a str, &'a str)], bool, &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (
                &[
                    ("connection", "keep-alive, x-secret"),
                    ("keep-alive", "timeout=5"),
                    ("x-secret", "1"),
                    ("host", "a"),
                    ("te", "gzip"),
                    ("transfer-encoding", "chunked"),
                    ("proxy-connection", "x"),
                    ("upgrade", "websocket"),
                ],
                false,
                &["host"],
            ),
            (
                &[("te", "trailers"), ("content-type", "application/grpc")],
                false,
                &["content-type", "te"],
            ),
            (
                &[
                    ("connection", "Upgrade"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-key", "k"),
                ],
                true,
                &["connection", "sec-websocket-key", "upgrade"],
            ),
        ];
        for (input, upgrade, want) in cases {
            let mut h = map(input);
            strip_hop_by_hop(&mut h, *upgrade);
            assert_eq!(names(&h), *want, "{input:?}");
        }
        let mut te = map(&[("te", "trailers, deflate")]);
        strip_hop_by_hop(&mut te, false);
        assert_eq!(te["te"], "trailers");
    }

    #[test]
    fn upgrade_and_grpc_detection() {
        let ws = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade(&Method::GET, &ws, false));
        let no_conn = map(&[("upgrade", "websocket")]);
        assert!(!is_upgrade(&Method::GET, &no_conn, false));
        assert!(is_upgrade(&Method::CONNECT, &HeaderMap::new(), true));
        assert!(!is_upgrade(&Method::CONNECT, &HeaderMap::new(), false));
        assert!(is_grpc(&map(&[("content-type", "application/grpc+proto")])));
        assert!(!is_grpc(&map(&[("content-type", "application/json")])));
    }

    #[test]
    fn ids_are_kept_or_made() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = map(&[("x-request-id", "abc"), ("traceparent", tp)]);
        let ids = identify(&mut h);
        assert_eq!(ids.request_id, "abc");
        assert_eq!(ids.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h["traceparent"], tp, "propagated as is");

        let mut fresh = map(&[(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )]);
        let ids = identify(&mut fresh);
        assert_eq!(ids.request_id.len(), 36);
        assert_eq!(fresh["x-request-id"], ids.request_id.as_str());
        assert_eq!(ids.trace_id.len(), 32);
        assert_ne!(ids.trace_id, "00000000000000000000000000000000");
        assert!(fresh["traceparent"]
            .to_str()
            .unwrap()
            .contains(&ids.trace_id));
    }

    #[test]
    fn traceparent_table() {
        for (tp, ok) in [
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                true,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                true,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                false,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                false,
            ),
            ("garbage", false),
        ] {
            assert_eq!(trace_id_of(tp).is_some(), ok, "{tp}");
        }
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
    }

    #[test]
    fn origin_form_table() {
        for (uri, want) in [
            ("http://a.example/x?y=1", "/x?y=1"),
            ("/p", "/p"),
            ("http://a.example", "/"),
            ("*", "*"),
        ] {
            assert_eq!(
                origin_form(&uri.parse().unwrap()).to_string(),
                want,
                "{uri}"
            );
        }
    }
}
