use super::*;
use crate::state::MissingWaypoint;
use proptest::prelude::*;
use prost::Message;
use prost_types::Any;
use proto::workload::address::Type as AddressType;
use proto::{security as pb_sec, workload as pb};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

mod fail_closed;

fn workload(uid: &str, name: &str, ns: &str, ip: [u8; 4], services: &[&str]) -> pb::Workload {
    pb::Workload {
        uid: uid.into(),
        name: name.into(),
        namespace: ns.into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: name.into(),
        node: "node1".into(),
        services: services
            .iter()
            .map(|s| (s.to_string(), pb::PortList::default()))
            .collect(),
        ..Default::default()
    }
}

fn addr_resource(name: &str, version: &str, t: AddressType) -> Resource {
    let body = pb::Address { r#type: Some(t) };
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: body.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn w(uid: &str, ip: [u8; 4], services: &[&str]) -> Resource {
    addr_resource(
        uid,
        "v1",
        AddressType::Workload(workload(uid, uid, "shop", ip, services)),
    )
}

fn svc(name: &str, vip: [u8; 4]) -> Resource {
    let s = pb::Service {
        name: name.into(),
        namespace: "shop".into(),
        hostname: format!("{name}.shop.svc.cluster.local"),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vip.to_vec(),
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            ..Default::default()
        }],
        ..Default::default()
    };
    addr_resource(
        &format!("shop/{name}.shop.svc.cluster.local"),
        "v1",
        AddressType::Service(s),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn snap(applied: Applied) -> Arc<Snapshot> {
    match applied {
        Applied::Ok(s) => s,
        other => panic!("expected a clean apply, got {other:?}"),
    }
}

const CART: &str = "shop/cart.shop.svc.cluster.local";

#[test]
fn services_get_endpoints_from_workloads_and_removal_works() {
    let mut store = XdsStore::default();
    let s = snap(store.apply_owned(
        ADDRESS_TYPE_URL,
        vec![
            w("a", [10, 1, 1, 1], &[CART]),
            w("b", [10, 1, 2, 1], &[CART]),
            w("c", [10, 1, 1, 2], &[]),
            svc("cart", [10, 96, 0, 10]),
        ],
        &[],
    ));
    let cart = s.service_by_vip(ip("10.96.0.10")).unwrap();
    let eps: Vec<&str> = s.endpoints(cart).iter().map(|w| w.uid.as_str()).collect();
    assert_eq!(eps, ["a", "b"]);
    assert_eq!(store.versions(ADDRESS_TYPE_URL).len(), 4);

    let s = snap(store.apply_owned(ADDRESS_TYPE_URL, vec![], &["b".into()]));
    assert!(s.workload_by_ip(ip("10.1.2.1")).is_none());
    let cart = s.service_by_vip(ip("10.96.0.10")).unwrap();
    assert_eq!(s.endpoints(cart).len(), 1);
    assert!(!store.versions(ADDRESS_TYPE_URL).contains_key("b"));
}

#[test]
fn a_bad_resource_is_rejected_alone_and_keeps_its_old_version() {
    let mut store = XdsStore::default();
    snap(store.apply_owned(ADDRESS_TYPE_URL, vec![w("a", [10, 1, 1, 1], &[])], &[]));
    let mut bad_ip = workload("a", "a", "shop", [10, 1, 1, 9], &[]);
    bad_ip.addresses = vec![vec![1, 2, 3]];
    let mut wrong_type = w("x", [10, 1, 1, 5], &[]);
    wrong_type.resource.as_mut().unwrap().type_url = AUTHORIZATION_TYPE_URL.into();
    let mut garbage = w("y", [10, 1, 1, 6], &[]);
    garbage.resource.as_mut().unwrap().value = vec![0xff, 0xff, 0xff];
    let mut unknown_enum = workload("z", "z", "shop", [10, 1, 1, 7], &[]);
    unknown_enum.tunnel_protocol = 42;
    let applied = store.apply_owned(
        ADDRESS_TYPE_URL,
        vec![
            addr_resource("a", "v2", AddressType::Workload(bad_ip)),
            wrong_type,
            garbage,
            addr_resource("z", "v1", AddressType::Workload(unknown_enum)),
            w("good", [10, 1, 1, 8], &[]),
        ],
        &[],
    );
    let Applied::Partial(s, rejected) = applied else {
        panic!("expected a partial apply, got {applied:?}");
    };
    let reasons: Vec<(&str, &str)> = rejected
        .iter()
        .map(|r| (r.name.as_str(), r.error.reason()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("a", "bad_address"),
            ("x", "wrong_type"),
            ("y", "decode"),
            ("z", "unknown_enum")
        ]
    );
    assert!(
        s.workload_by_ip(ip("10.1.1.8")).is_some(),
        "the good one applied"
    );
    assert!(
        s.workload_by_ip(ip("10.1.1.1")).is_some(),
        "the old version of a stays"
    );
    assert_eq!(store.versions(ADDRESS_TYPE_URL)["a"], "v1");
}

#[test]
fn an_inconsistent_response_changes_nothing() {
    let mut store = XdsStore::default();
    snap(store.apply_owned(ADDRESS_TYPE_URL, vec![w("a", [10, 1, 1, 1], &[])], &[]));
    let applied = store.apply_owned(ADDRESS_TYPE_URL, vec![w("b", [10, 1, 1, 1], &[])], &[]);
    assert!(
        matches!(
            applied,
            Applied::Inconsistent(StateError::DuplicateIp { .. })
        ),
        "{applied:?}"
    );
    assert_eq!(store.versions(ADDRESS_TYPE_URL).len(), 1);
    assert!(store.snapshot().unwrap().workload_by_uid("b").is_none());
}

#[test]
fn waypoints_resolve_to_the_serving_workload_identity() {
    use pb::gateway_address::Destination;
    let mut store = XdsStore::default();
    let wp_key = "shop/waypoint.shop.svc.cluster.local";
    let mut client = workload("client", "client", "shop", [10, 1, 1, 1], &[]);
    client.waypoint = Some(pb::GatewayAddress {
        destination: Some(Destination::Hostname(pb::NamespacedHostname {
            namespace: "shop".into(),
            hostname: "waypoint.shop.svc.cluster.local".into(),
        })),
        hbone_mtls_port: 15008,
    });
    let mut orphan = workload("orphan", "orphan", "shop", [10, 1, 1, 2], &[]);
    orphan.waypoint = Some(pb::GatewayAddress {
        destination: Some(Destination::Address(pb::NetworkAddress {
            network: String::new(),
            address: vec![10, 9, 9, 9],
        })),
        hbone_mtls_port: 15008,
    });
    let s = snap(store.apply_owned(
        ADDRESS_TYPE_URL,
        vec![
            addr_resource("client", "1", AddressType::Workload(client)),
            addr_resource("orphan", "1", AddressType::Workload(orphan)),
            w("waypoint-pod", [10, 1, 1, 30], &[wp_key]),
            svc("waypoint", [10, 96, 0, 30]),
        ],
        &[],
    ));
    let c = s.workload_by_uid("client").unwrap();
    let wp = c.waypoint.as_ref().and_then(UseWaypoint::ready).unwrap();
    assert_eq!(wp.address, ip("10.96.0.30"));
    assert_eq!(
        wp.identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/waypoint-pod"
    );
    let orphan = s.workload_by_uid("orphan").expect("kept in the mesh");
    assert_eq!(
        orphan.waypoint,
        Some(UseWaypoint::Missing(Box::new(MissingWaypoint::Address(
            ip("10.9.9.9")
        )))),
        "an unknown waypoint is never bypassed"
    );
}

/// A workload or service whose waypoint is unknown stays in the snapshot
/// (so its pod stays captured and under policy), with the waypoint marked
/// missing; once the waypoint arrives it resolves, and when it leaves it is
/// missing again.
#[test]
fn a_missing_waypoint_keeps_its_owner_and_resolves_when_it_arrives() {
    use pb::gateway_address::Destination;
    let by_host = || pb::GatewayAddress {
        destination: Some(Destination::Hostname(pb::NamespacedHostname {
            namespace: "shop".into(),
            hostname: "wp.shop.svc.cluster.local".into(),
        })),
        hbone_mtls_port: 15008,
    };
    let mut pod = workload("pod", "pod", "shop", [10, 1, 1, 1], &[CART]);
    pod.waypoint = Some(by_host());
    let cart = pb::Service {
        name: "cart".into(),
        namespace: "shop".into(),
        hostname: "cart.shop.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 10],
        }],
        waypoint: Some(by_host()),
        ..Default::default()
    };
    let mut store = XdsStore::default();
    let s = snap(store.apply_owned(
        ADDRESS_TYPE_URL,
        vec![
            addr_resource("pod", "1", AddressType::Workload(pod)),
            addr_resource(CART, "1", AddressType::Service(cart)),
        ],
        &[],
    ));
    let missing = Some(UseWaypoint::Missing(Box::new(MissingWaypoint::Service {
        namespace: "shop".into(),
        hostname: "wp.shop.svc.cluster.local".into(),
    })));
    let pod = s.workload_by_uid("pod").expect("the pod stays");
    assert_eq!(pod.waypoint, missing);
    assert!(
        s.local_ambient_ips("node1").contains(&ip("10.1.1.1")),
        "still captured"
    );
    let cart = s
        .service_by_vip(ip("10.96.0.10"))
        .expect("the service stays");
    assert_eq!(cart.waypoint, missing);
    assert_eq!(s.endpoints(cart).len(), 1);

    // The waypoint's service and pod arrive: both owners resolve to it.
    const WP: &str = "shop/wp.shop.svc.cluster.local";
    let s = snap(store.apply_owned(
        ADDRESS_TYPE_URL,
        vec![
            svc("wp", [10, 96, 0, 30]),
            w("wp-pod", [10, 1, 1, 30], &[WP]),
        ],
        &[],
    ));
    let ready =
        |wp: &Option<UseWaypoint>| wp.as_ref().and_then(UseWaypoint::ready).map(|w| w.address);
    assert_eq!(
        ready(&s.workload_by_uid("pod").unwrap().waypoint),
        Some(ip("10.96.0.30"))
    );
    assert_eq!(
        ready(&s.service_by_vip(ip("10.96.0.10")).unwrap().waypoint),
        Some(ip("10.96.0.30"))
    );

    // Its only endpoint leaves: missing again, owners kept.
    let s = snap(store.apply_owned(ADDRESS_TYPE_URL, vec![], &["wp-pod".into()]));
    assert_eq!(s.workload_by_uid("pod").unwrap().waypoint, missing);
    assert_eq!(
        s.service_by_vip(ip("10.96.0.10")).unwrap().waypoint,
        missing
    );
    assert_eq!(
        canonical(&store.snapshot().unwrap()),
        canonical(&s),
        "patched == from scratch"
    );
}

