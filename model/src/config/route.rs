//! `routes:` documents → domain routes. Each document becomes the xDS
//! message (`ambient.mesh.v1.Route`) and goes through the same checked
//! conversion the waypoint applies to what the control plane sends, so the
//! file and xDS accept exactly the same routes. Errors name the YAML key
//! (`routes[0].spec.rules[1].backendRefs[0].port`) and carry a value to
//! find its line.

use std::collections::HashSet;
use std::time::Duration;

use proto::mesh as pb;

use super::route_doc::*;
use super::time::{parse_duration, parse_timestamp};
use super::ConfigError;
use crate::route::Route;
use crate::state::Service;
use crate::xds::l7convert::{FieldError, Problem};

/// A config error at `key` about `value`.
pub(super) fn invalid(
    key: impl Into<String>,
    value: impl ToString,
    problem: Problem,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        problem,
    }
}

/// A conversion error, with its message path turned into the YAML key
/// under `prefix` (`rules[0].backend_refs[1]` → `spec.rules[0].backendRefs[1]`).
pub(super) fn from_field(
    prefix: &str,
    e: FieldError,
    rename: impl Fn(&str) -> String,
) -> ConfigError {
    let key = if e.field.is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}.{}", rename(&e.field))
    };
    let value = e.problem.value().unwrap_or_default();
    invalid(key, value, e.problem)
}

/// `snake_case` segments of a message path in `camelCase`.
pub(super) fn camel_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out.replace("grpcMatches", "matches")
}

pub(super) fn route_key_path(field: &str) -> String {
    match field.split(['.', '[']).next().unwrap_or("") {
        "name" | "namespace" | "creation_timestamp" => format!("metadata.{}", camel_path(field)),
        "kind" => "kind".to_owned(),
        _ => format!("spec.{}", camel_path(field)),
    }
}

/// Converts the `routes:` section, checking that namespaces and the
/// Services referenced exist.
pub(super) fn routes(
    docs: Vec<RouteDoc>,
    namespaces: &HashSet<&str>,
    services: &[Service],
) -> Result<Vec<Route>, ConfigError> {
    let known: HashSet<(&str, &str)> = services
        .iter()
        .map(|s| (s.namespace.as_str(), s.name.as_str()))
        .collect();
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(docs.len());
    for (i, doc) in docs.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        let ns = doc.metadata.namespace.clone();
        if !namespaces.contains(ns.as_str()) {
            return Err(ConfigError::UnknownNamespace {
                key: format!("{at}.metadata.namespace"),
                value: ns,
            });
        }
        let message = to_message(&at, doc)?;
        let route = Route::try_from(&message).map_err(|e| from_field(&at, e, route_key_path))?;
        if !names.insert(route.key()) {
            return Err(ConfigError::Duplicate {
                key: format!("{at}.metadata.name"),
                value: route.key().to_string(),
            });
        }
        check_refs(&at, &route, &known)?;
        out.push(route);
    }
    Ok(out)
}

fn check_refs(at: &str, r: &Route, known: &HashSet<(&str, &str)>) -> Result<(), ConfigError> {
    let unknown = |key: String, ns: &str, name: &str| {
        if known.contains(&(ns, name)) {
            Ok(())
        } else {
            Err(ConfigError::UnknownService {
                key,
                value: format!("{ns}/{name}"),
            })
        }
    };
    for (j, p) in r.parents.iter().enumerate() {
        unknown(
            format!("{at}.spec.parentRefs[{j}].name"),
            &p.namespace,
            &p.name,
        )?;
    }
    for (j, rule) in r.rules.iter().enumerate() {
        for (k, b) in rule.backends.iter().enumerate() {
            let key = format!("{at}.spec.rules[{j}].backendRefs[{k}].name");
            unknown(key, &b.service.namespace, &b.service.name)?;
        }
        for (k, f) in rule.filters.iter().enumerate() {
            if let crate::route::Filter::RequestMirror(m) = f {
                let key =
                    format!("{at}.spec.rules[{j}].filters[{k}].requestMirror.backendRef.name");
                unknown(key, &m.service.namespace, &m.service.name)?;
            }
        }
    }
    Ok(())
}

