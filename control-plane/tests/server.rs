//! The control plane on real loopback sockets, real TLS and a real tonic
//! client: delta ADS (wildcard, by name, edits, deletions, NACKs, reconnect)
//! and the CA (node authorization, malformed CSRs).

use std::collections::BTreeMap;
use std::time::Duration;

use control_plane::serve::{self, Config, Running};
use prost::Message;
use proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use proto::ca::IstioCertificateRequest;
use proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Streaming;

const MESH: &str = "nodes: [{name: node1, ip: 10.0.0.1}, {name: node2, ip: 10.0.0.2}]\n\
namespaces: [{name: shop, labels: {istio.io/dataplane-mode: ambient}}]\n\
workloads:\n\
- {name: a, namespace: shop, serviceAccount: cart, ip: 10.1.1.1, node: node1, labels: {app: cart}}\n\
- {name: b, namespace: shop, serviceAccount: pay, ip: 10.1.2.1, node: node2, labels: {app: pay}}\n\
- {name: c, namespace: shop, serviceAccount: cart, ip: 10.1.2.2, node: node2, labels: {app: cart}}\n\
services:\n\
- {name: cart, namespace: shop, vip: 10.96.0.1, ports: [{port: 80, targetPort: 8080}], selector: {app: cart}}\n";
const ONE: &str = "token-one-0123456789abcdef0123456789abcdef";
const TWO: &str = "token-two-0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

