//! Sending one request to a backend: an endpoint chosen per attempt, and
//! retries as the rule allows.
//!
//! | outcome of an attempt | retried |
//! |---|---|
//! | nothing reached the endpoint (connect failure, stale connection) | always, within the attempts |
//! | a response whose status the rule's `retry.codes` lists | if the body can be sent again ([`Replay`]) |
//! | no response head within `timeouts.backendRequest` | if the rule has `retry` and the body can be sent again |
//! | the exchange failed after the request went out | never (the endpoint may have acted on it) |
//!
//! Every retry also needs the retry budget ([`crate::lb::RetryBudget`]),
//! waits a jittered, doubling backoff ([`retry_backoff`]), and prefers an
//! endpoint not tried yet. `timeouts.request` bounds all of it: 504 if
//! no response head arrived within it; a response body still streaming at
//! its deadline is cut (`body::ResponseBody`), as the Gateway API intends
//! it to cover the whole request-response exchange.

use std::net::SocketAddr;
use std::time::Duration;

use futures::FutureExt;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use mesh_model::route::{retry_backoff, RouteRule};
use mesh_model::ResponseFlag;

use super::replay::Replay;
use crate::proxy::Stream;
use crate::record::Record;
use crate::route::Backend;
use crate::upstream::balancer::{Chosen, InFlight};
use crate::upstream::dial;
use crate::upstream::pool::{NotSentError, SendError, UpBody};

/// Attempts of a request on a rule without `retry` (and on the default
/// route), for failures to reach an endpoint: Istio's default, the first
/// try and two retries.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// The base backoff between retries when the rule gives none (Envoy's).
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// The retry and timeout settings for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy<'a> {
    /// Attempts in all (the first and the retries).
    pub attempts: u32,
    /// Response statuses that are retried.
    pub codes: &'a [u16],
    /// The rule asked for retries: a per-attempt timeout is retried too.
    pub explicit: bool,
    pub backoff: Duration,
    /// Each attempt's deadline for its response head.
    pub per_attempt: Option<Duration>,
    /// The whole request's deadline for its response head.
    pub deadline: Option<Duration>,
}

impl<'a> Policy<'a> {
    /// The policy of `rule`; `None`: the default route.
    pub fn of(rule: Option<&'a RouteRule>) -> Policy<'a> {
        let retry = rule.and_then(|r| r.retry.as_ref());
        Policy {
            attempts: retry.map_or(DEFAULT_ATTEMPTS, |r| r.attempts().saturating_add(1)),
            codes: retry.map_or(&[][..], |r| r.codes.as_slice()),
            explicit: retry.is_some(),
            backoff: retry.and_then(|r| r.backoff).unwrap_or(DEFAULT_BACKOFF),
            per_attempt: rule.and_then(|r| r.timeouts.backend_request()),
            deadline: rule.and_then(|r| r.timeouts.request()),
        }
    }
}

/// Why no response came back: what to answer, and the record says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    pub status: StatusCode,
    pub body: &'static str,
}

/// What one attempt came to.
enum Outcome {
    Response(Response<Incoming>, Chosen),
    /// A response whose status the rule retries: retried if it can be,
    /// else it is the answer.
    RetriableResponse(Response<Incoming>, Chosen),
    /// No response; retried if allowed (`needs_body`: only if the body can
    /// be sent again), else answered with this.
    Retriable {
        failed: Failed,
        needs_body: bool,
    },
    Final(Failed),
}

const UNREACHABLE: Failed = Failed {
    status: StatusCode::SERVICE_UNAVAILABLE,
    body: "upstream connect error\n",
};
const TIMEOUT: Failed = Failed {
    status: StatusCode::GATEWAY_TIMEOUT,
    body: "upstream request timeout\n",
};

