//! [`authorize_request`]: DENY first; no ALLOW → allow; otherwise a
//! matching ALLOW is needed. Pure: no I/O, no clock, no locks.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;

use super::{Condition, L7Policy, L7Rule, Operation, Source};
use crate::identity::SpiffeId;
use crate::policy::{principal_string, Decision, Denial};
use crate::state::{PolicyAction, StringMatch};

/// What is known about a request when it is authorized.
#[derive(Debug, Clone, Copy)]
pub struct RequestCtx<'a> {
    /// The tunnel peer's verified identity; `None` without one.
    pub source_identity: Option<&'a SpiffeId>,
    /// The tunnel's source address (the client pod).
    pub source_ip: IpAddr,
    /// The original client (`X-Forwarded-For` as trusted); else `source_ip`.
    pub remote_ip: IpAddr,
    /// The address the request was sent to (Service VIP or pod IP).
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// `Host` / `:authority`, as sent.
    pub host: &'a str,
    pub method: &'a str,
    /// The request target's path; a query (`?…`) is ignored.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// The request's facts in the forms policies compare against, computed
/// once per call.
struct Facts<'a> {
    ctx: &'a RequestCtx<'a>,
    principal: Option<String>,
    namespace: Option<&'a str>,
    host: Cow<'a, str>,
    path: Cow<'a, str>,
}

impl<'a> Facts<'a> {
    fn new(ctx: &'a RequestCtx<'a>) -> Self {
        let host = if ctx.host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(ctx.host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(ctx.host)
        };
        Facts {
            ctx,
            principal: ctx.source_identity.map(principal_string),
            namespace: ctx.source_identity.map(|id| id.namespace()),
            host,
            path: normalize_path(ctx.path),
        }
    }
}

/// Decides whether the request in `ctx` may proceed under `policies`
/// (those bound to this waypoint and to the Service addressed).
pub fn authorize_request<'a, I>(policies: I, ctx: &RequestCtx<'_>) -> Decision
where
    I: IntoIterator<Item = &'a L7Policy>,
    I::IntoIter: Clone,
{
    let facts = Facts::new(ctx);
    let policies = policies.into_iter();
    if let Some(deny) = policies
        .clone()
        .filter(|p| p.action == PolicyAction::Deny)
        .find(|p| policy_matches(p, &facts))
    {
        return Decision::Deny(Denial::DenyPolicy(deny.key()));
    }
    let mut allows = policies
        .filter(|p| p.action == PolicyAction::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow;
    }
    if allows.any(|p| policy_matches(p, &facts)) {
        Decision::Allow
    } else {
        Decision::Deny(Denial::NoAllowMatch)
    }
}

fn policy_matches(p: &L7Policy, f: &Facts<'_>) -> bool {
    p.rules.iter().any(|r| rule_matches(r, f))
}

fn rule_matches(r: &L7Rule, f: &Facts<'_>) -> bool {
    (r.from.is_empty() || r.from.iter().any(|s| source_matches(s, f)))
        && (r.to.is_empty() || r.to.iter().any(|o| operation_matches(o, f)))
        && r.when.iter().all(|c| condition_holds(c, f))
}

/// A positive list holds when empty or any entry matches; a `not` list
/// when no entry matches.
fn field<T>(positive: &[T], negative: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&matches)) && !negative.iter().any(&matches)
}

fn opt_matches(s: &StringMatch, v: Option<&str>) -> bool {
    v.is_some_and(|v| s.matches(v))
}

fn source_matches(s: &Source, f: &Facts<'_>) -> bool {
    let principal = f.principal.as_deref();
    field(&s.principals, &s.not_principals, |m| {
        opt_matches(m, principal)
    }) && field(&s.namespaces, &s.not_namespaces, |m| {
        opt_matches(m, f.namespace)
    }) && field(&s.ip_blocks, &s.not_ip_blocks, |c| {
        c.contains(f.ctx.source_ip)
    }) && field(&s.remote_ip_blocks, &s.not_remote_ip_blocks, |c| {
        c.contains(f.ctx.remote_ip)
    })
}

fn operation_matches(o: &Operation, f: &Facts<'_>) -> bool {
    field(&o.hosts, &o.not_hosts, |m| m.matches(&f.host))
        && field(&o.ports, &o.not_ports, |p| *p == f.ctx.destination_port)
        && field(&o.methods, &o.not_methods, |m| m.matches(f.ctx.method))
        && field(&o.paths, &o.not_paths, |m| m.matches(&f.path))
}

fn condition_holds(c: &Condition, f: &Facts<'_>) -> bool {
    match c {
        Condition::RequestHeader(name, set) => {
            let value = header_value(f.ctx.headers, name);
            set.holds(|m| opt_matches(m, value.as_deref()))
        }
        Condition::SourceIp(set) => set.holds(|c| c.contains(f.ctx.source_ip)),
        Condition::RemoteIp(set) => set.holds(|c| c.contains(f.ctx.remote_ip)),
        Condition::DestinationIp(set) => set.holds(|c| c.contains(f.ctx.destination_ip)),
        Condition::DestinationPort(set) => set.holds(|p| *p == f.ctx.destination_port),
        Condition::SourceNamespace(set) => set.holds(|m| opt_matches(m, f.namespace)),
        Condition::SourcePrincipal(set) => set.holds(|m| opt_matches(m, f.principal.as_deref())),
    }
}

/// A header's values joined with `,` (as Envoy matches them); `None` when
/// absent or not text.
fn header_value<'h>(headers: &'h HeaderMap, name: &http::HeaderName) -> Option<Cow<'h, str>> {
    let mut values = headers.get_all(name).iter();
    let mut joined = Cow::Borrowed(values.next()?.to_str().ok()?);
    for v in values {
        let s = joined.to_mut();
        s.push(',');
        s.push_str(v.to_str().ok()?);
    }
    Some(joined)
}

/// The path a policy sees: the query and fragment cut off, `%XX` of
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, and dot
/// segments removed (RFC 3986 §5.2.4). `%2F` and other reserved escapes
/// stay encoded. A path that does not start with `/` is only cut.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let cut = path.find(['?', '#']).map_or(path, |i| &path[..i]);
    if !cut.starts_with('/') {
        return Cow::Borrowed(cut);
    }
    let decoded = decode_unreserved(cut);
    let has_dots = decoded.split('/').any(|s| s == "." || s == "..");
    if !has_dots {
        return decoded;
    }
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for s in &segments {
        match *s {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    if matches!(segments.last(), Some(&".") | Some(&"..")) {
        out.push("");
    }
    Cow::Owned(format!("/{}", out.join("/")))
}

fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let digits = &b[i + 1..i + 3];
            let hex = digits
                .iter()
                .all(u8::is_ascii_hexdigit)
                .then(|| std::str::from_utf8(digits).ok())
                .flatten()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(c) = hex.filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c)) {
                out.push(char::from(c));
                i += 3;
                continue;
            }
        }
        // Not an unreserved escape: copy the byte's character as is.
        let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    Cow::Owned(out)
}
