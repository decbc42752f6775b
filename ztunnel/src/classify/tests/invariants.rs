//! The invariants of [`classify`]: checked on every combination of a small
//! world, and on random ports and picks.

use super::*;

/// The demo, plus what it lacks: a Service with no endpoints, one whose
/// endpoint is outside the mesh, a pod with its own sidecar behind a VIP,
/// and waypoints that do not exist (a namespace's, and a Service's own).
fn invariant_world() -> Snapshot {
    let text = DEMO
        .replace(
            "namespaces:\n",
            "namespaces:\n  - {name: edge, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: gone}}\n",
        )
        .replace(
            "workloads:\n",
            "workloads:\n  - {name: side, namespace: legacy, serviceAccount: side, ip: 10.1.2.41, node: node2, labels: {app: side, security.istio.io/tlsMode: istio}}\n  \
             - {name: edge, namespace: edge, serviceAccount: edge, ip: 10.1.2.50, node: node2, labels: {app: edge}}\n",
        )
        .replace(
            "services:\n",
            "services:\n  - {name: empty, namespace: shop, vip: 10.96.0.99, ports: [{port: 80}]}\n  \
             - {name: old, namespace: legacy, vip: 10.96.0.40, ports: [{port: 80, targetPort: 8080}], selector: {app: old-client}}\n  \
             - {name: side, namespace: legacy, vip: 10.96.0.41, ports: [{port: 80, targetPort: 8080}, {port: 443}], selector: {app: side}}\n  \
             - {name: edge, namespace: edge, vip: 10.96.0.50, ports: [{port: 80}], selector: {app: edge}}\n  \
             - {name: ghost-cart, namespace: shop, vip: 10.96.0.51, ports: [{port: 80, targetPort: 8080}], selector: {app: cart}, labels: {istio.io/use-waypoint: ghost}}\n",
        );
    config::parse(&text).unwrap()
}

/// What must hold of any answer of [`classify`], checked against the
/// snapshot it was given.
fn check_route(
    snap: &Snapshot,
    src: IpAddr,
    dst: SocketAddr,
    node: &str,
    got: &Result<Route, ClassifyError>,
) {
    let source = snap.workload_by_ip(src).filter(|w| snap.is_ambient(w));
    let vip = snap.service_by_vip(dst.ip()).map(|s| &**s);
    let route = match got {
        Err(e) => return check_error(snap, src, source, vip, dst, node, e),
        Ok(route) => route,
    };
    let source = source.expect("routed, so the source is a known ambient workload");
    assert!(
        Arc::ptr_eq(route.source(), source),
        "the route's source owns {src}"
    );
    assert_eq!(source.node, node, "the source runs on this node");
    // The waypoint that applies: the Service's for a VIP, else the pod's.
    let waypoint = match vip {
        Some(svc) => svc.waypoint.as_ref(),
        None => snap
            .workload_by_ip(dst.ip())
            .and_then(|w| w.waypoint.as_ref()),
    };
    let waypoint = waypoint.map(|wp| wp.ready().expect("routed past a missing waypoint"));
    let host = vip.map(|s| s.hostname.clone());
    if let Route::Waypoint {
        via,
        authority,
        expect,
        forwarded_host,
        ..
    } = route
    {
        let wp = waypoint.expect("a waypoint route only where a waypoint applies");
        assert_eq!(*via, wp.hbone_addr(), "to the waypoint's HBONE port");
        assert_eq!(*authority, dst, "the authority is what was dialled");
        assert_eq!(*expect, wp.identity);
        assert_eq!(*forwarded_host, host);
        return;
    }
    assert!(
        waypoint.is_none(),
        "a waypoint applies, but {route:?} goes around it"
    );
    match route {
        Route::Hbone {
            dest,
            via,
            authority,
            expect,
            forwarded_host,
            ..
        } => {
            assert_eq!(*via, SocketAddr::new(authority.ip(), HBONE_PORT));
            assert!(
                dest.ips.contains(&authority.ip()),
                "the authority's IP is the endpoint's"
            );
            assert_eq!(*expect, dest.identity());
            assert!(snap.accepts_hbone(dest));
            assert!(
                !(dest.node == node && snap.is_ambient(dest)),
                "a local ambient pod is served in-process"
            );
            check_destination(snap, vip, dst, dest, *authority);
            assert_eq!(*forwarded_host, host);
        }
        Route::Local {
            dest,
            dst: to,
            forwarded_host,
            ..
        } => {
            assert_eq!(dest.node, node);
            assert!(snap.is_ambient(dest));
            check_destination(snap, vip, dst, dest, *to);
            assert_eq!(*forwarded_host, host);
        }
        Route::Passthrough { dst: to, .. } => match vip {
            None => {
                assert_eq!(*to, dst, "passthrough keeps the original destination");
                let dest = snap.workload_by_ip(dst.ip());
                assert!(
                    dest.is_none_or(|w| !snap.accepts_hbone(w)),
                    "{dest:?} takes HBONE"
                );
            }
            Some(svc) => {
                let dest = snap
                    .workload_by_ip(to.ip())
                    .expect("a VIP passes through to an endpoint");
                check_destination(snap, vip, dst, dest, *to);
                assert!(!snap.accepts_hbone(dest));
                assert!(svc.waypoint.is_none());
            }
        },
        Route::Waypoint { .. } => unreachable!("checked above"),
    }
}