/// The YAML document as the xDS message, with the checks only YAML needs
/// (strings for enums and durations, `type` agreeing with its field).
pub(super) fn to_message(at: &str, doc: RouteDoc) -> Result<pb::Route, ConfigError> {
    let grpc = doc.kind == RouteKindDoc::Grpc;
    let creation_timestamp = doc
        .metadata
        .creation_timestamp
        .as_deref()
        .map(|t| {
            parse_timestamp(t)
                .map(|t| prost_types::Timestamp {
                    seconds: t.seconds,
                    nanos: t.nanos as i32,
                })
                .ok_or_else(|| {
                    invalid(
                        format!("{at}.metadata.creationTimestamp"),
                        t,
                        Problem::Conflict("not an RFC 3339 timestamp"),
                    )
                })
        })
        .transpose()?;
    let spec = format!("{at}.spec");
    let parent_refs = doc
        .spec
        .parent_refs
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let key = format!("{spec}.parentRefs[{j}]");
            check_service_ref(&key, p)?;
            if p.weight.is_some() || p.section_name.is_some() {
                return Err(invalid(
                    key,
                    &p.name,
                    Problem::Unsupported("weight or sectionName on a parentRef"),
                ));
            }
            Ok(pb::ParentRef {
                namespace: p.namespace.clone().unwrap_or_default(),
                name: p.name.clone(),
                port: p.port.unwrap_or(0),
            })
        })
        .collect::<Result<_, _>>()?;
    let rules = doc
        .spec
        .rules
        .into_iter()
        .enumerate()
        .map(|(j, r)| rule(&format!("{spec}.rules[{j}]"), r, grpc))
        .collect::<Result<_, _>>()?;
    Ok(pb::Route {
        kind: if grpc {
            pb::route::Kind::Grpc
        } else {
            pb::route::Kind::Http
        } as i32,
        name: doc.metadata.name,
        namespace: doc.metadata.namespace,
        creation_timestamp,
        parent_refs,
        rules,
    })
}

/// `group: ""` and `kind: Service`, when given.
fn check_service_ref(key: &str, r: &RefDoc) -> Result<(), ConfigError> {
    if r.group.as_deref().is_some_and(|g| !g.is_empty()) {
        return Err(invalid(
            format!("{key}.group"),
            r.group.as_deref().unwrap_or(""),
            Problem::Unsupported("a group other than \"\" (core)"),
        ));
    }
    if r.kind.as_deref().is_some_and(|k| k != "Service") {
        return Err(invalid(
            format!("{key}.kind"),
            r.kind.as_deref().unwrap_or(""),
            Problem::Unsupported("a kind other than Service"),
        ));
    }
    Ok(())
}

fn backend_ref(key: &str, r: &RefDoc) -> Result<pb::BackendRef, ConfigError> {
    check_service_ref(key, r)?;
    Ok(pb::BackendRef {
        name: r.name.clone(),
        namespace: r.namespace.clone().unwrap_or_default(),
        port: r.port.unwrap_or(0),
        weight: r.weight,
    })
}

/// `value` as one of `choices` (the enum's YAML names), or its default.
fn choice(
    key: String,
    value: Option<&str>,
    choices: &[(&'static str, i32)],
    allowed: &'static str,
) -> Result<i32, ConfigError> {
    let Some(v) = value else {
        return Ok(choices[0].1);
    };
    choices
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, n)| *n)
        .ok_or_else(|| {
            invalid(
                key,
                v,
                Problem::NotOneOf {
                    value: v.to_owned(),
                    allowed,
                },
            )
        })
}

const VALUE_TYPES: &[(&str, i32)] = &[("Exact", 0), ("RegularExpression", 1)];

fn named_values(key: &str, v: &[NamedValueDoc]) -> Result<Vec<pb::HeaderMatch>, ConfigError> {
    v.iter()
        .enumerate()
        .map(|(k, h)| {
            Ok(pb::HeaderMatch {
                r#type: choice(
                    format!("{key}[{k}].type"),
                    h.kind.as_deref(),
                    VALUE_TYPES,
                    "Exact, RegularExpression",
                )?,
                name: h.name.clone(),
                value: h.value.clone(),
            })
        })
        .collect()
}

fn duration(key: String, v: &str) -> Result<prost_types::Duration, ConfigError> {
    parse_duration(v)
        .and_then(|d: Duration| prost_types::Duration::try_from(d).ok())
        .ok_or_else(|| {
            invalid(
                key,
                v,
                Problem::Conflict("not a Gateway API duration (such as 10s, 1m30s or 250ms)"),
            )
        })
}

