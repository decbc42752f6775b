//! Envoy as the waypoint, in the shape Istio configures its waypoint
//! (facts: listener and cluster names, filters, TLS settings), as a static
//! JSON bootstrap:
//!
//! - `connect_terminate` on 0.0.0.0:15008: TLS 1.3 under the waypoint's
//!   own SPIFFE identity (a certificate from the mesh's dev CA), requiring
//!   a client certificate from the trust domain, ALPN `h2`; an HTTP/2
//!   connection manager with `allow_connect` and `upgrade_configs:
//!   CONNECT`; one virtual host per bound Service whose only domain is its
//!   `VIP:port` (any other `:authority` gets 404: never an open relay),
//!   with a `connect_matcher` route whose `connect_config` terminates the
//!   tunnel into the Service's internal listener.
//! - `inbound-vip|<port>|http|<host>`, an internal listener
//!   (`envoy.bootstrap.internal_listener`): a second HTTP connection
//!   manager (HTTP/1.1 or HTTP/2, detected) that routes at L7 with the same
//!   rules as our waypoint's HTTPRoute ([`super::ROUTE_MATCHES`]) to the
//!   Service's cluster; its stats (`http.<`[`L7_STAT_PREFIX`]`>.*`) prove
//!   every request was routed there.
//! - `outbound|<port>||<host>`: the Service's endpoints, each the internal
//!   listener `connect_originate|<podIP:port>`, speaking the downstream's
//!   HTTP version (`use_downstream_protocol_config`).
//! - `connect_originate|<podIP:port>`: a `tcp_proxy` whose
//!   `tunneling_config` opens HBONE, a CONNECT to `podIP:port`, over the
//!   `hbone|<podIP>` cluster: HTTP/2 over TLS 1.3 to `podIP:15008`, with
//!   the waypoint's certificate and the endpoint's SPIFFE identity as the
//!   only acceptable SAN.
//! - Admin on 127.0.0.1:15000.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use serde_json::{json, Value};

use super::{spiffe_uri, NAMESPACE, TRUST_DOMAIN};

/// The HBONE port.
pub const HBONE_PORT: u16 = mesh_model::HBONE_PORT;
/// Envoy's admin port (localhost).
pub const ADMIN_PORT: u16 = 15000;
/// Stat prefix of the terminating (outer) connection manager.
pub const CONNECT_STAT_PREFIX: &str = "connect_terminate";
/// Stat prefix of the L7 (inner) connection manager.
pub const L7_STAT_PREFIX: &str = "inbound_vip";
/// Stat prefix of the originating tcp_proxy.
pub const ORIGINATE_STAT_PREFIX: &str = "connect_originate";

/// A Service bound to the waypoint.
#[derive(Debug, Clone)]
pub struct Service {
    /// `echo-envoy`.
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    /// Its endpoints: (pod IP, target port, service account).
    pub endpoints: Vec<(Ipv4Addr, u16, String)>,
}

impl Service {
    /// `<name>.<namespace>.svc.cluster.local`.
    pub fn host(&self) -> String {
        format!("{}.{NAMESPACE}.svc.{TRUST_DOMAIN}", self.name)
    }

    /// The internal listener that routes its requests at L7.
    pub fn l7_listener(&self) -> String {
        format!("inbound-vip|{}|http|{}", self.port, self.host())
    }

    /// The cluster of its endpoints.
    pub fn cluster(&self) -> String {
        format!("outbound|{}||{}", self.port, self.host())
    }
}

/// Everything the waypoint's bootstrap depends on.
#[derive(Debug, Clone)]
pub struct Waypoint {
    /// The waypoint's name (its service account).
    pub name: String,
    /// PEM chain of its certificate, PKCS#8 key, and the mesh root.
    pub cert_chain: PathBuf,
    pub key: PathBuf,
    pub root: PathBuf,
    pub services: Vec<Service>,
}

/// The originating internal listener of an endpoint.
pub fn originate_listener_name(ep: SocketAddrV4) -> String {
    format!("connect_originate|{ep}")
}

/// The HBONE cluster of an endpoint pod.
pub fn hbone_cluster_name(ip: Ipv4Addr) -> String {
    format!("hbone|{ip}")
}

/// The bootstrap.
pub fn bootstrap(wp: &Waypoint) -> Value {
    let mut listeners = vec![connect_terminate(wp)];
    let mut clusters = Vec::new();
    let mut seen_pods = std::collections::BTreeSet::new();
    for svc in &wp.services {
        listeners.push(l7_listener(svc));
        clusters.push(internal_cluster(
            &svc.l7_listener(),
            &[svc.l7_listener()],
            false,
        ));
        let originators: Vec<String> = svc
            .endpoints
            .iter()
            .map(|(ip, port, _)| originate_listener_name(SocketAddrV4::new(*ip, *port)))
            .collect();
        clusters.push(internal_cluster(&svc.cluster(), &originators, true));
        for (ip, port, sa) in &svc.endpoints {
            listeners.push(connect_originate(SocketAddrV4::new(*ip, *port)));
            if seen_pods.insert(*ip) {
                clusters.push(hbone_cluster(wp, *ip, sa));
            }
        }
    }
    json!({
        "node": {
            "id": format!("waypoint~0.0.0.0~{}.{NAMESPACE}~{NAMESPACE}.svc.{TRUST_DOMAIN}", wp.name),
            "cluster": format!("{}.{NAMESPACE}", wp.name),
        },
        "admin": {"address": socket_address(Ipv4Addr::LOCALHOST, ADMIN_PORT)},
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"},
        }],
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// The command line after the binary: `workers` worker threads, no hot
/// restart.
pub fn args(config: &str, log: &str, workers: usize) -> Vec<String> {
    [
        "-c",
        config,
        "--concurrency",
        &workers.to_string(),
        "--disable-hot-restart",
        "--log-level",
        "warning",
        "--log-path",
        log,
        "--drain-time-s",
        "1",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn socket_address(ip: Ipv4Addr, port: u16) -> Value {
    json!({"socket_address": {"address": ip.to_string(), "port_value": port}})
}

fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
}

fn tls_context(wp: &Waypoint, alpn: &[&str], san: Value) -> Value {
    json!({
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
        "alpn_protocols": alpn,
        "tls_certificates": [{
            "certificate_chain": {"filename": wp.cert_chain.display().to_string()},
            "private_key": {"filename": wp.key.display().to_string()},
        }],
        "validation_context": {
            "trusted_ca": {"filename": wp.root.display().to_string()},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}],
        },
    })
}

