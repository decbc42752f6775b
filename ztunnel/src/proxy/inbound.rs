//! The inbound path (DESIGN §3–§5): HBONE on 15008, plaintext on 15006, and
//! the in-process path for same-node traffic. Each connection is admitted by
//! [`admit`] (pure), then ztunnel connects to the app (from the client's IP
//! in node mode; from the pod's own address in sidecar mode, where the proxy
//! shares the pod's namespace) and relays until both sides close or a policy
//! change revokes it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::future::BoxFuture;
use hbone::drain::Watch;
use hbone::server::{Handler, InboundRequest, ServerError, ServerIdentity};
use hbone::stream::H2Stream;
use hbone::{tls, SpiffeId};
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};

use super::conns::{Authorized, Registration};
use super::record::{inbound_service, ConnInfo, ConnRecord, Outcome, Security};
use super::{refuse_unknown_orig_dst, reset_on_close, Proxy};
use mesh_model::policy::{admit_peer, ConnCtx, Decision, Denial};
use mesh_model::state::{Scope, Snapshot, Workload};
use mesh_model::ResponseFlag;
use mesh_runtime::accesslog::Direction;

/// How a connection reached the inbound path.
#[derive(Debug, Clone, Copy)]
pub enum Arrival<'a> {
    /// HBONE: a verified peer identity, on a connection addressed to `local`.
    Hbone { local: IpAddr, peer: &'a SpiffeId },
    /// Plaintext captured on 15006: no identity.
    Plaintext,
    /// From an ambient pod on this node, captured by our own outbound path.
    InProcess { source: &'a SpiffeId },
}

/// Why an inbound connection is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("CONNECT authority {authority} is not the pod the connection arrived for ({arrived})")]
    AuthorityMismatch { authority: IpAddr, arrived: IpAddr },
    #[error("{0} is not a workload this proxy serves")]
    NotLocal(IpAddr),
    #[error("{0} is this sidecar's own listener; forwarding it would loop")]
    OwnListener(SocketAddr),
    /// STRICT mTLS refused plaintext, or L4 policy denied.
    #[error("{0}")]
    Denied(Denial),
}

impl Refusal {
    /// The HBONE response status (DESIGN §3).
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::AuthorityMismatch { .. } | Refusal::NotLocal(_) | Refusal::OwnListener(_) => {
                StatusCode::BAD_REQUEST
            }
            Refusal::Denied(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// The access log's `reason`: bounded, finer than the flag.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::AuthorityMismatch { .. } => "authority_mismatch",
            Refusal::NotLocal(_) => "not_local",
            Refusal::OwnListener(_) => "own_listener",
            Refusal::Denied(d) => d.reason(),
        }
    }

    /// `response_flags` for metrics and the access log.
    pub fn flag(&self) -> ResponseFlag {
        match self {
            Refusal::AuthorityMismatch { .. } | Refusal::NotLocal(_) | Refusal::OwnListener(_) => {
                ResponseFlag::Connect
            }
            Refusal::Denied(_) => ResponseFlag::Deny,
        }
    }
}

/// Admits a connection from `src_ip` to `dst` arriving by `arrival`: the
/// destination must be a workload in `scope` (an ambient pod on the node,
/// or the sidecar's own pod; for HBONE, the very pod the connection was
/// addressed to), and [`admit_peer`] must admit it (STRICT namespaces
/// refuse plaintext, then L4 policy). A sidecar refuses its own `proxy_ports` (the capture
/// listeners) on its pod's IP or loopback: dialling them would loop back
/// into itself. Returns the destination workload and the source identity
/// that was authorized. Pure.
pub fn admit(
    snap: &Snapshot,
    scope: &Scope,
    proxy_ports: &[u16],
    arrival: Arrival<'_>,
    src_ip: IpAddr,
    dst: SocketAddr,
) -> Result<(Arc<Workload>, Option<SpiffeId>), Refusal> {
    if let Arrival::Hbone { local, .. } = arrival {
        if local != dst.ip() {
            return Err(Refusal::AuthorityMismatch {
                authority: dst.ip(),
                arrived: local,
            });
        }
    }
    if scope.is_own_listener(snap, dst, proxy_ports) {
        return Err(Refusal::OwnListener(dst));
    }
    let workload = snap
        .workload_by_ip(dst.ip())
        .filter(|w| scope.serves(snap, w))
        .ok_or(Refusal::NotLocal(dst.ip()))?;
    let src_identity = match arrival {
        Arrival::Hbone { peer, .. } => Some(peer.clone()),
        Arrival::InProcess { source } => Some(source.clone()),
        Arrival::Plaintext => None,
    };
    let ctx = ConnCtx {
        src_identity: src_identity.clone(),
        src_ip,
        dst: workload,
        dst_port: dst.port(),
    };
    match admit_peer(snap, &ctx) {
        Decision::Allow => Ok((workload.clone(), src_identity)),
        Decision::Deny(d) => Err(Refusal::Denied(d)),
    }
}

