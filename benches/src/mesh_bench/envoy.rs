//! The static bootstrap of one Envoy sidecar, shaped like the configuration
//! Istio pushes to its sidecars (as facts: listener names, ports, filters,
//! TLS settings), written as JSON (Envoy reads `.json` bootstraps).
//!
//! - `virtualOutbound` on [`OUTBOUND_PORT`]: the `original_dst` listener
//!   filter, one filter chain per meshed destination pod (matched on its IP)
//!   with a `tcp_proxy` to that destination's cluster, and a default chain to
//!   `PassthroughCluster` (plain TCP) for everything else.
//! - Each destination cluster (`outbound|<name>.bench`) is `ORIGINAL_DST`
//!   with an `UpstreamTlsContext`: the pod's own certificate, TLS 1.3 only,
//!   Istio's ALPN, validation against the mesh root, and the destination's
//!   SPIFFE URI as the only acceptable SAN.
//! - `virtualInbound` on [`INBOUND_PORT`]: `original_dst` and `tls_inspector`
//!   listener filters, one TLS filter chain (STRICT mTLS: no plaintext chain)
//!   requiring a client certificate from the trust domain, `tcp_proxy` to
//!   `InboundPassthroughCluster` (`ORIGINAL_DST`).
//! - Every upstream socket carries `SO_MARK` [`PROXY_MARK`] (SOL_SOCKET=1,
//!   SO_MARK=36) so the REDIRECT rules skip it.
//! - Admin on `127.0.0.1:`[`ADMIN_PORT`] (readiness `/ready`, `/stats`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::{spiffe_uri, ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_MARK, TRUST_DOMAIN};

/// ALPN the client side of an Istio sidecar offers on mTLS TCP clusters.
pub const CLIENT_ALPN: [&str; 2] = ["istio-peer-exchange", "istio"];
/// ALPN the inbound side of an Istio sidecar accepts.
pub const SERVER_ALPN: [&str; 3] = ["istio-peer-exchange", "h2", "http/1.1"];
/// Istio's default sidecar concurrency (worker threads).
pub const CONCURRENCY: u32 = 2;
/// `SOL_SOCKET`.
const SOL_SOCKET: i64 = 1;
/// `SO_MARK`.
const SO_MARK: i64 = 36;
/// Name of the outbound listener's stat prefix for a destination.
pub const OUTBOUND_STAT_PREFIX: &str = "outbound";
/// The inbound listener's stat prefix.
pub const INBOUND_STAT_PREFIX: &str = "inbound";

/// A meshed destination pod the sidecar may send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Pod name (also its service account).
    pub name: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
}

impl Destination {
    /// The cluster name, Istio-style: `outbound|<name>.<namespace>`.
    pub fn cluster(&self) -> String {
        format!("outbound|{}.{}", self.name, super::NAMESPACE)
    }
}

/// Everything one sidecar's bootstrap depends on.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// Pod name (also its service account).
    pub name: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// PEM chain of the pod's own certificate (leaf first).
    pub cert_chain: PathBuf,
    /// PEM PKCS#8 key of that certificate.
    pub key: PathBuf,
    /// PEM mesh root.
    pub root: PathBuf,
    /// The meshed pods this one may call.
    pub destinations: Vec<Destination>,
}

/// The Envoy bootstrap for `sidecar`.
pub fn bootstrap(sidecar: &Sidecar) -> Value {
    let mut clusters = vec![
        passthrough_cluster("PassthroughCluster"),
        passthrough_cluster("InboundPassthroughCluster"),
    ];
    clusters.extend(
        sidecar
            .destinations
            .iter()
            .map(|d| outbound_cluster(sidecar, d)),
    );
    json!({
        "node": {
            "id": format!("sidecar~{}~{}.{}~{}.svc.cluster.local", sidecar.ip, sidecar.name, super::NAMESPACE, super::NAMESPACE),
            "cluster": format!("{}.{}", sidecar.name, super::NAMESPACE),
        },
        "admin": {"address": socket_address(Ipv4Addr::LOCALHOST, ADMIN_PORT)},
        "static_resources": {
            "listeners": [outbound_listener(sidecar), inbound_listener(sidecar)],
            "clusters": clusters,
        },
    })
}

/// The command line (after the binary) that runs this bootstrap like an
/// Istio sidecar: 2 workers, no hot restart (many Envoys share the host).
pub fn args(config: &str, log: &str) -> Vec<String> {
    [
        "-c",
        config,
        "--concurrency",
        &CONCURRENCY.to_string(),
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

fn mark_option() -> Value {
    json!({"level": SOL_SOCKET, "name": SO_MARK, "int_value": PROXY_MARK, "state": "STATE_PREBIND"})
}

/// `upstream_bind_config` that only sets the mark (no source address).
fn marked_bind() -> Value {
    json!({"socket_options": [mark_option()]})
}

fn original_dst_filter() -> Value {
    json!({
        "name": "envoy.filters.listener.original_dst",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"},
    })
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix,
            "cluster": cluster,
        },
    })
}

