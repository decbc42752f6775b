//! Event sequences in, keyed changes out.

use std::collections::BTreeMap;

use mesh_model::input::{Change, Key, Object};
use mesh_model::state::{MtlsMode, PolicyKey, Tunnel};

use super::super::convert::policy::{PeerAuthInfo, PeerMode};
use super::super::convert::waypoint::RouteInfo;
use super::super::convert::{
    NamespaceInfo, PodInfo, PortInfo, ServiceInfo, SliceEndpoint, SliceInfo, TargetPort,
};
use super::*;
use mesh_model::route::RouteKind;

fn index() -> Index {
    Index::new(Settings {
        trust_domain: "cluster.local".into(),
        root_namespace: "istio-system".into(),
    })
}

fn ns(name: &str, ambient: bool) -> Info {
    let mut labels = BTreeMap::new();
    if ambient {
        labels.insert("istio.io/dataplane-mode".into(), "ambient".into());
    }
    Info::Namespace(NamespaceInfo {
        name: name.into(),
        labels,
    })
}

fn pod_info(ns: &str, name: &str, ip: &str) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        ips: vec![ip.parse().unwrap()],
        node: "node-a".into(),
        service_account: "web".into(),
        ready: true,
        live: true,
        host_network: false,
        named_ports: BTreeMap::from([("http".into(), 8080)]),
    }
}

fn pod(ns: &str, name: &str, ip: &str) -> Info {
    Info::Pod(pod_info(ns, name, ip))
}

fn svc(ns: &str, name: &str, target: TargetPort) -> Info {
    Info::Service(ServiceInfo {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::new(),
        vips: vec!["10.96.0.1".parse().unwrap()],
        ports: vec![PortInfo {
            port: 80,
            target,
            app_protocol: None,
        }],
        selector: BTreeMap::from([("app".into(), "web".into())]),
        publish_not_ready: false,
        external_name: false,
    })
}

fn slice(ns: &str, name: &str, service: &str, pods: &[(&str, bool)]) -> Info {
    Info::EndpointSlice(SliceInfo {
        namespace: ns.into(),
        name: name.into(),
        service: Some(service.into()),
        endpoints: pods
            .iter()
            .map(|(p, ready)| SliceEndpoint {
                pod: p.to_string(),
                ready: *ready,
            })
            .collect(),
    })
}

fn uid(ns: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{ns}/{name}")
}

/// The upserted objects and deleted keys of `changes`, for assertions.
fn keys(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::Upsert(o) => format!("+{:?}", o.key()),
            Change::Delete(k) => format!("-{k:?}"),
        })
        .collect()
}