#[test]
fn authorizations_apply_and_remove() {
    let mut store = XdsStore::default();
    let policy = pb_sec::Authorization {
        name: "deny-all".into(),
        namespace: "shop".into(),
        scope: pb_sec::Scope::Namespace as i32,
        action: pb_sec::Action::Deny as i32,
        rules: vec![pb_sec::Rule::default()],
    };
    let r = Resource {
        name: "shop/deny-all".into(),
        version: "1".into(),
        resource: Some(Any {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            value: policy.encode_to_vec(),
        }),
        ..Default::default()
    };
    let s = snap(store.apply_owned(AUTHORIZATION_TYPE_URL, vec![r], &[]));
    assert_eq!(s.policies().len(), 1);
    let s = snap(store.apply_owned(AUTHORIZATION_TYPE_URL, vec![], &["shop/deny-all".into()]));
    assert!(s.policies().is_empty());
}

proptest! {
    /// Untrusted bytes from the control plane never panic the decoder or
    /// the conversion, whatever the type URL.
    #[test]
    fn arbitrary_bytes_never_panic(value in proptest::collection::vec(any::<u8>(), 0..512), auth in any::<bool>()) {
        let url = if auth { AUTHORIZATION_TYPE_URL } else { ADDRESS_TYPE_URL };
        let r = Resource {
            name: "r".into(),
            version: "1".into(),
            resource: Some(Any { type_url: url.into(), value }),
            ..Default::default()
        };
        let mut store = XdsStore::default();
        let _ = store.apply_owned(url, vec![r], &[]);
    }

    /// Structurally valid but arbitrary workloads either convert or are
    /// rejected with a reason; never a panic.
    #[test]
    fn arbitrary_workloads_never_panic(
        uid in "[a-z/]{0,8}",
        ns in "[a-z-]{0,6}",
        sa in "[a-z/_.-]{0,6}",
        addrs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..3),
        tunnel in -2i32..4,
        status in -2i32..4,
        policies in proptest::collection::vec("[a-z/]{0,6}", 0..3),
    ) {
        let wl = pb::Workload {
            uid, name: "n".into(), namespace: ns, service_account: sa, addresses: addrs,
            tunnel_protocol: tunnel, status, authorization_policies: policies,
            ..Default::default()
        };
        let mut store = XdsStore::default();
        let _ = store.apply_owned(ADDRESS_TYPE_URL, vec![addr_resource("w", "1", AddressType::Workload(wl))], &[]);
    }
}

