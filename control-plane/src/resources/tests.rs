use super::*;

const BASE: &str = "nodes: [{name: n1, ip: 10.0.0.1}]\n\
    namespaces: [{name: a, labels: {istio.io/dataplane-mode: ambient}}]\n\
    workloads:\n\
    - {name: p1, namespace: a, ip: 10.1.0.1, node: n1, labels: {app: x}}\n\
    - {name: p2, namespace: a, ip: 10.1.0.2, node: n1}\n";

fn set(yaml: &str) -> ResourceSet {
    ResourceSet::from_snapshot(&mesh_model::config::parse(yaml).unwrap())
}

#[test]
fn versions_follow_content_only() {
    let a = set(BASE);
    let b = set(BASE);
    assert_eq!(a, b, "same input, same versions");
    let edited = set(&BASE.replace("10.1.0.2", "10.1.0.3"));
    assert_eq!(
        a.addresses["a/p1"].version, edited.addresses["a/p1"].version,
        "untouched workload keeps its version"
    );
    assert_ne!(
        a.addresses["a/p2"].version,
        edited.addresses["a/p2"].version
    );
}

#[test]
fn kinds_round_trip_type_urls() {
    for k in Kind::ALL {
        assert_eq!(Kind::from_type_url(k.type_url()), Some(k));
    }
    assert_eq!(Kind::from_type_url("type.googleapis.com/x.Y"), None);
}

mod update {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr};

    use mesh_model::input::{objects_of, MeshInput, Object};
    use mesh_model::state::{
        Labels, MtlsMode, Namespace, Node, Policy, PolicyAction, PolicyScope, Service, ServicePort,
        SnapshotParts, Tunnel, Workload, USE_WAYPOINT_LABEL,
    };
    use proptest::prelude::*;

    use super::super::*;

    const MESH: &str = "\
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces:
  - {name: a, labels: {istio.io/dataplane-mode: ambient}}
  - {name: b, labels: {istio.io/dataplane-mode: ambient}}
workloads:
  - {name: p1, namespace: a, ip: 10.1.0.1, node: n1, labels: {app: x}}
  - {name: p2, namespace: a, ip: 10.1.0.2, node: n1, labels: {app: y}}
  - {name: p3, namespace: b, ip: 10.1.0.3, node: n1, labels: {app: x}}
  - {name: wp, namespace: a, ip: 10.1.0.9, node: n1, labels: {istio.io/dataplane-mode: none}}
services:
  - {name: sx, namespace: a, vip: 10.96.0.1, ports: [{port: 80}], selector: {app: x}}
policies:
  - {name: allow-x, namespace: a, selector: {matchLabels: {app: x}}}
  - {name: ns-wide, namespace: b}
