//! Snapshot indexing, enrolment and waypoint resolution.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ns(name: &str, l: &[(&str, &str)]) -> Namespace {
    Namespace {
        name: name.into(),
        labels: labels(l),
        mtls: MtlsMode::Permissive,
    }
}

fn pod(ns: &str, name: &str, addr: &str, node: &str, l: &[(&str, &str)]) -> Workload {
    Workload {
        uid: format!("{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        service_account: name.into(),
        trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        ips: vec![ip(addr)],
        node: node.into(),
        tunnel: Tunnel::Hbone,
        native_tunnel: false,
        labels: labels(l),
        waypoint: None,
        authorization_policies: Vec::new(),
    }
}

fn svc(ns: &str, name: &str, vip: &str, selector: &[(&str, &str)]) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: Service::fqdn(name, ns),
        vips: vec![ip(vip)],
        ports: vec![ServicePort {
            port: 80,
            target_port: 8080,
            app_protocol: None,
        }],
        selector: labels(selector),
        endpoint_uids: Vec::new(),
        labels: Labels::new(),
        waypoint: None,
    }
}

const AMBIENT: (&str, &str) = (DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT);
const OPT_OUT: (&str, &str) = (DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE);

fn parts() -> SnapshotParts {
    SnapshotParts {
        trust_domain: String::new(),
        nodes: vec![],
        namespaces: vec![ns("a", &[AMBIENT]), ns("plain", &[])],
        workloads: vec![
            pod("a", "x", "10.1.1.1", "n1", &[("app", "x")]),
            pod("a", "y", "10.1.2.1", "n2", &[("app", "x")]),
            // The config parser sets tunnel NONE for these two (see
            // config::tests); the snapshot goes by the tunnel protocol.
            Workload {
                tunnel: Tunnel::None,
                ..pod("a", "out", "10.1.1.2", "n1", &[OPT_OUT])
            },
            Workload {
                tunnel: Tunnel::None,
                ..pod("plain", "z", "10.1.1.3", "n1", &[("app", "x"), AMBIENT])
            },
            // Pods whose own sidecar terminates HBONE: as Istio sends them
            // (HBONE + native_tunnel), and with no tunnel protocol at all.
            Workload {
                native_tunnel: true,
                ..pod("a", "side", "10.1.1.4", "n1", &[])
            },
            Workload {
                tunnel: Tunnel::None,
                native_tunnel: true,
                ..pod("plain", "side", "10.1.1.5", "n1", &[])
            },
        ],
        services: vec![svc("a", "s", "10.96.0.1", &[("app", "x")])],
        policies: vec![],
        routes: vec![],
        l7_policies: vec![],
    }
}

#[test]
fn ambient_enrolment() {
    let snap = Snapshot::build(parts()).unwrap();
    // (pod, captured by its node's ztunnel, takes HBONE on podIP:15008)
    let cases: &[(&str, bool, bool)] = &[
        ("10.1.1.1", true, true),   // ambient namespace
        ("10.1.2.1", true, true),   // on the other node, still ambient
        ("10.1.1.2", false, false), // opted out with dataplane-mode=none
        ("10.1.1.3", false, false), // a pod label alone does not enrol
        ("10.1.1.4", false, true),  // its sidecar terminates HBONE
        ("10.1.1.5", false, true),  // the same, whatever the protocol says
    ];
    for (addr, ambient, hbone) in cases {
        let w = snap.workload_by_ip(ip(addr)).unwrap();
        assert_eq!(snap.is_ambient(w), *ambient, "{addr} ambient");
        assert_eq!(snap.accepts_hbone(w), *hbone, "{addr} accepts HBONE");
    }
    assert_eq!(
        snap.local_ambient_ips("n1"),
        BTreeSet::from([ip("10.1.1.1")])
    );
    assert_eq!(
        snap.local_ambient_ips("n2"),
        BTreeSet::from([ip("10.1.2.1")])
    );
    assert!(snap.local_ambient_ips("n3").is_empty());
}