/// Everything a snapshot answers, in a canonical order, to compare a
/// patched snapshot with one built from scratch.
fn canonical(s: &Snapshot) -> String {
    let mut workloads: Vec<&Workload> = s.workloads().map(|w| &**w).collect();
    workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut out = String::new();
    for w in workloads {
        let by_ip: Vec<bool> = w
            .ips
            .iter()
            .map(|ip| s.workload_by_ip(*ip).is_some_and(|x| x.uid == w.uid))
            .collect();
        let by_name = s.workload_by_name(&w.namespace, &w.name).map(|x| &x.uid);
        let by_uid = s.workload_by_uid(&w.uid).map(|x| &**x);
        out += &format!(
            "{w:?} ip:{by_ip:?} name:{by_name:?} uid:{}\n",
            by_uid == Some(w)
        );
    }
    let mut services: Vec<_> = s.services().collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for svc in services {
        let eps: Vec<String> = s.endpoints(svc).iter().map(|w| format!("{w:?}")).collect();
        let vips: Vec<bool> = svc
            .vips
            .iter()
            .map(|ip| s.service_by_vip(*ip).is_some_and(|x| x.name == svc.name))
            .collect();
        let named = s.service_by_name(&svc.namespace, &svc.name) == Some(svc);
        out += &format!("{svc:?} eps:{eps:?} vips:{vips:?} named:{named}\n");
    }
    out += &format!("{:?}", s.policies());
    out
}