";

    fn objects(yaml: &str) -> Vec<Object> {
        mesh_model::config::parse_objects(yaml).unwrap().objects
    }

    /// (addresses, authorizations) changed by an edit, checked against the
    /// from-scratch set.
    fn changed(before: &str, after: &str) -> (Vec<String>, Vec<String>) {
        let mut input = MeshInput::default();
        let old = input
            .replace("cluster.local", objects(before))
            .unwrap()
            .snapshot;
        let update = input.replace("cluster.local", objects(after)).unwrap();
        let new = update.snapshot;
        let set = ResourceSet::from_snapshot(&old);
        let (next, changes) = set.update(&old, &new, &update.touched);
        let want = ResourceSet::from_snapshot(&new);
        assert_eq!(next, want, "incremental == from scratch");
        assert_eq!(changes, Changes::between(&set, &want));
        (
            changes.addresses.into_iter().collect(),
            changes.authorizations.into_iter().collect(),
        )
    }

    #[test]
    fn a_route_or_l7_policy_edit_reencodes_only_itself() {
        let with = |route_path: &str, policy_method: &str| {
            let policy = format!(
                "policies:\n  - {{name: l7, namespace: a, targetRefs: [{{kind: Gateway, \
                 group: gateway.networking.k8s.io, name: wp}}], action: DENY, \
                 rules: [{{to: [{{operation: {{methods: [{policy_method}]}}}}]}}]}}"
            );
            let routes = format!(
                "routes:\n\
                 - kind: HTTPRoute\n  metadata: {{name: r, namespace: a}}\n  \
                 spec: {{parentRefs: [{{name: sx}}], rules: [{{matches: [{{path: {{value: {route_path}}}}}], \
                 backendRefs: [{{name: sx, port: 80}}]}}]}}\n\
                 - kind: HTTPRoute\n  metadata: {{name: other, namespace: a}}\n  \
                 spec: {{parentRefs: [{{name: sx}}], rules: [{{backendRefs: [{{name: sx, port: 80}}]}}]}}\n"
            );
            format!("{}{routes}", MESH.replace("policies:", &policy))
        };
        let mut input = MeshInput::default();
        let old = input
            .replace("cluster.local", objects(&with("/a", "POST")))
            .unwrap()
            .snapshot;
        let update = input
            .replace("cluster.local", objects(&with("/b", "PUT")))
            .unwrap();
        let set = ResourceSet::from_snapshot(&old);
        assert_eq!(set.routes.len(), 2);
        assert_eq!(set.l7_authorizations.len(), 1);
        let (next, changes) = set.update(&old, &update.snapshot, &update.touched);
        assert_eq!(next, ResourceSet::from_snapshot(&update.snapshot));
        assert_eq!(changes.routes.iter().collect::<Vec<_>>(), ["HTTPRoute/a/r"]);
        assert_eq!(
            changes.l7_authorizations.iter().collect::<Vec<_>>(),
            ["a/l7"]
        );
        assert!(changes.addresses.is_empty() && changes.authorizations.is_empty());
    }

    #[test]
    fn table() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases: Vec<(&str, String, Vec<String>, Vec<String>)> = vec![
            ("nothing", MESH.to_owned(), s(&[]), s(&[])),
            (
                "one workload's IP",
                MESH.replace("10.1.0.2,", "10.1.0.22,"),
                s(&["a/p2"]),
                s(&[]),
            ),
            (
                "a label that joins a service and a selector policy",
                MESH.replace("app: y", "app: x"),
                s(&["a/p2"]),
                s(&[]),
            ),
            (
                "a service's ports reach its endpoints",
                MESH.replace("ports: [{port: 80}]", "ports: [{port: 81}]"),
                s(&["a/p1", "a/sx.a.svc.cluster.local"]),
                s(&[]),
            ),
            (
                // The service's own resource carries no selector.
                "a selector moves endpoints: old and new",
                MESH.replace("selector: {app: x}}", "selector: {app: y}}"),
                s(&["a/p1", "a/p2"]),
                s(&[]),
            ),
            (
                "a namespace waypoint label reaches its workloads and services",
                MESH.replace(
                    "{name: a, labels: {istio.io/dataplane-mode: ambient}}",
                    "{name: a, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}",
                ),
                s(&["a/p1", "a/p2", "a/sx.a.svc.cluster.local"]),
                s(&[]),
            ),
            (
                "leaving ambient changes the tunnel of the namespace's pods",
                MESH.replace(
                    "{name: b, labels: {istio.io/dataplane-mode: ambient}}",
                    "{name: b}",
                ),
                s(&["b/p3"]),
                s(&[]),
            ),
            (
                "a selector policy renamed: its selected workloads",
                MESH.replace("name: allow-x", "name: allow-x2"),
                s(&["a/p1"]),
                s(&["a/allow-x", "a/allow-x2"]),
            ),
            (
                "STRICT on a namespace",
                MESH.replace("{name: b, labels", "{name: b, mtls: STRICT, labels"),
                s(&[]),
                s(&["b/istio_converted_static_strict"]),
            ),
            (
                "a namespace-wide policy changes only itself",
                MESH.replace("{name: ns-wide, namespace: b}", "{name: ns-wide, namespace: b, action: DENY}"),
                s(&[]),
                s(&["b/ns-wide"]),
            ),
            (
                "a workload removed: itself and its service's other side",
                MESH.replace("  - {name: p1, namespace: a, ip: 10.1.0.1, node: n1, labels: {app: x}}\n", ""),
                s(&["a/p1"]),
                s(&[]),
            ),
        ];
        for (what, after, addrs, auths) in cases {
            assert_eq!(changed(MESH, &after), (addrs, auths), "{what}");
        }
    }

    /// A small universe, so random worlds overlap: the same uids, services
    /// and policies with different attributes.
    fn world() -> impl Strategy<Value = SnapshotParts> {
        let namespaces = prop::array::uniform3((any::<bool>(), 0u8..3, any::<bool>()));
        let workloads = prop::collection::btree_map(
            0u8..8,
            (0u8..3, 0u8..3, 0u8..2, any::<bool>(), 0u8..3),
            0..8,
        );
        let waypoint_ips = prop::array::uniform3(0u8..2);
        let services = prop::collection::btree_map(
            0u8..4,
            (
                0u8..3,
                0u8..4,
                prop::collection::vec(0u8..8, 0..3),
                80u16..82,
                any::<bool>(),
            ),
            0..4,
        );
        let policies = prop::collection::vec((0u8..3, 0u8..3, 0u8..3, 0u8..3, any::<bool>()), 0..5);
        (namespaces, workloads, waypoint_ips, services, policies).prop_map(
            |(namespaces, workloads, waypoint_ips, services, policies)| {
                build_world(namespaces, workloads, waypoint_ips, services, policies)
            },
        )
    }

    type NsSpec = (bool, u8, bool);
    type WlSpec = (u8, u8, u8, bool, u8);
    type SvcSpec = (u8, u8, Vec<u8>, u16, bool);
    type PolSpec = (u8, u8, u8, u8, bool);

    fn labels(pairs: &[(&str, String)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn build_world(
        namespaces: [NsSpec; 3],
        workloads: std::collections::BTreeMap<u8, WlSpec>,
        waypoint_ips: [u8; 3],
        services: std::collections::BTreeMap<u8, SvcSpec>,
        policies: Vec<PolSpec>,
    ) -> SnapshotParts {
        let ip = |a: u8, b: u8| IpAddr::V4(Ipv4Addr::new(10, 1, a, b));
        let mut parts = SnapshotParts {
            trust_domain: "cluster.local".into(),
            nodes: vec![Node {
                name: "n".into(),
                ip: ip(0, 1),
            }],
            ..Default::default()
        };
        for (i, (ambient, waypoint, strict)) in namespaces.iter().enumerate() {
            let mut l = Vec::new();
            if *ambient {
                l.push(("istio.io/dataplane-mode", "ambient".to_owned()));
            }
            // 0: none, 1: the namespace's own waypoint, 2: opt out.
            match waypoint {
                1 => l.push((USE_WAYPOINT_LABEL, "wp".to_owned())),
                2 => l.push((USE_WAYPOINT_LABEL, "none".to_owned())),
                _ => {}
            }
            parts.namespaces.push(Namespace {
                name: format!("ns{i}"),
                labels: labels(&l),
                mtls: if *strict {
                    MtlsMode::Strict
                } else {
                    MtlsMode::Permissive
                },
            });
        }
        let workload =
            |uid: String, name: String, ns: u8, ip: IpAddr, l: Labels, tunnel: bool| Workload {
                uid,
                name,
                namespace: format!("ns{ns}"),
                service_account: "sa".into(),
                trust_domain: "cluster.local".into(),
                ips: vec![ip],
                node: "n".into(),
                tunnel: if tunnel { Tunnel::Hbone } else { Tunnel::None },
                native_tunnel: false,
                labels: l,
                waypoint: None,
                authorization_policies: Vec::new(),
            };
        for (i, wip) in waypoint_ips.iter().enumerate() {
            parts.workloads.push(workload(
                format!("ns{i}/wp"),
                "wp".into(),
                i as u8,
                ip(2, 10 * i as u8 + wip),
                labels(&[(USE_WAYPOINT_LABEL, "none".to_owned())]),
                false,
            ));
        }
        for (id, (ns, app, sa, tunnel, own_waypoint)) in workloads {
            let mut l = vec![("app", format!("a{app}"))];
            if own_waypoint == 1 {
                l.push((USE_WAYPOINT_LABEL, "none".to_owned()));
            }
            let mut w = workload(
                format!("p{id}"),
                format!("p{id}"),
                ns,
                ip(1, id),
                labels(&l),
                tunnel,
            );
            w.service_account = format!("sa{sa}");
            parts.workloads.push(w);
        }
        for (id, (ns, app, uids, port, waypoint)) in services {
            let name = format!("s{id}");
            parts.services.push(Service {
                hostname: Service::fqdn(&name, &format!("ns{ns}")),
                name,
                namespace: format!("ns{ns}"),
                vips: vec![ip(3, id)],
                ports: vec![ServicePort {
                    port,
                    target_port: 8080,
                    app_protocol: None,
                }],
                // app 3 selects nothing: only explicit endpoint uids.
                selector: if app < 3 {
                    labels(&[("app", format!("a{app}"))])
                } else {
                    Labels::new()
                },
                endpoint_uids: uids.iter().map(|u| format!("p{u}")).collect(),
                labels: if waypoint {
                    labels(&[(USE_WAYPOINT_LABEL, "none".to_owned())])
                } else {
                    Labels::new()
                },
                waypoint: None,
            });
        }
        for (name, ns, scope, app, deny) in policies {
            parts.policies.push(Policy {
                name: format!("pol{name}"),
                namespace: format!("ns{ns}"),
                scope: match scope {
                    0 => PolicyScope::Global,
                    1 => PolicyScope::Namespace,
                    _ => PolicyScope::WorkloadSelector {
                        match_labels: labels(&[("app", format!("a{app}"))]),
                    },
                },
                action: if deny {
                    PolicyAction::Deny
                } else {
                    PolicyAction::Allow
                },
                rules: Vec::new(),
            });
        }
        parts
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// For any sequence of snapshots, updating set by set gives exactly
        /// the from-scratch set, and names exactly what changed.
        #[test]
        fn incremental_equals_from_scratch(worlds in prop::collection::vec(world(), 2..8)) {
            // Each world reaches the control plane as a source gives it:
            // keyed changes into one input, with what they touched.
            let mut input = MeshInput::default();
            let mut last: Option<(Arc<Snapshot>, ResourceSet)> = None;
            for world in worlds {
                let Ok(update) = input.replace("cluster.local", objects_of(world)) else {
                    continue;
                };
                let want = ResourceSet::from_snapshot(&update.snapshot);
                if let Some((old, set)) = &last {
                    let (next, changes) = set.update(old, &update.snapshot, &update.touched);
                    prop_assert_eq!(&next, &want);
                    prop_assert_eq!(&changes, &Changes::between(set, &want));
                }
                last = Some((update.snapshot, want));
            }
        }
    }

    #[test]
    fn worlds_are_mostly_valid() {
        // The generator must not produce only snapshots that fail to build,
        // or the proptest above would check nothing.
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = world();
        let mut built = 0;
        let mut with_waypoints = BTreeSet::new();
        for _ in 0..200 {
            let parts = strategy.new_tree(&mut runner).unwrap().current();
            if let Ok(s) = Snapshot::build(parts) {
                built += 1;
                with_waypoints.extend(
                    s.workloads()
                        .filter(|w| w.waypoint.is_some())
                        .map(|w| w.uid.clone()),
                );
            }
        }
        assert!(built > 150, "{built} of 200 built");
        assert!(!with_waypoints.is_empty());
    }
}
