//! The `forwarded` host a peer sends never becomes a metric label value:
//! a real HBONE server (ztunnel's inbound handler, real TLS and HTTP/2)
//! takes 10,000 CONNECTs, each naming a different made-up Service, and the
//! metric series stay those of the one real Service and `unknown`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hbone::ca::DevCa;
use hbone::cert::CertStore;
use hbone::client::{ClientConfig, ConnectRequest, HboneClient};
use hbone::drain::Drain;
use hbone::headers::ConnectMeta;
use hbone::server::{HboneServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{HboneInbound, LocalIdentities};
use crate::metrics::Metrics;
use crate::proxy::record::Telemetry;
use crate::proxy::Proxy;
use mesh_model::state::Scope;
use mesh_runtime::accesslog::AccessLog;

const SERVICE: &str = "server.bank.svc.cluster.local";
const CONNECTS: usize = 10_000;

fn config() -> String {
    "nodes: [{name: n1, ip: 10.0.0.1}]\n\
     namespaces:\n\
     - {name: bank, labels: {istio.io/dataplane-mode: ambient}}\n\
     - {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n\
     workloads:\n\
     - {name: server, namespace: bank, serviceAccount: server, ip: 127.0.0.1, node: n1, labels: {app: server}}\n\
     services:\n\
     - {name: server, namespace: bank, vip: 10.96.0.10, ports: [{port: 80, targetPort: 8080}], selector: {app: server}}\n"
        .to_owned()
}

/// Echoes until EOF, then closes: every tunnel ends cleanly (`-`).
async fn echo_app() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

/// The metric series of the `istio_` families.
fn series(metrics: &Metrics) -> Vec<String> {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("istio_"))
        .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_owned())
        .collect()
}

/// `istio_tcp_connections_closed_total`, over every series.
fn closed(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_closed_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_hosts_never_become_label_values() {
    let snap = mesh_model::config::parse(&config()).unwrap();
    let (_tx, state) = tokio::sync::watch::channel(Arc::new(snap));
    let certs = CertStore::new(Arc::new(DevCa::generate().unwrap()));
    let telemetry = Telemetry {
        metrics: Metrics::new(),
        access_log: Arc::new(AccessLog::sink()),
    };
    let metrics = telemetry.metrics.clone();
    let pool = HboneClient::new(certs.clone(), ClientConfig::default());
    let proxy = Proxy::new(
        Scope::Node("n1".into()),
        state,
        certs.clone(),
        pool,
        telemetry,
        Drain::new(),
        false,
        vec![],
    );
    let app = echo_app().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let via = listener.local_addr().unwrap();
    let server = HboneServer::new(
        Arc::new(LocalIdentities(proxy.clone())),
        Arc::new(HboneInbound(proxy.clone())),
        ServerConfig::default(),
    );
    let drain = Drain::new();
    let d = drain.clone();
    tokio::spawn(async move { server.serve(listener, d).await });

    let client = HboneClient::new(certs.clone(), ClientConfig::default());
    let request = |host: String| ConnectRequest {
        source: "spiffe://cluster.local/ns/shop/sa/client".parse().unwrap(),
        source_ip: None,
        expected: vec!["spiffe://cluster.local/ns/bank/sa/server".parse().unwrap()],
        via,
        authority: app,
        meta: ConnectMeta {
            client: Some("127.0.0.1:40000".parse().unwrap()),
            host: Some(host),
            ..Default::default()
        },
    };
    let tunnel = |host: String| {
        let (client, req) = (client.clone(), request(host));
        async move {
            let mut s = client.connect(&req).await.expect("tunnel");
            s.write_all(b"ping").await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"ping");
        }
    };
    let settle = |want: u64| {
        let metrics = metrics.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while closed(&metrics) < want {
                assert!(tokio::time::Instant::now() < deadline, "records not closed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    // The real Service, and one made-up host: the two label sets.
    tunnel(SERVICE.to_owned()).await;
    tunnel("made-up.example".to_owned()).await;
    settle(2).await;
    let before = series(&proxy.telemetry.metrics);
    assert!(
        before
            .iter()
            .any(|s| s.contains(&format!("destination_service=\"{SERVICE}\""))),
        "{before:#?}"
    );
    assert!(
        before
            .iter()
            .any(|s| s.contains("destination_service=\"unknown\"")),
        "{before:#?}"
    );

    futures::stream::iter(0..CONNECTS)
        .map(|i| tunnel(format!("made-up-{i}.bank.svc.cluster.local")))
        .buffer_unordered(100)
        .collect::<Vec<()>>()
        .await;
    settle(2 + CONNECTS as u64).await;
    let after = series(&proxy.telemetry.metrics);
    assert_eq!(after.len(), before.len(), "new series: {:#?}", {
        let mut new = after.clone();
        new.retain(|s| !before.contains(s));
        new.truncate(5);
        new
    });
    assert_eq!(after, before);
    drain.signal();
}