fn workload_of<'a>(changes: &'a [Change], uid: &str) -> &'a mesh_model::state::Workload {
    changes
        .iter()
        .find_map(|c| match c {
            Change::Upsert(Object::Workload(w)) if w.uid == uid => Some(w),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no upsert of {uid} in {:?}", keys(changes)))
}

fn endpoints(ix: &Index, ns: &str, name: &str) -> Vec<String> {
    match ix.emitted(&Key::Service(ns.into(), name.into())) {
        Some(Object::Service(s)) => s.endpoint_uids.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn labelling_a_namespace_enrols_its_pods_and_unlabelling_removes_them() {
    let mut ix = index();
    ix.upsert(ns("shop", false));
    ix.upsert(pod("shop", "a", "10.1.0.1"));
    ix.upsert(pod("shop", "b", "10.1.0.2"));
    ix.upsert(ns("bank", false));
    ix.upsert(pod("bank", "c", "10.1.0.3"));
    let first = ix.take_changes();
    assert_eq!(first.len(), 5);
    assert_eq!(workload_of(&first, &uid("shop", "a")).tunnel, Tunnel::None);

    ix.upsert(ns("shop", true));
    let changes = ix.take_changes();
    assert_eq!(
        keys(&changes),
        [
            "+Namespace(\"shop\")",
            &format!("+Workload({:?})", uid("shop", "a")),
            &format!("+Workload({:?})", uid("shop", "b")),
        ],
        "only shop and its pods"
    );
    assert_eq!(
        workload_of(&changes, &uid("shop", "b")).tunnel,
        Tunnel::Hbone
    );

    ix.upsert(ns("shop", false));
    let changes = ix.take_changes();
    assert_eq!(changes.len(), 3);
    assert_eq!(
        workload_of(&changes, &uid("shop", "a")).tunnel,
        Tunnel::None
    );
}

#[test]
fn an_update_that_changes_nothing_read_costs_nothing() {
    let mut ix = index();
    ix.upsert(ns("shop", true));
    ix.upsert(pod("shop", "a", "10.1.0.1"));
    ix.take_changes();
    ix.upsert(pod("shop", "a", "10.1.0.1"));
    ix.upsert(ns("shop", true));
    assert!(ix.take_changes().is_empty());
}

#[test]
fn events_between_two_takes_coalesce() {
    let mut ix = index();
    ix.upsert(ns("shop", true));
    ix.upsert(pod("shop", "a", "10.1.0.1"));
    ix.upsert(pod("shop", "a", "10.1.0.2"));
    ix.upsert(pod("shop", "a", "10.1.0.3"));
    let changes = ix.take_changes();
    assert_eq!(changes.len(), 2);
    assert_eq!(
        workload_of(&changes, &uid("shop", "a")).ips,
        vec!["10.1.0.3".parse::<std::net::IpAddr>().unwrap()]
    );
    // Added and deleted before a take: nothing to say.
    ix.upsert(pod("shop", "b", "10.1.0.9"));
    ix.delete(&Name::Pod(("shop".into(), "b".into())));
    assert!(ix.take_changes().is_empty());
}

#[test]
fn readiness_and_deletion_move_service_endpoints() {
    let mut ix = index();
    ix.upsert(ns("shop", true));
    ix.upsert(pod("shop", "a", "10.1.0.1"));
    ix.upsert(pod("shop", "b", "10.1.0.2"));
    ix.upsert(svc("shop", "web", TargetPort::Number(8080)));
    ix.upsert(slice("shop", "web-1", "web", &[("a", true), ("b", true)]));
    ix.take_changes();
    assert_eq!(
        endpoints(&ix, "shop", "web"),
        [uid("shop", "a"), uid("shop", "b")]
    );

    // b's Ready condition goes False: the service alone changes (and b).
    let mut b = pod_info("shop", "b", "10.1.0.2");
    b.ready = false;
    ix.upsert(Info::Pod(b));
    let changes = ix.take_changes();
    assert_eq!(
        keys(&changes),
        ["+Service(\"shop\", \"web\")"],
        "the workload itself is unchanged (readiness is not a workload field)"
    );
    assert_eq!(endpoints(&ix, "shop", "web"), [uid("shop", "a")]);

    // The slice controller catches up: nothing more changes.
    ix.upsert(slice("shop", "web-1", "web", &[("a", true), ("b", false)]));
    assert!(ix.take_changes().is_empty());

    // a is deleted: its workload goes, and the slice loses it later.
    ix.delete(&Name::Pod(("shop".into(), "a".into())));
    let changes = ix.take_changes();
    assert!(keys(&changes).contains(&format!("-Workload({:?})", uid("shop", "a"))));
    ix.upsert(slice("shop", "web-1", "web", &[("b", false)]));
    ix.take_changes();
    assert!(endpoints(&ix, "shop", "web").is_empty());
}

#[test]
fn slices_of_one_service_add_up_and_can_move() {
    let mut ix = index();
    ix.upsert(pod("shop", "a", "10.1.0.1"));
    ix.upsert(pod("shop", "b", "10.1.0.2"));
    ix.upsert(svc("shop", "web", TargetPort::Number(8080)));
    ix.upsert(svc("shop", "api", TargetPort::Number(8080)));
    ix.upsert(slice("shop", "web-1", "web", &[("a", true)]));
    ix.upsert(slice("shop", "web-2", "web", &[("b", true), ("a", true)]));
    ix.take_changes();
    assert_eq!(
        endpoints(&ix, "shop", "web"),
        [uid("shop", "a"), uid("shop", "b")]
    );
    // web-2 now belongs to api; a stays in web through web-1.
    ix.upsert(slice("shop", "web-2", "api", &[("b", true)]));
    ix.take_changes();
    assert_eq!(endpoints(&ix, "shop", "web"), [uid("shop", "a")]);
    assert_eq!(endpoints(&ix, "shop", "api"), [uid("shop", "b")]);
    // b going unready reaches api through the moved slice.
    let mut b = pod_info("shop", "b", "10.1.0.2");
    b.ready = false;
    ix.upsert(Info::Pod(b));
    assert_eq!(keys(&ix.take_changes()), ["+Service(\"shop\", \"api\")"]);
    ix.delete(&Name::EndpointSlice(("shop".into(), "web-1".into())));
    ix.take_changes();
    assert!(endpoints(&ix, "shop", "web").is_empty());
}

#[test]
fn a_named_target_port_follows_the_pods() {
    let mut ix = index();
    ix.upsert(svc("shop", "web", TargetPort::Named("http".into())));
    ix.take_changes();
    let ports = |ix: &Index| match ix.emitted(&Key::Service("shop".into(), "web".into())) {
        Some(Object::Service(s)) => s.ports.iter().map(|p| p.target_port).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert!(ports(&ix).is_empty(), "no pod declares it yet");
    ix.upsert(pod("shop", "a", "10.1.0.1"));
    ix.take_changes();
    assert_eq!(ports(&ix), [8080]);
    let mut a = pod_info("shop", "a", "10.1.0.1");
    a.named_ports.insert("http".into(), 8081);
    ix.upsert(Info::Pod(a.clone()));
    ix.take_changes();
    assert_eq!(ports(&ix), [8081]);
    // Relabelled out of the selector: no pod declares it any more.
    a.labels.insert("app".into(), "other".into());
    ix.upsert(Info::Pod(a));
    ix.take_changes();
    assert!(ports(&ix).is_empty());
}

#[test]
fn a_resync_deletes_what_is_gone_and_skips_what_is_equal() {
    let mut ix = index();
    ix.upsert(ns("shop", true));
    ix.upsert(pod("shop", "a", "10.1.0.1"));
    ix.upsert(pod("shop", "b", "10.1.0.2"));
    ix.take_changes();
    // The watch restarted (410 Gone); meanwhile b went and c came.
    ix.resync(
        Kind::Pod,
        vec![pod("shop", "a", "10.1.0.1"), pod("shop", "c", "10.1.0.3")],
    );
    let changes = ix.take_changes();
    assert_eq!(
        keys(&changes),
        [
            format!("-Workload({:?})", uid("shop", "b")),
            format!("+Workload({:?})", uid("shop", "c")),
        ]
    );
    // A resync of another kind leaves pods alone.
    ix.resync(Kind::Namespace, vec![ns("shop", true)]);
    assert!(ix.take_changes().is_empty());
    ix.resync(Kind::Namespace, vec![]);
    let changes = ix.take_changes();
    assert_eq!(
        changes.len(),
        3,
        "shop deleted, its pods no longer enrolled"
    );
    assert_eq!(
        workload_of(&changes, &uid("shop", "a")).tunnel,
        Tunnel::None
    );
}

fn peer(ns: &str, name: &str, mode: PeerMode, selector: &[(&str, &str)]) -> Info {
    Info::PeerAuthentication(PeerAuthInfo {
        namespace: ns.into(),
        name: name.into(),
        created: String::new(),
        selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        mode,
    })
}

fn mtls(ix: &Index, ns: &str) -> MtlsMode {
    match ix.emitted(&Key::Namespace(ns.into())) {
        Some(Object::Namespace(n)) => n.mtls,
        other => panic!("{other:?}"),
    }
}

#[test]
fn peer_authentications_set_namespace_modes() {
    let mut ix = index();
    ix.upsert(ns("shop", true));
    ix.upsert(ns("bank", true));
    ix.upsert(ns("istio-system", false));
    ix.upsert(peer("bank", "default", PeerMode::Permissive, &[]));
    ix.take_changes();
    assert_eq!(mtls(&ix, "shop"), MtlsMode::Permissive);
    // Mesh-wide STRICT: every namespace but the one that says otherwise.
    ix.upsert(peer("istio-system", "default", PeerMode::Strict, &[]));
    let changes = ix.take_changes();
    assert_eq!(
        keys(&changes),
        ["+Namespace(\"istio-system\")", "+Namespace(\"shop\")"]
    );
    assert_eq!(mtls(&ix, "bank"), MtlsMode::Permissive);
    ix.delete(&Name::PeerAuthentication(("bank".into(), "default".into())));
    ix.take_changes();
    assert_eq!(mtls(&ix, "bank"), MtlsMode::Strict);
    // A workload-level STRICT is a policy, not a namespace mode.
    ix.upsert(peer("shop", "db", PeerMode::Strict, &[("app", "db")]));
    let changes = ix.take_changes();
    assert_eq!(changes.len(), 1);
    let key = Key::Policy(PolicyKey {
        namespace: "shop".into(),
        name: "converted_peer_authentication_db".into(),
    });
    assert!(ix.emitted(&key).is_some());
    ix.delete(&Name::PeerAuthentication(("shop".into(), "db".into())));
    assert_eq!(ix.take_changes(), vec![Change::Delete(key)]);
}

fn gateway(ns: &str, name: &str, waypoint: bool) -> Info {
    Info::Gateway(super::super::convert::waypoint::GatewayInfo {
        namespace: ns.into(),
        name: name.into(),
        waypoint,
    })
}

fn route_info(name: &str, state: RouteState) -> Info {
    Info::Route(RouteInfo {
        key: RouteKey {
            kind: RouteKind::Http,
            namespace: "shop".into(),
            name: name.into(),
        },
        state,
    })
}

fn a_route(name: &str, backend: &str) -> RouteState {
    let spec = serde_json::json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
        "rules": [{"backendRefs": [{"name": backend, "port": 80}]}],
    });
    match mesh_model::config::route_from_spec(RouteKind::Http, "shop", name, None, spec) {
        Ok(Some(r)) => RouteState::Route(r),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_waypoint_gateway_makes_its_ready_pod_answer_for_its_name() {
    let mut ix = index();
    ix.upsert(ns("shop", true));
    let mut wp = pod_info("shop", "waypoint-7c9d-x1", "10.1.0.9");
    wp.service_account = "waypoint".into();
    wp.labels = BTreeMap::from([(
        "gateway.networking.k8s.io/gateway-name".into(),
        "waypoint".into(),
    )]);
    ix.upsert(Info::Pod(wp.clone()));
    let uid = uid("shop", "waypoint-7c9d-x1");
    assert_eq!(
        workload_of(&ix.take_changes(), &uid).name,
        "waypoint-7c9d-x1"
    );
    // Another class's Gateway of that name: not a waypoint.
    ix.upsert(gateway("shop", "waypoint", false));
    assert!(ix.take_changes().is_empty());
    ix.upsert(gateway("shop", "waypoint", true));
    assert_eq!(workload_of(&ix.take_changes(), &uid).name, "waypoint");
    // Unready: it no longer answers for the waypoint.
    wp.ready = false;
    ix.upsert(Info::Pod(wp));
    assert_eq!(
        workload_of(&ix.take_changes(), &uid).name,
        "waypoint-7c9d-x1"
    );
    ix.delete(&Name::Gateway(("shop".into(), "waypoint".into())));
    assert!(
        ix.take_changes().is_empty(),
        "an unready pod was not aliased"
    );
}

#[test]
fn routes_are_keyed_and_a_refused_edit_keeps_the_last_good_one() {
    let mut ix = index();
    let key = Key::Route(RouteKey {
        kind: RouteKind::Http,
        namespace: "shop".into(),
        name: "r".into(),
    });
    ix.upsert(route_info("r", a_route("r", "v1")));
    ix.upsert(route_info("other", RouteState::NotMesh));
    assert_eq!(keys(&ix.take_changes()), [format!("+{key:?}")]);
    ix.upsert(route_info("r", RouteState::Invalid("bad".into())));
    assert!(ix.take_changes().is_empty(), "the last good route stays");
    ix.upsert(route_info("r", a_route("r", "v2")));
    match ix.take_changes().as_slice() {
        [Change::Upsert(Object::Route(r))] => {
            assert_eq!(r.rules[0].backends[0].service.name, "v2")
        }
        other => panic!("{:?}", keys(other)),
    }
    ix.delete(&Name::Route(RouteKey {
        kind: RouteKind::Http,
        namespace: "shop".into(),
        name: "r".into(),
    }));
    assert_eq!(keys(&ix.take_changes()), [format!("-{key:?}")]);
}

#[test]
fn a_policy_that_gains_target_refs_moves_to_the_waypoint() {
    use super::super::convert::policy::authorization_policy;
    use super::super::istio::AuthorizationPolicy;
    let ap = |spec: &str| -> Info {
        let ap: AuthorizationPolicy = serde_yaml_ng::from_str(&format!(
            "metadata: {{name: p, namespace: shop}}\nspec: {spec}\n"
        ))
        .unwrap();
        Info::AuthorizationPolicy(
            ("shop".into(), "p".into()),
            authorization_policy(&ap, "istio-system").unwrap(),
        )
    };
    let pk = PolicyKey {
        namespace: "shop".into(),
        name: "p".into(),
    };
    let mut ix = index();
    ix.upsert(ap(
        "{action: DENY, rules: [{to: [{operation: {ports: [\"80\"]}}]}]}",
    ));
    assert_eq!(
        keys(&ix.take_changes()),
        [format!("+{:?}", Key::Policy(pk.clone()))]
    );
    ix.upsert(ap("{targetRefs: [{kind: Service, group: \"\", name: web}], action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}"));
    assert_eq!(
        keys(&ix.take_changes()),
        [
            format!("-{:?}", Key::Policy(pk.clone())),
            format!("+{:?}", Key::L7Policy(pk.clone()))
        ]
    );
    ix.delete(&Name::AuthorizationPolicy(("shop".into(), "p".into())));
    assert_eq!(
        keys(&ix.take_changes()),
        [format!("-{:?}", Key::L7Policy(pk))]
    );
}