fn rule(key: &str, r: RuleDoc, grpc: bool) -> Result<pb::RouteRule, ConfigError> {
    let mut out = pb::RouteRule {
        name: r.name.unwrap_or_default(),
        ..Default::default()
    };
    for (k, m) in r.matches.iter().enumerate() {
        let mk = format!("{key}.matches[{k}]");
        if grpc {
            out.grpc_matches.push(grpc_match(&mk, m)?);
        } else {
            out.matches.push(http_match(&mk, m)?);
        }
    }
    for (k, f) in r.filters.into_iter().enumerate() {
        out.filters.push(filter(&format!("{key}.filters[{k}]"), f)?);
    }
    for (k, b) in r.backend_refs.iter().enumerate() {
        out.backend_refs
            .push(backend_ref(&format!("{key}.backendRefs[{k}]"), b)?);
    }
    if let Some(t) = r.timeouts {
        out.timeouts = Some(pb::Timeouts {
            request: t
                .request
                .map(|d| duration(format!("{key}.timeouts.request"), &d))
                .transpose()?,
            backend_request: t
                .backend_request
                .map(|d| duration(format!("{key}.timeouts.backendRequest"), &d))
                .transpose()?,
        });
    }
    if let Some(t) = r.retry {
        out.retry = Some(pb::Retry {
            attempts: t.attempts,
            codes: t.codes,
            backoff: t
                .backoff
                .map(|d| duration(format!("{key}.retry.backoff"), &d))
                .transpose()?,
        });
    }
    if let Some(f) = r.fault {
        out.fault = Some(fault(&format!("{key}.fault"), f)?);
    }
    Ok(out)
}

fn http_match(key: &str, m: &MatchDoc) -> Result<pb::HttpRouteMatch, ConfigError> {
    const PATH_TYPES: &[(&str, i32)] = &[("PathPrefix", 0), ("Exact", 1), ("RegularExpression", 2)];
    let method = match &m.method {
        None => String::new(),
        Some(MethodDoc::Http(s)) => s.clone(),
        Some(MethodDoc::Grpc(_)) => {
            return Err(invalid(
                format!("{key}.method"),
                "",
                Problem::Conflict("an HTTPRoute method is a string such as GET"),
            ))
        }
    };
    Ok(pb::HttpRouteMatch {
        path: m
            .path
            .as_ref()
            .map(|p| {
                Ok::<_, ConfigError>(pb::PathMatch {
                    r#type: choice(
                        format!("{key}.path.type"),
                        p.kind.as_deref(),
                        PATH_TYPES,
                        "PathPrefix, Exact, RegularExpression",
                    )?,
                    value: p.value.clone().unwrap_or_default(),
                })
            })
            .transpose()?,
        headers: named_values(&format!("{key}.headers"), &m.headers)?,
        query_params: named_values(&format!("{key}.queryParams"), &m.query_params)?
            .into_iter()
            .map(|h| pb::QueryParamMatch {
                r#type: h.r#type,
                name: h.name,
                value: h.value,
            })
            .collect(),
        method,
    })
}

fn grpc_match(key: &str, m: &MatchDoc) -> Result<pb::GrpcRouteMatch, ConfigError> {
    if m.path.is_some() || !m.query_params.is_empty() {
        return Err(invalid(
            key.to_owned(),
            "",
            Problem::Conflict("a GRPCRoute matches on method and headers only"),
        ));
    }
    let method = match &m.method {
        None => None,
        Some(MethodDoc::Http(s)) => {
            return Err(invalid(
                format!("{key}.method"),
                s,
                Problem::Conflict("a GRPCRoute method is {service, method}"),
            ))
        }
        Some(MethodDoc::Grpc(g)) => Some(pb::GrpcMethodMatch {
            r#type: choice(
                format!("{key}.method.type"),
                g.kind.as_deref(),
                VALUE_TYPES,
                "Exact, RegularExpression",
            )?,
            service: g.service.clone().unwrap_or_default(),
            method: g.method.clone().unwrap_or_default(),
        }),
    };
    Ok(pb::GrpcRouteMatch {
        method,
        headers: named_values(&format!("{key}.headers"), &m.headers)?,
    })
}

fn header_modifier(h: HeaderModifierDoc) -> pb::HeaderModifier {
    let pairs = |v: Vec<HeaderDoc>| {
        v.into_iter()
            .map(|h| pb::Header {
                name: h.name,
                value: h.value,
            })
            .collect()
    };
    pb::HeaderModifier {
        set: pairs(h.set),
        add: pairs(h.add),
        remove: h.remove,
    }
}

