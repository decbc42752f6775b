use std::net::IpAddr;

use super::*;

const DEMO: &str = include_str!("../../../ztunnel/examples/demo-config.yaml");

fn snap(yaml: &str) -> Snapshot {
    mesh_model::config::parse(yaml).unwrap()
}

fn bytes(ip: &str) -> Vec<u8> {
    ip_bytes(ip.parse::<IpAddr>().unwrap())
}

fn workload_of(a: &pb::Address) -> &pb::Workload {
    match &a.r#type {
        Some(pb::address::Type::Workload(w)) => w,
        other => panic!("not a workload: {other:?}"),
    }
}

fn service_of(a: &pb::Address) -> &pb::Service {
    match &a.r#type {
        Some(pb::address::Type::Service(s)) => s,
        other => panic!("not a service: {other:?}"),
    }
}

#[test]
fn demo_resource_names() {
    let s = snap(DEMO);
    let names: Vec<String> = addresses(&s).into_keys().collect();
    assert_eq!(
        names,
        [
            "bank/ledger",
            "bank/ledger.bank.svc.cluster.local",
            "bank/waypoint",
            "legacy/old-client",
            "shop/cart-1",
            "shop/cart-2",
            "shop/cart-3",
            "shop/cart.shop.svc.cluster.local",
            "shop/frontend",
            "shop/reviews-v1",
            "shop/reviews-v1.shop.svc.cluster.local",
            "shop/reviews-v2",
            "shop/reviews-v2.shop.svc.cluster.local",
            "shop/reviews.shop.svc.cluster.local",
            "shop/shop-waypoint",
        ]
    );
    let policies: Vec<String> = authorizations(&s).into_keys().collect();
    assert_eq!(
        policies,
        [
            "bank/ledger-allow-waypoint",
            "shop/cart-deny-outsiders",
            "shop/istio_converted_static_strict",
            "shop/reviews-allow-waypoint",
        ]
    );
}

#[test]
fn workload_fields() {
    let s = snap(DEMO);
    let all = addresses(&s);
    // (uid, addresses, tunnel, service account, node, services, policies, waypoint)
    type Case = (
        &'static str,
        &'static str,
        pb::TunnelProtocol,
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        Option<&'static str>,
    );
    let cases: &[Case] = &[
        (
            "shop/cart-1",
            "10.1.1.11",
            pb::TunnelProtocol::Hbone,
            "cart",
            "node1",
            &["shop/cart.shop.svc.cluster.local"],
            &["shop/cart-deny-outsiders"],
            None,
        ),
        (
            "shop/frontend",
            "10.1.1.10",
            pb::TunnelProtocol::Hbone,
            "frontend",
            "node1",
            &[],
            &[],
            None,
        ),
        (
            "legacy/old-client",
            "10.1.1.40",
            pb::TunnelProtocol::None,
            "default",
            "node1",
            &[],
            &[],
            None,
        ),
        (
            "bank/ledger",
            "10.1.2.20",
            pb::TunnelProtocol::Hbone,
            "ledger",
            "node2",
            &["bank/ledger.bank.svc.cluster.local"],
            &["bank/ledger-allow-waypoint"],
            Some("10.1.1.30"),
        ),
    ];
    for (uid, ip, tunnel, sa, node, services, policies, waypoint) in cases {
        let w = workload_of(&all[*uid]);
        assert_eq!(w.uid, *uid);
        assert_eq!(w.addresses, vec![bytes(ip)], "{uid}");
        assert_eq!(w.tunnel_protocol, *tunnel as i32, "{uid}");
        assert_eq!(w.service_account, *sa, "{uid}");
        assert_eq!(w.trust_domain, "cluster.local", "{uid}");
        assert_eq!(w.node, *node, "{uid}");
        let got: Vec<&str> = w.services.keys().map(String::as_str).collect();
        assert_eq!(got, *services, "{uid}");
        assert_eq!(w.authorization_policies, *policies, "{uid}");
        let wp = w.waypoint.as_ref().map(|g| {
            assert_eq!(g.hbone_mtls_port, 15008);
            match &g.destination {
                Some(pb::gateway_address::Destination::Address(a)) => a.address.clone(),
                other => panic!("{other:?}"),
            }
        });
        assert_eq!(wp, waypoint.map(bytes), "{uid}");
    }
    let cart = workload_of(&all["shop/cart-2"]);
    let ports = &cart.services["shop/cart.shop.svc.cluster.local"].ports;
    assert_eq!(
        ports,
        &[pb::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: pb::AppProtocol::Unknown as i32,
        }]
    );
}

