//! The HTTP side: routes Kubernetes API paths to the store, and streams
//! watches as newline-delimited JSON events.
//!
//! Paths: `/api/v1/...` and `/apis/<group>/<version>/...`, then
//! `[namespaces/<ns>/]<plural>[/<name>[/status]]`. Verbs: GET (get, list,
//! and with `watch=1` watch), POST, PUT, PATCH, DELETE. Discovery:
//! `/api`, `/apis`, `/api/v1`, `/apis/<group>[/<version>]`, `/version`.
//! Not served: OpenAPI (`/openapi/v2`, `/openapi/v3` answer 404), so
//! `kubectl apply` needs `--validate=false`; protobuf (JSON only).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::apply::server_side_apply;
use super::patch::{json_patch, merge_patch, strategic_merge_patch};
use super::resources::{self, ResourceType, RESOURCES};
use super::selector::Selector;
use super::store::{name_of, ApiError, Broadcast, Event, EventType, ResourceId, Store};

pub type Body = BoxBody<Bytes, Infallible>;

/// Request bodies larger than this are refused.
const MAX_BODY: usize = 8 << 20;
/// A watch that asks for no timeout ends after this (as the API server's
/// `--min-request-timeout` range).
const MAX_WATCH: Duration = Duration::from_secs(1800);

pub struct Shared {
    pub store: Arc<Store>,
    pub token_reviews: Arc<super::tokenreview::TokenReviews>,
    /// `host:port`, for `/api`'s `serverAddressByClientCIDRs`.
    pub server: String,
    pub bookmark_interval: Duration,
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("valid response")
}

fn error(e: ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    full(status, e.status())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// A request for objects of one type.
struct Target {
    resource: ResourceId,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Target {
    fn rt(&self) -> &'static ResourceType {
        &RESOURCES[self.resource]
    }

    /// The namespace the object lives in (`""` for cluster-scoped).
    fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }
}

fn parse_target(group: &str, version: &str, segs: &[&str]) -> Result<Target, ApiError> {
    let namespaced_path = segs.len() >= 3
        && segs[0] == "namespaces"
        && resources::by_plural(group, version, segs[2]).is_some_and(|r| r.namespaced);
    let (namespace, rest) = if namespaced_path {
        (Some(segs[1].to_owned()), &segs[2..])
    } else {
        (None, segs)
    };
    let plural = rest.first().copied().unwrap_or_default();
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let resource = RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
        .ok_or_else(not_found)?;
    let status = match rest.get(2) {
        None => false,
        Some(&"status") if RESOURCES[resource].status => true,
        Some(_) => return Err(not_found()),
    };
    if rest.len() > 3 {
        return Err(not_found());
    }
    Ok(Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        status,
    })
}

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let resp = match (req.method(), segs.as_slice()) {
        (&Method::GET, ["version"]) => full(
            StatusCode::OK,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-ambient-mesh-test", "platform": "linux/amd64"}),
        ),
        (&Method::GET, ["openapi", "v3"]) => full(StatusCode::OK, resources::openapi_v3_root()),
        (&Method::GET, ["openapi", "v3", "api", "v1"]) => {
            discovery(resources::openapi_v3_group("", "v1"))
        }
        (&Method::GET, ["openapi", "v3", "apis", group, version]) => {
            discovery(resources::openapi_v3_group(group, version))
        }
        (&Method::GET, ["api"]) => full(StatusCode::OK, resources::api_versions(&shared.server)),
        (&Method::GET, ["apis"]) => full(StatusCode::OK, resources::api_group_list()),
        (&Method::GET, ["api", "v1"]) => discovery(resources::api_resource_list("", "v1")),
        (&Method::GET, ["apis", group]) => discovery(resources::api_group(group)),
        (&Method::GET, ["apis", group, version]) => {
            discovery(resources::api_resource_list(group, version))
        }
        (&Method::POST, ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            match body_json(req).await {
                Ok((body, _)) => full(StatusCode::CREATED, shared.token_reviews.review(&body)),
                Err(e) => error(e),
            }
        }
        (_, ["api", "v1", rest @ ..]) if !rest.is_empty() => {
            let target = parse_target("", "v1", rest);
            serve(&shared, req, target).await
        }
        (_, ["apis", group, version, rest @ ..]) if !rest.is_empty() => {
            let target = parse_target(group, version, rest);
            serve(&shared, req, target).await
        }
        _ => error(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    };
    Ok(resp)
}

