use super::*;
use hbone::ca::DevCa;
use proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use proto::ca::IstioCertificateResponse;
use rustls_pki_types::CertificateSigningRequestDer;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A CA service backed by a real dev CA. `sign_as` overrides the identity
/// it signs for (a misbehaving CA); `refuse` answers PERMISSION_DENIED.
#[derive(Clone)]
struct TestCa {
    ca: DevCa,
    sign_as: Option<SpiffeId>,
    refuse: bool,
    /// Takes the call and never answers (a hung control plane).
    hang: bool,
    calls: Arc<AtomicUsize>,
    tokens: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl IstioCertificateService for TestCa {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = request.metadata().get("authorization") {
            self.tokens
                .lock()
                .unwrap()
                .push(t.to_str().unwrap().to_owned());
        }
        if self.refuse {
            return Err(tonic::Status::permission_denied("no such pod on your node"));
        }
        if self.hang {
            std::future::pending::<()>().await;
        }
        let req = request.into_inner();
        let asked = match req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(proto::IMPERSONATED_IDENTITY_KEY))
            .and_then(|v| v.kind.as_ref())
        {
            Some(prost_types::value::Kind::StringValue(s)) => s.parse::<SpiffeId>().unwrap(),
            _ => return Err(tonic::Status::invalid_argument("no identity")),
        };
        let id = self.sign_as.clone().unwrap_or(asked);
        let der = CertificateSigningRequestDer::from_pem_slice(req.csr.as_bytes())
            .map_err(|_| tonic::Status::invalid_argument("csr"))?;
        let ttl = Duration::from_secs(req.validity_duration as u64);
        let chain = self
            .ca
            .sign_csr(&der, &id, ttl)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let pem = chain
            .iter()
            .map(|c| {
                let b64 = base64_encode(c);
                format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
            })
            .collect();
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain: pem,
        }))
    }
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn start(ca: TestCa) -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(ca))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

fn test_ca(sign_as: Option<&str>, refuse: bool) -> TestCa {
    TestCa {
        ca: DevCa::generate().unwrap(),
        sign_as: sign_as.map(|s| s.parse().unwrap()),
        refuse,
        hang: false,
        calls: Arc::default(),
        tokens: Arc::default(),
    }
}

const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";

#[tokio::test]
async fn fetches_a_certificate_for_the_impersonated_identity() {
    let ca = test_ca(None, false);
    let (roots, tokens) = (vec![ca.ca.root()], ca.tokens.clone());
    let remote = RemoteCa::new(
        start(ca).await,
        Some("tok-node1".into()),
        roots,
        Duration::from_secs(3600),
    );
    let id: SpiffeId = CART.parse().unwrap();
    let cert = remote.fetch(&id).await.unwrap();
    assert_eq!(cert.identity(), &id);
    assert_eq!(
        cert.chain().len(),
        1,
        "the root is not sent in the TLS chain"
    );
    let life = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert!(
        life >= Duration::from_secs(3600) && life < Duration::from_secs(3800),
        "{life:?}"
    );
    assert_eq!(tokens.lock().unwrap().as_slice(), ["Bearer tok-node1"]);
    // It is a usable TLS identity.
    hbone::tls::server_config(&cert).unwrap();
}

/// A root rotation as a proxy sees it: the mounted bundle gains a root,
/// and the next certificate carries both (so peers under either verify).
#[tokio::test]
async fn each_fetch_carries_the_roots_file_as_it_is_then() {
    let ca = test_ca(None, false);
    let old = ca.ca.root_pem().to_owned();
    let new = DevCa::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root-cert.pem");
    std::fs::write(&path, &old).unwrap();
    let fixed = vec![ca.ca.root()];
    let remote = RemoteCa::new(
        start(ca).await,
        None,
        fixed.clone(),
        Duration::from_secs(3600),
    )
    .with_roots_file(&path);
    let id: SpiffeId = CART.parse().unwrap();
    assert_eq!(remote.fetch(&id).await.unwrap().roots(), fixed.as_slice());
    std::fs::write(&path, format!("{old}{}", new.root_pem())).unwrap();
    let both = remote.fetch(&id).await.unwrap();
    assert_eq!(both.roots(), [fixed[0].clone(), new.root()].as_slice());
    assert_eq!(remote.roots().len(), 2);
    // A file being replaced (missing for a moment) keeps the fixed roots.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(remote.roots(), fixed);
}

#[tokio::test]
async fn a_certificate_for_another_identity_is_refused() {
    let ca = test_ca(Some("spiffe://cluster.local/ns/bank/sa/ledger"), false);
    let roots = vec![ca.ca.root()];
    let remote = RemoteCa::new(start(ca).await, None, roots, Duration::from_secs(3600));
    let err = remote.fetch(&CART.parse().unwrap()).await.unwrap_err();
    let msg = format!("{:?}", err);
    assert!(msg.contains("WrongIdentity"), "{msg}");
}

#[tokio::test]
async fn a_refusal_is_not_retried() {
    let ca = test_ca(None, true);
    let (roots, calls) = (vec![ca.ca.root()], ca.calls.clone());
    let remote = RemoteCa::new(start(ca).await, None, roots, Duration::from_secs(3600));
    let err = remote.fetch(&CART.parse().unwrap()).await.unwrap_err();
    assert!(format!("{err:?}").contains("PermissionDenied"), "{err:?}");
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_ca_that_never_answers_fails_the_fetch_within_its_deadlines() {
    let mut ca = test_ca(None, false);
    ca.hang = true;
    let (roots, calls) = (vec![ca.ca.root()], ca.calls.clone());
    let remote = RemoteCa::new(start(ca).await, None, roots, Duration::from_secs(3600))
        .with_attempt_timeout(Duration::from_millis(200));
    let fetch = remote.fetch(&CART.parse().unwrap());
    let err = tokio::time::timeout(Duration::from_secs(30), fetch)
        .await
        .expect("a hung CA must not hang the fetch")
        .unwrap_err();
    assert!(format!("{err:?}").contains("Timeout"), "{err:?}");
    assert_eq!(
        calls.load(Ordering::Relaxed),
        ATTEMPTS as usize,
        "each attempt was cut off and retried"
    );
}

#[test]
fn csr_carries_the_identity_and_metadata_names_it() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let id: SpiffeId = CART.parse().unwrap();
    let pem = csr_pem(&id, &key).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    let s = impersonate(&id);
    assert!(matches!(
        s.fields[proto::IMPERSONATED_IDENTITY_KEY].kind,
        Some(prost_types::value::Kind::StringValue(ref v)) if v == CART
    ));
}
