//! Connections that must fail: each fails with a clear error, and neither
//! side keeps a connection, stream or task afterwards.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{assert_pool_empty, id, rustls_error, Behavior, Mesh, TestServer, TD};
use futures::future::BoxFuture;
use hbone::ca::DevCa;
use hbone::cert::{CertError, CertProvider, CertStore, WorkloadCert};
use hbone::client::{ClientConfig, HboneClient, TunnelError};
use hbone::tls::PeerError;
use hbone::SpiffeId;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Issues from `issuer` but hands out `roots` as the trust anchors, with a
/// chosen validity window.
struct Issuing {
    issuer: DevCa,
    roots: Vec<CertificateDer<'static>>,
    /// (not_before relative to now, lifetime)
    window: Option<(Duration, Duration)>,
}

impl CertProvider for Issuing {
    fn fetch(&self, id: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, CertError>> {
        let mut cert = match self.window {
            Some((ago, ttl)) => self.issuer.issue_at(id, SystemTime::now() - ago, ttl),
            None => self.issuer.issue(id),
        }
        .map_err(|e| CertError::Provider(Box::new(e)));
        if let Ok(c) = &mut cert {
            *c = WorkloadCert::new(
                c.identity().clone(),
                c.chain().to_vec(),
                c.key(),
                c.not_before(),
                c.not_after(),
                self.roots.clone(),
            );
        }
        Box::pin(std::future::ready(cert))
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.roots.clone()
    }
}

fn store(issuer: &DevCa, roots: &DevCa, window: Option<(Duration, Duration)>) -> Arc<CertStore> {
    CertStore::new(Arc::new(Issuing {
        issuer: issuer.clone(),
        roots: vec![roots.root()],
        window,
    }))
}

const EXPIRED: Option<(Duration, Duration)> =
    Some((Duration::from_secs(7200), Duration::from_secs(3600)));

/// The rustls error behind a TLS handshake failure seen by the client.
fn client_tls_error(err: &TunnelError) -> &rustls::Error {
    match err {
        TunnelError::Tls { source, .. } => rustls_error(source).expect("a rustls error"),
        // A failed dial reaches every request that waited for it.
        TunnelError::Shared(e) => client_tls_error(e),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

fn untrusted(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature
        )
    )
}

async fn assert_all_clean(server: &TestServer, client: &HboneClient, tasks: usize) {
    server.assert_idle().await;
    common::assert_tasks_back_to(tasks).await;
    assert_pool_empty(client).await;
    assert_eq!(client.stats().active_streams, 0);
    assert_eq!(
        server
            .handler
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn server_cert_from_an_untrusted_root_is_refused() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    // The client's certificate and trust roots come from another CA.
    let other = DevCa::generate().unwrap();
    let client = HboneClient::new(CertStore::new(Arc::new(other)), ClientConfig::default());

    let tasks = common::alive_tasks();
    let err = client
        .connect(&mesh.request(&server, upstream))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "TLS_FAILURE", "{err:?}");
    // Both dev roots share a subject name, so webpki finds the wrong root
    // and reports its signature as bad rather than the issuer as unknown.
    assert!(
        untrusted(client_tls_error(&err)),
        "{:?}",
        client_tls_error(&err)
    );
    let failure = server.first_failure().await;
    assert_eq!(failure.reason, "TLS_FAILURE");
    assert_all_clean(&server, &client, tasks).await;
}

#[tokio::test]
async fn client_cert_from_an_untrusted_root_is_refused() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    // The client trusts the mesh root but its own certificate is from elsewhere.
    let other = DevCa::generate().unwrap();
    let client = HboneClient::new(store(&other, &mesh.ca, None), ClientConfig::default());

    let tasks = common::alive_tasks();
    let err = client
        .connect(&mesh.request(&server, upstream))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "TLS_FAILURE", "{err:?}");
    assert!(
        matches!(client_tls_error(&err), rustls::Error::AlertReceived(_)),
        "{err:?}"
    );
    let failure = server.first_failure().await;
    assert_eq!(failure.reason, "TLS_FAILURE");
    assert!(untrusted(failure.tls.as_ref().unwrap()), "{failure:?}");
    assert_all_clean(&server, &client, tasks).await;
}

#[tokio::test]
async fn wrong_server_identity_is_refused() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();
    let tasks = common::alive_tasks();
    let mut req = mesh.request(&server, upstream);
    let expected = id(TD, "someone-else");
    req.expected = vec![expected.clone()];

    let err = client.connect(&req).await.unwrap_err();
    assert_eq!(err.reason(), "TLS_FAILURE", "{err:?}");
    match common::peer_error(client_tls_error(&err)) {
        Some(PeerError::WrongIdentity { got, expected: e }) => {
            assert_eq!(got, &mesh.server_id);
            assert_eq!(e, &vec![expected]);
        }
        other => panic!("expected WrongIdentity, got {other:?}"),
    }
    assert_eq!(server.first_failure().await.reason, "TLS_FAILURE");
    assert_all_clean(&server, &client, tasks).await;
}

#[tokio::test]
async fn expired_server_cert_is_refused() {
    let mesh = Mesh::new();
    let server = TestServer::start_with(
        store(&mesh.ca, &mesh.ca, EXPIRED),
        mesh.server_id.clone(),
        Behavior::Forward,
        Default::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();

    let tasks = common::alive_tasks();
    let err = client
        .connect(&mesh.request(&server, upstream))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "TLS_FAILURE", "{err:?}");
    assert_eq!(
        client_tls_error(&err),
        &rustls::Error::InvalidCertificate(CertificateError::Expired)
    );
    assert_all_clean(&server, &client, tasks).await;
}

