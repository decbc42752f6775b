use std::net::Ipv6Addr;
use std::path::PathBuf;

use hbone::ca::DevCa;
use hbone::client::ClientConfig;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::*;
use crate::metrics::Metrics;
use mesh_runtime::accesslog::AccessLog;

/// A sidecar-scope proxy that reads original destinations from conntrack,
/// logging to `log`.
fn conntrack_proxy(log: &std::path::Path) -> Arc<Proxy> {
    let snap = mesh_model::config::parse(
        "nodes: [{name: n1, ip: 10.0.0.1}]\n\
         namespaces: [{name: bank}]\n\
         workloads: [{name: s, namespace: bank, ip: 10.1.1.11, node: n1}]\n",
    )
    .unwrap();
    let (_tx, state) = watch::channel(Arc::new(snap));
    let certs = CertStore::new(Arc::new(DevCa::generate().unwrap()));
    let client = HboneClient::new(certs.clone(), ClientConfig::default());
    let telemetry = Telemetry {
        metrics: Metrics::new(),
        access_log: Arc::new(AccessLog::file(log, Default::default()).unwrap()),
    };
    let mut proxy = Proxy::new(
        Scope::Pod(mesh_model::state::ServedPod {
            workload: "bank/s".parse().unwrap(),
            node: "n1".into(),
        }),
        state,
        certs,
        client,
        telemetry,
        Drain::new(),
        false,
        vec![15001, 15006],
    );
    Arc::get_mut(&mut proxy).unwrap().orig_dst = OrigDstSource::Conntrack;
    proxy
}

/// A unique scratch file, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An IPv6 connection has no IPv4 conntrack entry, so `SO_ORIGINAL_DST`
/// fails for it whatever the host's netfilter state: the connection must be
/// reset, logged and counted, not dropped silently.
#[tokio::test]
async fn an_unknown_original_destination_is_refused_and_recorded() {
    for (direction, want) in [
        (Direction::Outbound, "outbound"),
        (Direction::Inbound, "inbound"),
    ] {
        let log = Scratch(
            std::env::temp_dir().join(format!("ztunnel-origdst-{}-{want}.log", std::process::id())),
        );
        let proxy = conntrack_proxy(&log.0);
        let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0))
            .await
            .expect("IPv6 loopback");
        let addr = listener.local_addr().unwrap();
        let serve = match direction {
            Direction::Outbound => tokio::spawn(outbound::serve_outbound(proxy.clone(), listener)),
            Direction::Inbound => tokio::spawn(inbound::serve_plaintext(proxy.clone(), listener)),
        };
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(
            matches!(read, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{direction:?}: want a reset, got {read:?}"
        );
        serve.abort();

        proxy.telemetry.access_log.flush();
        let text = std::fs::read_to_string(&log.0).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 1, "{text}");
        let ev = &events[0];
        assert_eq!(ev["direction"], want, "{ev}");
        assert_eq!(ev["response_flags"], "CONNECT", "{ev}");
        assert_eq!(ev["dst.addr"], addr.to_string(), "{ev}");
        assert!(
            ev["error"]
                .as_str()
                .is_some_and(|e| e.starts_with(ORIG_DST_UNKNOWN)),
            "{ev}"
        );
        let metrics = proxy.telemetry.metrics.encode();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("istio_tcp_connections_closed_total{")
                    && l.contains("response_flags=\"CONNECT\"")
                    && l.ends_with(" 1")),
            "{metrics}"
        );
    }
}

#[test]
fn a_forwarded_listener_stands_for_its_destination_only() {
    let listener: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    let dst: SocketAddr = "127.0.0.3:8080".parse().unwrap();
    let table = HashMap::from([(listener, dst)]);
    assert_eq!(forwarded_dst(&table, listener).unwrap(), dst);
    let other: SocketAddr = "127.0.0.1:40002".parse().unwrap();
    let err = forwarded_dst(&table, other).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("127.0.0.1:40002"), "{err}");
}