/// A pod dialled directly is reached as dialled; a VIP reaches one of its
/// endpoints on the target port.
fn check_destination(
    snap: &Snapshot,
    vip: Option<&Service>,
    dst: SocketAddr,
    dest: &Arc<Workload>,
    to: SocketAddr,
) {
    match vip {
        None => {
            assert_eq!(to, dst);
            let owner = snap.workload_by_ip(dst.ip()).expect("a pod was dialled");
            assert!(Arc::ptr_eq(owner, dest));
        }
        Some(svc) => {
            assert!(
                snap.endpoints(svc).iter().any(|e| Arc::ptr_eq(e, dest)),
                "not an endpoint"
            );
            assert_eq!(Some(to.port()), svc.target_port(dst.port()));
        }
    }
}

/// Errors only for the documented reasons, and only when they hold.
fn check_error(
    snap: &Snapshot,
    src: IpAddr,
    source: Option<&Arc<Workload>>,
    vip: Option<&Service>,
    dst: SocketAddr,
    node: &str,
    e: &ClassifyError,
) {
    assert!(ClassifyError::REASONS.contains(&e.reason()), "{e:?}");
    let Some(source) = source else {
        assert_eq!(
            *e,
            ClassifyError::UnknownSource(src),
            "the source is checked first"
        );
        return;
    };
    if source.node != node {
        let want = ClassifyError::SourceNotLocal {
            src,
            node: source.node.clone(),
        };
        assert_eq!(*e, want);
        return;
    }
    // The waypoint that applies, and whose it is.
    let pod = snap.workload_by_ip(dst.ip());
    let (waypoint, owner) = match (vip, pod) {
        (Some(svc), _) => (svc.waypoint.as_ref(), Some(svc.key())),
        (None, Some(pod)) => (pod.waypoint.as_ref(), Some(pod.key())),
        (None, None) => (None, None),
    };
    if let ClassifyError::WaypointMissing {
        target,
        waypoint: name,
    } = e
    {
        let missing = waypoint
            .and_then(UseWaypoint::missing)
            .expect("refused for a waypoint that is there");
        assert_eq!((Some(target), name), (owner.as_ref(), &missing.to_string()));
        return;
    }
    assert!(
        waypoint.is_none(),
        "{e:?}: where a waypoint applies, it decides"
    );
    let svc = vip.unwrap_or_else(|| panic!("{e:?} for a pod or an address outside the mesh"));
    match e {
        ClassifyError::UnknownServicePort { service, port } => {
            assert_eq!((service, *port), (&svc.key(), dst.port()));
            assert_eq!(svc.target_port(dst.port()), None);
        }
        ClassifyError::NoEndpoints { service } => {
            assert_eq!(service, &svc.key());
            assert!(svc.target_port(dst.port()).is_some());
            assert!(mesh_model::pick::usable_endpoints(snap, svc).is_empty());
        }
        other => panic!("{other:?} in node mode"),
    }
}

/// The sources and destinations the invariants are checked over: every
/// kind of workload and VIP in [`invariant_world`], and strangers.
const SOURCES: [&str; 10] = [
    "10.1.1.10",
    "10.1.1.11",
    "10.1.2.11",
    "10.1.2.12",
    "10.1.2.20",
    "10.1.1.30",
    "10.1.1.40",
    "10.1.2.41",
    "10.1.2.50",
    "10.9.9.9",
];
const DESTINATIONS: [&str; 16] = [
    "10.96.0.10",
    "10.96.0.20",
    "10.96.0.40",
    "10.96.0.41",
    "10.96.0.99",
    "10.1.1.10",
    "10.1.1.11",
    "10.1.2.11",
    "10.1.2.20",
    "10.1.1.30",
    "10.1.1.40",
    "10.1.2.41",
    "10.96.0.50",
    "10.96.0.51",
    "10.1.2.50",
    "1.2.3.4",
];
const NODES: [&str; 3] = ["node1", "node2", "elsewhere"];

/// Every combination on a few ports and picks: the invariants hold, and
/// the sweep meets every kind of route and every node-mode refusal (so the
/// invariants are not vacuous).
#[test]
fn classify_invariants_on_every_combination() {
    let snap = invariant_world();
    let mut seen = std::collections::BTreeSet::new();
    for src in SOURCES {
        for dst in DESTINATIONS {
            for port in [80, 443, 8080, 9] {
                for node in NODES {
                    for pick in 0..4 {
                        let src: IpAddr = src.parse().unwrap();
                        let dst = SocketAddr::new(dst.parse().unwrap(), port);
                        let got = classify(&snap, src, dst, node, pick);
                        check_route(&snap, src, dst, node, &got);
                        seen.insert(match &got {
                            Ok(r) => describe(r).split(' ').next().unwrap().to_owned(),
                            Err(e) => e.reason().to_owned(),
                        });
                    }
                }
            }
        }
    }
    let want = [
        "hbone",
        "local",
        "no_endpoints",
        "passthrough",
        "source_not_local",
        "unknown_service_port",
        "unknown_source",
        "waypoint",
        "waypoint_missing",
    ];
    assert_eq!(seen, want.map(String::from).into(), "kinds of answer met");
}

proptest::proptest! {
    /// Any port and pick: the route (or the refusal) is one the rules
    /// above allow.
    #[test]
    fn classify_invariants(
        src in proptest::sample::select(SOURCES.to_vec()),
        dst in proptest::sample::select(DESTINATIONS.to_vec()),
        port in proptest::prop_oneof![
            proptest::strategy::Just(80u16),
            proptest::strategy::Just(443u16),
            proptest::strategy::Just(8080u16),
            proptest::arbitrary::any::<u16>(),
        ],
        pick: usize,
        node in proptest::sample::select(NODES.to_vec()),
    ) {
        let snap = invariant_world();
        let src: IpAddr = src.parse().unwrap();
        let dst = SocketAddr::new(dst.parse().unwrap(), port);
        let got = classify(&snap, src, dst, node, pick);
        check_route(&snap, src, dst, node, &got);
    }
}