#[tokio::test]
async fn expired_client_cert_is_refused() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let client = HboneClient::new(store(&mesh.ca, &mesh.ca, EXPIRED), ClientConfig::default());

    let tasks = common::alive_tasks();
    let err = client
        .connect(&mesh.request(&server, upstream))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "TLS_FAILURE", "{err:?}");
    assert_eq!(
        client_tls_error(&err),
        &rustls::Error::AlertReceived(AlertDescription::CertificateExpired)
    );
    let failure = server.first_failure().await;
    assert!(
        matches!(
            failure.tls,
            Some(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{failure:?}"
    );
    // A refusal is not a stale connection: no second dial.
    assert_eq!(client.stats().connections_opened, 1);
    assert_all_clean(&server, &client, tasks).await;
}

#[tokio::test]
async fn client_from_another_trust_domain_is_refused() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();
    let tasks = common::alive_tasks();
    let mut req = mesh.request(&server, upstream);
    // Same root, so only the trust-domain rule can refuse it.
    req.source = id("other.local", "client");

    let err = client.connect(&req).await.unwrap_err();
    assert_eq!(err.reason(), "TLS_FAILURE", "{err:?}");
    assert_eq!(
        client_tls_error(&err),
        &rustls::Error::AlertReceived(AlertDescription::CertificateUnknown)
    );
    let failure = server.first_failure().await;
    assert_eq!(failure.reason, "TLS_FAILURE");
    let peer = failure.peer.expect("an identity-policy failure");
    assert!(peer.contains("WrongTrustDomain"), "{peer}");
    assert!(peer.contains("other.local"), "{peer}");
    assert_eq!(client.stats().connections_opened, 1);
    assert_all_clean(&server, &client, tasks).await;
}

/// Accepts any server certificate: a bare TLS client for the tests below.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = hbone::tls::provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        hbone::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let mut config = rustls::ClientConfig::builder_with_provider(hbone::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];

    let tasks = common::alive_tasks();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // In TLS 1.3 the client finishes first; the refusal arrives as an alert.
    let outcome = async {
        let mut tls = connector
            .connect(hbone::tls::server_name(server.addr), tcp)
            .await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.map(|_| buf)
    };
    let err = tokio::time::timeout(Duration::from_secs(5), outcome)
        .await
        .expect("the server answers promptly")
        .expect_err("the server refuses a client without a certificate");
    assert_eq!(
        rustls_error(&err),
        Some(&rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
        )),
        "{err:?}"
    );
    let failure = server.first_failure().await;
    assert_eq!(failure.reason, "TLS_FAILURE");
    assert_eq!(failure.tls, Some(rustls::Error::NoCertificatesPresented));
    server.assert_idle().await;
    common::assert_tasks_back_to(tasks).await;
}

/// Writes `bytes` on a raw TCP connection and reads until the server closes.
async fn raw_exchange(server: &TestServer, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // The server may close before reading everything: a reset is fine.
    let _ = tcp.write_all(bytes).await;
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server must close the connection");
    reply
}

#[tokio::test]
async fn plaintext_http1_client_is_refused() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let tasks = common::alive_tasks();
    let reply = raw_exchange(
        &server,
        b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n",
    )
    .await;
    assert!(!reply.starts_with(b"HTTP/"), "answered in plaintext");
    // At most a TLS alert record (content type 21) comes back.
    assert!(reply.is_empty() || reply[0] == 21, "{reply:?}");
    let failure = server.first_failure().await;
    assert_eq!(failure.reason, "TLS_FAILURE");
    assert!(
        matches!(failure.tls, Some(rustls::Error::InvalidMessage(_))),
        "{failure:?}"
    );
    server.assert_idle().await;
    common::assert_tasks_back_to(tasks).await;
    assert_eq!(
        server
            .handler
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn garbage_bytes_are_refused() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let garbage: Vec<u8> = common::Pattern::new(42).chunk(0, 64 * 1024);
    let tasks = common::alive_tasks();
    let reply = raw_exchange(&server, &garbage).await;
    assert!(reply.is_empty() || reply[0] == 21, "{reply:?}");
    let failure = server.first_failure().await;
    assert_eq!(failure.reason, "TLS_FAILURE");
    assert!(failure.tls.is_some(), "{failure:?}");
    server.assert_idle().await;
    common::assert_tasks_back_to(tasks).await;
}

#[tokio::test]
async fn silent_connection_hits_the_handshake_timeout() {
    let mesh = Mesh::new();
    let config = hbone::server::ServerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let server = TestServer::start_with(
        mesh.server_certs.clone(),
        mesh.server_id.clone(),
        Behavior::Forward,
        config,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;

    let tasks = common::alive_tasks();
    let start = tokio::time::Instant::now();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    assert!(common::eventually(Duration::from_secs(2), || server.open_connections() == 1).await);
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the server closes a silent connection");
    let elapsed = start.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "closed too late: {elapsed:?}"
    );
    let failure = server.first_failure().await;
    assert!(failure.timeout, "{failure:?}");
    assert_eq!(failure.reason, "TLS_FAILURE");
    server.assert_idle().await;
    common::assert_tasks_back_to(tasks).await;
}