/// Past a capture listener's caps (in all, or from one source IP), a
/// connection is reset at accept and counted by listener and reason, before
/// any work is done for it.
#[tokio::test]
async fn capture_listeners_reset_connections_past_their_caps_and_count_them() {
    let cases = [
        (0, 1, "outbound", "global_limit"),
        (1, 0, "outbound", "source_limit"),
        (0, 1, "inbound_plaintext", "global_limit"),
    ];
    for (max_connections, max_per_source, listener_label, reason) in cases {
        let log = Scratch(std::env::temp_dir().join(format!(
            "ztunnel-caps-{}-{listener_label}-{reason}.log",
            std::process::id()
        )));
        let mut proxy = conntrack_proxy(&log.0);
        Arc::get_mut(&mut proxy).unwrap().capture_limits = Limits {
            max_connections,
            max_per_source,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = if listener_label == "outbound" {
            tokio::spawn(outbound::serve_outbound(proxy.clone(), listener))
        } else {
            tokio::spawn(inbound::serve_plaintext(proxy.clone(), listener))
        };
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(
            matches!(read, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{listener_label} {reason}: want a reset, got {read:?}"
        );
        serve.abort();
        let metrics = proxy.telemetry.metrics.encode();
        let want = format!(
            "ztunnel_connections_refused_total{{listener=\"{listener_label}\",reason=\"{reason}\"}} 1"
        );
        assert!(metrics.lines().any(|l| l == want), "{want} in:\n{metrics}");
        // Refused before it was a connection of the mesh: no record.
        assert!(
            !metrics.contains("istio_tcp_connections_opened_total{"),
            "{metrics}"
        );
    }
}

/// A node-scope proxy without capture (the original destination is the
/// listener's own address) for `config`, logging to `log`.
fn node_proxy(config: &str, log: &std::path::Path) -> Arc<Proxy> {
    let snap = mesh_model::config::parse(config).unwrap();
    let (_tx, state) = watch::channel(Arc::new(snap));
    let certs = CertStore::new(Arc::new(DevCa::generate().unwrap()));
    let client = HboneClient::new(certs.clone(), ClientConfig::default());
    let telemetry = Telemetry {
        metrics: Metrics::new(),
        access_log: Arc::new(AccessLog::file(log, Default::default()).unwrap()),
    };
    Proxy::new(
        Scope::Node("n1".into()),
        state,
        certs,
        client,
        telemetry,
        Drain::new(),
        false,
        vec![15001, 15006],
    )
}

/// A connection classify cannot route is reset and recorded with Istio's
/// flag (`CONNECT`), its own reason in the access log, and a count by
/// reason.
#[tokio::test]
async fn an_unroutable_outbound_connection_is_logged_and_counted_with_its_reason() {
    let log = Scratch(
        std::env::temp_dir().join(format!("ztunnel-unroutable-{}.log", std::process::id())),
    );
    let proxy = node_proxy(
        "nodes: [{name: n1, ip: 10.0.0.1}]\n\
         namespaces: [{name: shop, labels: {istio.io/dataplane-mode: ambient}}]\n\
         workloads: [{name: client, namespace: shop, ip: 127.0.0.2, node: n1}]\n\
         services: [{name: cart, namespace: shop, vip: 127.0.0.3, ports: [{port: 80}]}]\n",
        &log.0,
    );
    // The listener's address is the original destination: the VIP, on a
    // port the Service does not expose.
    let listener = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let vip = listener.local_addr().unwrap();
    let serve = tokio::spawn(outbound::serve_outbound(proxy.clone(), listener));
    for from in ["127.0.0.1", "127.0.0.2"] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse().unwrap(), 0))
            .unwrap();
        let mut client = socket.connect(vip).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(
            matches!(read, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "from {from}: want a reset, got {read:?}"
        );
    }
    serve.abort();

    proxy.telemetry.access_log.flush();
    let text = std::fs::read_to_string(&log.0).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["response_flags"].as_str().unwrap(),
                e["reason"].as_str().unwrap_or("(none)"),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("CONNECT", "unknown_source"),
            ("CONNECT", "unknown_service_port")
        ],
        "{text}"
    );
    let metrics = proxy.telemetry.metrics.encode();
    for (reason, n) in [
        ("unknown_source", 1),
        ("unknown_service_port", 1),
        ("no_endpoints", 0),
    ] {
        let series = format!("ztunnel_outbound_refused_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    }
}

/// The size of the future `f` returns: what a connection's task holds for
/// the connection's whole life, whatever state it is in.
fn future_size<F, A, B, C, D, Fut>(_: F) -> usize
where
    F: FnOnce(A, B, C, D) -> Fut,
{
    std::mem::size_of::<Fut>()
}

/// An outbound connection's task holds only the relay's state for the
/// connection's life: routing, the records and the tunnel's connect (TLS
/// and HTTP/2 handshakes when the pool dials) run boxed and are freed once
/// done. It held 3 KiB when they were inline (issue 15: memory per idle
/// connection).
#[test]
fn the_outbound_task_holds_only_the_relay() {
    let size = future_size(outbound::handle_outbound);
    assert!(size <= 1536, "handle_outbound's future is {size} B");
}

/// The same for an inbound HBONE stream's handler (admission, records and
/// the dial to the app boxed): it held 2.4 KiB (1.6 KiB now: the relay
/// also waits for a revocation).
#[test]
fn the_inbound_hbone_handler_holds_only_the_relay() {
    fn size2<F, A, B, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }
    let size = size2(inbound::handle_hbone);
    assert!(size <= 1792, "handle_hbone's future is {size} B");
}
