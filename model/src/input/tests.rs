//! The keyed input: batches, rollback, diffs, and that [`Touched`] covers
//! every object whose resolved form changed (proptest over random edits).

use std::collections::BTreeSet;
use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::state::{
    Labels, MissingWaypoint, MtlsMode, PolicyAction, PolicyScope, ServicePort, Tunnel, UseWaypoint,
    USE_WAYPOINT_LABEL,
};

const NAMESPACES: [&str; 2] = ["shop", "bank"];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns: &str, name: &str, ip: &str, l: &[(&str, &str)]) -> Workload {
    Workload {
        uid: format!("{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        service_account: name.into(),
        trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        ips: vec![ip.parse().unwrap()],
        node: "node1".into(),
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
        vips: vec![vip.parse().unwrap()],
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

fn namespace(name: &str, l: &[(&str, &str)], mtls: MtlsMode) -> Namespace {
    Namespace {
        name: name.into(),
        labels: labels(l),
        mtls,
    }
}

fn selector_policy(ns: &str, name: &str, app: &str) -> Policy {
    Policy {
        name: name.into(),
        namespace: ns.into(),
        scope: PolicyScope::WorkloadSelector {
            match_labels: labels(&[("app", app)]),
        },
        action: PolicyAction::Deny,
        rules: Vec::new(),
    }
}

fn up(o: Object) -> Change {
    Change::Upsert(o)
}

#[test]
fn a_pod_change_touches_its_services_and_not_the_rest() {
    let mut input = MeshInput::default();
    input
        .apply(vec![
            up(Object::Namespace(namespace(
                "shop",
                &[],
                MtlsMode::Permissive,
            ))),
            up(Object::Workload(pod(
                "shop",
                "a",
                "10.1.0.1",
                &[("app", "a")],
            ))),
            up(Object::Workload(pod(
                "shop",
                "b",
                "10.1.0.2",
                &[("app", "b")],
            ))),
            up(Object::Service(svc(
                "shop",
                "sa",
                "10.96.0.1",
                &[("app", "a")],
            ))),
            up(Object::Service(svc(
                "shop",
                "sb",
                "10.96.0.2",
                &[("app", "b")],
            ))),
        ])
        .unwrap();
    let moved = pod("shop", "a", "10.1.0.9", &[("app", "a")]);
    let update = input.apply(vec![up(Object::Workload(moved))]).unwrap();
    assert_eq!(
        update.touched.workloads,
        BTreeSet::from(["shop/a".to_owned()])
    );
    assert_eq!(
        update.touched.services,
        BTreeSet::from([("shop".to_owned(), "sa".to_owned())])
    );
    let ip: IpAddr = "10.1.0.9".parse().unwrap();
    assert_eq!(update.snapshot.workload_by_ip(ip).unwrap().name, "a");
}

#[test]
fn a_selector_policy_reaches_its_namespace_and_resolves_into_workloads() {
    let mut input = MeshInput::default();
    input
        .apply(vec![
            up(Object::Workload(pod(
                "shop",
                "a",
                "10.1.0.1",
                &[("app", "a")],
            ))),
            up(Object::Workload(pod(
                "bank",
                "l",
                "10.1.0.2",
                &[("app", "a")],
            ))),
        ])
        .unwrap();
    let update = input
        .apply(vec![up(Object::Policy(selector_policy(
            "shop", "deny-a", "a",
        )))])
        .unwrap();
    assert_eq!(
        update.touched.workloads,
        BTreeSet::from(["shop/a".to_owned()])
    );
    let a = update.snapshot.workload_by_uid("shop/a").unwrap();
    assert_eq!(a.authorization_policies.len(), 1);
    let l = update.snapshot.workload_by_uid("bank/l").unwrap();
    assert!(l.authorization_policies.is_empty());
}

#[test]
fn an_inconsistent_batch_is_undone_whole() {
    let mut input = MeshInput::default();
    input
        .apply(vec![up(Object::Workload(pod(
            "shop",
            "a",
            "10.1.0.1",
            &[],
        )))])
        .unwrap();
    let before = input.objects().collect::<Vec<_>>();
    let err = input
        .apply(vec![
            up(Object::Workload(pod("shop", "b", "10.1.0.2", &[]))),
            Change::Delete(Key::Workload("shop/a".into())),
            // Clashes with b's address.
            up(Object::Workload(pod("shop", "c", "10.1.0.2", &[]))),
        ])
        .unwrap_err();
    assert!(matches!(err, StateError::DuplicateIp { .. }), "{err}");
    assert_eq!(input.objects().collect::<Vec<_>>(), before);
    assert!(input.snapshot().workload_by_uid("shop/a").is_some());
}

#[test]
fn a_waypoint_change_reaches_the_objects_that_name_it() {
    let wp_label = [(USE_WAYPOINT_LABEL, "wp")];
    let mut input = MeshInput::default();
    input
        .apply(vec![
            up(Object::Namespace(namespace(
                "shop",
                &wp_label,
                MtlsMode::Permissive,
            ))),
            up(Object::Namespace(namespace(
                "bank",
                &[],
                MtlsMode::Permissive,
            ))),
            up(Object::Workload(pod("shop", "wp", "10.1.0.1", &[]))),
            up(Object::Workload(pod("shop", "a", "10.1.0.2", &[]))),
            up(Object::Workload(pod("bank", "l", "10.1.0.3", &[]))),
        ])
        .unwrap();
    let address = |w: &Workload| {
        let wp = w.waypoint.as_ref().and_then(UseWaypoint::ready);
        wp.map(|wp| wp.address.to_string())
    };
    let a = input.snapshot().workload_by_uid("shop/a").unwrap().clone();
    assert_eq!(address(&a).as_deref(), Some("10.1.0.1"));
    let update = input
        .apply(vec![up(Object::Workload(pod(
            "shop",
            "wp",
            "10.1.0.7",
            &[],
        )))])
        .unwrap();
    assert!(update.touched.workloads.contains("shop/a"));
    assert!(!update.touched.workloads.contains("bank/l"));
    let a = update.snapshot.workload_by_uid("shop/a").unwrap();
    assert_eq!(address(a).as_deref(), Some("10.1.0.7"));

    // The waypoint leaves: what names it is touched and kept, its waypoint
    // missing; it comes back: ready again.
    let gone = Key::Workload("shop/wp".into());
    let update = input.apply(vec![Change::Delete(gone)]).unwrap();
    assert!(update.touched.workloads.contains("shop/a"));
    let a = update.snapshot.workload_by_uid("shop/a").expect("kept");
    let missing = MissingWaypoint::Named {
        namespace: "shop".into(),
        name: "wp".into(),
    };
    assert_eq!(a.waypoint, Some(UseWaypoint::Missing(Box::new(missing))));
    let update = input
        .apply(vec![up(Object::Workload(pod(
            "shop",
            "wp",
            "10.1.0.8",
            &[],
        )))])
        .unwrap();
    assert!(update.touched.workloads.contains("shop/a"));
    let a = update.snapshot.workload_by_uid("shop/a").unwrap();
    assert_eq!(address(a).as_deref(), Some("10.1.0.8"));
}

#[test]
fn replace_diffs_a_whole_state_into_keyed_changes() {
    let mut input = MeshInput::default();
    let first = vec![
        Object::Workload(pod("shop", "a", "10.1.0.1", &[])),
        Object::Workload(pod("shop", "b", "10.1.0.2", &[])),
    ];
    input.replace(DEFAULT_TRUST_DOMAIN, first).unwrap();
    let second = vec![
        Object::Workload(pod("shop", "a", "10.1.0.1", &[])),
        Object::Workload(pod("shop", "c", "10.1.0.3", &[])),
    ];
    assert_eq!(
        input.diff(second.clone()),
        vec![
            Change::Delete(Key::Workload("shop/b".into())),
            up(second[1].clone()),
        ]
    );
    let update = input.replace(DEFAULT_TRUST_DOMAIN, second).unwrap();
    let uids = ["shop/b".to_owned(), "shop/c".to_owned()];
    assert_eq!(update.touched.workloads, BTreeSet::from(uids));
    // A new trust domain changes every identity.
    let update = input
        .replace(
            "example.org",
            vec![Object::Workload(pod("shop", "a", "10.1.0.1", &[]))],
        )
        .unwrap();
    assert_eq!(update.snapshot.trust_domain(), "example.org");
    assert!(update.touched.workloads.contains("shop/c"));
}

// ---- Touched covers every change (proptest) ----

fn arb_labels() -> impl Strategy<Value = Labels> {
    (
        prop::option::of(prop::sample::select(vec!["a", "b"])),
        prop::option::of(prop::sample::select(vec!["w0", "w1", "none"])),
    )
        .prop_map(|(app, wp)| {
            let mut l = Labels::new();
            if let Some(app) = app {
                l.insert("app".into(), app.into());
            }
            if let Some(wp) = wp {
                l.insert(USE_WAYPOINT_LABEL.into(), wp.into());
            }
            l
        })
}

fn arb_change() -> impl Strategy<Value = Change> {
    let ns = prop::sample::select(NAMESPACES.to_vec());
    let name = prop::sample::select(vec!["w0", "w1", "w2", "w3"]);
    let workload = (ns.clone(), name, 1u8..6, arb_labels()).prop_map(|(ns, name, ip, l)| {
        let mut w = pod(ns, name, &format!("10.1.0.{ip}"), &[]);
        w.labels = l;
        Change::Upsert(Object::Workload(w))
    });
    let service = (
        ns.clone(),
        0u8..3,
        prop::sample::select(vec!["a", "b"]),
        arb_labels(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(ns, i, app, l, on_a_pod_ip)| {
            // Now and then on an address a pod may hold: refused.
            let vip = if on_a_pod_ip {
                format!("10.1.0.{}", i + 1)
            } else {
                format!("10.96.{}.{i}", ns.len())
            };
            let mut s = svc(ns, &format!("s{i}"), &vip, &[]);
            s.selector = labels(&[("app", app)]);
            s.labels = l;
            Change::Upsert(Object::Service(s))
        });
    let namespace = (ns.clone(), arb_labels(), any::<bool>()).prop_map(|(ns, l, strict)| {
        let mtls = if strict {
            MtlsMode::Strict
        } else {
            MtlsMode::Permissive
        };
        Change::Upsert(Object::Namespace(Namespace {
            name: ns.into(),
            labels: l,
            mtls,
        }))
    });
    let policy =
        (ns.clone(), 0u8..2, prop::sample::select(vec!["a", "b"])).prop_map(|(ns, i, app)| {
            Change::Upsert(Object::Policy(selector_policy(ns, &format!("p{i}"), app)))
        });
    let delete = (
        ns,
        prop::sample::select(vec!["w0", "w1", "w2", "w3", "s0", "s1", "p0"]),
    )
        .prop_map(|(ns, name)| match name.as_bytes()[0] {
            b'w' => Change::Delete(Key::Workload(format!("{ns}/{name}"))),
            b's' => Change::Delete(Key::Service(ns.into(), name.into())),
            _ => Change::Delete(Key::Policy(PolicyKey {
                namespace: ns.into(),
                name: name.into(),
            })),
        });
    prop_oneof![3 => workload, 2 => service, 1 => namespace, 1 => policy, 2 => delete]
}

/// Every key whose resolved object differs between two snapshots.
fn changed(old: &Snapshot, new: &Snapshot) -> Touched {
    let mut t = Touched::default();
    for (a, b) in [(old, new), (new, old)] {
        for w in a.workloads() {
            if b.workload_by_uid(&w.uid).is_none_or(|o| **o != **w) {
                t.workloads.insert(w.uid.clone());
            }
        }
        for s in a.services() {
            if b.service_by_name(&s.namespace, &s.name)
                .is_none_or(|o| **o != **s)
                || endpoint_uids(a, s)
                    != b.service_by_name(&s.namespace, &s.name)
                        .map_or(BTreeSet::new(), |o| endpoint_uids(b, o))
            {
                t.services.insert((s.namespace.clone(), s.name.clone()));
            }
        }
        for ns in a.namespaces() {
            if b.namespace(&ns.name) != Some(ns) {
                t.namespaces.insert(ns.name.clone());
            }
        }
        for p in a.policies().iter() {
            if !b.policies().iter().any(|o| o == p) {
                t.policies.insert(p.key());
            }
        }
    }
    t
}

fn endpoint_uids(snap: &Snapshot, s: &Service) -> BTreeSet<String> {
    snap.endpoints(s).iter().map(|w| w.uid.clone()).collect()
}

/// `services_of` is the reverse of `endpoints`: each workload lists
/// exactly the services whose endpoints hold it (the same objects).
fn reverse_index_holds(snap: &Snapshot) -> Result<(), String> {
    let mut want: std::collections::BTreeMap<&str, Vec<(String, String)>> = Default::default();
    for s in snap.services() {
        for w in snap.endpoints(s) {
            if !snap
                .workload_by_uid(&w.uid)
                .is_some_and(|h| Arc::ptr_eq(h, w))
            {
                return Err(format!("{} lists a stale {}", s.key(), w.uid));
            }
            want.entry(&w.uid)
                .or_default()
                .push((s.namespace.clone(), s.name.clone()));
        }
    }
    for w in snap.workloads() {
        let got: Vec<(String, String)> = snap
            .services_of(&w.uid)
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let held = snap.services_of(&w.uid).iter().all(|s| {
            snap.service_by_name(&s.namespace, &s.name)
                .is_some_and(|h| Arc::ptr_eq(h, s))
        });
        if got != want.remove(w.uid.as_str()).unwrap_or_default() || !held {
            return Err(format!("services_of({}) is {got:?}", w.uid));
        }
    }
    Ok(())
}

fn covers(touched: &Touched, needed: &Touched) -> Result<(), String> {
    let missing =
        |a: &BTreeSet<String>, b: &BTreeSet<String>| b.difference(a).cloned().collect::<Vec<_>>();
    let w = missing(&touched.workloads, &needed.workloads);
    let n = missing(&touched.namespaces, &needed.namespaces);
    let s: Vec<_> = needed.services.difference(&touched.services).collect();
    let p: Vec<_> = needed.policies.difference(&touched.policies).collect();
    if w.is_empty() && n.is_empty() && s.is_empty() && p.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not touched: workloads {w:?} namespaces {n:?} services {s:?} policies {p:?}"
        ))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn touched_covers_every_resolved_change(
        batches in prop::collection::vec(prop::collection::vec(arb_change(), 1..4), 1..12)
    ) {
        let mut input = MeshInput::default();
        // The same batches, each snapshot built whole.
        let mut reference = MeshInput::with_full_rebuild(DEFAULT_TRUST_DOMAIN);
        for batch in batches {
            let old = input.snapshot().clone();
            let held = input.objects().collect::<Vec<_>>();
            let want = reference.apply(batch.clone());
            match input.apply(batch) {
                Ok(update) => {
                    covers(&update.touched, &changed(&old, &update.snapshot))
                        .map_err(TestCaseError::fail)?;
                    // The patched snapshot is the one built from scratch.
                    let want = want.map_err(|e| TestCaseError::fail(format!("the whole build refused it: {e}")))?;
                    prop_assert_eq!(&want.touched, &update.touched);
                    prop_assert_eq!(want.snapshot.canonical(), update.snapshot.canonical());
                    reverse_index_holds(&update.snapshot).map_err(TestCaseError::fail)?;
                    let mut fresh = MeshInput::with_full_rebuild(DEFAULT_TRUST_DOMAIN);
                    let all = input.objects().map(Change::Upsert).collect();
                    let from_scratch = fresh.apply(all).unwrap();
                    prop_assert_eq!(from_scratch.snapshot.canonical(), update.snapshot.canonical());
                }
                Err(_) => {
                    prop_assert!(want.is_err(), "the whole build took a batch the patch refused");
                    prop_assert_eq!(input.objects().collect::<Vec<_>>(), held);
                    prop_assert!(Arc::ptr_eq(input.snapshot(), &old));
                }
            }
        }
    }
}