/// One generated resource: a workload or service drawn from small pools,
/// so that IPs clash, services gain and lose endpoints, and waypoint
/// references come and go.
fn arb_resource() -> impl Strategy<Value = Resource> {
    use pb::gateway_address::Destination;
    let waypoint = prop_oneof![
        4 => Just(None),
        1 => (0u8..6).prop_map(|i| Some(Destination::Address(pb::NetworkAddress {
            network: String::new(),
            address: vec![10, 0, 0, i],
        }))),
        1 => (0u8..3).prop_map(|i| Some(Destination::Hostname(pb::NamespacedHostname {
            namespace: "shop".into(),
            hostname: format!("s{i}.shop.svc.cluster.local"),
        }))),
    ]
    .prop_map(|d| {
        d.map(|d| pb::GatewayAddress {
            destination: Some(d),
            hbone_mtls_port: 15008,
        })
    });
    let wl = (
        0u8..8,
        proptest::collection::vec(0u8..6, 1..3),
        proptest::collection::btree_set(0u8..4, 0..3),
        waypoint.clone(),
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(i, ips, svcs, waypoint, healthy, sa)| {
            let uid = format!("w{i}");
            let keys: Vec<String> = svcs
                .iter()
                .map(|s| format!("shop/s{s}.shop.svc.cluster.local"))
                .collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut pw = workload(&uid, &uid, "shop", [10, 0, 0, 0], &keys);
            pw.addresses = ips.iter().map(|i| vec![10, 0, 0, *i]).collect();
            pw.waypoint = waypoint;
            pw.service_account = format!("sa{sa}");
            if !healthy {
                pw.status = pb::WorkloadStatus::Unhealthy as i32;
            }
            addr_resource(&uid, "1", AddressType::Workload(pw))
        });
    let sv = (0u8..4, 0u8..8, waypoint).prop_map(|(i, vip, waypoint)| {
        let mut r = svc(&format!("s{i}"), [10, 0, 0, vip]);
        let any = r.resource.as_mut().unwrap();
        let mut a = pb::Address::decode(any.value.as_slice()).unwrap();
        if let Some(AddressType::Service(s)) = &mut a.r#type {
            s.waypoint = waypoint;
        }
        any.value = a.encode_to_vec();
        r
    });
    prop_oneof![3 => wl, 1 => sv]
}