/// Pods with their own sidecar: `native_tunnel` with HBONE, as Istio sends
/// them (labels do not travel over xDS, so this is all a sidecar or node
/// ztunnel fed over xDS knows).
const SIDECARS: &str = r#"
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces: [{name: amb, labels: {istio.io/dataplane-mode: ambient}}, {name: plain}]
workloads:
  - {name: side, namespace: plain, serviceAccount: side, ip: 10.1.0.1, node: n1, labels: {security.istio.io/tlsMode: istio}}
  - {name: field, namespace: plain, ip: 10.1.0.2, node: n1, nativeTunnel: true}
  - {name: both, namespace: amb, ip: 10.1.0.3, node: n1, labels: {security.istio.io/tlsMode: istio}}
  - {name: ambient, namespace: amb, ip: 10.1.0.4, node: n1}
  - {name: none, namespace: plain, ip: 10.1.0.5, node: n1}
"#;

#[test]
fn workload_native_tunnel() {
    let all = addresses(&snap(SIDECARS));
    // (uid, native_tunnel, tunnel)
    let cases: &[(&str, bool, pb::TunnelProtocol)] = &[
        ("plain/side", true, pb::TunnelProtocol::Hbone),
        ("plain/field", true, pb::TunnelProtocol::Hbone),
        ("amb/both", true, pb::TunnelProtocol::Hbone),
        ("amb/ambient", false, pb::TunnelProtocol::Hbone),
        ("plain/none", false, pb::TunnelProtocol::None),
    ];
    for (uid, native, tunnel) in cases {
        let w = workload_of(&all[*uid]);
        assert_eq!(w.native_tunnel, *native, "{uid}");
        assert_eq!(w.tunnel_protocol, *tunnel as i32, "{uid}");
    }
}