/// Serves each HBONE connection with the certificate of the served pod it
/// was addressed to (TPROXY keeps the pod IP as the local address; a
/// sidecar's listener is bound in the pod itself).
pub struct LocalIdentities(pub Arc<Proxy>);

impl ServerIdentity for LocalIdentities {
    fn tls_config(
        &self,
        local: SocketAddr,
    ) -> BoxFuture<'static, Result<Arc<rustls::ServerConfig>, ServerError>> {
        let proxy = self.0.clone();
        Box::pin(async move {
            let id = {
                let snap = proxy.snapshot();
                snap.workload_by_ip(local.ip())
                    .filter(|w| proxy.scope.serves(&snap, w))
                    .map(|w| w.identity())
                    .ok_or(ServerError::UnknownDestination(local))?
            };
            let cert = proxy
                .certs
                .get(&id)
                .await
                .map_err(ServerError::Certificate)?;
            tls::server_config(&cert).map_err(ServerError::TlsConfig)
        })
    }
}

/// The HBONE CONNECT handler.
pub struct HboneInbound(pub Arc<Proxy>);

impl Handler for HboneInbound {
    fn handle(&self, req: InboundRequest) -> BoxFuture<'static, ()> {
        Box::pin(handle_hbone(self.0.clone(), req))
    }

    fn connection_refused(&self, _peer: SocketAddr, reason: hbone::limit::LimitReason) {
        // Logged by the server's limiter, at most once per 10 s.
        self.0.telemetry.metrics.record_refused("hbone", reason);
    }

    fn connection_failed(&self, peer: SocketAddr, local: SocketAddr, err: &ServerError) {
        tracing::warn!(%peer, %local, error = %err, cause = ?std::error::Error::source(err), "inbound HBONE connection refused");
        let info = ConnInfo {
            direction: Direction::Inbound,
            src_addr: peer,
            src: None,
            src_identity: None,
            dst_addr: local,
            dst_hbone_addr: Some(local),
            dst: None,
            dst_identity: None,
            service: None,
            security: Security::MutualTls,
        };
        let error = match std::error::Error::source(err) {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        };
        let outcome = Outcome::failed(err.flag(), error).with_finer_reason(err.reason());
        ConnRecord::refused(&self.0.telemetry, info, outcome);
    }
}

/// One HBONE CONNECT, for the stream's whole life. Everything up to the
/// relay (admission, the records, the dial to the app) runs boxed in
/// [`open_hbone`] and is freed once done: this future, held for as long as
/// the stream lives, is only the relay's state.
pub(super) async fn handle_hbone(proxy: Arc<Proxy>, req: InboundRequest) {
    let Some((mut stream, mut app, mut registration, record)) =
        Box::pin(open_hbone(&proxy, req)).await
    else {
        return;
    };
    // By reference: moved into `relay`, each would be held twice.
    let outcome = super::pipe(&mut stream, &mut app, registration.wait_revoked()).await;
    record.finish(outcome);
}

