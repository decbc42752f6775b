//! Authentication and the CA in a cluster, against the test API server
//! and the real `control-plane` binary (`--source kubernetes`):
//! - projected service-account tokens reviewed with `TokenReview`, the
//!   caller's node taken from the token's bound pod;
//! - the CA root in the `cacerts` Secret: two replicas starting together
//!   sign from one root; a rotation step written to the Secret reaches the
//!   signer and every namespace's `istio-ca-root-cert` (with live
//!   connections: `kube_rotation.rs`);
//! - leader election with a Lease: one leader writes the ConfigMaps, and
//!   another takes over when it stops.

mod kube_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::ca::keys::{merge_bundles, CaMaterial};
use control_plane::ca::secret;
use hbone::cert::CertProvider;
use kube_support::*;
use mesh_runtime::xds::token::BearerToken;
use mesh_tests::kube_api::resources::RESOURCES;
use mesh_tests::kube_api::tokenreview::TestToken;
use mesh_tests::kube_api::{load_yaml, Store};
use mesh_tests::kube_cluster::{endpoint, KubeCluster};
use serde_json::Value;

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
