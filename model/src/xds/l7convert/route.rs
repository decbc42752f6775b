//! `ambient.mesh.v1.Route` → [`Route`] (the inverse is in `route_out.rs`,
//! a rule's timeouts, retry and fault in `route_policies.rs`).

use http::{HeaderName, HeaderValue, Method};
use proto::mesh as pb;

use super::route_policies::{fault, retry, timeouts};
use super::{each, port, range, required, FieldError, Problem, Result};
use crate::route::{
    Backend, Filter, Fraction, GrpcMethodMatch, GrpcRouteMatch, HeaderMatch, HeaderModifier,
    HttpRouteMatch, Mirror, ParentRef, PathMatch, PathModifier, Pattern, QueryParamMatch,
    RedirectScheme, RequestRedirect, Route, RouteKind, RouteRule, ServiceRef, Timestamp,
    UrlRewrite, ValueMatch, MAX_WEIGHT,
};

const METHODS: &str = "GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH";

/// The xDS resource name of a route: `<kind>/<namespace>/<name>`.
pub fn route_key(r: &Route) -> String {
    r.key().to_string()
}

fn err<T>(field: &'static str, problem: Problem) -> Result<T> {
    Err(FieldError::new(field, problem))
}

impl TryFrom<&pb::Route> for Route {
    type Error = FieldError;

    fn try_from(r: &pb::Route) -> Result<Route> {
        let kind = match pb::route::Kind::try_from(r.kind) {
            Ok(pb::route::Kind::Http) => RouteKind::Http,
            Ok(pb::route::Kind::Grpc) => RouteKind::Grpc,
            Err(_) => return err("kind", Problem::UnknownEnum(r.kind)),
        };
        let name = required("name", &r.name)?;
        let namespace = required("namespace", &r.namespace)?;
        let created = r
            .creation_timestamp
            .as_ref()
            .map(|t| match u32::try_from(t.nanos) {
                Ok(nanos) if nanos < 1_000_000_000 => Ok(Timestamp {
                    seconds: t.seconds,
                    nanos,
                }),
                _ => err(
                    "creation_timestamp.nanos",
                    range(t.nanos.into(), 0, 999_999_999),
                ),
            })
            .transpose()?;
        let parents = each("parent_refs", &r.parent_refs, |p| parent(p, &namespace))?;
        if r.rules.is_empty() {
            return err("rules", Problem::Missing);
        }
        let rules = each("rules", &r.rules, |rule| self::rule(rule, kind, &namespace))?;
        Ok(Route {
            kind,
            name,
            namespace,
            created,
            parents,
            rules,
        })
    }
}

fn parent(p: &pb::ParentRef, route_ns: &str) -> Result<ParentRef> {
    Ok(ParentRef {
        namespace: or(&p.namespace, route_ns),
        name: required("name", &p.name)?,
        port: match p.port {
            0 => None,
            v => Some(port("port", v)?),
        },
    })
}

fn or(v: &str, default: &str) -> String {
    let v = if v.is_empty() { default } else { v };
    v.to_owned()
}

fn rule(r: &pb::RouteRule, kind: RouteKind, ns: &str) -> Result<RouteRule> {
    let (matches, grpc_matches) = match kind {
        RouteKind::Http => {
            if !r.grpc_matches.is_empty() {
                return err(
                    "grpc_matches",
                    Problem::Conflict("an HTTPRoute has no gRPC matches"),
                );
            }
            let mut m = each("matches", &r.matches, http_match)?;
            if m.is_empty() {
                m.push(HttpRouteMatch::default());
            }
            (m, Vec::new())
        }
        RouteKind::Grpc => {
            if !r.matches.is_empty() {
                return err(
                    "matches",
                    Problem::Conflict("a GRPCRoute has no HTTP matches"),
                );
            }
            let mut m = each("grpc_matches", &r.grpc_matches, grpc_match)?;
            if m.is_empty() {
                m.push(GrpcRouteMatch::default());
            }
            (Vec::new(), m)
        }
    };
    let filters = each("filters", &r.filters, |f| filter(f, kind, ns))?;
    let backends = each("backend_refs", &r.backend_refs, |b| backend(b, ns))?;
    check_filters(&filters, &matches, !backends.is_empty())?;
    Ok(RouteRule {
        name: (!r.name.is_empty()).then(|| r.name.clone()),
        matches,
        grpc_matches,
        filters,
        backends,
        timeouts: r
            .timeouts
            .as_ref()
            .map(timeouts)
            .transpose()?
            .unwrap_or_default(),
        retry: r
            .retry
            .as_ref()
            .map(retry)
            .transpose()
            .map_err(|e| e.under("retry"))?,
        fault: r
            .fault
            .as_ref()
            .map(fault)
            .transpose()
            .map_err(|e| e.under("fault"))?,
    })
}

