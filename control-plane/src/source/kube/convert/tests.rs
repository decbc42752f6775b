//! Table tests from YAML as a user would `kubectl apply` it (plus the
//! `status` the kubelet and controllers write).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_model::state::{AppProtocol, Labels, MtlsMode, ServicePort, Tunnel};

use super::*;

pub(super) fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const AMBIENT: &[(&str, &str)] = &[("istio.io/dataplane-mode", "ambient")];

/// A running, ready pod `shop/web-1` with `extra` spliced into its YAML.
fn pod(extra_labels: &str, spec: &str, status: &str) -> Pod {
    yaml(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels:
    app: web
{extra_labels}
spec:
  serviceAccountName: web
  nodeName: node-a
  containers:
  - name: web
    image: nginx
    ports:
    - {{name: http, containerPort: 8080}}
    - {{name: metrics, containerPort: 9090, protocol: TCP}}
    - {{name: dns, containerPort: 53, protocol: UDP}}
{spec}
status:
{status}
"#
    ))
}

const RUNNING: &str = r#"
  phase: Running
  podIP: 10.1.0.5
  podIPs: [{ip: 10.1.0.5}, {ip: "fd00::5"}]
  conditions:
  - {type: PodScheduled, status: "True"}
  - {type: Ready, status: "True"}
"#;

#[test]
fn namespaces_keep_only_the_labels_the_mesh_reads() {
    let ns: KubeNamespace = yaml(
        r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
    istio.io/use-waypoint: shop-waypoint
    kubernetes.io/metadata.name: shop
    team: payments
"#,
    );
    let info = namespace_info(&ns).unwrap();
    assert_eq!(info.name, "shop");
    assert_eq!(
        info.labels,
        labels(&[
            ("istio.io/dataplane-mode", "ambient"),
            ("istio.io/use-waypoint", "shop-waypoint"),
        ])
    );
    let n = namespace(&info, MtlsMode::Strict);
    assert_eq!(n.mtls, MtlsMode::Strict);
    assert_eq!(n.labels, info.labels);
}

#[test]
fn pods_become_workloads_as_the_file_config_would_make_them() {
    let info = pod_info(&pod("", "", RUNNING)).unwrap();
    assert_eq!(
        info.ips,
        vec![
            "10.1.0.5".parse::<std::net::IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(
        info.named_ports,
        BTreeMap::from([("http".into(), 8080), ("metrics".into(), 9090)]),
        "UDP ports are not the mesh's"
    );
    assert!(info.ready && info.live);
    let w = workload(&info, &labels(AMBIENT), "example.org").unwrap();
    assert_eq!(w.uid, "Kubernetes//Pod/shop/web-1");
    assert_eq!((w.name.as_str(), w.namespace.as_str()), ("web-1", "shop"));
    assert_eq!(w.service_account, "web");
    assert_eq!(w.node, "node-a");
    assert_eq!(w.trust_domain, "example.org");
    assert_eq!(
        w.identity().to_string(),
        "spiffe://example.org/ns/shop/sa/web"
    );
    assert_eq!(w.tunnel, Tunnel::Hbone);
    assert!(!w.native_tunnel);
    assert_eq!(w.labels, labels(&[("app", "web")]));
}

#[test]
fn enrolment_follows_namespace_and_pod_labels() {
    // (pod extra labels, namespace labels, tunnel, native tunnel)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Tunnel, bool);
    let cases: &[Case<'_>] = &[
        ("", AMBIENT, Tunnel::Hbone, false),
        ("", &[], Tunnel::None, false),
        (
            "",
            &[("istio.io/dataplane-mode", "none")],
            Tunnel::None,
            false,
        ),
        (
            "    istio.io/dataplane-mode: none",
            AMBIENT,
            Tunnel::None,
            false,
        ),
        // A sidecar terminates HBONE itself, enrolled or not.
        (
            "    security.istio.io/tlsMode: istio",
            &[],
            Tunnel::Hbone,
            true,
        ),
        (
            "    security.istio.io/tlsMode: istio",
            AMBIENT,
            Tunnel::Hbone,
            true,
        ),
    ];
    for (pod_labels, ns_labels, tunnel, native) in cases {
        let info = pod_info(&pod(pod_labels, "", RUNNING)).unwrap();
        let w = workload(&info, &labels(ns_labels), "cluster.local").unwrap();
        assert_eq!(
            (w.tunnel, w.native_tunnel),
            (*tunnel, *native),
            "pod {pod_labels:?}, namespace {ns_labels:?}"
        );
    }
}

#[test]
fn pods_that_are_not_workloads() {
    let cases: &[(&str, &str, &str)] = &[
        ("no IP yet", "", "  phase: Pending\n"),
        (
            "finished",
            "",
            "  phase: Succeeded\n  podIP: 10.1.0.5\n  podIPs: [{ip: 10.1.0.5}]\n",
        ),
        (
            "failed",
            "",
            "  phase: Failed\n  podIP: 10.1.0.5\n  podIPs: [{ip: 10.1.0.5}]\n",
        ),
        ("host network", "  hostNetwork: true\n", RUNNING),
    ];
    for (what, spec, status) in cases {
        let info = pod_info(&pod("", spec, status)).unwrap();
        assert!(
            workload(&info, &labels(AMBIENT), "cluster.local").is_none(),
            "{what}"
        );
    }
    // Pending with an IP (init containers running) is one, as in Istio;
    // not ready.
    let pending = pod_info(&pod(
        "",
        "",
        "  phase: Pending\n  podIP: 10.1.0.5\n  conditions: [{type: Ready, status: \"False\"}]\n",
    ))
    .unwrap();
    assert!(!pending.ready);
    let w = workload(&pending, &labels(AMBIENT), "cluster.local").unwrap();
    assert_eq!(w.ips, vec!["10.1.0.5".parse::<std::net::IpAddr>().unwrap()]);
    // No service account: `default`.
    let mut p = pod("", "", RUNNING);
    p.spec.as_mut().unwrap().service_account_name = None;
    assert_eq!(pod_info(&p).unwrap().service_account, "default");
}

fn web_service(ports: &str, extra_spec: &str) -> ServiceInfo {
    let svc: KubeService = yaml(&format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {{istio.io/use-waypoint: shop-waypoint}}
spec:
  selector: {{app: web}}
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
{ports}
{extra_spec}
"#
    ));
    service_info(&svc).unwrap()
}

const PORTS: &str = r#"
  - {name: http, port: 80, targetPort: http, appProtocol: http}
  - {name: grpc, port: 9000, targetPort: 9001}
  - {name: plain, port: 7000}
  - {name: metrics, port: 9090, targetPort: metrics}
  - {name: dns, port: 53, protocol: UDP}
  - {name: nobody, port: 81, targetPort: missing}
"#;

fn slice(name: &str, service: &str, endpoints: &str) -> SliceInfo {
    let es: EndpointSlice = yaml(&format!(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: shop
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}
"#
    ));
    slice_info(&es).unwrap()
}