struct Harness {
    dir: tempfile::TempDir,
    cp: Running,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(Some(MESH)).await
    }

    /// With `mesh` as the config file, or none yet.
    async fn start_with(mesh: Option<&str>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        if let Some(mesh) = mesh {
            std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
        }
        std::fs::write(
            dir.path().join("tokens.yaml"),
            format!("node1: {ONE}\nnode2: {TWO}\n"),
        )
        .unwrap();
        let mut cfg = Config::with_paths(
            &dir.path().join("mesh.yaml"),
            &dir.path().join("ca"),
            &dir.path().join("tokens.yaml"),
        );
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.metrics_listen = "127.0.0.1:0".parse().unwrap();
        cfg.poll_interval = Duration::from_millis(20);
        let cp = serve::start(&cfg).await.unwrap();
        Harness { dir, cp }
    }

    fn edit(&self, yaml: &str) {
        let path = self.dir.path().join("mesh.yaml");
        let tmp = self.dir.path().join("mesh.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    async fn channel(&self) -> Channel {
        self.channel_from(None).await
    }

    /// A channel whose connection leaves from `source`.
    async fn channel_from(&self, source: Option<std::net::IpAddr>) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.cp.root_pem))
            .domain_name("localhost");
        Channel::from_shared(format!("https://{}", self.cp.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .local_address(source)
            .connect()
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.cp.metrics_addr)
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

fn bearer<T>(req: &mut tonic::Request<T>, token: &str) {
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
}

/// One ADS stream: requests in, responses out.
struct Ads {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Ads {
    async fn open(h: &Harness, token: &str) -> Ads {
        let (tx, rx) = mpsc::channel(8);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        bearer(&mut req, token);
        let mut client = AggregatedDiscoveryServiceClient::new(h.channel().await);
        let rx = client
            .delta_aggregated_resources(req)
            .await
            .unwrap()
            .into_inner();
        Ads { tx, rx }
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .unwrap()
            .expect("stream open")
    }

    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(QUIET, self.rx.message())
            .await
            .is_err()
    }

    async fn ack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

fn subscribe(type_url: &str, names: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn names(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
    resp.resources.iter().map(|r| r.name.as_str()).collect()
}

const ADDR: &str = proto::ADDRESS_TYPE_URL;
const ALL: [&str; 4] = [
    "shop/a",
    "shop/b",
    "shop/c",
    "shop/cart.shop.svc.cluster.local",
];

#[tokio::test]
async fn wildcard_and_by_name() {
    let h = Harness::start().await;
    let mut all = Ads::open(&h, ONE).await;
    all.send(subscribe(ADDR, &["*"])).await;
    let resp = all.recv().await;
    assert_eq!(resp.type_url, ADDR);
    assert_eq!(names(&resp), ALL);
    let any = resp.resources[0].resource.as_ref().unwrap();
    assert_eq!(any.type_url, ADDR);
    proto::workload::Address::decode(any.value.as_slice()).unwrap();

    let mut one = Ads::open(&h, TWO).await;
    one.send(subscribe(ADDR, &["shop/b", "shop/nope"])).await;
    let resp = one.recv().await;
    assert_eq!(names(&resp), ["shop/b"]);
    assert_eq!(resp.removed_resources, ["shop/nope"]);
    h.cp.shutdown().await;
}

#[tokio::test]
async fn edits_push_only_the_change_and_deletions_are_removed() {
    let h = Harness::start().await;
    let mut ads = Ads::open(&h, ONE).await;
    ads.send(subscribe(ADDR, &["*"])).await;
    let first = ads.recv().await;
    ads.ack(&first).await;
    let mut by_name = Ads::open(&h, TWO).await;
    by_name.send(subscribe(ADDR, &["shop/a"])).await;
    by_name.recv().await;

    // Move pod b to another IP: only b changes.
    h.edit(&MESH.replace("10.1.2.1", "10.1.2.9"));
    let resp = ads.recv().await;
    assert_eq!(names(&resp), ["shop/b"]);
    assert!(resp.removed_resources.is_empty());
    assert!(
        by_name.quiet().await,
        "a client that did not ask for b hears nothing"
    );

    // Delete pod c: it goes, and the service's workloads are unchanged.
    let without_c: String = MESH
        .replace("10.1.2.1", "10.1.2.9")
        .lines()
        .filter(|l| !l.contains("name: c,"))
        .map(|l| format!("{l}\n"))
        .collect();
    h.edit(&without_c);
    let resp = ads.recv().await;
    assert!(resp.resources.is_empty(), "{:?}", names(&resp));
    assert_eq!(resp.removed_resources, ["shop/c"]);

    // A bad edit changes nothing.
    h.edit("nodes: [{name: node1, ip: bogus}]\n");
    assert!(ads.quiet().await, "the last good config stays");
    assert!(h
        .metrics()
        .await
        .contains("control_plane_config_rejected_total 1"));
    h.cp.shutdown().await;
}

#[tokio::test]
async fn nack_is_counted_and_not_repushed() {
    let h = Harness::start().await;
    let mut ads = Ads::open(&h, ONE).await;
    ads.send(subscribe(ADDR, &["*"])).await;
    let resp = ads.recv().await;
    ads.send(DeltaDiscoveryRequest {
        type_url: ADDR.to_owned(),
        response_nonce: resp.nonce.clone(),
        error_detail: Some(proto::google::rpc::Status {
            code: 3,
            message: "shop/a: bad address".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    assert!(
        ads.quiet().await,
        "a NACK is not answered with the same resources"
    );
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("control_plane_xds_nacks_total{type=\"address\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("control_plane_xds_connected_clients 1"));
    h.cp.shutdown().await;
}

#[tokio::test]
async fn reconnect_with_initial_versions_gets_only_the_difference() {
    let h = Harness::start().await;
    let mut ads = Ads::open(&h, ONE).await;
    ads.send(subscribe(ADDR, &["*"])).await;
    let full = ads.recv().await;
    let held: BTreeMap<String, String> = full
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(ads);

    // While disconnected: b moves.
    h.edit(&MESH.replace("10.1.2.1", "10.1.2.9"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut again = Ads::open(&h, ONE).await;
    let mut req = subscribe(ADDR, &["*"]);
    req.initial_resource_versions = held.into_iter().collect();
    again.send(req).await;
    let diff = again.recv().await;
    assert_eq!(names(&diff), ["shop/b"]);
    let (full_bytes, diff_bytes) = (full.encoded_len(), diff.encoded_len());
    println!(
        "full sync {full_bytes} bytes; reconnect with initial_resource_versions {diff_bytes} bytes"
    );
    assert!(diff_bytes * 2 < full_bytes, "{diff_bytes} vs {full_bytes}");

    // Reconnecting with everything current gets an empty answer.
    let current: Vec<(String, String)> = full
        .resources
        .iter()
        .filter(|r| r.name != "shop/b")
        .map(|r| (r.name.clone(), r.version.clone()))
        .chain(
            diff.resources
                .iter()
                .map(|r| (r.name.clone(), r.version.clone())),
        )
        .collect();
    let mut third = Ads::open(&h, ONE).await;
    let mut req = subscribe(ADDR, &["*"]);
    req.initial_resource_versions = current.into_iter().collect();
    third.send(req).await;
    let none = third.recv().await;
    assert!(none.resources.is_empty() && none.removed_resources.is_empty());
    h.cp.shutdown().await;
}

#[tokio::test]
async fn unauthenticated_stream_is_refused() {
    let h = Harness::start().await;
    let mut client = AggregatedDiscoveryServiceClient::new(h.channel().await);
    let (_tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let err = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    h.cp.shutdown().await;
}

fn csr_pem() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

fn cert_request(identity: &str, csr: String) -> IstioCertificateRequest {
    use prost_types::value::Kind;
    IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: Some(prost_types::Struct {
            fields: BTreeMap::from([(
                proto::IMPERSONATED_IDENTITY_KEY.to_owned(),
                prost_types::Value {
                    kind: Some(Kind::StringValue(identity.to_owned())),
                },
            )]),
        }),
    }
}

#[tokio::test]
async fn ca_signs_only_for_pods_on_the_callers_node() {
    let h = Harness::start().await;
    let mut ca = IstioCertificateServiceClient::new(h.channel().await);
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    let pay = "spiffe://cluster.local/ns/shop/sa/pay";
    let ask = |id: &str, csr: String, token: Option<&str>| {
        let mut req = tonic::Request::new(cert_request(id, csr));
        if let Some(t) = token {
            bearer(&mut req, t);
        }
        req
    };
    // Wait for the first config (the CA answers Unavailable before it).
    let mut chain = None;
    for _ in 0..50 {
        match ca.create_certificate(ask(cart, csr_pem(), Some(ONE))).await {
            Ok(resp) => {
                chain = Some(resp.into_inner().cert_chain);
                break;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(s) => panic!("{s}"),
        }
    }
    let chain = chain.expect("signed");
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], h.cp.root_pem, "leaf first, root last");
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    assert_eq!(
        hbone::cert::identity_from_der(&leaf).unwrap().to_string(),
        cart
    );

    // pay runs only on node2: node1's token cannot get it; node2's can.
    let err = ca
        .create_certificate(ask(pay, csr_pem(), Some(ONE)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("node1"), "{}", err.message());
    ca.create_certificate(ask(pay, csr_pem(), Some(TWO)))
        .await
        .unwrap();

    // An identity with no pod anywhere.
    let err = ca
        .create_certificate(ask(
            "spiffe://cluster.local/ns/shop/sa/ghost",
            csr_pem(),
            Some(ONE),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // Malformed CSR: a clear InvalidArgument.
    let err = ca
        .create_certificate(ask(cart, "not a csr".into(), Some(ONE)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("csr"), "{}", err.message());

    // No token.
    let err = ca
        .create_certificate(ask(cart, csr_pem(), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let metrics = h.metrics().await;
    assert!(
        metrics.contains("control_plane_ca_certificates_signed_total 2"),
        "{metrics}"
    );
    assert!(metrics
        .contains("control_plane_ca_certificates_refused_total{reason=\"not_authorized\"} 2"));
    assert!(metrics.contains("control_plane_ca_certificates_refused_total{reason=\"bad_csr\"} 1"));
    h.cp.shutdown().await;
}

#[tokio::test]
async fn failed_authentications_are_limited_per_source_and_counted() {
    use control_plane::auth::FAILURE_BURST;
    let h = Harness::start().await;
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    let ask = |token: &str| {
        let mut req = tonic::Request::new(cert_request(cart, csr_pem()));
        bearer(&mut req, token);
        req
    };
    let guesser = Some("127.0.0.2".parse().unwrap());
    let mut ca = IstioCertificateServiceClient::new(h.channel_from(guesser).await);
    let wrong = "not-the-token-0123456789abcdef0123456789";
    for i in 0..FAILURE_BURST {
        let err = ca.create_certificate(ask(wrong)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "guess {i}: {err}");
    }
    // The allowance is spent: refused unread, even with a good token.
    for token in [wrong, ONE] {
        let err = ca.create_certificate(ask(token)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    }
    // Another source is not affected.
    let from = Some("127.0.0.1".parse().unwrap());
    let mut ads = {
        let (tx, rx) = mpsc::channel(8);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        bearer(&mut req, ONE);
        let mut client = AggregatedDiscoveryServiceClient::new(h.channel_from(from).await);
        let rx = client
            .delta_aggregated_resources(req)
            .await
            .expect("another source authenticates")
            .into_inner();
        Ads { tx, rx }
    };
    ads.send(subscribe(proto::ADDRESS_TYPE_URL, &[])).await;
    ads.recv().await;

    let metrics = h.metrics().await;
    for (reason, n) in [("unknown_token", FAILURE_BURST), ("rate_limited", 2)] {
        let series = format!("control_plane_auth_failures_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&series), "{series}\n{metrics}");
    }
    h.cp.shutdown().await;
}

#[tokio::test]
async fn a_client_that_subscribes_before_the_first_config_hears_every_type() {
    let h = Harness::start_with(None).await;
    let mut ads = Ads::open(&h, ONE).await;
    ads.send(subscribe(proto::ADDRESS_TYPE_URL, &[])).await;
    ads.send(subscribe(proto::AUTHORIZATION_TYPE_URL, &[]))
        .await;
    assert!(ads.quiet().await, "nothing to say before a config");
    // The config has no policies: the (empty) answer must still come, or
    // the client never knows it is in sync.
    h.edit(MESH);
    let mut types = vec![ads.recv().await.type_url, ads.recv().await.type_url];
    types.sort();
    assert_eq!(
        types,
        [proto::AUTHORIZATION_TYPE_URL, proto::ADDRESS_TYPE_URL]
    );
    h.cp.shutdown().await;
}