/// The API's rules across one rule's filters.
fn check_filters(filters: &[Filter], matches: &[HttpRouteMatch], has_backends: bool) -> Result<()> {
    let conflict = |i: usize, why| {
        Err(FieldError::new(
            format_args!("filters[{i}]"),
            Problem::Conflict(why),
        ))
    };
    let mut seen = [false; 4];
    for (i, f) in filters.iter().enumerate() {
        let (slot, prefix_mod) = match f {
            Filter::RequestHeaderModifier(_) => (0, None),
            Filter::ResponseHeaderModifier(_) => (1, None),
            Filter::RequestRedirect(r) => (2, r.path.as_ref()),
            Filter::UrlRewrite(r) => (3, r.path.as_ref()),
            Filter::RequestMirror(_) => continue,
        };
        if seen[slot] {
            return conflict(i, "this filter type may appear only once in a rule");
        }
        seen[slot] = true;
        if matches!(prefix_mod, Some(PathModifier::ReplacePrefixMatch(_)))
            && !matches!(
                matches,
                [HttpRouteMatch {
                    path: PathMatch::Prefix(_),
                    ..
                }]
            )
        {
            return conflict(
                i,
                "ReplacePrefixMatch needs exactly one match, a PathPrefix",
            );
        }
    }
    if seen[2] && seen[3] {
        return conflict(0, "RequestRedirect and URLRewrite cannot be combined");
    }
    if seen[2] && has_backends {
        return conflict(0, "RequestRedirect cannot be used with backendRefs");
    }
    Ok(())
}

/// An absolute path as the API allows in Exact and PathPrefix matches and
/// path modifiers.
fn absolute_path(field: &'static str, v: &str) -> Result<String> {
    let bad = !v.starts_with('/')
        || ["//", "/./", "/../", "%2f", "%2F", "#", "?"]
            .iter()
            .any(|s| v.contains(s))
        || v.ends_with("/..")
        || v.ends_with("/.")
        || http::uri::PathAndQuery::try_from(v).is_err();
    if bad {
        return err(field, Problem::BadPath(v.to_owned()));
    }
    Ok(v.to_owned())
}

fn pattern(field: &'static str, v: &str) -> Result<Pattern> {
    Pattern::new(v).map_err(|e| FieldError::new(field, e.into()))
}