fn discovery(doc: Option<Value>) -> Response<Body> {
    match doc {
        Some(d) => full(StatusCode::OK, d),
        None => error(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    }
}

async fn body_json(req: Request<Incoming>) -> Result<(Value, String), ApiError> {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::new(400, "BadRequest", format!("reading the body: {e}")))?
        .to_bytes();
    let value: Value = if content_type.contains("yaml") {
        serde_yaml_ng::from_slice(&body)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("YAML: {e}")))?
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("JSON: {e}")))?
    };
    Ok((value, content_type))
}

async fn serve(
    shared: &Shared,
    req: Request<Incoming>,
    target: Result<Target, ApiError>,
) -> Response<Body> {
    let t = match target {
        Ok(t) => t,
        Err(e) => return error(e),
    };
    let q = query(&req);
    let store = &shared.store;
    let method = req.method().clone();
    let mut status = StatusCode::OK;
    let result = match (&method, &t.name) {
        (&Method::GET, None)
            if matches!(q.get("watch").map(String::as_str), Some("1" | "true")) =>
        {
            return watch(shared, &t, &q);
        }
        (&Method::GET, None) => list(store, &t, &q),
        (&Method::GET, Some(name)) => store.get(t.resource, t.ns(), name),
        (&Method::POST, None) => {
            status = StatusCode::CREATED;
            body_json(req)
                .await
                .and_then(|(obj, _)| store.create(t.resource, t.ns(), obj))
        }
        (&Method::PUT, Some(name)) => body_json(req).await.and_then(|(obj, _)| {
            store.update(t.resource, t.ns(), name, |old| {
                Ok(keep_other_part(&t, old, obj))
            })
        }),
        (&Method::PATCH, Some(name)) => body_json(req)
            .await
            .and_then(|(patch, ct)| patch_object(store, &t, name, &patch, &ct, &q)),
        (&Method::DELETE, Some(name)) => store.delete(t.resource, t.ns(), name),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        )),
    };
    match result {
        Ok(v) => full(status, v),
        Err(e) => error(e),
    }
}

/// A write of the object keeps the stored status (for types with a
/// status subresource); a write of `/status` keeps all but the status.
fn keep_other_part(t: &Target, old: &Value, mut new: Value) -> Value {
    if t.status {
        let mut out = old.clone();
        out["status"] = new["status"].take();
        out["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].take();
        out
    } else {
        if t.rt().status {
            new["status"] = old["status"].clone();
            if old.get("status").is_none() {
                new.as_object_mut().map(|m| m.remove("status"));
            }
        }
        new
    }
}

fn patch_object(
    store: &Store,
    t: &Target,
    name: &str,
    patch: &Value,
    content_type: &str,
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let kind = content_type.split(';').next().unwrap_or_default().trim();
    if kind == "application/apply-patch+yaml" {
        let manager = q.get("fieldManager").cloned().unwrap_or_default();
        let force = q.get("force").is_some_and(|f| f == "true");
        return server_side_apply(
            store,
            t.resource,
            t.ns(),
            name,
            patch,
            &manager,
            force,
            t.status,
        );
    }
    store.update(t.resource, t.ns(), name, |old| {
        let mut new = old.clone();
        match kind {
            "application/merge-patch+json" => merge_patch(&mut new, patch),
            "application/strategic-merge-patch+json" => strategic_merge_patch(&mut new, patch),
            "application/json-patch+json" => json_patch(&mut new, patch)
                .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?,
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"),
                ))
            }
        }
        Ok(keep_other_part(t, old, new))
    })
}

fn selectors(q: &HashMap<String, String>) -> Result<(Selector, Selector), ApiError> {
    let parse = |k: &str| {
        Selector::parse(q.get(k).map(String::as_str).unwrap_or_default())
            .map_err(|e| ApiError::new(400, "BadRequest", e.to_string()))
    };
    Ok((parse("labelSelector")?, parse("fieldSelector")?))
}

