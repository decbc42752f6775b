//! The waypoint controller: a Gateway API `Gateway` of class
//! `istio-waypoint` is reconciled into the waypoint's Deployment, Service
//! (HBONE on 15008) and ServiceAccount, each owned by the Gateway (owner
//! references: deleting the Gateway deletes them), written by server-side
//! apply under our field manager; its `Accepted` and `Programmed`
//! conditions (and the Service's address) are written back to the
//! Gateway's status subresource, only when they change.
//!
//! ```text
//!  Gateway watch ─► reconcile(gw) ─ not leader / other class ─► nothing
//!                     │ objects.rs (pure): SA, Service, Deployment as JSON
//!                     ▼
//!                   PATCH (apply, fieldManager=ambient-mesh-waypoint-controller, force)
//!                     ▼
//!                   PATCH …/gateways/<name>/status (apply), when it differs
//! ```
//!
//! Only the leader writes: `leader` is a `watch` channel that says whether
//! this replica leads (Lease-based election, `leader.rs`); becoming leader
//! reconciles every Gateway again. Failures are retried with backoff
//! (kube-rs's controller); a Gateway is also reconciled every five
//! minutes, which restores what someone else changed or deleted.

pub mod objects;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::Api;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::source::kube::gateway::{Gateway, WAYPOINT_CLASS};
use objects::{Owner, Settings, FIELD_MANAGER};

/// How often a reconciled Gateway is looked at again.
const RESYNC: Duration = Duration::from_secs(300);
/// The delay before retrying a failed reconcile.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("applying the waypoint's {kind}")]
    Apply {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("writing the Gateway's status")]
    Status(#[source] kube::Error),
}

struct Ctx {
    client: kube::Client,
    settings: Settings,
    leader: watch::Receiver<bool>,
}

/// Runs the controller until `leader`'s sender is dropped... or forever.
pub async fn run(client: kube::Client, settings: Settings, leader: watch::Receiver<bool>) {
    let gateways = Api::<Gateway>::all(client.clone());
    // Becoming leader reconciles every Gateway.
    let became_leader = tokio_stream::wrappers::WatchStream::new(leader.clone())
        .filter(|l| std::future::ready(*l))
        .map(|_| ());
    let ctx = Arc::new(Ctx {
        client,
        settings,
        leader,
    });
    Controller::new(gateways, watcher::Config::default())
        .reconcile_all_on(became_leader)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            match r {
                Ok((gw, _)) => tracing::debug!(gateway = %format!("{}/{}", gw.namespace.as_deref().unwrap_or(""), gw.name), "waypoint reconciled"),
                Err(e) => tracing::debug!(error = %mesh_runtime::error::error_chain(&e), "waypoint controller"),
            }
            std::future::ready(())
        })
        .await;
}

fn error_policy(gw: Arc<Gateway>, e: &ReconcileError, _: Arc<Ctx>) -> Action {
    tracing::warn!(
        gateway = %format!("{}/{}", gw.metadata.namespace.as_deref().unwrap_or(""), gw.metadata.name.as_deref().unwrap_or("")),
        error = %mesh_runtime::error::error_chain(e),
        "waypoint reconcile failed; retrying"
    );
    Action::requeue(RETRY)
}

async fn reconcile(gw: Arc<Gateway>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if !*ctx.leader.borrow() || gw.spec.gateway_class_name != WAYPOINT_CLASS {
        return Ok(Action::await_change());
    }
    if gw.metadata.deletion_timestamp.is_some() {
        // Its objects go with it (owner references).
        return Ok(Action::await_change());
    }
    let Some(owner) = Owner::of(&gw) else {
        return Ok(Action::await_change());
    };
    let applied = apply_all(&ctx, &owner).await;
    let address = applied.as_ref().ok().cloned().flatten();
    let conditions = objects::conditions(
        &applied
            .as_ref()
            .map(|_| ())
            .map_err(|e| mesh_runtime::error::error_chain(e)),
    );
    let now = k8s_openapi::chrono::Utc::now()
        .to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
    if let Some(patch) = objects::status_patch(
        &gw,
        gw.status.as_ref(),
        &conditions,
        address.as_deref(),
        &now,
    ) {
        let api = Api::<Gateway>::namespaced(ctx.client.clone(), &owner.namespace);
        api.patch_status(&owner.name, &apply_params(), &Patch::Apply(patch))
            .await
            .map_err(ReconcileError::Status)?;
        tracing::info!(gateway = %format!("{}/{}", owner.namespace, owner.name), programmed = applied.is_ok(), "waypoint status written");
    }
    applied?;
    Ok(Action::requeue(RESYNC))
}

fn apply_params() -> PatchParams {
    // Ours to own: a conflicting manager's values are taken over.
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies the three objects; the Service's cluster IP when it has one.
async fn apply_all(ctx: &Ctx, o: &Owner) -> Result<Option<String>, ReconcileError> {
    apply::<ServiceAccount>(ctx, o, "ServiceAccount", objects::service_account(o)).await?;
    let svc: Service = apply(ctx, o, "Service", objects::service(o)).await?;
    apply::<Deployment>(ctx, o, "Deployment", objects::deployment(o, &ctx.settings)).await?;
    Ok(svc
        .spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None"))
}

async fn apply<K>(
    ctx: &Ctx,
    o: &Owner,
    kind: &'static str,
    obj: serde_json::Value,
) -> Result<K, ReconcileError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api = Api::<K>::namespaced(ctx.client.clone(), &o.namespace);
    api.patch(&o.name, &apply_params(), &Patch::Apply(obj))
        .await
        .map_err(|source| ReconcileError::Apply { kind, source })
}
