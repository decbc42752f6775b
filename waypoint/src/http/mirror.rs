//! `RequestMirror`: a copy of the request goes to the mirror's Service and
//! its answer is dropped. The copy carries `Host: <host>-shadow`, as
//! Envoy's mirrors do, so the mirror can tell copies apart. A request with
//! a body is copied once the client has sent all of it, with the bytes
//! the retry buffer kept (`replay::Kept`); a body over that bound
//! ([`super::replay::RETRY_BUFFER`]) is not copied (logged at debug). Copies
//! in flight are capped, and a copy never delays the request.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use http::header::{HeaderValue, HOST};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use tokio::sync::{watch, Semaphore};

use super::attempt::rebuild;
use super::replay::Kept;
use crate::proxy::Stream;
use crate::route::Backend;
use crate::upstream::dial;

/// Mirror copies in flight at once, over all requests.
pub const MAX_IN_FLIGHT: usize = 256;

/// The mirrors' shared cap.
pub fn limit() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_IN_FLIGHT))
}

/// Sends copies (of the request `head` and its whole body, when the
/// client has sent it) to each of `mirrors`, in the background; skipped
/// when the body outgrows the bound or the request ends without it.
pub fn send_with_body(
    s: &Arc<Stream>,
    head: &http::request::Parts,
    mirrors: Vec<Backend>,
    mut body: watch::Receiver<Option<Kept>>,
) {
    let (s, head) = (s.clone(), head.clone());
    tokio::spawn(async move {
        let kept = match body.wait_for(Option::is_some).await {
            Ok(kept) => kept.clone().unwrap_or_default(),
            Err(_) => {
                tracing::debug!(
                    path = head.uri.path(),
                    "request body over the mirror bound or unfinished; not mirrored"
                );
                return;
            }
        };
        send_copies(&s, &head, mirrors, Some(kept));
    });
}

fn body_of(kept: Option<&Kept>) -> crate::upstream::pool::UpBody {
    let Some(kept) = kept else {
        return Empty::<Bytes>::new().map_err(|e| match e {}).boxed();
    };
    let mut frames: Vec<Result<Frame<Bytes>, crate::upstream::pool::BoxError>> = kept
        .chunks
        .iter()
        .cloned()
        .map(|c| Ok(Frame::data(c)))
        .collect();
    if let Some(t) = &kept.trailers {
        frames.push(Ok(Frame::trailers(t.clone())));
    }
    StreamBody::new(futures::stream::iter(frames)).boxed()
}

/// Sends a copy of the request `head` (with `body`, or none) to each of
/// `mirrors`, in the background.
pub fn send_copies(
    s: &Arc<Stream>,
    head: &http::request::Parts,
    mirrors: Vec<Backend>,
    body: Option<Kept>,
) {
    for backend in mirrors {
        let Ok(permit) = s.proxy.mirrors.clone().try_acquire_owned() else {
            tracing::debug!(mirror = %backend.group, "mirror copies at their cap; skipped");
            continue;
        };
        let mut copy = rebuild(head, body_of(body.as_ref()));
        let host = head
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| head.uri.authority().map(|a| a.as_str()))
            .map(|h| format!("{h}-shadow"));
        if let Some(v) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            copy.headers_mut().insert(HOST, v);
        }
        let s = s.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(chosen) = s
                .proxy
                .balancer
                .choose(&backend.group, &backend.endpoints, &[])
            else {
                return;
            };
            let ep = chosen.endpoint.clone();
            let (client, me, meta) = (
                s.proxy.hbone.clone(),
                s.proxy.identity.clone(),
                s.meta.clone(),
            );
            let target = ep.clone();
            let dialer = move || {
                let (client, me, target, meta) =
                    (client.clone(), me.clone(), target.clone(), meta.clone());
                async move { dial::dial(&client, &me, &target, meta).await }.boxed()
            };
            match s.proxy.pool.send(&ep, s.version, copy, &dialer).await {
                Ok(resp) => {
                    // Read the answer to the end, so the connection is reused.
                    let _ = resp.into_body().collect().await;
                }
                Err(e) => {
                    tracing::debug!(mirror = %ep.addr, error = %mesh_runtime::error_chain(&e), "mirror copy failed")
                }
            }
        });
    }
}