#[test]
fn endpoints_by_selector_and_uid() {
    let mut p = parts();
    let mut explicit = svc("a", "e", "10.96.0.2", &[]);
    explicit.endpoint_uids = vec!["plain/z".into(), "missing/uid".into()];
    p.services.push(explicit);
    let snap = Snapshot::build(p).unwrap();
    let uids = |vip: &str| -> Vec<String> {
        let s = snap.service_by_vip(ip(vip)).unwrap();
        snap.endpoints(s).iter().map(|w| w.uid.clone()).collect()
    };
    // Same namespace only; sorted by uid.
    assert_eq!(uids("10.96.0.1"), ["a/x", "a/y"]);
    // Explicit uids, across namespaces; unknown ones are skipped.
    assert_eq!(uids("10.96.0.2"), ["plain/z"]);
}

#[test]
fn selector_endpoints_come_from_the_label_index() {
    // (selector, explicit uids) -> endpoint uids, over the same pods.
    let pods = || {
        vec![
            pod(
                "a",
                "p1",
                "10.1.0.1",
                "n1",
                &[("app", "web"), ("tier", "1")],
            ),
            pod(
                "a",
                "p2",
                "10.1.0.2",
                "n1",
                &[("app", "web"), ("tier", "2")],
            ),
            pod("a", "p3", "10.1.0.3", "n1", &[("app", "db")]),
            pod(
                "b",
                "p4",
                "10.1.0.4",
                "n1",
                &[("app", "web"), ("tier", "1")],
            ),
        ]
    };
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a [&'a str]);
    let cases: &[Case<'_>] = &[
        (&[("app", "web")], &[], &["a/p1", "a/p2"]),
        (&[("app", "web"), ("tier", "1")], &[], &["a/p1"]),
        (&[("tier", "1"), ("app", "web")], &[], &["a/p1"]),
        (&[("app", "web"), ("tier", "3")], &[], &[]),
        (&[("app", "nope")], &[], &[]),
        // Empty selector: only the explicit uids, from any namespace.
        (&[], &["b/p4", "a/p3"], &["a/p3", "b/p4"]),
        // Selected and listed: once.
        (&[("app", "db")], &["a/p3", "b/p4"], &["a/p3", "b/p4"]),
    ];
    for (selector, uids, want) in cases {
        let mut s = svc("a", "s", "10.96.0.9", selector);
        s.endpoint_uids = uids.iter().map(|u| u.to_string()).collect();
        let snap = Snapshot::build(SnapshotParts {
            workloads: pods(),
            services: vec![s.clone()],
            ..SnapshotParts::default()
        })
        .unwrap();
        let got: Vec<&str> = snap.endpoints(&s).iter().map(|w| w.uid.as_str()).collect();
        assert_eq!(&got, want, "selector {selector:?}, uids {uids:?}");
    }
}

#[test]
fn lookups_and_defaults() {
    let snap = Snapshot::build(parts()).unwrap();
    assert_eq!(snap.trust_domain(), DEFAULT_TRUST_DOMAIN);
    assert!(snap.workload_by_ip(ip("10.9.9.9")).is_none());
    assert!(snap.service_by_vip(ip("10.1.1.1")).is_none());
    assert_eq!(snap.workload_by_uid("a/x").unwrap().name, "x");
    assert_eq!(snap.mtls_mode("nope"), MtlsMode::Permissive);
    assert_eq!(snap.namespace("a").unwrap().labels.len(), 1);
    assert_eq!(
        snap.workload_by_uid("a/y").unwrap().identity().to_string(),
        "spiffe://cluster.local/ns/a/sa/y"
    );
}

#[test]
fn waypoint_resolution() {
    const USE_WP: &str = USE_WAYPOINT_LABEL;
    let wp_pod = |ns: &str, name: &str, addr: &str| pod(ns, name, addr, "n1", &[OPT_OUT]);
    let mut p = SnapshotParts {
        namespaces: vec![
            ns("a", &[AMBIENT, (USE_WP, "ns-wp")]),
            ns("b", &[AMBIENT]),
            ns("infra", &[]),
        ],
        workloads: vec![
            wp_pod("a", "ns-wp", "10.1.0.1"),
            wp_pod("a", "pod-wp", "10.1.0.2"),
            wp_pod("infra", "shared", "10.1.0.3"),
            pod("a", "plain", "10.1.1.1", "n1", &[]),
            pod("a", "own", "10.1.1.2", "n1", &[(USE_WP, "pod-wp")]),
            pod("a", "none", "10.1.1.3", "n1", &[(USE_WP, "none")]),
            pod("b", "nolabel", "10.1.1.4", "n1", &[]),
            pod(
                "b",
                "cross",
                "10.1.1.5",
                "n1",
                &[(USE_WP, "shared"), (USE_WAYPOINT_NAMESPACE_LABEL, "infra")],
            ),
        ],
        ..SnapshotParts::default()
    };
    let mut s_own = svc("a", "s-own", "10.96.0.1", &[]);
    s_own.labels = labels(&[(USE_WP, "pod-wp")]);
    p.services = vec![s_own, svc("a", "s-ns", "10.96.0.2", &[])];
    let snap = Snapshot::build(p).unwrap();

    let pods: &[(&str, Option<&str>)] = &[
        ("10.1.1.1", Some("10.1.0.1")), // namespace label
        ("10.1.1.2", Some("10.1.0.2")), // pod label overrides namespace
        ("10.1.1.3", None),             // pod opts out
        ("10.1.1.4", None),             // no label anywhere
        ("10.1.1.5", Some("10.1.0.3")), // cross-namespace waypoint
        ("10.1.0.1", None),             // a waypoint is not its own waypoint
        ("10.1.0.2", Some("10.1.0.1")), // but another waypoint may front it
    ];
    for (addr, want) in pods {
        let w = snap.workload_by_ip(ip(addr)).unwrap();
        let got = w
            .waypoint
            .as_ref()
            .and_then(UseWaypoint::ready)
            .map(|wp| wp.address);
        assert_eq!(got, want.map(ip), "{addr}");
    }
    let services: &[(&str, &str)] = &[("10.96.0.1", "10.1.0.2"), ("10.96.0.2", "10.1.0.1")];
    for (vip, want) in services {
        let s = snap.service_by_vip(ip(vip)).unwrap();
        let wp = s.waypoint.as_ref().and_then(UseWaypoint::ready).unwrap();
        assert_eq!(wp.address, ip(want), "{vip}");
    }
    let wp = snap
        .workload_by_ip(ip("10.1.1.1"))
        .unwrap()
        .waypoint
        .clone();
    assert_eq!(
        wp.unwrap().ready().unwrap().identity.to_string(),
        "spiffe://cluster.local/ns/a/sa/ns-wp"
    );
}

#[test]
fn rejects_inconsistent_parts() {
    type Mutate = fn(&mut SnapshotParts);
    let cases: &[(Mutate, &str)] = &[
        (
            |p| p.namespaces.push(ns("a", &[])),
            "namespace \"a\" is defined twice",
        ),
        (
            |p| p.workloads.push(pod("a", "x", "10.1.9.9", "n1", &[])),
            "workload uid \"a/x\" is defined twice",
        ),
        (
            |p| p.workloads.push(pod("a", "dup", "10.1.1.1", "n1", &[])),
            "IP 10.1.1.1 belongs to both a/x and a/dup",
        ),
        (
            |p| p.services.push(svc("a", "t", "10.1.2.1", &[])),
            "IP 10.1.2.1 belongs to both a/y and a/t",
        ),
        (
            |p| p.services.push(svc("a", "s", "10.96.0.9", &[])),
            "service \"a/s\" is defined twice",
        ),
        (
            |p| p.workloads[0].service_account = "bad/sa".into(),
            "workload a/x has an invalid identity",
        ),
    ];
    for (mutate, want) in cases {
        let mut p = parts();
        mutate(&mut p);
        assert_eq!(Snapshot::build(p).unwrap_err().to_string(), *want);
    }
}

/// A label naming no workload (or one without an address) resolves to a
/// missing waypoint; the owner is kept.
#[test]
fn an_unknown_waypoint_is_missing_not_an_error() {
    let mut p = parts();
    p.workloads[0]
        .labels
        .insert(USE_WAYPOINT_LABEL.into(), "ghost".into());
    let mut no_address = pod("a", "wp-noip", "10.1.9.1", "n1", &[]);
    no_address.ips.clear();
    p.workloads.push(no_address);
    p.workloads[1]
        .labels
        .insert(USE_WAYPOINT_LABEL.into(), "wp-noip".into());
    let snap = Snapshot::build(p).unwrap();
    let named = |name: &str| {
        Some(UseWaypoint::Missing(Box::new(MissingWaypoint::Named {
            namespace: "a".into(),
            name: name.into(),
        })))
    };
    let x = snap.workload_by_uid("a/x").unwrap();
    assert_eq!(x.waypoint, named("ghost"));
    let y = snap.workload_by_uid("a/y").unwrap();
    assert_eq!(y.waypoint, named("wp-noip"));
}
