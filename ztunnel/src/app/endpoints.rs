//! The control thread: admin (15000), metrics (15020) and readiness
//! (15021) endpoints, the config watcher and certificate rotation, on their
//! own current-thread runtime (STYLE rule 7).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{Method, StatusCode};
use tokio::net::TcpListener;

use super::control::Controller;
use super::listen::ControlListeners;
use super::sources::Updates;
use super::{dump, AppError, Config, Shared, ROTATION_CHECK};
use mesh_runtime::admin::{self, json, text, Route};

/// Serves `listeners` and follows `updates` on a new OS thread, until the
/// drain.
pub(super) fn spawn_control_thread(
    cfg: &Config,
    shared: &Shared,
    controller: Arc<Controller>,
    updates: Updates,
    listeners: ControlListeners,
) -> Result<std::thread::JoinHandle<()>, AppError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    // Bound (or taken over) by the caller, so a port clash fails startup
    // instead of a log line.
    let ControlListeners {
        admin: admin_l,
        metrics: metrics_l,
        readiness: ready_l,
    } = listeners;
    let (cfg, shared) = (cfg.clone(), shared.clone());
    let thread = std::thread::Builder::new()
        .name("ztunnel-control".into())
        .spawn(move || {
            runtime.block_on(async move {
                let drain = shared.drain.clone();
                let tokio_l = |l: std::net::TcpListener| {
                    TcpListener::from_std(l).expect("listener registers with the runtime")
                };
                let refusals = shared.metrics.admin_refused.clone();
                for (port, listener, route) in [
                    ("admin", admin_l, admin_route(&shared, &controller)),
                    ("metrics", metrics_l, metrics_route(&shared)),
                    ("readiness", ready_l, ready_route(&shared, &controller)),
                ] {
                    let (drain, refusals) = (drain.clone(), refusals.clone());
                    tokio::spawn(async move {
                        admin::serve_counted(tokio_l(listener), route, drain, port, &refusals).await
                    });
                }
                let rotation = shared.certs.spawn_rotation(ROTATION_CHECK);
                let retry = {
                    let (controller, drain) = (controller.clone(), drain.clone());
                    tokio::spawn(async move { controller.retry_capture(drain).await })
                };
                controller.follow(updates, cfg.poll_interval, drain).await;
                rotation.abort();
                retry.abort();
            })
        })
        .map_err(AppError::Runtime)?;
    Ok(thread)
}

/// Ready once capture and listeners are up and, for a sidecar, the served
/// pod is in the config with its certificate loaded.
fn ready_reply(ready: &AtomicBool, controller: &Controller) -> admin::Reply {
    if ready.load(Ordering::Acquire) && controller.serving_ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

fn ready_route(shared: &Shared, controller: &Arc<Controller>) -> Route {
    let ready = shared.ready.clone();
    let controller = controller.clone();
    Arc::new(move |_m: &Method, path: &str| match path {
        "/healthz/ready" => ready_reply(&ready, &controller),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn metrics_route(shared: &Shared) -> Route {
    let metrics = shared.metrics.clone();
    Arc::new(move |_m: &Method, path: &str| match path {
        "/metrics" | "/stats/prometheus" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn admin_route(shared: &Shared, controller: &Arc<Controller>) -> Route {
    let (shared, controller) = (shared.clone(), controller.clone());
    Arc::new(move |method: &Method, path: &str| match (method, path) {
        (_, "/config_dump") => {
            let snap = controller.state.borrow().clone();
            let captured: Vec<String> = match (&controller.capture, controller.scope.pod(&snap)) {
                (Some(c), _) => {
                    let c = c.lock().expect("capture poisoned");
                    c.pods().iter().map(|ip| ip.to_string()).collect()
                }
                (None, Some(pod)) => pod.ips.iter().map(|ip| ip.to_string()).collect(),
                (None, None) => Vec::new(),
            };
            json(dump::render(
                &controller.node,
                &snap,
                &captured,
                &shared.certs.all(),
            ))
        }
        (_, "/healthz/ready") => ready_reply(&shared.ready, &controller),
        (&Method::POST, "/quitquitquit") => {
            shared.shutdown.notify_one();
            text(StatusCode::OK, "shutting down\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}
