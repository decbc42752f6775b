//! Table tests of the routing decision, and a proptest of its invariants.

use super::*;
use mesh_model::config;

const DEMO: &str = include_str!("../../examples/demo-config.yaml");

/// One line per route, so the table below reads like the design's table.
fn describe(r: &Route) -> String {
    let host = |h: &Option<String>| h.clone().unwrap_or_else(|| "-".into());
    match r {
        Route::Local {
            dest,
            dst,
            forwarded_host,
            ..
        } => format!("local {} {dst} host={}", dest.uid, host(forwarded_host)),
        Route::Hbone {
            via,
            authority,
            expect,
            forwarded_host,
            ..
        } => format!(
            "hbone via={via} auth={authority} expect={} host={}",
            expect.service_account(),
            host(forwarded_host)
        ),
        Route::Waypoint {
            via,
            authority,
            expect,
            forwarded_host,
            ..
        } => format!(
            "waypoint via={via} auth={authority} expect={} host={}",
            expect.service_account(),
            host(forwarded_host)
        ),
        Route::Passthrough { dst, .. } => format!("passthrough {dst}"),
    }
}

#[test]
fn routes_from_frontend_on_node1() {
    let snap = config::parse(DEMO).unwrap();
    let src: IpAddr = "10.1.1.10".parse().unwrap();
    let cases: &[(&str, usize, &str)] = &[
        // Service VIP: endpoint by pick (sorted by uid), port 80 -> 8080.
        (
            "10.96.0.10:80",
            0,
            "local shop/cart-1 10.1.1.11:8080 host=cart.shop.svc.cluster.local",
        ),
        (
            "10.96.0.10:80",
            1,
            "hbone via=10.1.2.11:15008 auth=10.1.2.11:8080 expect=cart host=cart.shop.svc.cluster.local",
        ),
        (
            "10.96.0.10:80",
            5,
            "hbone via=10.1.2.12:15008 auth=10.1.2.12:8080 expect=cart host=cart.shop.svc.cluster.local",
        ),
        // A pod dialled directly: no port mapping, no forwarded host.
        ("10.1.1.11:8080", 0, "local shop/cart-1 10.1.1.11:8080 host=-"),
        (
            "10.1.2.11:9000",
            0,
            "hbone via=10.1.2.11:15008 auth=10.1.2.11:9000 expect=cart host=-",
        ),
        // bank uses a waypoint: the authority is what was dialled.
        (
            "10.96.0.20:443",
            0,
            "waypoint via=10.1.1.30:15008 auth=10.96.0.20:443 expect=waypoint host=ledger.bank.svc.cluster.local",
        ),
        (
            "10.1.2.20:8443",
            0,
            "waypoint via=10.1.1.30:15008 auth=10.1.2.20:8443 expect=waypoint host=-",
        ),
        // Not in the mesh.
        ("10.1.1.40:80", 0, "passthrough 10.1.1.40:80"),
        ("10.1.1.30:15021", 0, "passthrough 10.1.1.30:15021"),
        ("8.8.8.8:443", 0, "passthrough 8.8.8.8:443"),
    ];
    for (dst, pick, want) in cases {
        let route = classify(&snap, src, dst.parse().unwrap(), "node1", *pick).unwrap();
        assert_eq!(describe(&route), *want, "{dst} pick={pick}");
        assert_eq!(route.source().name, "frontend");
    }
}

#[test]
fn the_same_endpoint_is_remote_from_the_other_node() {
    let snap = config::parse(DEMO).unwrap();
    let src: IpAddr = "10.1.2.11".parse().unwrap(); // cart-2 on node2
    let route = classify(&snap, src, "10.1.1.11:8080".parse().unwrap(), "node2", 0).unwrap();
    assert_eq!(
        describe(&route),
        "hbone via=10.1.1.11:15008 auth=10.1.1.11:8080 expect=cart host=-"
    );
    let route = classify(&snap, src, "10.1.2.12:8080".parse().unwrap(), "node2", 0).unwrap();
    assert_eq!(describe(&route), "local shop/cart-3 10.1.2.12:8080 host=-");
}