/// Admits a CONNECT and dials the app: `None` when refused or failed (both
/// recorded and answered).
async fn open_hbone(
    proxy: &Arc<Proxy>,
    req: InboundRequest,
) -> Option<(H2Stream, TcpStream, Registration, ConnRecord)> {
    let snap = proxy.snapshot();
    let src_ip = req.peer_addr.ip();
    // The client's own address, when the forwarded header agrees on the IP
    // (not so behind a waypoint).
    let client = req.meta.client.filter(|c| c.ip() == src_ip);
    let src_addr = client.unwrap_or(req.peer_addr);
    let arrival = Arrival::Hbone {
        local: req.local_addr.ip(),
        peer: &req.peer,
    };
    let mut info = ConnInfo {
        direction: Direction::Inbound,
        src_addr,
        src: snap.workload_by_ip(src_ip).cloned(),
        src_identity: Some(req.peer.clone()),
        dst_addr: req.authority,
        dst_hbone_addr: Some(req.local_addr),
        dst: None,
        dst_identity: None,
        // Known once the destination is (never the header's own text).
        service: None,
        security: Security::MutualTls,
    };
    let host = req.meta.host.as_deref();
    let (dst, src_identity) = match admit(
        &snap,
        &proxy.scope,
        &proxy.listener_ports,
        arrival,
        src_ip,
        req.authority,
    ) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            tracing::info!(src = %src_addr, peer = %req.peer, dst = %req.authority, reason = %refusal, "inbound HBONE refused");
            info.dst = snap.workload_by_ip(req.authority.ip()).cloned();
            info.dst_identity = info.dst.as_ref().map(|w| w.identity());
            info.service = info
                .dst
                .as_ref()
                .and_then(|w| inbound_service(&snap, host, w));
            req.reject(refusal.status());
            ConnRecord::refused(
                &proxy.telemetry,
                info,
                Outcome::failed(refusal.flag(), &refusal).with_reason(refusal.reason()),
            );
            return None;
        }
    };
    info.dst_identity = Some(dst.identity());
    info.service = inbound_service(&snap, host, &dst);
    info.dst = Some(dst.clone());
    let registration = register(proxy, src_identity, src_ip, &dst, req.authority.port());
    let record = ConnRecord::open(&proxy.telemetry, info);
    // Not held for the connection's life: a later config replaces it.
    drop((snap, dst));
    // From the client's own port when known: the client pod is on another
    // node, so that tuple is free in this network namespace.
    let from = SocketAddr::new(src_ip, client.map_or(0, |c| c.port()));
    let app = match proxy.dial_as(from, req.authority).await {
        Ok(app) => app,
        Err(e) => {
            tracing::info!(dst = %req.authority, error = %e, "app unreachable");
            req.reject(StatusCode::SERVICE_UNAVAILABLE);
            record.finish(Outcome::failed(ResponseFlag::Connect, error_chain(&e)));
            return None;
        }
    };
    match req.accept() {
        Ok(stream) => Some((stream, app, registration, record)),
        Err(e) => {
            record.finish(Outcome::failed(ResponseFlag::Connect, e));
            None
        }
    }
}

fn register(
    proxy: &Proxy,
    src_identity: Option<SpiffeId>,
    src_ip: IpAddr,
    dst: &Workload,
    dst_port: u16,
) -> Registration {
    proxy.conns.register(
        Authorized {
            src_identity,
            src_ip,
            dst_uid: dst.uid.clone(),
            dst_port,
        },
        || proxy.snapshot(),
    )
}

/// Copies between the client side and the app until both close, or until
/// the connection is revoked by a policy change (then `DENY`).
pub async fn relay<D>(mut downstream: D, mut app: TcpStream, mut reg: Registration) -> Outcome
where
    D: hbone::copy::CopyIo,
{
    super::pipe(&mut downstream, &mut app, reg.wait_revoked()).await
}

pub use mesh_runtime::error_chain;

/// Accepts plaintext captured on 15006 until drained.
pub async fn serve_plaintext(proxy: Arc<Proxy>, listener: TcpListener) {
    super::accept_loop(proxy, listener, "inbound_plaintext", handle_plaintext).await;
}

