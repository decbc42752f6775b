//! Helpers shared by the Kubernetes authentication and CA suites
//! (`kube_auth.rs`, `kube_rotation.rs`).
#![allow(dead_code, reason = "each suite uses some of these")]

use std::time::{Duration, Instant};

use control_plane::ca::secret;
use hbone::cert::CertError;
use hbone::SpiffeId;
use mesh_runtime::xds::ca::RemoteCa;
use mesh_runtime::xds::token::BearerToken;
use mesh_tests::kube_api::resources::RESOURCES;
use mesh_tests::kube_api::Store;
use mesh_tests::kube_cluster::endpoint;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

pub const WAIT: Duration = Duration::from_secs(30);

/// ztunnel on node-a; an ambient namespace with `server` on both nodes
/// and `ledger` on node-b only; a waypoint pod.
pub const CLUSTER: &str = r#"
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

pub fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

pub const SERVER: &str = "spiffe://cluster.local/ns/bank/sa/server";
pub const LEDGER: &str = "spiffe://cluster.local/ns/bank/sa/ledger";
pub const WAYPOINT: &str = "spiffe://cluster.local/ns/bank/sa/waypoint";

pub fn pod_uid(store: &Store, ns: &str, name: &str) -> String {
    let pods = RESOURCES.iter().position(|r| r.plural == "pods").unwrap();
    let p = store.get(pods, ns, name).unwrap();
    p["metadata"]["uid"].as_str().unwrap().to_owned()
}

pub fn roots_of(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A CA client of the control plane at `addr`, presenting `token`.
pub fn remote_ca(addr: std::net::SocketAddr, root_pem: &str, token: BearerToken) -> RemoteCa {
    let channel = endpoint(addr, root_pem).connect_lazy();
    RemoteCa::new(
        channel,
        Some(token),
        roots_of(root_pem),
        Duration::from_secs(3600),
    )
}

pub fn status_code(e: &CertError) -> Option<tonic::Code> {
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

pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn configmap_bundle(store: &Store, ns: &str) -> Option<String> {
    let cms = RESOURCES
        .iter()
        .position(|r| r.plural == "configmaps")
        .unwrap();
    let cm = store.get(cms, ns, secret::ROOT_CONFIGMAP).ok()?;
    cm["data"][secret::ROOT_CONFIGMAP_KEY]
        .as_str()
        .map(String::from)
}

pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn leading(metrics: &str) -> bool {
    metric(metrics, "control_plane_leader ") == 1.0
}

/// One `CreateCertificate` for `SERVER` (no retries): the chain.
pub async fn create(
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
pub async fn chain_root(
    addr: std::net::SocketAddr,
    root: &str,
    token: &str,
) -> CertificateDer<'static> {
    let chain = create(addr, root, token).await.unwrap();
    CertificateDer::from_pem_slice(chain.last().unwrap().as_bytes()).unwrap()
}