#[test]
fn errors() {
    // The demo file plus a Service that selects nothing.
    let extra = DEMO.replace(
        "services:\n",
        "services:\n  - {name: empty, namespace: shop, vip: 10.96.0.99, ports: [{port: 80}]}\n",
    );
    let snap = config::parse(&extra).unwrap();
    let cases: &[(&str, &str, &str, ClassifyError)] = &[
        (
            "10.9.9.9",
            "10.96.0.10:80",
            "node1",
            ClassifyError::UnknownSource("10.9.9.9".parse().unwrap()),
        ),
        // legacy is not ambient, and the waypoint pod opted out.
        (
            "10.1.1.40",
            "10.96.0.10:80",
            "node1",
            ClassifyError::UnknownSource("10.1.1.40".parse().unwrap()),
        ),
        (
            "10.1.1.30",
            "10.96.0.10:80",
            "node1",
            ClassifyError::UnknownSource("10.1.1.30".parse().unwrap()),
        ),
        (
            "10.1.2.11",
            "10.96.0.10:80",
            "node1",
            ClassifyError::SourceNotLocal {
                src: "10.1.2.11".parse().unwrap(),
                node: "node2".into(),
            },
        ),
        (
            "10.1.1.10",
            "10.96.0.10:81",
            "node1",
            ClassifyError::UnknownServicePort {
                service: "shop/cart".into(),
                port: 81,
            },
        ),
        (
            "10.1.1.10",
            "10.96.0.99:80",
            "node1",
            ClassifyError::NoEndpoints {
                service: "shop/empty".into(),
            },
        ),
    ];
    for (src, dst, node, want) in cases {
        let got = classify(&snap, src.parse().unwrap(), dst.parse().unwrap(), node, 0);
        assert_eq!(got.as_ref().unwrap_err(), want, "{src} -> {dst}");
    }
    assert_eq!(cases[3].3.reason(), "source_not_local");
}

/// The demo without its waypoint pod: bank's namespace still names
/// `waypoint`, so traffic to the ledger (VIP or pod) is refused with
/// `waypoint_missing`, never sent straight to the ledger; the rest of the
/// mesh routes as before.
#[test]
fn a_missing_waypoint_refuses_rather_than_bypasses() {
    let start = DEMO.find("  - name: waypoint\n").unwrap();
    let end = DEMO.find("  - name: old-client").unwrap();
    let without = format!("{}{}", &DEMO[..start], &DEMO[end..]);
    let snap = config::parse(&without).unwrap();
    let src: IpAddr = "10.1.1.10".parse().unwrap();
    let cases: &[(&str, Result<&str, ClassifyError>)] = &[
        (
            "10.96.0.20:443",
            Err(ClassifyError::WaypointMissing {
                target: "bank/ledger".into(),
                waypoint: "bank/waypoint".into(),
            }),
        ),
        (
            "10.1.2.20:8443",
            Err(ClassifyError::WaypointMissing {
                target: "bank/ledger".into(),
                waypoint: "bank/waypoint".into(),
            }),
        ),
        (
            "10.96.0.10:80",
            Ok("local shop/cart-1 10.1.1.11:8080 host=cart.shop.svc.cluster.local"),
        ),
    ];
    for (dst, want) in cases {
        let got = classify(&snap, src, dst.parse().unwrap(), "node1", 0);
        assert_eq!(
            got.map(|r| describe(&r)),
            want.clone().map(String::from),
            "{dst}"
        );
    }
    let err = classify(&snap, src, "10.96.0.20:443".parse().unwrap(), "node1", 0).unwrap_err();
    assert_eq!(err.reason(), "waypoint_missing");
    assert_eq!(
        err.to_string(),
        "bank/ledger uses waypoint bank/waypoint, which is missing; refusing rather than bypassing it"
    );
}

fn served_pod(workload: &str, node: &str) -> ServedPod {
    ServedPod {
        workload: workload.parse().unwrap(),
        node: node.into(),
    }
}

/// A sidecar's capture listeners (outbound, inbound plaintext).
const PROXY_PORTS: &[u16] = &[15001, 15006];