pub(super) async fn handle_plaintext(
    proxy: Arc<Proxy>,
    sock: TcpStream,
    peer: SocketAddr,
    _drain: Watch,
) {
    let dst_addr = match proxy.orig_dst(&sock) {
        Ok(dst) => dst,
        Err(e) => return refuse_unknown_orig_dst(&proxy, &sock, Direction::Inbound, peer, &e),
    };
    let snap = proxy.snapshot();
    let info = tcp_info(&snap, peer, None, dst_addr, None, Security::None);
    serve_tcp(&proxy, snap, sock, Arrival::Plaintext, info).await;
}

/// Same-node traffic: the inbound half run in-process for a connection our
/// outbound path captured (identity from config, no TLS hop to ourselves).
/// Returns the outcome for the outbound record too.
pub async fn in_process(
    proxy: &Arc<Proxy>,
    client: TcpStream,
    src_addr: SocketAddr,
    source: &Workload,
    dst_addr: SocketAddr,
    service: Option<String>,
) -> Outcome {
    let snap = proxy.snapshot();
    let source_id = source.identity();
    let info = tcp_info(
        &snap,
        src_addr,
        Some(source_id.clone()),
        dst_addr,
        service,
        Security::MutualTls,
    );
    let arrival = Arrival::InProcess { source: &source_id };
    serve_tcp(proxy, snap, client, arrival, info).await
}

/// What is known of an inbound TCP (not HBONE) connection before it is
/// admitted.
fn tcp_info(
    snap: &Snapshot,
    src_addr: SocketAddr,
    src_identity: Option<SpiffeId>,
    dst_addr: SocketAddr,
    service: Option<String>,
    security: Security,
) -> ConnInfo {
    let dst = snap.workload_by_ip(dst_addr.ip()).cloned();
    ConnInfo {
        direction: Direction::Inbound,
        src_addr,
        src: snap.workload_by_ip(src_addr.ip()).cloned(),
        src_identity,
        dst_addr,
        dst_hbone_addr: None,
        dst_identity: dst.as_ref().map(|w| w.identity()),
        dst,
        service,
        security,
    }
}

/// Admits a client connection that arrived as plain TCP (15006, or our own
/// outbound path), then connects to the app (from the client's IP in node
/// mode, the pod's own in sidecar mode) and relays. A refused or failed
/// client is reset. Returns the outcome, also recorded as this
/// connection's inbound event.
async fn serve_tcp(
    proxy: &Arc<Proxy>,
    snap: Arc<Snapshot>,
    client: TcpStream,
    arrival: Arrival<'_>,
    info: ConnInfo,
) -> Outcome {
    let (src_ip, dst_addr) = (info.src_addr.ip(), info.dst_addr);
    let (dst, src_identity) = match admit(
        &snap,
        &proxy.scope,
        &proxy.listener_ports,
        arrival,
        src_ip,
        dst_addr,
    ) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            tracing::info!(src = %info.src_addr, dst = %dst_addr, ?arrival, reason = %refusal, "inbound connection refused");
            // Reset rather than FIN: the client learns at once.
            reset_on_close(&client);
            let outcome = Outcome::failed(refusal.flag(), &refusal).with_reason(refusal.reason());
            ConnRecord::refused(&proxy.telemetry, info, outcome.clone());
            return outcome;
        }
    };
    let registration = register(proxy, src_identity, src_ip, &dst, dst_addr.port());
    let record = ConnRecord::open(&proxy.telemetry, info);
    // Not held for the connection's life: a later config replaces it.
    drop((snap, dst));
    // An ephemeral port: the client's own tuple is this very connection's,
    // held by the captured socket in this network namespace.
    let dialed = Box::pin(proxy.dial_as(SocketAddr::new(src_ip, 0), dst_addr)).await;
    let outcome = match dialed {
        Ok(app) => relay(client, app, registration).await,
        Err(e) => {
            reset_on_close(&client);
            Outcome::failed(ResponseFlag::Connect, error_chain(&e))
        }
    };
    record.finish(outcome.clone());
    outcome
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire_label_tests;
