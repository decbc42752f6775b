//! Authentication and the CA in a cluster, against the test API server
//! and the real `control-plane` binary (`--source kubernetes`):
//! - projected service-account tokens reviewed with `TokenReview`, the
//!   caller's node taken from the token's bound pod;
//! - the CA root in the `cacerts` Secret: two replicas starting together
//!   sign from one root; a rotation step written to the Secret reaches the
//!   signer and every namespace's `istio-ca-root-cert`;
//! - leader election with a Lease: one leader writes the ConfigMaps, and
//!   another takes over when it stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::ca::keys::{merge_bundles, CaMaterial};
use control_plane::ca::secret;
use hbone::cert::{CertError, CertProvider};
use hbone::SpiffeId;
use mesh_runtime::xds::ca::RemoteCa;
use mesh_runtime::xds::token::BearerToken;
use mesh_tests::kube_api::resources::RESOURCES;
use mesh_tests::kube_api::tokenreview::TestToken;
use mesh_tests::kube_api::{load_yaml, Store};
use mesh_tests::kube_cluster::{endpoint, KubeCluster};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// ztunnel on node-a; an ambient namespace with `server` on both nodes
/// and `ledger` on node-b only; a waypoint pod.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: bank, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-a, namespace: istio-system}
spec: {serviceAccountName: ztunnel, nodeName: node-a, containers: [{name: ztunnel, image: ztunnel}]}
status: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server-1, namespace: bank}
spec: {serviceAccountName: server, nodeName: node-b, containers: [{name: s, image: echo}]}
status: {phase: Running, podIP: 10.1.0.2, podIPs: [{ip: 10.1.0.2}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server-2, namespace: bank}
spec: {serviceAccountName: server, nodeName: node-a, containers: [{name: s, image: echo}]}
status: {phase: Running, podIP: 10.1.0.3, podIPs: [{ip: 10.1.0.3}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ledger-1, namespace: bank}
spec: {serviceAccountName: ledger, nodeName: node-b, containers: [{name: s, image: echo}]}
status: {phase: Running, podIP: 10.1.0.4, podIPs: [{ip: 10.1.0.4}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-1, namespace: bank, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {serviceAccountName: waypoint, nodeName: node-b, containers: [{name: w, image: waypoint}]}
status: {phase: Running, podIP: 10.1.0.9, podIPs: [{ip: 10.1.0.9}], conditions: [{type: Ready, status: "True"}]}
"#;

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

const SERVER: &str = "spiffe://cluster.local/ns/bank/sa/server";
const LEDGER: &str = "spiffe://cluster.local/ns/bank/sa/ledger";
const WAYPOINT: &str = "spiffe://cluster.local/ns/bank/sa/waypoint";

fn pod_uid(store: &Store, ns: &str, name: &str) -> String {
    let pods = RESOURCES.iter().position(|r| r.plural == "pods").unwrap();
    let p = store.get(pods, ns, name).unwrap();
    p["metadata"]["uid"].as_str().unwrap().to_owned()
}

fn roots_of(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A CA client of the control plane at `addr`, presenting `token`.
fn remote_ca(addr: std::net::SocketAddr, root_pem: &str, token: BearerToken) -> RemoteCa {
    let channel = endpoint(addr, root_pem).connect_lazy();
    RemoteCa::new(
        channel,
        Some(token),
        roots_of(root_pem),
        Duration::from_secs(3600),
    )
}

fn status_code(e: &CertError) -> Option<tonic::Code> {
    let CertError::Provider(p) = e else {
        return None;
    };
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(p.as_ref());
    while let Some(s) = src {
        if let Some(st) = s.downcast_ref::<tonic::Status>() {
            return Some(st.code());
        }
        src = s.source();
    }
    None
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_reviewed_and_the_ca_signs_only_for_the_bound_pods_node() {
    let store = Arc::new(Store::default());
    load_yaml(&store, CLUSTER).unwrap();
    let cluster = KubeCluster::start_with(store.clone()).await;
    let reviews = cluster.api.token_reviews().clone();
    let root = cluster.root_pem();
    let zt_uid = pod_uid(&store, "istio-system", "ztunnel-a");
    reviews.register(
        "zt-token-1",
        TestToken::projected("istio-system", "ztunnel", "ztunnel-a", &zt_uid),
    );
    let wp_uid = pod_uid(&store, "bank", "waypoint-1");
    reviews.register(
        "wp-token",
        TestToken::projected("bank", "waypoint", "waypoint-1", &wp_uid),
    );
    // A token for the API server's audience, not the mesh's.
    let mut wrong_audience = TestToken::projected("istio-system", "ztunnel", "ztunnel-a", &zt_uid);
    wrong_audience.audiences = vec![mesh_tests::kube_api::tokenreview::API_AUDIENCE.to_owned()];
    reviews.register("zt-token-api", wrong_audience);
    // A token bound to a pod that has since been replaced (another uid).
    reviews.register(
        "zt-token-stale",
        TestToken::projected("istio-system", "ztunnel", "ztunnel-a", "old-uid"),
    );

    // ztunnel's token is a file the kubelet rotates: read on each use.
    let token_file = cluster.dir.join("ztunnel-token");
    std::fs::write(&token_file, "zt-token-1\n").unwrap();
    let zt = remote_ca(
        cluster.xds_addr,
        &root,
        BearerToken::file(&token_file).unwrap(),
    );
    let cert = zt.fetch(&id(SERVER)).await.unwrap();
    assert_eq!(cert.identity(), &id(SERVER), "server runs on node-a");
    let err = zt.fetch(&id(LEDGER)).await.unwrap_err();
    assert_eq!(
        status_code(&err),
        Some(tonic::Code::PermissionDenied),
        "ledger runs only on node-b: {err:?}"
    );

    // The token rotates: the next call reads the new one.
    reviews.register(
        "zt-token-2",
        TestToken::projected("istio-system", "ztunnel", "ztunnel-a", &zt_uid),
    );
    reviews.revoke("zt-token-1");
    std::fs::write(&token_file, "zt-token-2").unwrap();
    let before = reviews.served();
    zt.fetch(&id(SERVER)).await.unwrap();
    assert!(reviews.served() > before, "the new token was reviewed");
    // The answer is cached: the same token again is not reviewed again.
    let before = reviews.served();
    zt.fetch(&id(SERVER)).await.unwrap();
    assert_eq!(reviews.served(), before, "cached");

    // The waypoint names no identity and gets its service account's.
    let wp = remote_ca(cluster.xds_addr, &root, "wp-token".into()).own_identity();
    let cert = wp.fetch(&id(WAYPOINT)).await.unwrap();
    assert_eq!(cert.identity(), &id(WAYPOINT));

    // Refused tokens: unknown, wrong audience, stale pod.
    for (token, reason) in [
        ("no-such-token", "unknown_token"),
        ("zt-token-api", "wrong_audience"),
        ("zt-token-stale", "no_pod"),
    ] {
        let err = create(cluster.xds_addr, &root, token).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token}: {err:?}");
        let m = cluster.metrics();
        assert!(
            metric(
                &m,
                &format!("control_plane_auth_failures_total{{reason=\"{reason}\"}}")
            ) >= 1.0,
            "{token}: {reason} counted\n{m}"
        );
    }

    // xDS with the service-account token: ztunnel on node-a follows.
    let (publish, mut snapshots) = tokio::sync::mpsc::channel(8);
    let client = mesh_runtime::xds::client::XdsClient {
        endpoint: endpoint(cluster.xds_addr, &root),
        mark: None,
        node: proto::discovery::Node {
            id: "ztunnel~node-a".into(),
            ..Default::default()
        },
        token: Some(BearerToken::file(&token_file).unwrap()),
        store: Default::default(),
        stats: Default::default(),
        publish,
        synced: Default::default(),
        types: &mesh_runtime::xds::client::TYPE_URLS,
    };
    let drain = hbone::drain::Drain::new();
    tokio::spawn(client.run(drain.clone()));
    let snap = tokio::time::timeout(WAIT, snapshots.recv())
        .await
        .expect("an xDS snapshot")
        .unwrap();
    assert!(snap.workload_by_name("bank", "server-2").is_some());
    drain.signal();
}

fn configmap_bundle(store: &Store, ns: &str) -> Option<String> {
    let cms = RESOURCES
        .iter()
        .position(|r| r.plural == "configmaps")
        .unwrap();
    let cm = store.get(cms, ns, secret::ROOT_CONFIGMAP).ok()?;
    cm["data"][secret::ROOT_CONFIGMAP_KEY]
        .as_str()
        .map(String::from)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn leading(metrics: &str) -> bool {
    metric(metrics, "control_plane_leader ") == 1.0
}

/// One `CreateCertificate` for `SERVER` (no retries): the chain.
async fn create(
    addr: std::net::SocketAddr,
    root: &str,
    token: &str,
) -> Result<Vec<String>, tonic::Status> {
    let channel = endpoint(addr, root).connect_lazy();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = mesh_runtime::xds::ca::csr_pem(&id(SERVER), &key).unwrap();
    let mut req = tonic::Request::new(proto::ca::IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: Some(mesh_runtime::xds::ca::impersonate(&id(SERVER))),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    proto::ca::istio_certificate_service_client::IstioCertificateServiceClient::new(channel)
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

/// The root a replica's signed chains end at (RemoteCa drops it from the
/// chain it keeps, so this asks directly).
async fn chain_root(
    addr: std::net::SocketAddr,
    root: &str,
    token: &str,
) -> CertificateDer<'static> {
    let chain = create(addr, root, token).await.unwrap();
    CertificateDer::from_pem_slice(chain.last().unwrap().as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sign_from_one_root_one_leads_and_a_rotation_reaches_every_namespace() {
    let store = Arc::new(Store::default());
    load_yaml(&store, CLUSTER).unwrap();
    // Two replicas start at once on a cluster with no CA Secret.
    let mut cluster = KubeCluster::start_replicated(store.clone(), 1).await;
    let root = cluster.root_pem();
    assert_eq!(roots_of(&root).len(), 1);
    let zt_uid = pod_uid(&store, "istio-system", "ztunnel-a");
    cluster.api.token_reviews().register(
        "zt",
        TestToken::projected("istio-system", "ztunnel", "ztunnel-a", &zt_uid),
    );
    let a = chain_root(cluster.xds_addr, &root, "zt").await;
    let b = chain_root(cluster.replicas[0].xds_addr, &root, "zt").await;
    assert_eq!(
        a,
        roots_of(&root)[0],
        "replica 1 signs from the Secret's root"
    );
    assert_eq!(b, a, "both replicas sign from one root");
    let both = format!(
        "{}{}",
        cluster.control_plane_log(),
        cluster.replicas[0].log()
    );
    assert_eq!(
        both.matches("generated a root into the Secret").count(),
        1,
        "one replica generated the root, the other loaded it:\n{both}"
    );

    // Exactly one leads, and it writes the bundle into every namespace.
    wait_until("one leader", || {
        leading(&cluster.metrics()) ^ leading(&cluster.replicas[0].metrics())
    })
    .await;
    for ns in ["default", "istio-system", "bank"] {
        wait_until(&format!("root ConfigMap in {ns}"), || {
            configmap_bundle(&store, ns).as_deref() == Some(root.as_str())
        })
        .await;
    }
    assert_eq!(
        configmap_bundle(&store, "kube-system"),
        None,
        "Kubernetes' own namespaces get none, as with Istio"
    );

    // Rotation step 1: a user adds a new root to the Secret's bundle.
    let secrets = RESOURCES
        .iter()
        .position(|r| r.plural == "secrets")
        .unwrap();
    let current: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(store.get(secrets, "istio-system", "cacerts").unwrap()).unwrap();
    let old = secret::material(&current).unwrap();
    let new = CaMaterial::generate().unwrap();
    let step1 = old.with_root(&new);
    let put = |m: &CaMaterial| {
        let obj: Value = serde_json::to_value(secret::secret("istio-system", m)).unwrap();
        store
            .update(secrets, "istio-system", "cacerts", |_| Ok(obj.clone()))
            .unwrap();
    };
    put(&step1);
    let bundle = merge_bundles(&old.root_cert, &new.root_cert);
    for ns in ["default", "bank"] {
        wait_until(&format!("both roots in {ns}'s ConfigMap"), || {
            configmap_bundle(&store, ns).as_deref() == Some(bundle.as_str())
        })
        .await;
    }
    // The old key still signs; the chain ends at the old root.
    assert_eq!(chain_root(cluster.xds_addr, &root, "zt").await, a);

    // Step 2: the new key signs, on both replicas. Clients holding the
    // step-1 bundle trust the serving certificate either way.
    put(&step1.signing_with(&new));
    let new_root = roots_of(&new.root_cert)[0].clone();
    let deadline = Instant::now() + WAIT;
    for addr in [cluster.xds_addr, cluster.replicas[0].xds_addr] {
        loop {
            if chain_root(addr, &bundle, "zt").await == new_root {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{addr} never signed with the new root"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The leader stops (SIGTERM releases the Lease): the other takes
    // over and keeps the ConfigMaps written, for a new namespace too.
    let first_leads = leading(&cluster.metrics());
    if first_leads {
        cluster.terminate_control_plane();
    } else {
        cluster.replicas[0].terminate();
    }
    let survivor_leads = || {
        if first_leads {
            leading(&cluster.replicas[0].metrics())
        } else {
            leading(&cluster.metrics())
        }
    };
    wait_until("the other replica leads", survivor_leads).await;
    load_yaml(
        &store,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: late}\n",
    )
    .unwrap();
    wait_until("root ConfigMap in a new namespace", || {
        configmap_bundle(&store, "late").as_deref() == Some(bundle.as_str())
    })
    .await;
}

/// Many replicas' first starts at once, in-process so they really race:
/// each reads no Secret, generates a root and creates; the API server
/// takes one create, and every other replica loads the winner's root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_starts_sign_from_the_one_root_that_won() {
    let store = Arc::new(Store::default());
    load_yaml(&store, CLUSTER).unwrap();
    let api = mesh_tests::kube_api::ApiServer::start(
        store.clone(),
        std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let cfg = control_plane::source::kube::KubeConfig {
        kubeconfig: Some(kubeconfig),
        ..Default::default()
    };
    let client = control_plane::source::kube::client(&cfg).await.unwrap();
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { secret::load_or_create(&client, "istio-system").await })
        })
        .collect();
    let mut roots = Vec::new();
    for s in starts {
        roots.push(s.await.unwrap().unwrap().roots_pem());
    }
    let secrets = RESOURCES
        .iter()
        .position(|r| r.plural == "secrets")
        .unwrap();
    let stored: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(store.get(secrets, "istio-system", "cacerts").unwrap()).unwrap();
    let stored = secret::material(&stored).unwrap().root_cert;
    for (i, r) in roots.iter().enumerate() {
        assert_eq!(
            r, &stored,
            "replica {i} signs from a root that lost the race"
        );
    }
}

type Tls<S> = (S, tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

/// Mutual TLS over loopback as two proxies make it (hbone's configs): the
/// client holds `client`, the server `server`; each verifies the other
/// against the roots its own certificate carries. Both ends, or why not.
async fn mtls(
    server: &hbone::cert::WorkloadCert,
    client: &hbone::cert::WorkloadCert,
) -> Result<Tls<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(hbone::tls::server_config(server).unwrap());
    let connector = tokio_rustls::TlsConnector::from(
        hbone::tls::client_config(client, &[server.identity().clone()]).unwrap(),
    );
    let accept = async {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut s = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        s.write_all(&b).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(s)
    };
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut c = connector
            .connect(hbone::tls::server_name(addr), tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        c.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        Ok::<_, String>(c)
    };
    let (s, c) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(accept, connect)
    })
    .await
    .map_err(|_| "handshake timed out".to_owned())?;
    Ok((c?, s?))
}

/// Bytes still flow both ways on a connection made before a rotation.
async fn still_live<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut Tls<S>,
    what: &str,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (c, s) = conn;
    c.write_all(what.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; what.len()];
    s.read_exact(&mut buf).await.unwrap();
    s.write_all(&buf).await.unwrap();
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, what.as_bytes(), "{what}");
}

/// A root rotation through the Secret, with live connections: certificates
/// come from the control plane over service-account tokens, and each proxy
/// reads the mounted bundle (`istio-ca-root-cert`) on each fetch. A
/// connection made before stays up through every step; after step 2 a
/// certificate from the new key connects to one from the old key renewed
/// since step 1 (both carry the two-root bundle), and not to one that was
/// not renewed since (it trusts only the old root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_keeps_live_connections_and_renewed_certificates_connect_across_keys() {
    let store = Arc::new(Store::default());
    load_yaml(&store, CLUSTER).unwrap();
    let cluster = KubeCluster::start_with(store.clone()).await;
    let reviews = cluster.api.token_reviews().clone();
    let zt_uid = pod_uid(&store, "istio-system", "ztunnel-a");
    reviews.register(
        "zt",
        TestToken::projected("istio-system", "ztunnel", "ztunnel-a", &zt_uid),
    );
    let wp_uid = pod_uid(&store, "bank", "waypoint-1");
    reviews.register(
        "wp",
        TestToken::projected("bank", "waypoint", "waypoint-1", &wp_uid),
    );

    // The kubelet's copy of the namespace's ConfigMap.
    let root = cluster.root_pem();
    wait_until("the root ConfigMap in bank", || {
        configmap_bundle(&store, "bank").is_some()
    })
    .await;
    let mounted = cluster.dir.join("mounted-root-cert.pem");
    let sync_mount =
        || std::fs::write(&mounted, configmap_bundle(&store, "bank").unwrap()).unwrap();
    sync_mount();
    let zt = remote_ca(cluster.xds_addr, &root, "zt".into()).with_roots_file(&mounted);
    let wp = remote_ca(cluster.xds_addr, &root, "wp".into())
        .own_identity()
        .with_roots_file(&mounted);

    let server_1 = zt.fetch(&id(SERVER)).await.unwrap();
    let waypoint_1 = wp.fetch(&id(WAYPOINT)).await.unwrap();
    let mut live = mtls(&server_1, &waypoint_1)
        .await
        .expect("before the rotation");
    still_live(&mut live, "before").await;

    // Step 1: the new root joins the bundle.
    let secrets = RESOURCES
        .iter()
        .position(|r| r.plural == "secrets")
        .unwrap();
    let current: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(store.get(secrets, "istio-system", "cacerts").unwrap()).unwrap();
    let old = secret::material(&current).unwrap();
    let new = CaMaterial::generate().unwrap();
    let put = |m: &CaMaterial| {
        let obj: Value = serde_json::to_value(secret::secret("istio-system", m)).unwrap();
        store
            .update(secrets, "istio-system", "cacerts", |_| Ok(obj.clone()))
            .unwrap();
    };
    let step1 = old.with_root(&new);
    put(&step1);
    let bundle = merge_bundles(&old.root_cert, &new.root_cert);
    wait_until("both roots in bank's ConfigMap", || {
        configmap_bundle(&store, "bank").as_deref() == Some(bundle.as_str())
    })
    .await;
    sync_mount();
    let server_renewed = zt.fetch(&id(SERVER)).await.unwrap();
    assert_eq!(
        server_renewed.roots().len(),
        2,
        "the renewal carries both roots"
    );
    still_live(&mut live, "after step 1").await;

    // Step 2: the new key signs.
    put(&step1.signing_with(&new));
    let new_root = roots_of(&new.root_cert)[0].clone();
    let deadline = Instant::now() + WAIT;
    while chain_root(cluster.xds_addr, &root, "zt").await != new_root {
        assert!(
            Instant::now() < deadline,
            "the control plane never signed with the new key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waypoint_2 = wp.fetch(&id(WAYPOINT)).await.unwrap();
    still_live(&mut live, "after step 2").await;

    // New key ↔ old key renewed since step 1: both ways.
    mtls(&server_renewed, &waypoint_2)
        .await
        .expect("new client, renewed old server");
    mtls(&waypoint_2, &server_renewed)
        .await
        .expect("renewed old client, new server");
    // Not renewed since step 1: it trusts only the old root.
    let err = mtls(&server_1, &waypoint_2).await.unwrap_err();
    // The server refuses the client's chain (to a root it does not hold).
    assert!(
        err.contains("UnknownCA"),
        "refused by the stale server: {err}"
    );

    // Step 3: the old root leaves; the live connection is unaffected.
    put(&step1.signing_with(&new).trusting_only(&new));
    wait_until("only the new root in bank's ConfigMap", || {
        configmap_bundle(&store, "bank").as_deref() == Some(new.root_cert.as_str())
    })
    .await;
    still_live(&mut live, "after step 3").await;
}
