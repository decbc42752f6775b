use super::*;
use proto::security::string_match::MatchType;

fn workload_pb() -> pb::Workload {
    pb::Workload {
        uid: "cluster1//Pod/shop/cart-1".into(),
        name: "cart-1".into(),
        namespace: "shop".into(),
        addresses: vec![vec![10, 1, 1, 11]],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: "cart".into(),
        node: "node1".into(),
        services: [(
            "shop/cart.shop.svc.cluster.local".to_owned(),
            pb::PortList {
                ports: vec![pb::Port {
                    service_port: 80,
                    target_port: 8080,
                    ..Default::default()
                }],
            },
        )]
        .into_iter()
        .collect(),
        authorization_policies: vec!["shop/allow-frontend".into()],
        ..Default::default()
    }
}

#[test]
fn workload_converts_with_istio_defaults() {
    let e = workload(workload_pb()).unwrap();
    let w = &e.workload;
    assert_eq!(w.uid, "cluster1//Pod/shop/cart-1");
    assert_eq!(w.ips, vec!["10.1.1.11".parse::<IpAddr>().unwrap()]);
    assert_eq!(w.tunnel, Tunnel::Hbone);
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    assert_eq!(
        w.authorization_policies,
        vec![PolicyKey {
            namespace: "shop".into(),
            name: "allow-frontend".into()
        }]
    );
    assert_eq!(e.services, vec!["shop/cart.shop.svc.cluster.local"]);
    assert_eq!(e.waypoint, None);

    let mut unhealthy = workload_pb();
    unhealthy.status = pb::WorkloadStatus::Unhealthy as i32;
    unhealthy.service_account.clear();
    unhealthy.addresses.push(vec![0xfd; 16]);
    let e = workload(unhealthy.clone()).unwrap();
    assert!(
        e.services.is_empty(),
        "unhealthy workloads are no endpoints"
    );
    assert_eq!(e.workload.service_account, "default");
    assert_eq!(e.workload.ips.len(), 2);
}

#[test]
fn workload_native_tunnel() {
    // (native_tunnel, tunnel_protocol) -> (native_tunnel, tunnel). Istio
    // sends HBONE with native_tunnel for a pod whose sidecar speaks HBONE.
    let cases: &[(bool, pb::TunnelProtocol, bool, Tunnel)] = &[
        (true, pb::TunnelProtocol::Hbone, true, Tunnel::Hbone),
        (true, pb::TunnelProtocol::None, true, Tunnel::None),
        (false, pb::TunnelProtocol::Hbone, false, Tunnel::Hbone),
        (false, pb::TunnelProtocol::None, false, Tunnel::None),
    ];
    for (native, proto_tunnel, want_native, want_tunnel) in cases {
        let mut w = workload_pb();
        w.native_tunnel = *native;
        w.tunnel_protocol = *proto_tunnel as i32;
        let got = workload(w.clone()).unwrap().workload;
        assert_eq!(got.native_tunnel, *want_native, "{native} {proto_tunnel:?}");
        assert_eq!(got.tunnel, *want_tunnel, "{native} {proto_tunnel:?}");
    }
}

#[test]
fn workload_errors_name_the_field() {
    type Edit = fn(&mut pb::Workload);
    let cases: &[(&str, Edit, &str)] = &[
        ("no uid", |w| w.uid.clear(), "uid is required"),
        (
            "no namespace",
            |w| w.namespace.clear(),
            "namespace is required",
        ),
        (
            "5-byte address",
            |w| w.addresses = vec![vec![1, 2, 3, 4, 5]],
            "addresses: 5 bytes",
        ),
        (
            "unknown tunnel",
            |w| w.tunnel_protocol = 7,
            "tunnel_protocol: unknown enum value 7",
        ),
        (
            "unknown status",
            |w| w.status = 9,
            "status: unknown enum value 9",
        ),
        (
            "bad policy key",
            |w| w.authorization_policies = vec!["nope".into()],
            "not <namespace>/<name>",
        ),
        (
            "bad identity",
            |w| w.service_account = "a/b".into(),
            "not a valid SPIFFE ID",
        ),
        (
            "waypoint without destination",
            |w| w.waypoint = Some(pb::GatewayAddress::default()),
            "waypoint.destination is required",
        ),
    ];
    for (what, edit, want) in cases {
        let mut w = workload_pb();
        edit(&mut w);
        let err = workload(w.clone()).expect_err(what);
        assert!(err.to_string().contains(want), "{what}: {err}");
    }
}