fn tls_params() -> Value {
    json!({"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"})
}

fn own_certificate(sidecar: &Sidecar) -> Value {
    json!([{
        "certificate_chain": {"filename": sidecar.cert_chain.display().to_string()},
        "private_key": {"filename": sidecar.key.display().to_string()},
    }])
}

fn validation(sidecar: &Sidecar, san: Value) -> Value {
    json!({
        "trusted_ca": {"filename": sidecar.root.display().to_string()},
        "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}],
    })
}

fn outbound_listener(sidecar: &Sidecar) -> Value {
    let chains: Vec<Value> = sidecar
        .destinations
        .iter()
        .map(|d| {
            json!({
                "name": d.cluster(),
                "filter_chain_match": {"prefix_ranges": [{"address_prefix": d.ip.to_string(), "prefix_len": 32}]},
                "filters": [tcp_proxy(OUTBOUND_STAT_PREFIX, &d.cluster())],
            })
        })
        .collect();
    json!({
        "name": "virtualOutbound",
        "address": socket_address(Ipv4Addr::UNSPECIFIED, OUTBOUND_PORT),
        "traffic_direction": "OUTBOUND",
        "listener_filters": [original_dst_filter()],
        "filter_chains": chains,
        "default_filter_chain": {"name": "PassthroughFilterChain", "filters": [tcp_proxy("PassthroughCluster", "PassthroughCluster")]},
    })
}

fn inbound_listener(sidecar: &Sidecar) -> Value {
    let trust_domain_prefix = format!("spiffe://{TRUST_DOMAIN}/");
    json!({
        "name": "virtualInbound",
        "address": socket_address(Ipv4Addr::UNSPECIFIED, INBOUND_PORT),
        "traffic_direction": "INBOUND",
        "listener_filters": [
            original_dst_filter(),
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
            },
        ],
        "filter_chains": [{
            "name": "virtualInbound-mtls",
            "filter_chain_match": {"transport_protocol": "tls"},
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_params": tls_params(),
                        "alpn_protocols": SERVER_ALPN,
                        "tls_certificates": own_certificate(sidecar),
                        "validation_context": validation(sidecar, json!({"prefix": trust_domain_prefix})),
                    },
                },
            },
            "filters": [tcp_proxy(INBOUND_STAT_PREFIX, "InboundPassthroughCluster")],
        }],
    })
}

fn passthrough_cluster(name: &str) -> Value {
    json!({
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
        "upstream_bind_config": marked_bind(),
    })
}

fn outbound_cluster(sidecar: &Sidecar, dest: &Destination) -> Value {
    json!({
        "name": dest.cluster(),
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
        "upstream_bind_config": marked_bind(),
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_params": tls_params(),
                    "alpn_protocols": CLIENT_ALPN,
                    "tls_certificates": own_certificate(sidecar),
                    "validation_context": validation(sidecar, json!({"exact": spiffe_uri(&dest.name)})),
                },
            },
        },
    })
}