fn path_modifier(key: String, p: PathModifierDoc) -> Result<pb::PathModifier, ConfigError> {
    use pb::path_modifier::Type as T;
    let t = match (p.kind.as_str(), p.replace_full_path, p.replace_prefix_match) {
        ("ReplaceFullPath", Some(v), None) => T::ReplaceFullPath(v),
        ("ReplacePrefixMatch", None, Some(v)) => T::ReplacePrefixMatch(v),
        (t, ..) => return Err(invalid(key, t, Problem::Conflict("type must be ReplaceFullPath with replaceFullPath, or ReplacePrefixMatch with replacePrefixMatch"))),
    };
    Ok(pb::PathModifier { r#type: Some(t) })
}

fn filter(key: &str, f: FilterDoc) -> Result<pb::Filter, ConfigError> {
    use pb::filter::Kind as K;
    let given = [
        f.request_header_modifier.is_some(),
        f.response_header_modifier.is_some(),
        f.request_mirror.is_some(),
        f.request_redirect.is_some(),
        f.url_rewrite.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(invalid(
            key.to_owned(),
            &f.kind,
            Problem::Conflict("a filter holds only the field its type names"),
        ));
    }
    let mismatch = || {
        invalid(
            format!("{key}.type"),
            &f.kind,
            Problem::Conflict("the field this type names is missing"),
        )
    };
    let kind = match f.kind.as_str() {
        "RequestHeaderModifier" => K::RequestHeaderModifier(header_modifier(f.request_header_modifier.clone().ok_or_else(mismatch)?)),
        "ResponseHeaderModifier" => K::ResponseHeaderModifier(header_modifier(f.response_header_modifier.clone().ok_or_else(mismatch)?)),
        "RequestMirror" => {
            let m = f.request_mirror.clone().ok_or_else(mismatch)?;
            let mk = format!("{key}.requestMirror");
            let fraction = match (m.percent, m.fraction) {
                (None, None) => None,
                (Some(p), None) => Some(pb::Fraction { numerator: p, denominator: 100 }),
                (None, Some(fr)) => Some(pb::Fraction { numerator: fr.numerator, denominator: fr.denominator.unwrap_or(100) }),
                (Some(p), Some(_)) => return Err(invalid(mk, p, Problem::Conflict("only one of percent and fraction"))),
            };
            K::RequestMirror(pb::RequestMirror { backend_ref: Some(backend_ref(&format!("{mk}.backendRef"), &m.backend_ref)?), fraction })
        }
        "RequestRedirect" => {
            let r = f.request_redirect.clone().ok_or_else(mismatch)?;
            K::RequestRedirect(pb::RequestRedirect {
                scheme: r.scheme.unwrap_or_default(),
                hostname: r.hostname.unwrap_or_default(),
                path: r.path.map(|p| path_modifier(format!("{key}.requestRedirect.path.type"), p)).transpose()?,
                port: r.port.unwrap_or(0),
                status_code: r.status_code.unwrap_or(0),
            })
        }
        "URLRewrite" => {
            let r = f.url_rewrite.clone().ok_or_else(mismatch)?;
            K::UrlRewrite(pb::UrlRewrite {
                hostname: r.hostname.unwrap_or_default(),
                path: r.path.map(|p| path_modifier(format!("{key}.urlRewrite.path.type"), p)).transpose()?,
            })
        }
        other => {
            return Err(invalid(format!("{key}.type"), other, Problem::NotOneOf {
                value: other.to_owned(),
                allowed: "RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, RequestRedirect, URLRewrite",
            }))
        }
    };
    Ok(pb::Filter { kind: Some(kind) })
}

fn fault(key: &str, f: FaultDoc) -> Result<pb::FaultInjection, ConfigError> {
    use pb::fault_injection::{abort::ErrorType, Abort, Delay};
    let pct = |p: Option<PercentDoc>| p.map_or(100.0, |p| p.value);
    let delay = f
        .delay
        .map(|d| {
            Ok::<_, ConfigError>(Delay {
                fixed_delay: Some(duration(format!("{key}.delay.fixedDelay"), &d.fixed_delay)?),
                percentage: pct(d.percentage),
            })
        })
        .transpose()?;
    let abort = f
        .abort
        .map(|a| {
            let error_type = match (a.http_status, a.grpc_status) {
                (Some(s), None) => Some(ErrorType::HttpStatus(s)),
                (None, Some(g)) => Some(ErrorType::GrpcStatus(g)),
                (None, None) => None,
                (Some(s), Some(_)) => {
                    return Err(invalid(
                        format!("{key}.abort"),
                        s,
                        Problem::Conflict("only one of httpStatus and grpcStatus"),
                    ))
                }
            };
            Ok(Abort {
                error_type,
                percentage: pct(a.percentage),
            })
        })
        .transpose()?;
    Ok(pb::FaultInjection { delay, abort })
}
