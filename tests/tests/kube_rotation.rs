//! A root rotation in a cluster with live connections: certificates from
//! the real `control-plane` binary (Kubernetes mode, against the test API
//! server) over service-account tokens, the steps written to the `cacerts`
//! Secret, mutual TLS between proxies' certificates over loopback.

mod kube_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::ca::keys::{merge_bundles, CaMaterial};
use control_plane::ca::secret;
use hbone::cert::CertProvider;
use kube_support::*;
use mesh_tests::kube_api::resources::RESOURCES;
use mesh_tests::kube_api::tokenreview::TestToken;
use mesh_tests::kube_api::{load_yaml, Store};
use mesh_tests::kube_cluster::KubeCluster;
use serde_json::Value;

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