/// Sums every counter in Envoy's text `/stats` output whose name ends with
/// `suffix` and starts with `prefix` (e.g. `cluster.` + `.ssl.handshake`).
pub fn sum_stats(stats: &str, prefix: &str, suffix: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.starts_with(prefix) && name.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar() -> Sidecar {
        Sidecar {
            name: "client-0".into(),
            ip: Ipv4Addr::new(10, 1, 1, 10),
            cert_chain: "/d/client-0/cert-chain.pem".into(),
            key: "/d/client-0/key.pem".into(),
            root: "/d/root-cert.pem".into(),
            destinations: vec![
                Destination {
                    name: "server-0".into(),
                    ip: Ipv4Addr::new(10, 1, 2, 10),
                },
                Destination {
                    name: "server-1".into(),
                    ip: Ipv4Addr::new(10, 1, 2, 11),
                },
            ],
        }
    }

    fn listener<'a>(b: &'a Value, name: &str) -> &'a Value {
        b["static_resources"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()
    }

    fn cluster<'a>(b: &'a Value, name: &str) -> &'a Value {
        b["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
    }

    #[test]
    fn outbound_listener_routes_each_destination_to_its_tls_cluster() {
        let b = bootstrap(&sidecar());
        let out = listener(&b, "virtualOutbound");
        assert_eq!(out["address"]["socket_address"]["port_value"], 15001);
        assert_eq!(
            out["listener_filters"][0]["name"],
            "envoy.filters.listener.original_dst"
        );
        let chains = out["filter_chains"].as_array().unwrap();
        assert_eq!(chains.len(), 2);
        assert_eq!(
            chains[1]["filter_chain_match"]["prefix_ranges"][0]["address_prefix"],
            "10.1.2.11"
        );
        assert_eq!(
            chains[1]["filter_chain_match"]["prefix_ranges"][0]["prefix_len"],
            32
        );
        assert_eq!(
            chains[1]["filters"][0]["typed_config"]["cluster"],
            "outbound|server-1.bench"
        );
        assert_eq!(
            out["default_filter_chain"]["filters"][0]["typed_config"]["cluster"],
            "PassthroughCluster"
        );
    }

    #[test]
    fn outbound_cluster_is_mutual_tls13_with_the_destination_san() {
        let b = bootstrap(&sidecar());
        let c = cluster(&b, "outbound|server-1.bench");
        assert_eq!(c["type"], "ORIGINAL_DST");
        assert_eq!(c["lb_policy"], "CLUSTER_PROVIDED");
        let tls = &c["transport_socket"]["typed_config"];
        assert!(tls["@type"]
            .as_str()
            .unwrap()
            .ends_with("UpstreamTlsContext"));
        let ctx = &tls["common_tls_context"];
        assert_eq!(ctx["tls_params"]["tls_minimum_protocol_version"], "TLSv1_3");
        assert_eq!(ctx["tls_params"]["tls_maximum_protocol_version"], "TLSv1_3");
        assert_eq!(
            ctx["alpn_protocols"],
            json!(["istio-peer-exchange", "istio"])
        );
        assert_eq!(
            ctx["tls_certificates"][0]["certificate_chain"]["filename"],
            "/d/client-0/cert-chain.pem"
        );
        assert_eq!(
            ctx["tls_certificates"][0]["private_key"]["filename"],
            "/d/client-0/key.pem"
        );
        assert_eq!(
            ctx["validation_context"]["trusted_ca"]["filename"],
            "/d/root-cert.pem"
        );
        let san = &ctx["validation_context"]["match_typed_subject_alt_names"][0];
        assert_eq!(san["san_type"], "URI");
        assert_eq!(
            san["matcher"]["exact"],
            "spiffe://cluster.local/ns/bench/sa/server-1"
        );
    }

    #[test]
    fn inbound_listener_requires_a_client_cert_from_the_trust_domain() {
        let b = bootstrap(&sidecar());
        let inb = listener(&b, "virtualInbound");
        assert_eq!(inb["address"]["socket_address"]["port_value"], 15006);
        let filters: Vec<&str> = inb["listener_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            filters,
            [
                "envoy.filters.listener.original_dst",
                "envoy.filters.listener.tls_inspector"
            ]
        );
        let chains = inb["filter_chains"].as_array().unwrap();
        assert_eq!(chains.len(), 1, "STRICT: no plaintext chain");
        assert_eq!(chains[0]["filter_chain_match"]["transport_protocol"], "tls");
        let tls = &chains[0]["transport_socket"]["typed_config"];
        assert!(tls["@type"]
            .as_str()
            .unwrap()
            .ends_with("DownstreamTlsContext"));
        assert_eq!(tls["require_client_certificate"], true);
        let ctx = &tls["common_tls_context"];
        assert_eq!(ctx["tls_params"]["tls_minimum_protocol_version"], "TLSv1_3");
        let san = &ctx["validation_context"]["match_typed_subject_alt_names"][0];
        assert_eq!(san["matcher"]["prefix"], "spiffe://cluster.local/");
        assert_eq!(
            chains[0]["filters"][0]["typed_config"]["cluster"],
            "InboundPassthroughCluster"
        );
    }

    #[test]
    fn every_upstream_socket_is_marked() {
        let b = bootstrap(&sidecar());
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 4);
        for c in clusters {
            let opt = &c["upstream_bind_config"]["socket_options"][0];
            assert_eq!(
                (
                    opt["level"].as_i64(),
                    opt["name"].as_i64(),
                    opt["int_value"].as_i64()
                ),
                (Some(1), Some(36), Some(0x539)),
                "{}",
                c["name"]
            );
        }
    }

    #[test]
    fn admin_is_local_and_args_match_istio_concurrency() {
        let b = bootstrap(&sidecar());
        assert_eq!(
            b["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 15000);
        let a = args("/c.json", "/l.log");
        let pos = a.iter().position(|x| x == "--concurrency").unwrap();
        assert_eq!(a[pos + 1], "2");
        assert!(a.contains(&"--disable-hot-restart".to_owned()));
    }

    #[test]
    fn sums_matching_counters_only() {
        let stats = "cluster.outbound|server-0.bench.ssl.handshake: 3\n\
                     cluster.PassthroughCluster.ssl.handshake: 0\n\
                     listener.0.0.0.0_15006.ssl.handshake: 5\n\
                     cluster.outbound|server-1.bench.ssl.handshake_error: 9\n\
                     garbage\n";
        assert_eq!(sum_stats(stats, "cluster.", ".ssl.handshake"), 3);
        assert_eq!(sum_stats(stats, "listener.", ".ssl.handshake"), 5);
        assert_eq!(sum_stats(stats, "nothing.", ".ssl.handshake"), 0);
    }
}
