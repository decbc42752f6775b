//! A rule's filters applied to a request or response head, in the order
//! the rule lists them. Pure functions over `http` types.
//!
//! - `RequestHeaderModifier` / `ResponseHeaderModifier`: `set` replaces,
//!   `add` appends (`existing,new`, as the API's example shows), `remove`
//!   drops. A header name appears in one action only (checked when
//!   converted), so their order does not matter.
//! - `URLRewrite`: the host (the `host` header and the URI's authority,
//!   whichever the request has) and the path (`ReplaceFullPath`, or
//!   `ReplacePrefixMatch` of the rule's `PathPrefix`); the query is kept.
//! - `RequestRedirect`: answers instead of forwarding ([`Redirect`]).
//! - `RequestMirror` is the caller's ([`super::RouteRule::mirrors`]).

use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::select::Matched;
use super::types::{Filter, HeaderModifier, PathModifier, RequestRedirect, RouteRule, UrlRewrite};

/// What the redirect needs to know of how the request arrived.
#[derive(Debug, Clone, Copy)]
pub struct RedirectCtx<'a> {
    /// The request's scheme: `http` for plaintext inside the tunnel.
    pub scheme: &'a str,
    /// The port the request was addressed to (the Service port: the
    /// "listener port" of a mesh route).
    pub port: u16,
}

/// A redirect to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub status: StatusCode,
    pub location: String,
}

/// What to do with the request after its filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterOutcome {
    /// Forward it (headers, host and path possibly changed).
    Forward,
    /// Answer with this redirect.
    Redirect(Redirect),
    /// A rewrite produced an invalid URI (the conversions rule this out):
    /// answer 500.
    InvalidRewrite,
}

/// Applies the rule's request filters to `parts`, in order.
pub fn apply_request_filters(
    parts: &mut http::request::Parts,
    m: &Matched<'_>,
    ctx: &RedirectCtx<'_>,
) -> FilterOutcome {
    for f in &m.rule.filters {
        match f {
            Filter::RequestHeaderModifier(h) => modify_headers(&mut parts.headers, h),
            Filter::UrlRewrite(r) => {
                if rewrite(parts, r, m.matched_prefix()).is_none() {
                    return FilterOutcome::InvalidRewrite;
                }
            }
            Filter::RequestRedirect(r) => {
                return match redirect(parts, r, m.matched_prefix(), ctx) {
                    Some(r) => FilterOutcome::Redirect(r),
                    None => FilterOutcome::InvalidRewrite,
                };
            }
            Filter::ResponseHeaderModifier(_) | Filter::RequestMirror(_) => {}
        }
    }
    FilterOutcome::Forward
}

/// Applies the rule's `ResponseHeaderModifier` filters to a response.
pub fn apply_response_filters(headers: &mut HeaderMap, rule: &RouteRule) {
    for f in &rule.filters {
        if let Filter::ResponseHeaderModifier(h) = f {
            modify_headers(headers, h);
        }
    }
}

fn modify_headers(headers: &mut HeaderMap, m: &HeaderModifier) {
    for (name, value) in &m.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        let mut joined: Vec<u8> = Vec::new();
        for v in headers.get_all(name) {
            joined.extend_from_slice(v.as_bytes());
            joined.push(b',');
        }
        if joined.is_empty() {
            headers.insert(name.clone(), value.clone());
            continue;
        }
        joined.extend_from_slice(value.as_bytes());
        // Valid values joined by `,` are a valid value.
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            headers.insert(name.clone(), v);
        }
    }
    for name in &m.remove {
        headers.remove(name);
    }
}

/// `ReplacePrefixMatch`: `path` (which `prefix` matched element-wise)
/// with `prefix` replaced by `replacement`, as the API's table gives it
/// (`/foo/bar`, `/foo`, `/xyz` → `/xyz/bar`; `/foo`, `/foo`, `` → `/`).
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let head = replacement.strip_suffix('/').unwrap_or(replacement);
    let out = format!("{head}{rest}");
    if out.is_empty() {
        "/".to_owned()
    } else if out.starts_with('/') {
        out
    } else {
        format!("/{out}")
    }
}

/// The new path a modifier gives `path`; `None` when it needs a prefix
/// match and there was none.
fn modified_path(path: &str, m: &PathModifier, prefix: Option<&str>) -> Option<String> {
    match m {
        PathModifier::ReplaceFullPath(p) => Some(p.clone()),
        PathModifier::ReplacePrefixMatch(r) => Some(replace_prefix(path, prefix?, r)),
    }
}

fn rewrite(parts: &mut http::request::Parts, r: &UrlRewrite, prefix: Option<&str>) -> Option<()> {
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    let result = (|| {
        if let Some(path_mod) = &r.path {
            let current = uri.path_and_query.as_ref().map_or("/", |pq| pq.path());
            let path = modified_path(current, path_mod, prefix)?;
            let query = uri.path_and_query.as_ref().and_then(|pq| pq.query());
            let pq = match query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            uri.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
        }
        if let Some(host) = &r.hostname {
            if uri.authority.is_some() {
                uri.authority = Some(host.parse().ok()?);
            }
            let value = HeaderValue::from_str(host).ok()?;
            if parts.headers.contains_key(HOST) || uri.authority.is_none() {
                parts.headers.insert(HOST, value);
            }
        }
        Some(())
    })();
    parts.uri = Uri::from_parts(uri).ok()?;
    result
}

/// The request's host, without a port.
fn request_host(parts: &http::request::Parts) -> Option<String> {
    let raw = match parts.headers.get(HOST).and_then(|h| h.to_str().ok()) {
        Some(h) => h.to_owned(),
        None => parts.uri.authority()?.as_str().to_owned(),
    };
    Some(strip_port(&raw).to_owned())
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn redirect(
    parts: &http::request::Parts,
    r: &RequestRedirect,
    prefix: Option<&str>,
    ctx: &RedirectCtx<'_>,
) -> Option<Redirect> {
    let scheme = r.scheme.map_or(ctx.scheme, |s| s.as_str());
    let host = match &r.hostname {
        Some(h) => h.clone(),
        None => request_host(parts)?,
    };
    let port = match (r.port, r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) => s.default_port(),
        (None, None) => ctx.port,
    };
    let path = match &r.path {
        Some(m) => modified_path(parts.uri.path(), m, prefix)?,
        None => parts.uri.path().to_owned(),
    };
    let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
    let mut location = format!("{scheme}://{host}");
    if !default_port {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&path);
    if let Some(q) = parts.uri.query() {
        location.push('?');
        location.push_str(q);
    }
    Some(Redirect {
        status: StatusCode::from_u16(r.status).ok()?,
        location,
    })
}