const SIDECARS: &str = r#"
nodes: [{name: node1, ip: 10.0.0.1}, {name: node2, ip: 10.0.0.2}]
namespaces:
  - {name: mesh}
  - {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
  - {name: legacy}
workloads:
  - {name: client, namespace: mesh, serviceAccount: client, ip: 10.1.1.10, node: node1, labels: {security.istio.io/tlsMode: istio}}
  - {name: server, namespace: mesh, serviceAccount: server, ip: 10.1.2.10, node: node2, labels: {app: server, security.istio.io/tlsMode: istio}}
  - {name: amb, namespace: shop, serviceAccount: amb, ip: 10.1.2.11, node: node2}
  - {name: wp, namespace: shop, serviceAccount: wp, ip: 10.1.1.30, node: node1, labels: {istio.io/dataplane-mode: none}}
  - {name: plain, namespace: legacy, ip: 10.1.1.40, node: node1, labels: {app: plain}}
  - {name: native, namespace: legacy, serviceAccount: native, ip: 10.1.1.41, node: node1, nativeTunnel: true}
  - {name: optout, namespace: legacy, ip: 10.1.1.42, node: node1, nativeTunnel: false, labels: {security.istio.io/tlsMode: istio}}
  - {name: both, namespace: shop, serviceAccount: both, ip: 10.1.2.13, node: node2, labels: {security.istio.io/tlsMode: istio, istio.io/use-waypoint: none}}
  - {name: amb2, namespace: shop, serviceAccount: amb2, ip: 10.1.2.14, node: node2, labels: {istio.io/use-waypoint: none}}
services:
  - {name: server, namespace: mesh, vip: 10.96.0.10, ports: [{port: 80, targetPort: 8080}], selector: {app: server}}
  - {name: plain, namespace: legacy, vip: 10.96.0.40, ports: [{port: 80, targetPort: 8080}], selector: {app: plain}}
  - {name: empty, namespace: mesh, vip: 10.96.0.99, ports: [{port: 80}]}
"#;

#[test]
fn sidecar_routes_from_client() {
    let snap = config::parse(SIDECARS).unwrap();
    let served = served_pod("mesh/client", "node1");
    let cases: &[(&str, &str)] = &[
        // A sidecar pod (tlsMode label, so native_tunnel): HBONE to
        // its own 15008.
        (
            "10.1.2.10:8080",
            "hbone via=10.1.2.10:15008 auth=10.1.2.10:8080 expect=server host=-",
        ),
        // Its VIP: endpoint picked, port mapped, host forwarded.
        (
            "10.96.0.10:80",
            "hbone via=10.1.2.10:15008 auth=10.1.2.10:8080 expect=server host=server.mesh.svc.cluster.local",
        ),
        // An ambient pod: HBONE to it directly, its waypoint ignored.
        (
            "10.1.2.11:9000",
            "hbone via=10.1.2.11:15008 auth=10.1.2.11:9000 expect=amb host=-",
        ),
        // native_tunnel set explicitly, or in an ambient namespace.
        (
            "10.1.1.41:80",
            "hbone via=10.1.1.41:15008 auth=10.1.1.41:80 expect=native host=-",
        ),
        (
            "10.1.2.13:80",
            "hbone via=10.1.2.13:15008 auth=10.1.2.13:80 expect=both host=-",
        ),
        // The label overridden with nativeTunnel: false: not meshed.
        ("10.1.1.42:80", "passthrough 10.1.1.42:80"),
        // The waypoint pod opted out: not meshed.
        ("10.1.1.30:15008", "passthrough 10.1.1.30:15008"),
        // Outside the mesh: plain TCP, to the endpoint for a VIP.
        ("10.1.1.40:80", "passthrough 10.1.1.40:80"),
        ("10.96.0.40:80", "passthrough 10.1.1.40:8080"),
        ("8.8.8.8:443", "passthrough 8.8.8.8:443"),
        // The served pod itself, and its other proxy-looking ports.
        ("10.1.1.10:8080", "passthrough 10.1.1.10:8080"),
        ("10.1.1.10:15008", "passthrough 10.1.1.10:15008"),
        // Another pod's 15001 is not ours.
        ("10.1.1.40:15001", "passthrough 10.1.1.40:15001"),
    ];
    for (dst, want) in cases {
        let route = classify_sidecar(&snap, &served, dst.parse().unwrap(), PROXY_PORTS, 0).unwrap();
        assert_eq!(describe(&route), *want, "{dst}");
        assert_eq!(route.source().name, "client", "{dst}");
    }
    // A plain pod with a sidecar still tunnels to meshed destinations.
    let plain = served_pod("legacy/plain", "node1");
    let route = classify_sidecar(
        &snap,
        &plain,
        "10.1.2.10:8080".parse().unwrap(),
        PROXY_PORTS,
        0,
    )
    .unwrap();
    assert_eq!(
        describe(&route),
        "hbone via=10.1.2.10:15008 auth=10.1.2.10:8080 expect=server host=-"
    );
}

/// An ambient client (node mode) reaching pods that run their own
/// sidecar: HBONE straight to the pod's 15008 with its identity, never
/// the in-process path, even on the same node or in an ambient
/// namespace.
#[test]
fn ambient_client_to_native_tunnel_pods() {
    let snap = config::parse(SIDECARS).unwrap();
    let src: IpAddr = "10.1.2.14".parse().unwrap(); // amb2 on node2
    let cases: &[(&str, &str)] = &[
        // Same node as the client.
        (
            "10.1.2.10:8080",
            "hbone via=10.1.2.10:15008 auth=10.1.2.10:8080 expect=server host=-",
        ),
        (
            "10.96.0.10:80",
            "hbone via=10.1.2.10:15008 auth=10.1.2.10:8080 expect=server host=server.mesh.svc.cluster.local",
        ),
        (
            "10.1.2.13:80",
            "hbone via=10.1.2.13:15008 auth=10.1.2.13:80 expect=both host=-",
        ),
        // The other node.
        (
            "10.1.1.10:8080",
            "hbone via=10.1.1.10:15008 auth=10.1.1.10:8080 expect=client host=-",
        ),
        (
            "10.1.1.41:80",
            "hbone via=10.1.1.41:15008 auth=10.1.1.41:80 expect=native host=-",
        ),
        // An ambient pod on this node stays local; no sidecar, no mesh.
        ("10.1.2.11:9000", "waypoint via=10.1.1.30:15008 auth=10.1.2.11:9000 expect=wp host=-"),
        ("10.1.1.42:80", "passthrough 10.1.1.42:80"),
        ("10.1.1.40:80", "passthrough 10.1.1.40:80"),
    ];
    for (dst, want) in cases {
        let route = classify(&snap, src, dst.parse().unwrap(), "node2", 0).unwrap();
        assert_eq!(describe(&route), *want, "{dst}");
    }
    let route = classify(&snap, src, "10.1.2.14:80".parse().unwrap(), "node2", 0).unwrap();
    assert_eq!(describe(&route), "local shop/amb2 10.1.2.14:80 host=-");
    // A pod with its own sidecar is no node ztunnel's source.
    for (src, node) in [("10.1.2.13", "node2"), ("10.1.1.10", "node1")] {
        let src: IpAddr = src.parse().unwrap();
        let got = classify(&snap, src, "10.1.2.14:80".parse().unwrap(), node, 0);
        assert_eq!(got, Err(ClassifyError::UnknownSource(src)), "{src}");
    }
}

#[test]
fn sidecar_errors() {
    let snap = config::parse(SIDECARS).unwrap();
    let cases: &[(&str, &str, ClassifyError)] = &[
        (
            "mesh/gone",
            "10.1.2.10:8080",
            ClassifyError::UnknownWorkload("mesh/gone".into()),
        ),
        // A same-named pod on another node is not the served one.
        (
            "mesh/server",
            "10.1.1.40:80",
            ClassifyError::UnknownWorkload("mesh/server".into()),
        ),
        (
            "mesh/client",
            "10.96.0.10:81",
            ClassifyError::UnknownServicePort {
                service: "mesh/server".into(),
                port: 81,
            },
        ),
        (
            "mesh/client",
            "10.96.0.99:80",
            ClassifyError::NoEndpoints {
                service: "mesh/empty".into(),
            },
        ),
        // Its own capture listeners, on its IP or loopback: a loop.
        (
            "mesh/client",
            "10.1.1.10:15001",
            ClassifyError::OwnListener("10.1.1.10:15001".parse().unwrap()),
        ),
        (
            "mesh/client",
            "10.1.1.10:15006",
            ClassifyError::OwnListener("10.1.1.10:15006".parse().unwrap()),
        ),
        (
            "mesh/client",
            "127.0.0.1:15001",
            ClassifyError::OwnListener("127.0.0.1:15001".parse().unwrap()),
        ),
    ];
    for (served, dst, want) in cases {
        let served = served_pod(served, "node1");
        let got = classify_sidecar(&snap, &served, dst.parse().unwrap(), PROXY_PORTS, 0);
        assert_eq!(got.as_ref().unwrap_err(), want, "{served} -> {dst}");
    }
    assert_eq!(cases[0].2.reason(), "unknown_source");
    assert_eq!(cases[4].2.reason(), "own_listener");
}

mod invariants;