#[test]
fn services_resolve_named_ports_against_their_pods() {
    let svc = web_service(PORTS, "");
    assert_eq!(
        svc.vips,
        vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(svc.ports.len(), 5, "UDP is dropped");
    assert_eq!(svc.ports[0].app_protocol, Some(AppProtocol::Http11));
    assert_eq!(
        svc.ports[1].app_protocol,
        Some(AppProtocol::Grpc),
        "from the port's name"
    );
    let web = pod_info(&pod("", "", RUNNING)).unwrap();
    let mut other = web.clone();
    other.name = "web-0".into();
    other.labels = labels(&[("app", "other")]);
    other.named_ports = BTreeMap::from([("http".into(), 1234)]);
    let s = service(&svc, [], |_| None, [&other, &web]).unwrap();
    assert_eq!(s.hostname, "web.shop.svc.cluster.local");
    assert_eq!(
        s.ports,
        vec![
            ServicePort {
                port: 80,
                target_port: 8080,
                app_protocol: Some(AppProtocol::Http11),
            },
            ServicePort {
                port: 9000,
                target_port: 9001,
                app_protocol: Some(AppProtocol::Grpc),
            },
            ServicePort {
                port: 7000,
                target_port: 7000,
                app_protocol: None,
            },
            ServicePort {
                port: 9090,
                target_port: 9090,
                app_protocol: None,
            },
        ],
        "a pod the selector does not pick is not asked; a name no pod declares is left out"
    );
    assert!(s.selector.is_empty(), "endpoints come from the slices");
    assert_eq!(
        s.labels,
        labels(&[("istio.io/use-waypoint", "shop-waypoint")])
    );
    // With no pod, named ports cannot be resolved.
    let s = service(&svc, [], |_| None, []).unwrap();
    assert_eq!(
        s.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        [9000, 7000]
    );
}

#[test]
fn endpoints_are_the_ready_pods_of_the_slices() {
    let svc = web_service(PORTS, "");
    let a = slice(
        "web-abc",
        "web",
        r#"
- addresses: [10.1.0.5]
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: shop, name: web-1}
- addresses: [10.1.0.6]
  conditions: {ready: false, terminating: true}
  targetRef: {kind: Pod, namespace: shop, name: web-2}
- addresses: [10.1.0.7]
  targetRef: {kind: Pod, namespace: shop, name: web-3}
- addresses: [10.1.0.8]
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: shop, name: web-4}
- addresses: [192.168.0.9]
  conditions: {ready: true}
"#,
    );
    assert_eq!(a.service.as_deref(), Some("web"));
    assert_eq!(
        a.endpoints.len(),
        4,
        "an endpoint without a pod is not a workload"
    );
    let b = slice(
        "web-def",
        "web",
        "- addresses: [10.1.0.5]\n  targetRef: {kind: Pod, namespace: shop, name: web-1}\n",
    );
    let web1 = pod_info(&pod("", "", RUNNING)).unwrap();
    // web-4's own Ready condition went False before the slice caught up.
    let mut web4 = web1.clone();
    web4.name = "web-4".into();
    web4.ready = false;
    let pods = [web1, web4];
    let find = |name: &str| pods.iter().find(|p| p.name == name);
    let s = service(&svc, [&a, &b], find, []).unwrap();
    assert_eq!(
        s.endpoint_uids,
        [
            "Kubernetes//Pod/shop/web-1",
            // Ready by the slice (unset is ready), pod not known yet.
            "Kubernetes//Pod/shop/web-3",
        ]
    );
    // publishNotReadyAddresses: the slice alone decides.
    let svc = web_service(PORTS, "  publishNotReadyAddresses: true");
    let s = service(&svc, [&a, &b], find, []).unwrap();
    assert_eq!(s.endpoint_uids.len(), 3);
}

#[test]
fn headless_and_external_name_services() {
    let svc: KubeService = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}
"#,
    );
    let info = service_info(&svc).unwrap();
    assert!(info.vips.is_empty());
    let s = service(&info, [], |_| None, []).unwrap();
    assert!(s.vips.is_empty());
    assert_eq!(
        s.ports,
        vec![ServicePort {
            port: 5432,
            target_port: 5432,
            app_protocol: None,
        }]
    );
    let svc: KubeService = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: example.com}
"#,
    );
    assert!(service(&service_info(&svc).unwrap(), [], |_| None, []).is_none());
}