/// A list, paged by `limit` and `continue` (`<revision>/<namespace>/<name>`
/// of the last object sent).
fn list(store: &Store, t: &Target, q: &HashMap<String, String>) -> Result<Value, ApiError> {
    let (labels, fields) = selectors(q)?;
    let after = q.get("continue").filter(|c| !c.is_empty()).map(|c| {
        let mut parts = c.splitn(3, '/');
        let rev: Option<u64> = parts.next().and_then(|r| r.parse().ok());
        let ns = parts.next().unwrap_or_default().to_owned();
        let name = parts.next().unwrap_or_default().to_owned();
        (rev, ns, name)
    });
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let (selected, rev, more) = store.list(
        t.resource,
        t.namespace.as_deref(),
        after
            .as_ref()
            .map(|(_, ns, name)| (ns.as_str(), name.as_str())),
        limit,
        |o| labels.matches_labels(o) && fields.matches_fields(o),
    );
    // Later pages answer at the first page's revision.
    let list_rev = after.as_ref().and_then(|a| a.0).unwrap_or(rev);
    let mut metadata = json!({"resourceVersion": list_rev.to_string()});
    if more {
        let last = selected.last().expect("limit > 0");
        let token = format!(
            "{list_rev}/{}/{}",
            last["metadata"]["namespace"].as_str().unwrap_or_default(),
            name_of(last)
        );
        metadata["continue"] = json!(token);
    }
    let rt = t.rt();
    Ok(json!({
        "kind": rt.list_kind(),
        "apiVersion": rt.api_version(),
        "metadata": metadata,
        "items": selected,
    }))
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// What one event means to a watch with these filters: its type and
/// object, or nothing. An object that stops matching a selector is
/// `DELETED` for that watch, one that starts matching `ADDED`.
fn render(e: &Event, t: &Target, labels: &Selector, fields: &Selector) -> Option<Bytes> {
    if e.resource != t.resource || t.namespace.as_deref().is_some_and(|ns| ns != e.namespace) {
        return None;
    }
    let m = |o: &Value| labels.matches_labels(o) && fields.matches_fields(o);
    let kind = match (e.kind, e.old.as_ref().map(m), m(&e.object)) {
        (EventType::Added, _, true) => EventType::Added,
        (EventType::Modified, Some(true), true) => EventType::Modified,
        (EventType::Modified, Some(false) | None, true) => EventType::Added,
        (EventType::Modified, Some(true), false) => EventType::Deleted,
        (EventType::Deleted, Some(true), _) => EventType::Deleted,
        _ => return None,
    };
    Some(line(kind.as_str(), &e.object))
}

fn watch(shared: &Shared, t: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let (labels, fields) = match selectors(q) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let from = q
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0")
        .map(|rv| rv.parse::<u64>());
    let from = match from.transpose() {
        Ok(f) => f,
        Err(_) => {
            return error(ApiError::new(
                400,
                "BadRequest",
                "resourceVersion is not a number",
            ))
        }
    };
    let bookmarks = q
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true" || b == "1");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(MAX_WATCH)
        .min(MAX_WATCH);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let rt = t.rt();
    let bookmark = move |rev: u64| {
        line(
            "BOOKMARK",
            &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rev.to_string()}}),
        )
    };
    let gone = |message: &str| line("ERROR", &ApiError::gone(message).status());
    match shared.store.watch(t.resource, from) {
        Err(e) => {
            // As the API server: 200, then the error as an event.
            let _ = tx.try_send(Ok(Frame::data(line("ERROR", &e.status()))));
        }
        Ok(super::store::WatchStart {
            replay,
            mut live,
            revision: start,
        }) => {
            let target = Target {
                resource: t.resource,
                namespace: t.namespace.clone(),
                name: None,
                status: false,
            };
            let interval = shared.bookmark_interval;
            tokio::spawn(async move {
                // The replay holds every event up to `start`.
                let mut last = start.max(from.unwrap_or(0));
                for e in replay {
                    last = last.max(e.rev);
                    if let Some(l) = render(&e, &target, &labels, &fields) {
                        if tx.send(Ok(Frame::data(l))).await.is_err() {
                            return;
                        }
                    }
                }
                let deadline = tokio::time::sleep(timeout);
                tokio::pin!(deadline);
                let mut tick = tokio::time::interval(interval);
                tick.tick().await;
                loop {
                    let out = tokio::select! {
                        m = live.recv() => match m {
                            Ok(Broadcast::Event(e)) => {
                                if e.rev <= last {
                                    continue;
                                }
                                last = e.rev;
                                match render(&e, &target, &labels, &fields) {
                                    Some(l) => l,
                                    None => continue,
                                }
                            }
                            Ok(Broadcast::Expire) => {
                                let _ = tx.send(Ok(Frame::data(gone("too old resource version: the watch was expired")))).await;
                                return;
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                let _ = tx.send(Ok(Frame::data(gone("too old resource version: the watch fell behind")))).await;
                                return;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        _ = tick.tick(), if bookmarks => bookmark(last),
                        () = &mut deadline => return,
                        () = tx.closed() => return,
                    };
                    if tx.send(Ok(Frame::data(out))).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
        .expect("valid response")
}
