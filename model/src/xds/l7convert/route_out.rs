//! [`Route`] → `ambient.mesh.v1.Route` (for the control plane): the
//! inverse of the `TryFrom` in `route.rs`.

use http::{HeaderName, HeaderValue, Method};
use proto::mesh as pb;

use super::duration_pb;
use crate::route::{
    AbortStatus, Fault, Filter, Fraction, GrpcMethodMatch, GrpcRouteMatch, HeaderMatch,
    HeaderModifier, HttpRouteMatch, PathMatch, PathModifier, Pattern, Route, RouteKind, RouteRule,
    ServiceRef, Timeouts, ValueMatch, GRPC_STATUS_NAMES,
};

impl From<&Route> for pb::Route {
    fn from(r: &Route) -> pb::Route {
        pb::Route {
            kind: match r.kind {
                RouteKind::Http => pb::route::Kind::Http,
                RouteKind::Grpc => pb::route::Kind::Grpc,
            } as i32,
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            creation_timestamp: r.created.map(|t| prost_types::Timestamp {
                seconds: t.seconds,
                nanos: t.nanos as i32,
            }),
            parent_refs: r
                .parents
                .iter()
                .map(|p| pb::ParentRef {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    port: p.port.map_or(0, u32::from),
                })
                .collect(),
            rules: r.rules.iter().map(rule_pb).collect(),
        }
    }
}

fn rule_pb(r: &RouteRule) -> pb::RouteRule {
    pb::RouteRule {
        name: r.name.clone().unwrap_or_default(),
        matches: r.matches.iter().map(http_match_pb).collect(),
        grpc_matches: r.grpc_matches.iter().map(grpc_match_pb).collect(),
        filters: r.filters.iter().map(filter_pb).collect(),
        backend_refs: r
            .backends
            .iter()
            .map(|b| backend_pb(&b.service, Some(b.weight)))
            .collect(),
        timeouts: (r.timeouts != Timeouts::default()).then(|| pb::Timeouts {
            request: r.timeouts.request.map(duration_pb),
            backend_request: r.timeouts.backend_request.map(duration_pb),
        }),
        retry: r.retry.as_ref().map(|t| pb::Retry {
            attempts: t.attempts,
            codes: t.codes.iter().map(|c| u32::from(*c)).collect(),
            backoff: t.backoff.map(duration_pb),
        }),
        fault: r.fault.as_ref().map(fault_pb),
    }
}

fn value_pb(v: &ValueMatch) -> (i32, String) {
    match v {
        ValueMatch::Exact(s) => (pb::MatchType::Exact as i32, s.clone()),
        ValueMatch::RegularExpression(p) => (
            pb::MatchType::RegularExpression as i32,
            p.as_str().to_owned(),
        ),
    }
}

