//! `RequestMirror`: a copy of the request goes to the mirror's Service and
//! its answer is dropped. The copy carries `Host: <host>-shadow`, as
//! Envoy's mirrors do, so the mirror can tell copies apart. Only requests
//! without a body are copied (a body would have to be held for the copy);
//! copies in flight are capped, and a copy never delays the request.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use http::header::{HeaderValue, HOST};
use http_body_util::{BodyExt, Empty};
use tokio::sync::Semaphore;

use super::attempt::rebuild;
use crate::proxy::Stream;
use crate::route::Backend;
use crate::upstream::dial;

/// Mirror copies in flight at once, over all requests.
pub const MAX_IN_FLIGHT: usize = 256;

/// The mirrors' shared cap.
pub fn limit() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_IN_FLIGHT))
}

/// Sends a copy of the request `head` to each of `mirrors`, in the
/// background.
pub fn send_copies(s: &Arc<Stream>, head: &http::request::Parts, mirrors: Vec<Backend>) {
    for backend in mirrors {
        let Ok(permit) = s.proxy.mirrors.clone().try_acquire_owned() else {
            tracing::debug!(mirror = %backend.group, "mirror copies at their cap; skipped");
            continue;
        };
        let mut copy = rebuild(head, Empty::<Bytes>::new().map_err(|e| match e {}).boxed());
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