fn connect_terminate(wp: &Waypoint) -> Value {
    let vhosts: Vec<Value> = wp
        .services
        .iter()
        .map(|s| {
            json!({
                "name": format!("{}:{}", s.host(), s.port),
                "domains": [format!("{}:{}", s.vip, s.port)],
                "routes": [{
                    "match": {"connect_matcher": {}},
                    "route": {
                        "cluster": s.l7_listener(),
                        "timeout": "0s",
                        "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                    },
                }],
            })
        })
        .collect();
    json!({
        "name": "connect_terminate",
        "address": socket_address(Ipv4Addr::UNSPECIFIED, HBONE_PORT),
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": tls_context(wp, &["h2"], json!({"prefix": format!("spiffe://{TRUST_DOMAIN}/")})),
                },
            },
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": CONNECT_STAT_PREFIX,
                    "codec_type": "HTTP2",
                    "http2_protocol_options": {"allow_connect": true},
                    "upgrade_configs": [{"upgrade_type": "CONNECT"}],
                    "route_config": {"name": "connect_terminate", "virtual_hosts": vhosts},
                    "http_filters": [router()],
                },
            }],
        }],
    })
}

fn l7_listener(svc: &Service) -> Value {
    let routes: Vec<Value> = super::ROUTE_MATCHES
        .iter()
        .map(|(kind, value)| {
            let m = match *kind {
                "Exact" => json!({"path": value}),
                "PathPrefix" => json!({"prefix": value}),
                other => panic!("no Envoy match for {other}"),
            };
            json!({"match": m, "route": {"cluster": svc.cluster()}})
        })
        .collect();
    json!({
        "name": svc.l7_listener(),
        "internal_listener": {},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": L7_STAT_PREFIX,
                    "codec_type": "AUTO",
                    "route_config": {
                        "name": svc.l7_listener(),
                        "virtual_hosts": [{"name": svc.host(), "domains": ["*"], "routes": routes}],
                    },
                    "http_filters": [router()],
                },
            }],
        }],
    })
}

/// A cluster of internal listeners; `http` ones speak the downstream's
/// HTTP version to them.
fn internal_cluster(name: &str, listeners: &[String], http: bool) -> Value {
    let endpoints: Vec<Value> = listeners
        .iter()
        .map(|l| json!({"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": l}}}}))
        .collect();
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    });
    if http {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}},
            },
        });
    }
    c
}

fn connect_originate(ep: SocketAddrV4) -> Value {
    json!({
        "name": originate_listener_name(ep),
        "internal_listener": {},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": ORIGINATE_STAT_PREFIX,
                    "cluster": hbone_cluster_name(*ep.ip()),
                    "tunneling_config": {"hostname": ep.to_string()},
                },
            }],
        }],
    })
}

fn hbone_cluster(wp: &Waypoint, ip: Ipv4Addr, service_account: &str) -> Value {
    let name = hbone_cluster_name(ip);
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": socket_address(ip, HBONE_PORT)}},
        ]}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": tls_context(wp, &["h2"], json!({"exact": spiffe_uri(service_account)})),
            },
        },
    })
}

/// The value of counter `name` in Envoy's text `/stats`, if present.
pub fn stat(stats: &str, name: &str) -> Option<u64> {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// The counters that prove Envoy routed `requests` requests at L7 to
/// `svc` (each a 2xx, each on the route's cluster, none failed); the
/// deltas of `before` → `after`. `Err` names the counter that disagrees.
pub fn check_routed(before: &str, after: &str, svc: &Service, requests: u64) -> Result<(), String> {
    let delta = |name: &str| -> Result<u64, String> {
        let a = stat(after, name).ok_or_else(|| format!("Envoy has no counter {name}"))?;
        Ok(a - stat(before, name).unwrap_or(0))
    };
    let cluster = svc.cluster();
    let must_equal = [
        format!("http.{L7_STAT_PREFIX}.downstream_rq_2xx"),
        format!("http.{L7_STAT_PREFIX}.downstream_rq_completed"),
        format!("cluster.{cluster}.upstream_rq_2xx"),
        format!("cluster.{cluster}.upstream_rq_completed"),
    ];
    for name in &must_equal {
        let d = delta(name)?;
        if d != requests {
            return Err(format!(
                "{name} grew by {d}, not by the {requests} requests sent"
            ));
        }
    }
    for name in [
        format!("http.{L7_STAT_PREFIX}.no_route"),
        format!("cluster.{cluster}.upstream_rq_5xx"),
    ] {
        if let Some(d) = stat(after, &name).map(|a| a - stat(before, &name).unwrap_or(0)) {
            if d != 0 {
                return Err(format!("{name} grew by {d}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "envoy_tests.rs"]
mod tests;