/// The decoded bodies, for failure messages.
fn describe(rs: &[Resource]) -> Vec<String> {
    rs.iter()
        .map(|r| {
            let body = pb::Address::decode(r.resource.as_ref().unwrap().value.as_slice());
            format!("{}: {:?}", r.name, body.map(|a| a.r#type))
        })
        .collect()
}

fn resource_names() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..8).prop_map(|i| format!("w{i}")),
        (0u8..4).prop_map(|i| format!("shop/s{i}.shop.svc.cluster.local")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After any sequence of address deltas, the published snapshot (mostly
    /// patched from the previous one) equals a fresh store's snapshot of the
    /// same resources built from scratch, and a delta is rejected exactly
    /// when the scratch build rejects the resulting state.
    #[test]
    fn patched_snapshots_equal_scratch_builds(
        steps in proptest::collection::vec(
            (proptest::collection::vec(arb_resource(), 0..4),
             proptest::collection::vec(resource_names(), 0..2)),
            1..12),
    ) {
        let mut store = XdsStore::default();
        let mut model: BTreeMap<String, Resource> = BTreeMap::new();
        let mut log = Vec::new();
        for (upserts, removed) in steps {
            log.push((describe(&upserts), removed.clone()));
            let mut next = model.clone();
            for r in &upserts {
                next.insert(r.name.clone(), r.clone());
            }
            for name in &removed {
                next.remove(name);
            }
            let all: Vec<Resource> = next.values().cloned().collect();
            let scratch = XdsStore::default().apply_owned(ADDRESS_TYPE_URL, all, &[]);
            match (store.apply(ADDRESS_TYPE_URL, &upserts, &removed), scratch) {
                (Applied::Ok(patched), Applied::Ok(fresh)) => {
                    prop_assert_eq!(
                        canonical(&patched),
                        canonical(&fresh),
                        "steps: {:#?}",
                        log
                    );
                    model = next;
                }
                (Applied::Inconsistent(_), Applied::Inconsistent(_)) => log.push((vec!["inconsistent".into()], vec![])),
                (got, want) => prop_assert!(false, "store gave {got:?}, a scratch build {want:?}"),
            }
            if let Some(last) = &store.last {
                prop_assert_eq!(canonical(&store.snapshot().unwrap()), canonical(last));
            }
        }
    }
}
