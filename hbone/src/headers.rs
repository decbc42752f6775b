//! The parts of an HBONE CONNECT request other than the stream itself: the
//! `:authority`, and the `forwarded`, `traceparent` and `baggage` headers.
//!
//! Everything here parses bytes from the network, so it is strict, bounded
//! and covered by property tests.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue};

pub const FORWARDED: &str = "forwarded";
pub const TRACEPARENT: &str = "traceparent";
pub const BAGGAGE: &str = "baggage";
/// Longest authority we accept: "[" + 39-char IPv6 + "]:" + 5-digit port.
const MAX_AUTHORITY_LEN: usize = 47;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("CONNECT authority is missing")]
    Missing,
    #[error("CONNECT authority {0:?} is not an IP:port")]
    NotIpPort(String),
    #[error("CONNECT authority has port 0")]
    PortZero,
}

/// Parse a CONNECT `:authority`: exactly `a.b.c.d:port` or `[v6]:port`.
pub fn parse_authority(s: &str) -> Result<SocketAddr, AuthorityError> {
    if s.is_empty() {
        return Err(AuthorityError::Missing);
    }
    let trimmed = || AuthorityError::NotIpPort(s.chars().take(MAX_AUTHORITY_LEN + 3).collect());
    if s.len() > MAX_AUTHORITY_LEN {
        return Err(trimmed());
    }
    // SocketAddr's parser accepts exactly these two forms, and no zone ids.
    let addr: SocketAddr = s.parse().map_err(|_| trimmed())?;
    if addr.port() == 0 {
        return Err(AuthorityError::PortZero);
    }
    Ok(addr)
}

/// Format a socket address as an authority (`[v6]:port` for IPv6).
pub fn format_authority(addr: SocketAddr) -> String {
    addr.to_string()
}

/// What the client ztunnel tells the server about the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectMeta {
    /// The original client, from `forwarded: for=`.
    pub client: Option<SocketAddr>,
    /// The Service FQDN when a Service VIP was dialled, from `forwarded: host=`.
    pub host: Option<String>,
    pub traceparent: Option<String>,
    pub baggage: Baggage,
}

/// The `baggage` keys Istio sends on HBONE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    pub namespace: Option<String>,
    /// (`k8s.<kind>.name` kind, name), for example ("deployment", "web").
    pub workload: Option<(String, String)>,
    pub service_name: Option<String>,
    pub service_version: Option<String>,
}

impl Baggage {
    pub fn encode(&self) -> String {
        let mut parts = Vec::with_capacity(4);
        if let Some(ns) = &self.namespace {
            parts.push(format!("k8s.namespace.name={ns}"));
        }
        if let Some((kind, name)) = &self.workload {
            parts.push(format!("k8s.{kind}.name={name}"));
        }
        if let Some(s) = &self.service_name {
            parts.push(format!("service.name={s}"));
        }
        if let Some(v) = &self.service_version {
            parts.push(format!("service.version={v}"));
        }
        parts.join(",")
    }

    /// Lenient: unknown keys and malformed members are ignored.
    pub fn decode(s: &str) -> Self {
        let mut b = Baggage::default();
        for member in s.split(',').take(16) {
            let Some((k, v)) = member.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim().to_owned());
            match k {
                "k8s.namespace.name" => b.namespace = Some(v),
                "service.name" => b.service_name = Some(v),
                "service.version" => b.service_version = Some(v),
                _ => {
                    if let Some(kind) = k
                        .strip_prefix("k8s.")
                        .and_then(|r| r.strip_suffix(".name"))
                        .filter(|kind| !kind.contains('.'))
                    {
                        b.workload = Some((kind.to_owned(), v));
                    }
                }
            }
        }
        b
    }
}

impl ConnectMeta {
    pub fn to_headers(&self, headers: &mut HeaderMap) {
        if let Some(client) = self.client {
            let mut fwd = format!("for=\"{client}\"");
            if let Some(host) = &self.host {
                fwd.push_str(";host=");
                fwd.push_str(host);
            }
            if let Ok(v) = HeaderValue::from_str(&fwd) {
                headers.insert(FORWARDED, v);
            }
        }
        if let Some(tp) = &self.traceparent {
            if let Ok(v) = HeaderValue::from_str(tp) {
                headers.insert(TRACEPARENT, v);
            }
        }
        let baggage = self.baggage.encode();
        if !baggage.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&baggage) {
                headers.insert(BAGGAGE, v);
            }
        }
    }

    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let (client, host) = text(FORWARDED).map(parse_forwarded).unwrap_or_default();
        ConnectMeta {
            client,
            host,
            traceparent: text(TRACEPARENT).map(str::to_owned),
            baggage: text(BAGGAGE).map(Baggage::decode).unwrap_or_default(),
        }
    }
}