fn http_match(m: &pb::HttpRouteMatch) -> Result<HttpRouteMatch> {
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = if p.value.is_empty() { "/" } else { &p.value };
            match pb::path_match::Type::try_from(p.r#type) {
                Ok(pb::path_match::Type::Exact) => {
                    PathMatch::Exact(absolute_path("path.value", value)?)
                }
                Ok(pb::path_match::Type::PathPrefix) => {
                    let v = absolute_path("path.value", value)?;
                    let trimmed = v.strip_suffix('/').filter(|t| !t.is_empty()).unwrap_or(&v);
                    PathMatch::Prefix(trimmed.to_owned())
                }
                Ok(pb::path_match::Type::RegularExpression) => {
                    PathMatch::RegularExpression(pattern("path.value", &p.value)?)
                }
                Err(_) => return err("path.type", Problem::UnknownEnum(p.r#type)),
            }
        }
    };
    let mut headers = each("headers", &m.headers, header_match)?;
    dedup_first(&mut headers, |h| h.name.clone());
    let mut query_params = each("query_params", &m.query_params, |q| {
        Ok(QueryParamMatch {
            name: required("name", &q.name)?,
            value: value_match(q.r#type, &q.value)?,
        })
    })?;
    dedup_first(&mut query_params, |q| q.name.clone());
    let method = match m.method.as_str() {
        "" => None,
        v if METHODS.split(", ").any(|m| m == v) => Some(
            Method::from_bytes(v.as_bytes())
                .map_err(|_| FieldError::new("method", Problem::BadMethod(v.into())))?,
        ),
        v => {
            return err(
                "method",
                Problem::NotOneOf {
                    value: v.into(),
                    allowed: METHODS,
                },
            )
        }
    };
    Ok(HttpRouteMatch {
        path,
        headers,
        query_params,
        method,
    })
}

/// Keeps the first entry of each key (the API ignores later ones).
fn dedup_first<T, K: PartialEq>(v: &mut Vec<T>, key: impl Fn(&T) -> K) {
    let mut seen: Vec<K> = Vec::new();
    v.retain(|item| {
        let k = key(item);
        let fresh = !seen.contains(&k);
        if fresh {
            seen.push(k);
        }
        fresh
    });
}

fn value_match(kind: i32, value: &str) -> Result<ValueMatch> {
    if value.is_empty() {
        return err("value", Problem::Missing);
    }
    match pb::MatchType::try_from(kind) {
        Ok(pb::MatchType::Exact) => Ok(ValueMatch::Exact(value.to_owned())),
        Ok(pb::MatchType::RegularExpression) => {
            Ok(ValueMatch::RegularExpression(pattern("value", value)?))
        }
        Err(_) => err("type", Problem::UnknownEnum(kind)),
    }
}

fn header_name(field: &'static str, v: &str) -> Result<HeaderName> {
    HeaderName::from_bytes(v.as_bytes())
        .map_err(|_| FieldError::new(field, Problem::BadHeaderName(v.into())))
}

fn header_match(h: &pb::HeaderMatch) -> Result<HeaderMatch> {
    Ok(HeaderMatch {
        name: header_name("name", &h.name)?,
        value: value_match(h.r#type, &h.value)?,
    })
}

fn grpc_match(m: &pb::GrpcRouteMatch) -> Result<GrpcRouteMatch> {
    let method = m
        .method
        .as_ref()
        .map(|mm| {
            let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            if mm.service.is_empty() && mm.method.is_empty() {
                return err(
                    "method",
                    Problem::Conflict("one of service and method is required"),
                );
            }
            match pb::MatchType::try_from(mm.r#type) {
                Ok(pb::MatchType::Exact) => Ok(GrpcMethodMatch::Exact {
                    service: opt(&mm.service),
                    method: opt(&mm.method),
                }),
                Ok(pb::MatchType::RegularExpression) => Ok(GrpcMethodMatch::RegularExpression {
                    service: opt(&mm.service)
                        .map(|s| pattern("method.service", &s))
                        .transpose()?,
                    method: opt(&mm.method)
                        .map(|s| pattern("method.method", &s))
                        .transpose()?,
                }),
                Err(_) => err("method.type", Problem::UnknownEnum(mm.r#type)),
            }
        })
        .transpose()?;
    let mut headers = each("headers", &m.headers, header_match)?;
    dedup_first(&mut headers, |h| h.name.clone());
    Ok(GrpcRouteMatch { method, headers })
}

fn filter(f: &pb::Filter, kind: RouteKind, ns: &str) -> Result<Filter> {
    use pb::filter::Kind as K;
    let http_only = |field: &'static str| err(field, Problem::Conflict("not a GRPCRoute filter"));
    Ok(match &f.kind {
        None => return err("kind", Problem::Missing),
        Some(K::RequestHeaderModifier(h)) => Filter::RequestHeaderModifier(
            header_modifier(h).map_err(|e| e.under("request_header_modifier"))?,
        ),
        Some(K::ResponseHeaderModifier(h)) => Filter::ResponseHeaderModifier(
            header_modifier(h).map_err(|e| e.under("response_header_modifier"))?,
        ),
        Some(K::RequestMirror(m)) => {
            Filter::RequestMirror(mirror(m, ns).map_err(|e| e.under("request_mirror"))?)
        }
        Some(K::RequestRedirect(_)) if kind == RouteKind::Grpc => {
            return http_only("request_redirect")
        }
        Some(K::UrlRewrite(_)) if kind == RouteKind::Grpc => return http_only("url_rewrite"),
        Some(K::RequestRedirect(r)) => {
            Filter::RequestRedirect(redirect(r).map_err(|e| e.under("request_redirect"))?)
        }
        Some(K::UrlRewrite(r)) => Filter::UrlRewrite(UrlRewrite {
            hostname: hostname("url_rewrite.hostname", &r.hostname)?,
            path: r
                .path
                .as_ref()
                .map(path_modifier)
                .transpose()
                .map_err(|e| e.under("url_rewrite.path"))?,
        }),
    })
}

fn header_modifier(h: &pb::HeaderModifier) -> Result<HeaderModifier> {
    let pairs = |field: &str, v: &[pb::Header]| {
        each(field, v, |h| {
            let name = header_name("name", &h.name)?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| FieldError::new("value", Problem::BadHeaderValue(h.value.clone())))?;
            Ok((name, value))
        })
    };
    let out = HeaderModifier {
        set: pairs("set", &h.set)?,
        add: pairs("add", &h.add)?,
        remove: each("remove", &h.remove, |n| header_name("", n))?,
    };
    let mut names: Vec<&HeaderName> = out
        .set
        .iter()
        .chain(&out.add)
        .map(|(n, _)| n)
        .chain(&out.remove)
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(FieldError::new(
            "",
            Problem::DuplicateHeader(w[0].to_string()),
        ));
    }
    Ok(out)
}

fn service_ref(b: &pb::BackendRef, ns: &str) -> Result<ServiceRef> {
    Ok(ServiceRef {
        namespace: or(&b.namespace, ns),
        name: required("name", &b.name)?,
        port: port("port", b.port)?,
    })
}

fn backend(b: &pb::BackendRef, ns: &str) -> Result<Backend> {
    let weight = b.weight.unwrap_or(1);
    if weight > MAX_WEIGHT {
        return err("weight", range(weight.into(), 0, MAX_WEIGHT.into()));
    }
    Ok(Backend {
        service: service_ref(b, ns)?,
        weight,
    })
}

fn mirror(m: &pb::RequestMirror, ns: &str) -> Result<Mirror> {
    let service = match &m.backend_ref {
        Some(b) => service_ref(b, ns).map_err(|e| e.under("backend_ref"))?,
        None => return err("backend_ref", Problem::Missing),
    };
    let fraction = match &m.fraction {
        None => Fraction::ALL,
        Some(f) => {
            let denominator = if f.denominator == 0 {
                100
            } else {
                f.denominator
            };
            if f.numerator > denominator {
                return err(
                    "fraction.numerator",
                    range(f.numerator.into(), 0, denominator.into()),
                );
            }
            Fraction {
                numerator: f.numerator,
                denominator,
            }
        }
    };
    Ok(Mirror { service, fraction })
}

/// An RFC 1123 hostname (the API's `PreciseHostname`); empty: none.
fn hostname(field: &'static str, v: &str) -> Result<Option<String>> {
    if v.is_empty() {
        return Ok(None);
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if v.len() > 253 || !v.split('.').all(label_ok) {
        return err(field, Problem::BadHostname(v.to_owned()));
    }
    Ok(Some(v.to_owned()))
}

fn path_modifier(p: &pb::PathModifier) -> Result<PathModifier> {
    use pb::path_modifier::Type as T;
    match &p.r#type {
        None => err("type", Problem::Missing),
        Some(T::ReplaceFullPath(v)) => Ok(PathModifier::ReplaceFullPath(absolute_path(
            "replace_full_path",
            v,
        )?)),
        Some(T::ReplacePrefixMatch(v)) if v.is_empty() => {
            Ok(PathModifier::ReplacePrefixMatch(String::new()))
        }
        Some(T::ReplacePrefixMatch(v)) => Ok(PathModifier::ReplacePrefixMatch(absolute_path(
            "replace_prefix_match",
            v,
        )?)),
    }
}

fn redirect(r: &pb::RequestRedirect) -> Result<RequestRedirect> {
    let scheme = match r.scheme.as_str() {
        "" => None,
        "http" => Some(RedirectScheme::Http),
        "https" => Some(RedirectScheme::Https),
        v => {
            return err(
                "scheme",
                Problem::NotOneOf {
                    value: v.into(),
                    allowed: "http, https",
                },
            )
        }
    };
    let status = match r.status_code {
        0 => 302,
        s @ (301 | 302 | 303 | 307 | 308) => s as u16,
        s => {
            return err(
                "status_code",
                Problem::NotOneOf {
                    value: s.to_string(),
                    allowed: "301, 302, 303, 307, 308",
                },
            )
        }
    };
    Ok(RequestRedirect {
        scheme,
        hostname: hostname("hostname", &r.hostname)?,
        path: r
            .path
            .as_ref()
            .map(path_modifier)
            .transpose()
            .map_err(|e| e.under("path"))?,
        port: match r.port {
            0 => None,
            p => Some(port("port", p)?),
        },
        status,
    })
}