/// Sends the request (`head` and the body of `replay`) to an endpoint of
/// `backend`, retrying as `policy` allows.
pub async fn send(
    s: &Stream,
    backend: &Backend,
    head: &http::request::Parts,
    replay: &Replay,
    policy: &Policy<'_>,
    rec: &mut Record,
) -> Result<(Response<Incoming>, Chosen), Failed> {
    let attempts = attempts(s, backend, head, replay, policy, rec);
    match policy.deadline {
        None => attempts.await,
        Some(d) => match tokio::time::timeout(d, attempts).await {
            Ok(r) => r,
            Err(_) => {
                rec.fail(
                    ResponseFlag::None,
                    "request_timeout",
                    format!("no response within {d:?}"),
                );
                Err(TIMEOUT)
            }
        },
    }
}

async fn attempts(
    s: &Stream,
    backend: &Backend,
    head: &http::request::Parts,
    replay: &Replay,
    policy: &Policy<'_>,
    rec: &mut Record,
) -> Result<(Response<Incoming>, Chosen), Failed> {
    let balancer = &s.proxy.balancer;
    let total = policy.attempts.max(1);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut _retry: Option<InFlight> = None;
    for n in 0..total {
        if n > 0 {
            tokio::time::sleep(retry_backoff(policy.backoff, n, rand::random())).await;
        }
        let chosen = balancer
            .choose(&backend.group, &backend.endpoints, &tried)
            .or_else(|| balancer.choose(&backend.group, &backend.endpoints, &[]));
        let Some(chosen) = chosen else {
            rec.fail(
                ResponseFlag::Connect,
                "no_healthy_upstream",
                "no endpoint to try",
            );
            return Err(UNREACHABLE);
        };
        tried.push(chosen.endpoint.addr);
        rec.event.attempts += 1;
        rec.event.upstream = Some(chosen.endpoint.addr.to_string());
        rec.upstream_workload = backend.workload_at(chosen.endpoint.addr).cloned();
        let last = n + 1 == total;
        let outcome = attempt(s, backend, head, replay, policy, chosen, rec).await;
        // Whether another attempt may follow: attempts left, the body at
        // hand if it must be sent again, and room in the retry budget.
        let mut again = |needs_body: bool| {
            if last || (needs_body && !replay.replayable()) {
                return false;
            }
            match balancer.retry() {
                Some(g) => {
                    _retry = Some(g);
                    true
                }
                None => {
                    rec.event.reason = Some("retry_budget_exhausted");
                    false
                }
            }
        };
        match outcome {
            Outcome::Response(resp, chosen) => return Ok((resp, chosen)),
            Outcome::RetriableResponse(resp, chosen) => {
                if !again(true) {
                    return Ok((resp, chosen));
                }
            }
            Outcome::Retriable { failed, needs_body } => {
                if !again(needs_body) {
                    return Err(failed);
                }
            }
            Outcome::Final(f) => return Err(f),
        }
    }
    Err(UNREACHABLE)
}