/// Encoded, sent and decoded by ztunnel's xDS store: every workload comes
/// back with the tunnel fields it had, so ambient capture and sidecar
/// routing decide the same over xDS as from the file.
#[test]
fn native_tunnel_round_trips_through_ztunnel() {
    use prost::Message;
    let file = snap(SIDECARS);
    let resources: Vec<proto::discovery::Resource> = addresses(&file)
        .into_iter()
        .map(|(name, a)| proto::discovery::Resource {
            name,
            version: "v1".into(),
            resource: Some(prost_types::Any {
                type_url: proto::ADDRESS_TYPE_URL.into(),
                value: a.encode_to_vec(),
            }),
            ..Default::default()
        })
        .collect();
    let mut store = mesh_model::xds::store::XdsStore::default();
    let xds = match store.apply(proto::ADDRESS_TYPE_URL, &resources, &[]) {
        mesh_model::xds::store::Applied::Ok(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(xds.workloads().count(), 5);
    for want in file.workloads() {
        let got = xds.workload_by_uid(&want.uid).unwrap();
        assert_eq!(got.native_tunnel, want.native_tunnel, "{}", want.uid);
        assert_eq!(got.tunnel, want.tunnel, "{}", want.uid);
        assert_eq!(xds.is_ambient(got), file.is_ambient(want), "{}", want.uid);
        assert_eq!(
            xds.accepts_hbone(got),
            file.accepts_hbone(want),
            "{}",
            want.uid
        );
    }
    assert_eq!(xds.local_ambient_ips("n1"), file.local_ambient_ips("n1"));
}

#[test]
fn service_fields() {
    let s = snap(DEMO);
    let all = addresses(&s);
    let cases: &[(&str, &str, u32, u32, bool)] = &[
        (
            "shop/cart.shop.svc.cluster.local",
            "10.96.0.10",
            80,
            8080,
            false,
        ),
        (
            "bank/ledger.bank.svc.cluster.local",
            "10.96.0.20",
            443,
            8443,
            true,
        ),
    ];
    for (name, vip, port, target, has_waypoint) in cases {
        let svc = service_of(&all[*name]);
        assert_eq!(format!("{}/{}", svc.namespace, svc.hostname), *name);
        assert_eq!(svc.addresses.len(), 1);
        assert_eq!(svc.addresses[0].address, bytes(vip));
        assert_eq!(svc.ports[0].service_port, *port);
        assert_eq!(svc.ports[0].target_port, *target);
        assert_eq!(svc.waypoint.is_some(), *has_waypoint, "{name}");
    }
}

#[test]
fn policy_fields() {
    let s = snap(DEMO);
    let all = authorizations(&s);
    let deny = &all["shop/cart-deny-outsiders"];
    assert_eq!(deny.action, pb_sec::Action::Deny as i32);
    assert_eq!(deny.scope, pb_sec::Scope::WorkloadSelector as i32);
    let clauses = &deny.rules[0].clauses;
    assert_eq!(clauses.len(), 2);
    let not_ns: Vec<_> = clauses[0].matches[0]
        .not_namespaces
        .iter()
        .map(|m| m.match_type.clone())
        .collect();
    use pb_sec::string_match::MatchType;
    assert_eq!(
        not_ns,
        [
            Some(MatchType::Exact("shop".into())),
            Some(MatchType::Exact("bank".into()))
        ]
    );
    assert_eq!(clauses[1].matches[0].destination_ports, [8080]);

    let strict = &all["shop/istio_converted_static_strict"];
    assert_eq!(strict.scope, pb_sec::Scope::Namespace as i32);
    assert_eq!(strict.action, pb_sec::Action::Deny as i32);
    assert_eq!(
        strict.rules[0].clauses[0].matches[0].not_principals[0].match_type,
        Some(MatchType::Presence(()))
    );
}

#[test]
fn string_matches_cidrs_and_service_accounts() {
    use pb_sec::string_match::MatchType;
    let m = Match {
        principals: vec![StringMatch::from_pattern("cluster.local/*")],
        not_principals: vec![StringMatch::from_pattern("*/sa/evil")],
        namespaces: vec![StringMatch::from_pattern("*")],
        source_ips: vec!["10.1.0.0/16".parse().unwrap(), "fd00::1".parse().unwrap()],
        service_accounts: vec![mesh_model::state::ServiceAccountMatch {
            namespace: "shop".into(),
            service_account: "cart".into(),
        }],
        ..Match::default()
    };
    let got = match_(&m);
    let types = |v: &[pb_sec::StringMatch]| {
        v.iter()
            .map(|s| s.match_type.clone().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        types(&got.principals),
        [
            MatchType::Prefix("cluster.local/".into()),
            MatchType::Suffix("/ns/shop/sa/cart".into())
        ]
    );
    assert_eq!(
        types(&got.not_principals),
        [MatchType::Suffix("/sa/evil".into())]
    );
    assert_eq!(types(&got.namespaces), [MatchType::Presence(())]);
    assert_eq!(
        got.source_ips,
        [
            pb_sec::Address {
                address: bytes("10.1.0.0"),
                length: 16
            },
            pb_sec::Address {
                address: bytes("fd00::1"),
                length: 128
            },
        ]
    );
    assert!(
        got.service_accounts.is_empty(),
        "never sent: unverified field"
    );
}

#[test]
fn declared_port_protocols_are_sent_as_istios_enum() {
    let s = snap(
        "nodes: [{name: n, ip: 10.0.0.1}]\n\
         namespaces: [{name: a}]\n\
         workloads: [{name: p, namespace: a, ip: 10.1.0.1, node: n, labels: {app: x}}]\n\
         services: [{name: s, namespace: a, vip: 10.96.0.1, selector: {app: x}, ports: [\
           {port: 80, name: http}, {port: 81, appProtocol: grpc}, {port: 82}]}]\n",
    );
    let all = addresses(&s);
    let svc = service_of(&all["a/s.a.svc.cluster.local"]);
    let got: Vec<i32> = svc.ports.iter().map(|p| p.app_protocol).collect();
    let want = [
        pb::AppProtocol::Http11,
        pb::AppProtocol::Grpc,
        pb::AppProtocol::Unknown,
    ];
    assert_eq!(got, want.map(|p| p as i32));
    // The workload's copy of its service's ports says the same.
    let w = workload_of(&all["a/p"]);
    assert_eq!(w.services["a/s.a.svc.cluster.local"].ports, svc.ports);
}

#[test]
fn routes_and_l7_policies_convert_and_round_trip() {
    let s = snap(
        "namespaces: [{name: shop}]\n\
         services: [{name: reviews, namespace: shop, vip: 10.96.0.1, ports: [{port: 80}]}]\n\
         routes:\n\
         \x20 - kind: HTTPRoute\n\
         \x20   metadata: {name: r, namespace: shop}\n\
         \x20   spec: {parentRefs: [{name: reviews}], rules: [{backendRefs: [{name: reviews, port: 80, weight: 3}]}]}\n\
         policies:\n\
         \x20 - {name: p, namespace: shop, targetRefs: [{kind: Gateway, name: waypoint}], action: DENY,\n\
         \x20    rules: [{to: [{operation: {methods: [POST]}}]}]}\n",
    );
    let r = routes(&s);
    assert_eq!(r.keys().collect::<Vec<_>>(), ["HTTPRoute/shop/r"]);
    let back = mesh_model::route::Route::try_from(&r["HTTPRoute/shop/r"]).unwrap();
    assert_eq!(&back, &**s.routes().next().unwrap());
    let p = l7_authorizations(&s);
    assert_eq!(p.keys().collect::<Vec<_>>(), ["shop/p"]);
    let back = mesh_model::l7policy::L7Policy::try_from(&p["shop/p"]).unwrap();
    assert_eq!(&back, &**s.l7_policies().next().unwrap());
    assert!(
        authorizations(&s).is_empty(),
        "an L7 policy is not an L4 one"
    );
}

/// A waypoint the file names but does not define is sent as the hostname
/// of its Service, which ztunnel cannot resolve either: it refuses the
/// traffic instead of bypassing the waypoint (a missing field would let it
/// bypass).
#[test]
fn a_missing_waypoint_is_sent_by_name() {
    let s = snap(
        "nodes: [{name: n1, ip: 10.0.0.1}]\n\
         namespaces: [{name: bank, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}]\n\
         workloads: [{name: ledger, namespace: bank, ip: 10.1.1.20, node: n1, labels: {app: ledger}}]\n\
         services: [{name: ledger, namespace: bank, vip: 10.96.0.20, ports: [{port: 80}], selector: {app: ledger}}]\n",
    );
    let want = Some(pb::GatewayAddress {
        destination: Some(pb::gateway_address::Destination::Hostname(
            pb::NamespacedHostname {
                namespace: "bank".into(),
                hostname: "wp.bank.svc.cluster.local".into(),
            },
        )),
        hbone_mtls_port: 15008,
    });
    let ledger = s.workload_by_uid("bank/ledger").unwrap();
    assert_eq!(workload(&s, ledger, BTreeMap::new()).waypoint, want);
    let svc = s.service_by_vip("10.96.0.20".parse().unwrap()).unwrap();
    assert_eq!(service(svc).waypoint, want);
}
