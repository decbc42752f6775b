//! The outbound path: connections from local ambient pods, captured on 15001
//! by TPROXY (so the accepted socket's local address is the original
//! destination), or, in sidecar mode, from the served pod by nat REDIRECT
//! (original destination from `SO_ORIGINAL_DST`). [`classify`] or
//! [`classify_sidecar`] decides; this module only does the I/O.

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::client::ConnectRequest;
use hbone::drain::Watch;
use hbone::headers::{new_traceparent, Baggage, ConnectMeta};
use hbone::stream::H2Stream;
use hbone::SpiffeId;
use tokio::net::{TcpListener, TcpStream};

use super::inbound::{error_chain, in_process};
use super::record::{ConnInfo, ConnRecord, Outcome, Security};
use super::{refuse_unknown_orig_dst, reset_on_close, Proxy};
use crate::classify::{classify, classify_sidecar, Route};
use mesh_model::state::{Scope, Workload};
use mesh_model::ResponseFlag;
use mesh_runtime::accesslog::Direction;

/// Accepts captured outbound connections until drained.
pub async fn serve_outbound(proxy: Arc<Proxy>, listener: TcpListener) {
    super::accept_loop(proxy, listener, "outbound", handle_outbound).await;
}

/// The `baggage` a client ztunnel sends for `w`, with Istio's canonical
/// service defaults (`app` label or the name; `version` label or `latest`).
pub fn baggage_for(w: &Workload) -> Baggage {
    let label = |keys: &[&str]| keys.iter().find_map(|k| w.labels.get(*k).cloned());
    Baggage {
        namespace: Some(w.namespace.clone()),
        workload: Some(("pod".to_owned(), w.name.clone())),
        service_name: Some(
            label(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .unwrap_or_else(|| w.name.clone()),
        ),
        service_version: Some(
            label(&[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or_else(|| "latest".to_owned()),
        ),
    }
}

/// One captured outbound connection, for its whole life. Everything up to
/// the relay (classify, the records, dialling or opening the tunnel, with
/// its TLS and HTTP/2 handshakes when the pool dials) runs boxed in
/// [`open`] and is freed once done: this task's future, held for as long as
/// the connection lives, is only the relay's state.
pub(super) async fn handle_outbound(
    proxy: Arc<Proxy>,
    sock: TcpStream,
    peer: SocketAddr,
    _drain: Watch,
) {
    let Some(Opened {
        mut sock,
        upstream,
        record,
    }) = Box::pin(open(&proxy, sock, peer)).await
    else {
        return;
    };
    let never = std::future::pending;
    let outcome = match upstream {
        Upstream::Hbone(mut s) => super::pipe(&mut sock, &mut s, never()).await,
        Upstream::Tcp(mut s) => super::pipe(&mut sock, &mut s, never()).await,
    };
    record.finish(outcome);
}

/// A connection ready to relay.
struct Opened {
    sock: TcpStream,
    upstream: Upstream,
    record: ConnRecord,
}

enum Upstream {
    Hbone(H2Stream),
    Tcp(TcpStream),
}

/// Routes `sock` and connects it: `None` when it was refused, failed (both
/// recorded), or served whole in process (same-node traffic).
async fn open(proxy: &Arc<Proxy>, sock: TcpStream, peer: SocketAddr) -> Option<Opened> {
    let orig_dst = match proxy.orig_dst(&sock) {
        Ok(dst) => dst,
        Err(e) => {
            refuse_unknown_orig_dst(proxy, &sock, Direction::Outbound, peer, &e);
            return None;
        }
    };
    let snap = proxy.snapshot();
    let pick = proxy.next_pick();
    let (route, source) = match &proxy.scope {
        Scope::Node(node) => (
            classify(&snap, peer.ip(), orig_dst, node, pick),
            snap.workload_by_ip(peer.ip()).cloned(),
        ),
        Scope::Pod(pod) => (
            classify_sidecar(&snap, pod, orig_dst, &proxy.listener_ports, pick),
            proxy.scope.pod(&snap).cloned(),
        ),
    };
    let mut info = ConnInfo {
        direction: Direction::Outbound,
        src_addr: peer,
        src_identity: source.as_ref().map(|w| w.identity()),
        src: source,
        dst_addr: orig_dst,
        dst_hbone_addr: None,
        dst: snap.workload_by_ip(orig_dst.ip()).cloned(),
        dst_identity: None,
        service: snap
            .service_by_vip(orig_dst.ip())
            .map(|s| s.hostname.clone()),
        security: Security::MutualTls,
    };
    drop(snap);
    let route = match route {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(src = %peer, dst = %orig_dst, reason = e.reason(), error = %e, "outbound connection not routable");
            reset_on_close(&sock);
            proxy.telemetry.metrics.record_outbound_refused(e.reason());
            let outcome = Outcome::failed(ResponseFlag::Connect, &e).with_reason(e.reason());
            ConnRecord::refused(&proxy.telemetry, info, outcome);
            return None;
        }
    };
    match route {
        Route::Local {
            source,
            dest,
            dst,
            forwarded_host,
        } => {
            info.dst_addr = dst;
            info.dst_identity = Some(dest.identity());
            info.dst = Some(dest);
            let record = ConnRecord::open(&proxy.telemetry, info);
            let outcome = in_process(proxy, sock, peer, &source, dst, forwarded_host).await;
            record.finish(outcome);
            None
        }
        Route::Hbone {
            source,
            dest,
            via,
            authority,
            expect,
            forwarded_host,
        } => {
            info.dst = Some(dest);
            let tunnel = Tunnel {
                via,
                authority,
                expect,
                forwarded_host,
            };
            tunnel.open(proxy, sock, peer, &source, info).await
        }
        Route::Waypoint {
            source,
            via,
            authority,
            expect,
            forwarded_host,
        } => {
            // The waypoint applies L7 policy; `dst` stays the original target.
            let tunnel = Tunnel {
                via,
                authority,
                expect,
                forwarded_host,
            };
            tunnel.open(proxy, sock, peer, &source, info).await
        }
        Route::Passthrough { dst, .. } => {
            info.dst_addr = dst;
            info.security = Security::None;
            let record = ConnRecord::open(&proxy.telemetry, info);
            match proxy.dial_as(SocketAddr::new(peer.ip(), 0), dst).await {
                Ok(upstream) => Some(Opened {
                    sock,
                    upstream: Upstream::Tcp(upstream),
                    record,
                }),
                Err(e) => {
                    reset_on_close(&sock);
                    record.finish(Outcome::failed(ResponseFlag::Connect, error_chain(&e)));
                    None
                }
            }
        }
    }
}

/// An HBONE tunnel to open for one outbound connection.
struct Tunnel {
    via: SocketAddr,
    authority: SocketAddr,
    expect: SpiffeId,
    forwarded_host: Option<String>,
}

impl Tunnel {
    /// Opens the tunnel; a failure is recorded (and the client reset) here.
    async fn open(
        self,
        proxy: &Proxy,
        sock: TcpStream,
        peer: SocketAddr,
        source: &Workload,
        mut info: ConnInfo,
    ) -> Option<Opened> {
        info.dst_addr = self.authority;
        info.dst_hbone_addr = Some(self.via);
        info.dst_identity = Some(self.expect.clone());
        let req = ConnectRequest {
            source: source.identity(),
            source_ip: proxy.tunnel_source(peer.ip()),
            expected: vec![self.expect],
            via: self.via,
            authority: self.authority,
            meta: ConnectMeta {
                client: Some(peer),
                host: self.forwarded_host,
                traceparent: Some(new_traceparent()),
                baggage: baggage_for(source),
            },
        };
        let record = ConnRecord::open(&proxy.telemetry, info);
        match proxy.client.connect(&req).await {
            Ok(stream) => Some(Opened {
                sock,
                upstream: Upstream::Hbone(stream),
                record,
            }),
            Err(e) => {
                tracing::info!(src = %peer, via = %req.via, authority = %req.authority, error = %e, cause = ?std::error::Error::source(&e), "HBONE tunnel failed");
                reset_on_close(&sock);
                record.finish(
                    Outcome::failed(e.flag(), error_chain(&e)).with_finer_reason(e.reason()),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_model::state::Tunnel as TunnelProtocol;

    #[test]
    fn baggage_uses_canonical_labels_with_istio_defaults() {
        let mut w = Workload {
            uid: "shop/cart-1".into(),
            name: "cart-1".into(),
            namespace: "shop".into(),
            service_account: "cart".into(),
            trust_domain: "cluster.local".into(),
            ips: vec![],
            node: "n1".into(),
            tunnel: TunnelProtocol::Hbone,
            native_tunnel: false,
            labels: Default::default(),
            waypoint: None,
            authorization_policies: Vec::new(),
        };
        let b = baggage_for(&w);
        assert_eq!(b.service_name.as_deref(), Some("cart-1"));
        assert_eq!(b.service_version.as_deref(), Some("latest"));
        assert_eq!(b.namespace.as_deref(), Some("shop"));
        w.labels.insert("app".into(), "cart".into());
        w.labels.insert("version".into(), "v2".into());
        let b = baggage_for(&w);
        assert_eq!(b.service_name.as_deref(), Some("cart"));
        assert_eq!(b.service_version.as_deref(), Some("v2"));
        assert_eq!(
            b.encode(),
            "k8s.namespace.name=shop,k8s.pod.name=cart-1,service.name=cart,service.version=v2"
        );
    }
}