fn header_match_pb(h: &HeaderMatch) -> pb::HeaderMatch {
    let (r#type, value) = value_pb(&h.value);
    pb::HeaderMatch {
        r#type,
        name: h.name.to_string(),
        value,
    }
}

fn http_match_pb(m: &HttpRouteMatch) -> pb::HttpRouteMatch {
    use pb::path_match::Type;
    let (t, value) = match &m.path {
        PathMatch::Exact(p) => (Type::Exact, p.clone()),
        PathMatch::Prefix(p) => (Type::PathPrefix, p.clone()),
        PathMatch::RegularExpression(p) => (Type::RegularExpression, p.as_str().to_owned()),
    };
    pb::HttpRouteMatch {
        path: Some(pb::PathMatch {
            r#type: t as i32,
            value,
        }),
        headers: m.headers.iter().map(header_match_pb).collect(),
        query_params: m
            .query_params
            .iter()
            .map(|q| {
                let (r#type, value) = value_pb(&q.value);
                pb::QueryParamMatch {
                    r#type,
                    name: q.name.clone(),
                    value,
                }
            })
            .collect(),
        method: m.method.as_ref().map(Method::to_string).unwrap_or_default(),
    }
}

fn grpc_match_pb(m: &GrpcRouteMatch) -> pb::GrpcRouteMatch {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let p = |v: &Option<Pattern>| {
        v.as_ref()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default()
    };
    pb::GrpcRouteMatch {
        method: m.method.as_ref().map(|mm| match mm {
            GrpcMethodMatch::Exact { service, method } => pb::GrpcMethodMatch {
                r#type: pb::MatchType::Exact as i32,
                service: s(service),
                method: s(method),
            },
            GrpcMethodMatch::RegularExpression { service, method } => pb::GrpcMethodMatch {
                r#type: pb::MatchType::RegularExpression as i32,
                service: p(service),
                method: p(method),
            },
        }),
        headers: m.headers.iter().map(header_match_pb).collect(),
    }
}

fn header_modifier_pb(h: &HeaderModifier) -> pb::HeaderModifier {
    let pairs = |v: &[(HeaderName, HeaderValue)]| {
        v.iter()
            .map(|(n, v)| pb::Header {
                name: n.to_string(),
                value: v.to_str().unwrap_or_default().to_owned(),
            })
            .collect()
    };
    pb::HeaderModifier {
        set: pairs(&h.set),
        add: pairs(&h.add),
        remove: h.remove.iter().map(HeaderName::to_string).collect(),
    }
}

fn backend_pb(s: &ServiceRef, weight: Option<u32>) -> pb::BackendRef {
    pb::BackendRef {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        port: u32::from(s.port),
        weight,
    }
}

fn path_modifier_pb(p: &PathModifier) -> pb::PathModifier {
    use pb::path_modifier::Type as T;
    pb::PathModifier {
        r#type: Some(match p {
            PathModifier::ReplaceFullPath(v) => T::ReplaceFullPath(v.clone()),
            PathModifier::ReplacePrefixMatch(v) => T::ReplacePrefixMatch(v.clone()),
        }),
    }
}

fn filter_pb(f: &Filter) -> pb::Filter {
    use pb::filter::Kind as K;
    pb::Filter {
        kind: Some(match f {
            Filter::RequestHeaderModifier(h) => K::RequestHeaderModifier(header_modifier_pb(h)),
            Filter::ResponseHeaderModifier(h) => K::ResponseHeaderModifier(header_modifier_pb(h)),
            Filter::RequestMirror(m) => K::RequestMirror(pb::RequestMirror {
                backend_ref: Some(backend_pb(&m.service, None)),
                fraction: Some(pb::Fraction {
                    numerator: m.fraction.numerator,
                    denominator: m.fraction.denominator,
                }),
            }),
            Filter::RequestRedirect(r) => K::RequestRedirect(pb::RequestRedirect {
                scheme: r.scheme.map(|s| s.as_str().to_owned()).unwrap_or_default(),
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(path_modifier_pb),
                port: r.port.map_or(0, u32::from),
                status_code: u32::from(r.status),
            }),
            Filter::UrlRewrite(r) => K::UrlRewrite(pb::UrlRewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(path_modifier_pb),
            }),
        }),
    }
}

fn percentage_pb(f: Fraction) -> f64 {
    f64::from(f.numerator) * 100.0 / f64::from(f.denominator.max(1))
}

fn fault_pb(f: &Fault) -> pb::FaultInjection {
    use pb::fault_injection::{abort::ErrorType, Abort, Delay};
    pb::FaultInjection {
        delay: f.delay.as_ref().map(|d| Delay {
            fixed_delay: Some(duration_pb(d.delay)),
            percentage: percentage_pb(d.fraction),
        }),
        abort: f.abort.as_ref().map(|a| Abort {
            error_type: Some(match a.status {
                AbortStatus::Http(s) => ErrorType::HttpStatus(u32::from(s)),
                AbortStatus::Grpc(c) => ErrorType::GrpcStatus(
                    GRPC_STATUS_NAMES
                        .get(c as usize)
                        .copied()
                        .unwrap_or("UNKNOWN")
                        .to_owned(),
                ),
            }),
            percentage: percentage_pb(a.fraction),
        }),
    }
}