/// One attempt on `chosen`.
async fn attempt(
    s: &Stream,
    backend: &Backend,
    head: &http::request::Parts,
    replay: &Replay,
    policy: &Policy<'_>,
    chosen: Chosen,
    rec: &mut Record,
) -> Outcome {
    let proxy = &s.proxy;
    let ep = chosen.endpoint.clone();
    let request = rebuild(head, UpBody::new(replay.attempt()));
    let meta = s.meta.clone();
    let (client, me) = (proxy.hbone.clone(), proxy.identity.clone());
    let target = ep.clone();
    let dialer = move || {
        let mut meta = meta.clone();
        meta.traceparent = Some(hbone::headers::new_traceparent());
        let (client, me, target) = (client.clone(), me.clone(), target.clone());
        async move { dial::dial(&client, &me, &target, meta).await }.boxed()
    };
    let sent = proxy.pool.send(&ep, s.version, request, &dialer);
    let sent = match policy.per_attempt {
        None => sent.await,
        Some(d) => match tokio::time::timeout(d, sent).await {
            Ok(r) => r,
            Err(_) => {
                proxy.balancer.report(&chosen, &backend.endpoints, true);
                rec.fail(
                    ResponseFlag::None,
                    "backend_request_timeout",
                    format!("no response within {d:?}"),
                );
                return if policy.explicit {
                    Outcome::Retriable {
                        failed: TIMEOUT,
                        needs_body: true,
                    }
                } else {
                    Outcome::Final(TIMEOUT)
                };
            }
        },
    };
    let report = |failed| {
        if let Some(e) = proxy.balancer.report(&chosen, &backend.endpoints, failed) {
            proxy.telemetry.metrics.ejections.inc();
            tracing::warn!(endpoint = %e.addr, period = ?e.period, "endpoint ejected after consecutive failures");
        }
    };
    match sent {
        Ok(resp) => {
            let status = resp.status();
            report(status.is_server_error());
            rec.flag = ResponseFlag::None;
            rec.event.reason = None;
            rec.event.error = None;
            if policy.codes.contains(&status.as_u16()) {
                return Outcome::RetriableResponse(resp, chosen);
            }
            Outcome::Response(resp, chosen)
        }
        Err(SendError::NotSent { error, .. }) => {
            report(true);
            let flag = match &error {
                NotSentError::Dial(d) => d.flag(),
                _ => ResponseFlag::Connect,
            };
            tracing::debug!(endpoint = %ep.addr, error = %mesh_runtime::error_chain(&error), "upstream not reached");
            rec.fail(
                flag,
                "upstream_connect_failure",
                mesh_runtime::error_chain(&error),
            );
            Outcome::Retriable {
                failed: UNREACHABLE,
                needs_body: false,
            }
        }
        Err(SendError::Failed(e)) => {
            if let Some(v) = s.verdicts.as_ref().and_then(|v| v.get()) {
                rec.fail(ResponseFlag::None, v.reason(), v);
                return Outcome::Final(Failed {
                    status: v.status(),
                    body: "malformed request body\n",
                });
            }
            if e.is_user() {
                // The client's body failed, not the endpoint.
                rec.fail(
                    ResponseFlag::None,
                    "downstream_body_error",
                    mesh_runtime::error_chain(&e),
                );
                return Outcome::Final(Failed {
                    status: StatusCode::BAD_REQUEST,
                    body: "request body failed\n",
                });
            }
            report(true);
            rec.fail(
                ResponseFlag::Connect,
                "upstream_reset",
                mesh_runtime::error_chain(&e),
            );
            Outcome::Final(Failed {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: "upstream reset before response\n",
            })
        }
    }
}

/// A request with `head`'s line, headers and extended-CONNECT protocol.
pub fn rebuild(head: &http::request::Parts, body: UpBody) -> Request<UpBody> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    if let Some(p) = head.extensions.get::<hyper::ext::Protocol>() {
        req.extensions_mut().insert(p.clone());
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_of_rules() {
        let default = Policy::of(None);
        assert_eq!(
            (default.attempts, default.codes, default.explicit),
            (3, &[][..], false)
        );
        let snap = mesh_model::config::parse(
            r#"
namespaces: [{name: shop}]
services: [{name: r, namespace: shop, vip: 10.96.0.20, ports: [{port: 80}]}]
routes:
  - kind: HTTPRoute
    metadata: {name: r, namespace: shop}
    spec:
      parentRefs: [{name: r}]
      rules:
        - matches: [{path: {value: /a}}]
          retry: {attempts: 4, codes: [503], backoff: 10ms}
          timeouts: {request: 2s, backendRequest: 500ms}
          backendRefs: [{name: r, port: 80}]
        - matches: [{path: {value: /b}}]
          retry: {attempts: 0}
          backendRefs: [{name: r, port: 80}]
        - backendRefs: [{name: r, port: 80}]
"#,
        )
        .unwrap();
        let route = snap.routes().next().unwrap();
        let a = Policy::of(Some(&route.rules[0]));
        assert_eq!(a.attempts, 5, "four retries after the first");
        assert_eq!(a.codes, [503]);
        assert!(a.explicit);
        assert_eq!(a.backoff, Duration::from_millis(10));
        assert_eq!(a.per_attempt, Some(Duration::from_millis(500)));
        assert_eq!(a.deadline, Some(Duration::from_secs(2)));
        assert_eq!(Policy::of(Some(&route.rules[1])).attempts, 1, "retries off");
        let plain = Policy::of(Some(&route.rules[2]));
        assert_eq!((plain.attempts, plain.explicit), (3, false));
        assert_eq!(plain.deadline, None);
    }
}