/// A fresh W3C `traceparent` with random trace and span ids.
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>() | 1;
    let span: u64 = rand::random::<u64>() | 1;
    format!("00-{trace:032x}-{span:016x}-01")
}

/// The `for` and `host` of the first element of an RFC 7239 `forwarded` value.
pub fn parse_forwarded(s: &str) -> (Option<SocketAddr>, Option<String>) {
    let first = s.split(',').next().unwrap_or("");
    let (mut client, mut host) = (None, None);
    for pair in first.split(';') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "for" => {
                client = v
                    .parse::<SocketAddr>()
                    .ok()
                    .or_else(|| v.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0)))
            }
            "host" => host = Some(v.to_owned()).filter(|h| !h.is_empty() && h.len() <= 253),
            _ => {}
        }
    }
    (client, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_table() {
        let ok = [
            ("10.0.0.1:80", "10.0.0.1:80"),
            ("[fd00::1]:8080", "[fd00::1]:8080"),
            ("255.255.255.255:65535", "255.255.255.255:65535"),
        ];
        for (input, want) in ok {
            assert_eq!(parse_authority(input).unwrap().to_string(), want);
        }
        let bad = [
            ("", AuthorityError::Missing),
            ("10.0.0.1:0", AuthorityError::PortZero),
            ("10.0.0.1", AuthorityError::NotIpPort("10.0.0.1".into())),
            (
                "example.com:80",
                AuthorityError::NotIpPort("example.com:80".into()),
            ),
            (
                "10.0.0.1:65536",
                AuthorityError::NotIpPort("10.0.0.1:65536".into()),
            ),
            ("fd00::1:80", AuthorityError::NotIpPort("fd00::1:80".into())),
            (
                "[fe80::1%eth0]:80",
                AuthorityError::NotIpPort("[fe80::1%eth0]:80".into()),
            ),
            (
                " 10.0.0.1:80",
                AuthorityError::NotIpPort(" 10.0.0.1:80".into()),
            ),
            (
                "010.0.0.1:80",
                AuthorityError::NotIpPort("010.0.0.1:80".into()),
            ),
        ];
        for (input, want) in bad {
            assert_eq!(parse_authority(input).unwrap_err(), want, "{input:?}");
        }
    }

    #[test]
    fn meta_roundtrips_through_headers() {
        let meta = ConnectMeta {
            client: Some("10.1.1.2:43210".parse().unwrap()),
            host: Some("web.default.svc.cluster.local".into()),
            traceparent: Some(new_traceparent()),
            baggage: Baggage {
                namespace: Some("default".into()),
                workload: Some(("deployment".into(), "web".into())),
                service_name: Some("web".into()),
                service_version: Some("v1".into()),
            },
        };
        let mut h = HeaderMap::new();
        meta.to_headers(&mut h);
        assert_eq!(
            h[FORWARDED],
            "for=\"10.1.1.2:43210\";host=web.default.svc.cluster.local"
        );
        assert_eq!(ConnectMeta::from_headers(&h), meta);
    }

    #[test]
    fn forwarded_forms() {
        assert_eq!(
            parse_forwarded("for=\"[fd00::2]:99\""),
            (Some("[fd00::2]:99".parse().unwrap()), None)
        );
        assert_eq!(
            parse_forwarded("For=10.0.0.9, for=10.0.0.8"),
            (Some("10.0.0.9:0".parse().unwrap()), None)
        );
        assert_eq!(parse_forwarded("garbage"), (None, None));
    }

    #[test]
    fn traceparent_is_w3c_shaped() {
        let tp = new_traceparent();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
    }

    proptest::proptest! {
        #[test]
        fn authority_never_panics_and_roundtrips(s in ".{0,64}") {
            if let Ok(addr) = parse_authority(&s) {
                proptest::prop_assert_eq!(parse_authority(&format_authority(addr)), Ok(addr));
            }
        }

        #[test]
        fn any_socket_addr_roundtrips(addr: SocketAddr) {
            let addr = match addr {
                SocketAddr::V6(mut v6) => { v6.set_scope_id(0); v6.set_flowinfo(0); SocketAddr::V6(v6) }
                v4 => v4,
            };
            proptest::prop_assume!(addr.port() != 0);
            proptest::prop_assert_eq!(parse_authority(&format_authority(addr)), Ok(addr));
        }

        #[test]
        fn header_parsers_never_panic(s in ".{0,200}") {
            let _ = parse_forwarded(&s);
            let _ = Baggage::decode(&s);
        }
    }
}