#[test]
fn waypoints_by_address_and_by_hostname() {
    use pb::gateway_address::Destination;
    let mut w = workload_pb();
    w.waypoint = Some(pb::GatewayAddress {
        destination: Some(Destination::Address(pb::NetworkAddress {
            network: String::new(),
            address: vec![10, 1, 1, 30],
        })),
        hbone_mtls_port: 15008,
    });
    let e = workload(w.clone()).unwrap();
    assert_eq!(
        e.waypoint,
        Some(WaypointRef::Address("10.1.1.30".parse().unwrap()))
    );
    w.waypoint = Some(pb::GatewayAddress {
        destination: Some(Destination::Hostname(pb::NamespacedHostname {
            namespace: "bank".into(),
            hostname: "waypoint.bank.svc.cluster.local".into(),
        })),
        hbone_mtls_port: 15008,
    });
    let e = workload(w.clone()).unwrap();
    assert_eq!(
        e.waypoint,
        Some(WaypointRef::Service(
            "bank/waypoint.bank.svc.cluster.local".into()
        ))
    );
}

#[test]
fn service_ports_default_target_and_reject_zero() {
    let mut s = pb::Service {
        name: "cart".into(),
        namespace: "shop".into(),
        hostname: "cart.shop.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 10],
        }],
        ports: vec![
            pb::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: pb::AppProtocol::Grpc as i32,
            },
            pb::Port {
                service_port: 443,
                target_port: 0,
                // A value newer than ours: undeclared, not an error.
                app_protocol: 99,
            },
        ],
        ..Default::default()
    };
    let e = service(&s).unwrap();
    assert_eq!(e.service.target_port(80), Some(8080));
    assert_eq!(e.service.target_port(443), Some(443));
    let protocols: Vec<_> = e.service.ports.iter().map(|p| p.app_protocol).collect();
    assert_eq!(protocols, [Some(AppProtocol::Grpc), None]);
    s.ports[0].service_port = 70000;
    assert!(service(&s)
        .unwrap_err()
        .to_string()
        .contains("70000 is not a port"));
    s.ports[0].service_port = 0;
    assert!(service(&s).is_err());
}

fn exact(s: &str) -> pb_sec::StringMatch {
    pb_sec::StringMatch {
        match_type: Some(MatchType::Exact(s.into())),
    }
}

fn authz_pb() -> pb_sec::Authorization {
    pb_sec::Authorization {
        name: "allow-frontend".into(),
        namespace: "shop".into(),
        scope: pb_sec::Scope::WorkloadSelector as i32,
        action: pb_sec::Action::Allow as i32,
        rules: vec![pb_sec::Rule {
            clauses: vec![pb_sec::Clause {
                matches: vec![pb_sec::Match {
                    principals: vec![exact("cluster.local/ns/shop/sa/frontend")],
                    not_namespaces: vec![pb_sec::StringMatch {
                        match_type: Some(MatchType::Presence(())),
                    }],
                    source_ips: vec![pb_sec::Address {
                        address: vec![10, 1, 0, 0],
                        length: 16,
                    }],
                    destination_ports: vec![8080],
                    ..Default::default()
                }],
            }],
        }],
    }
}

#[test]
fn authorization_converts_every_match_kind() {
    let p = authorization(&authz_pb()).unwrap();
    assert_eq!(p.action, PolicyAction::Allow);
    assert!(
        matches!(p.scope, PolicyScope::WorkloadSelector { ref match_labels } if match_labels.is_empty())
    );
    let m = &p.rules[0].clauses[0].matches[0];
    assert_eq!(
        m.principals,
        vec![StringMatch::Exact(
            "cluster.local/ns/shop/sa/frontend".into()
        )]
    );
    assert_eq!(m.not_namespaces, vec![StringMatch::Presence]);
    assert_eq!(m.source_ips[0].to_string(), "10.1.0.0/16");
    assert_eq!(m.destination_ports, vec![8080]);
}

#[test]
fn authorization_errors() {
    type Edit = fn(&mut pb_sec::Authorization);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "unknown action",
            |a| a.action = 5,
            "action: unknown enum value 5",
        ),
        (
            "unknown scope",
            |a| a.scope = 9,
            "scope: unknown enum value 9",
        ),
        ("no name", |a| a.name.clear(), "name is required"),
        (
            "destination ips",
            |a| {
                a.rules[0].clauses[0].matches[0].destination_ips = vec![pb_sec::Address {
                    address: vec![10, 0, 0, 1],
                    length: 32,
                }]
            },
            "destination_ips is not supported",
        ),
        (
            "prefix too long",
            |a| a.rules[0].clauses[0].matches[0].source_ips[0].length = 33,
            "prefix length 33",
        ),
        (
            "empty string match",
            |a| a.rules[0].clauses[0].matches[0].principals = vec![pb_sec::StringMatch::default()],
            "string match with no value",
        ),
        (
            "port zero",
            |a| a.rules[0].clauses[0].matches[0].destination_ports = vec![0],
            "0 is not a port",
        ),
    ];
    for (what, edit, want) in cases {
        let mut a = authz_pb();
        edit(&mut a);
        let err = authorization(&a).expect_err(what);
        assert!(err.to_string().contains(want), "{what}: {err}");
    }
}
