use super::*;
use crate::resources::{Changes, Kind, Versioned};

fn res(entries: &[(&str, &str)]) -> Resources {
    entries
        .iter()
        .map(|(n, body)| {
            (
                n.to_string(),
                Arc::new(Versioned::new(n.to_string(), body.as_bytes().to_vec())),
            )
        })
        .collect()
}

fn req(sub: &[&str], unsub: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn names(d: &Delta) -> (Vec<&str>, Vec<&str>) {
    (
        d.updated.iter().map(|r| r.name.as_str()).collect(),
        d.removed.iter().map(String::as_str).collect(),
    )
}

/// Push and commit, returning (updated, removed).
fn push(s: &mut Subscription, r: &Resources) -> (Vec<String>, Vec<String>) {
    let d = s.diff(r);
    s.commit(&d);
    let (u, rm) = names(&d);
    (
        u.into_iter().map(String::from).collect(),
        rm.into_iter().map(String::from).collect(),
    )
}

#[test]
fn table() {
    let v1 = res(&[("a", "1"), ("b", "1"), ("c", "1")]);
    let v2 = res(&[("a", "1"), ("b", "2"), ("d", "1")]);
    type Step = (
        &'static str,
        Option<DeltaDiscoveryRequest>,
        &'static Resources,
    );
    // Leak to get 'static resource sets for the table.
    let v1: &'static Resources = Box::leak(Box::new(v1));
    let v2: &'static Resources = Box::leak(Box::new(v2));
    type Want = (&'static [&'static str], &'static [&'static str]);
    let cases: Vec<(&str, Vec<Step>, Vec<Want>)> = vec![
        (
            "explicit wildcard, then a change",
            vec![("sub *", Some(req(&["*"], &[])), v1), ("edit", None, v2)],
            vec![(&["a", "b", "c"], &[]), (&["b", "d"], &["c"])],
        ),
        (
            "implicit wildcard (first request names nothing)",
            vec![("first", Some(req(&[], &[])), v1)],
            vec![(&["a", "b", "c"], &[])],
        ),
        (
            "by name: only what was asked",
            vec![("sub b", Some(req(&["b"], &[])), v1), ("edit", None, v2)],
            vec![(&["b"], &[]), (&["b"], &[])],
        ),
        (
            "by name: a missing name is answered as removed",
            vec![("sub z", Some(req(&["z"], &[])), v1)],
            vec![(&[], &["z"])],
        ),
        (
            "resubscribing resends an unchanged resource",
            vec![
                ("sub a", Some(req(&["a"], &[])), v1),
                ("sub a again", Some(req(&["a"], &[])), v1),
            ],
            vec![(&["a"], &[]), (&["a"], &[])],
        ),
        (
            "unsubscribe stops updates",
            vec![
                ("sub a b", Some(req(&["a", "b"], &[])), v1),
                ("unsub b", Some(req(&[], &["b"])), v1),
                ("edit", None, v2),
            ],
            vec![(&["a", "b"], &[]), (&[], &[]), (&[], &[])],
        ),
        (
            "no change, no push",
            vec![("sub *", Some(req(&["*"], &[])), v1), ("same", None, v1)],
            vec![(&["a", "b", "c"], &[]), (&[], &[])],
        ),
    ];
    for (name, steps, want) in cases {
        let mut s = Subscription::default();
        for ((step, r, set), (wu, wr)) in steps.into_iter().zip(want) {
            if let Some(r) = r {
                s.on_request(&r);
            }
            let (u, rm) = push(&mut s, set);
            let u: Vec<&str> = u.iter().map(String::as_str).collect();
            let rm: Vec<&str> = rm.iter().map(String::as_str).collect();
            assert_eq!((&u[..], &rm[..]), (wu, wr), "{name}: {step}");
        }
    }
}

#[test]
fn reconnect_with_initial_versions_sends_only_the_difference() {
    let v1 = res(&[("a", "1"), ("b", "1"), ("c", "1")]);
    let v2 = res(&[("a", "1"), ("b", "2"), ("d", "1")]);
    let mut first = Subscription::default();
    first.on_request(&req(&["*"], &[]));
    push(&mut first, &v1);

    let mut again = Subscription::default();
    let mut r = req(&["*"], &[]);
    r.initial_resource_versions = first.held().clone().into_iter().collect();
    again.on_request(&r);
    let (u, rm) = push(&mut again, &v2);
    assert_eq!(u, ["b", "d"]);
    assert_eq!(rm, ["c"]);
}

#[test]
fn nack_is_reported_and_not_retried() {
    let v1 = res(&[("a", "1")]);
    let v2 = res(&[("a", "2")]);
    let mut s = Subscription::default();
    s.on_request(&req(&["*"], &[]));
    push(&mut s, &v1);
    let nack = DeltaDiscoveryRequest {
        response_nonce: "1".into(),
        error_detail: Some(proto::google::rpc::Status {
            code: 3,
            message: "bad a".into(),
            details: vec![],
        }),
        ..Default::default()
    };
    assert_eq!(
        s.on_request(&nack),
        Reply::Nack {
            nonce: "1".into(),
            message: "bad a".into()
        }
    );
    assert!(s.diff(&v1).is_empty(), "the NACKed version is not re-sent");
    let (u, _) = push(&mut s, &v2);
    assert_eq!(u, ["a"], "a new version is");
    let ack = DeltaDiscoveryRequest {
        response_nonce: "2".into(),
        ..Default::default()
    };
    assert_eq!(s.on_request(&ack), Reply::Ack { nonce: "2".into() });
}

#[test]
fn history_table() {
    let changes = |names: &[&str]| {
        Arc::new(Changes {
            addresses: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
    };
    let mut h = History::default();
    for (g, n) in [(2, "b"), (3, "c"), (4, "d")] {
        h.push(g, changes(&[n]));
    }
    fn got(h: &History, since: u64, current: u64) -> Option<Vec<&str>> {
        h.changed(since, current, Kind::Address)
            .map(|s| s.into_iter().collect())
    }
    assert_eq!(got(&h, 4, 4), Some(vec![]), "in sync");
    assert_eq!(got(&h, 3, 4), Some(vec!["d"]));
    assert_eq!(got(&h, 1, 4), Some(vec!["b", "c", "d"]));
    assert_eq!(
        got(&h, 1, 3),
        Some(vec!["b", "c"]),
        "a newer generation is ignored"
    );
    assert_eq!(got(&h, 0, 4), None, "generation 1 is not remembered");
    assert_eq!(got(&h, 5, 4), None);
    assert_eq!(got(&h, 4, 6), None, "not published yet");
    // A gap drops what came before it.
    h.push(9, changes(&["z"]));
    assert_eq!(got(&h, 3, 9), None);
    assert_eq!(got(&h, 8, 9), Some(vec!["z"]));
    assert_eq!(
        h.changed(8, 9, Kind::Authorization),
        Some(Default::default())
    );
}

mod published {
    use proptest::prelude::*;

    use super::*;

    /// One step of a client's life: a new published set (names 0..6 with
    /// versions 0..3, absent as `None`), or a request.
    #[derive(Debug, Clone)]
    enum Step {
        Publish(Vec<Option<u8>>),
        Request {
            sub: Vec<u8>,
            unsub: Vec<u8>,
            wildcard: Option<bool>,
        },
        /// The client misses generations (the watch channel coalesces).
        Skip(Vec<Option<u8>>),
    }

    fn step() -> impl Strategy<Value = Step> {
        let set = prop::collection::vec(prop::option::of(0u8..3), 6);
        prop_oneof![
            4 => set.clone().prop_map(Step::Publish),
            1 => set.prop_map(Step::Skip),
            2 => (
                prop::collection::vec(0u8..6, 0..3),
                prop::collection::vec(0u8..6, 0..2),
                prop::option::of(any::<bool>()),
            )
                .prop_map(|(sub, unsub, wildcard)| Step::Request { sub, unsub, wildcard }),
        ]
    }

    fn resources(set: &[Option<u8>]) -> Resources {
        set.iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let name = format!("r{i}");
                v.map(|v| (name.clone(), Arc::new(Versioned::new(name, vec![v]))))
            })
            .collect()
    }

    fn changes(old: &Resources, new: &Resources) -> Arc<Changes> {
        let old = crate::resources::ResourceSet {
            addresses: old.clone(),
            ..Default::default()
        };
        let new = crate::resources::ResourceSet {
            addresses: new.clone(),
            ..Default::default()
        };
        Arc::new(Changes::between(&old, &new))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A subscription that diffs only the changed names sends exactly
        /// what one that diffs everything sends, whatever the requests and
        /// however many generations it misses.
        #[test]
        fn diffing_changes_equals_diffing_everything(
            first_wildcard in any::<bool>(),
            steps in prop::collection::vec(step(), 1..25),
        ) {
            let (mut fast, mut full) = (Subscription::default(), Subscription::default());
            let first = if first_wildcard { req(&["*"], &[]) } else { req(&["r1", "r2"], &[]) };
            let mut current = res(&[]);
            let mut generation = 1;
            let mut history = History::default();
            fast.on_request(&first);
            full.on_request(&first);
            let check = |fast: &mut Subscription, full: &mut Subscription, current: &Resources, generation: u64, history: &History| {
                let a = fast.diff_published(current, generation, history, Kind::Address);
                let b = full.diff(current);
                fast.commit_at(&a, generation);
                full.commit(&b);
                (a, b)
            };
            let (a, b) = check(&mut fast, &mut full, &current, generation, &history);
            prop_assert_eq!(a, b);
            for s in steps {
                let skip = matches!(s, Step::Skip(_));
                match s {
                    Step::Publish(set) | Step::Skip(set) => {
                        let next = resources(&set);
                        generation += 1;
                        history.push(generation, changes(&current, &next));
                        current = next;
                        if skip {
                            continue;
                        }
                    }
                    Step::Request { sub, unsub, wildcard } => {
                        let mut sub: Vec<String> = sub.iter().map(|i| format!("r{i}")).collect();
                        let mut unsub: Vec<String> = unsub.iter().map(|i| format!("r{i}")).collect();
                        match wildcard {
                            Some(true) => sub.push(WILDCARD.into()),
                            Some(false) => unsub.push(WILDCARD.into()),
                            None => {}
                        }
                        let r = DeltaDiscoveryRequest {
                            resource_names_subscribe: sub,
                            resource_names_unsubscribe: unsub,
                            ..Default::default()
                        };
                        fast.on_request(&r);
                        full.on_request(&r);
                    }
                }
                let (a, b) = check(&mut fast, &mut full, &current, generation, &history);
                prop_assert_eq!(a, b);
                prop_assert_eq!(fast.held(), full.held());
            }
        }
    }
}

mod split {
    use super::*;
    use prost::Message;
    use std::sync::Arc;

    fn versioned(name: &str, body: usize) -> Arc<Versioned> {
        Arc::new(Versioned::new(name.to_owned(), vec![7; body]))
    }

    /// The response bytes beside resources and removed names.
    fn header(kind: Kind) -> usize {
        crate::xds::response(kind, &Delta::default(), "1".into()).encoded_len()
    }

    #[test]
    fn resource_len_is_what_prost_encodes() {
        for body in [0, 1, 127, 128, 300, 70_000] {
            let delta = Delta {
                updated: vec![versioned("shop/w-1", body)],
                removed: vec![],
            };
            for kind in Kind::ALL {
                let resp = crate::xds::response(kind, &delta, "1".into());
                assert_eq!(
                    resp.encoded_len() - header(kind),
                    resource_len(kind, &delta.updated[0]),
                    "{kind:?} {body}"
                );
            }
        }
    }

    #[test]
    fn pieces_stay_within_the_budget_and_keep_the_order() {
        let budget = 1000;
        let updated: Vec<_> = (0..50)
            .map(|i| versioned(&format!("w-{i}"), (i * 37) % 300))
            .chain([versioned("huge", 5000)])
            .chain((50..60).map(|i| versioned(&format!("w-{i}"), 100)))
            .collect();
        let removed: Vec<String> = (0..100).map(|i| format!("gone-{i}")).collect();
        let delta = Delta { updated, removed };
        let kind = Kind::Address;
        let pieces = delta.split(kind, budget);
        assert!(pieces.len() > 5, "{}", pieces.len());
        for p in &pieces {
            assert!(!p.is_empty());
            let bytes = crate::xds::response(kind, p, "1".into()).encoded_len() - header(kind);
            let alone = p.updated.len() == 1 && p.updated[0].name == "huge";
            assert!(bytes <= budget || alone, "{bytes} bytes");
        }
        let updated: Vec<_> = pieces.iter().flat_map(|p| p.updated.clone()).collect();
        let removed: Vec<_> = pieces.iter().flat_map(|p| p.removed.clone()).collect();
        assert_eq!(updated, delta.updated);
        assert_eq!(removed, delta.removed);
    }

    #[test]
    fn a_small_or_empty_delta_is_one_piece() {
        let empty = Delta::default();
        assert_eq!(empty.split(Kind::Address, 10), vec![Delta::default()]);
        let small = Delta {
            updated: vec![versioned("a", 10)],
            removed: vec!["b".into()],
        };
        assert_eq!(
            small.split(Kind::Authorization, 1 << 20),
            vec![small.clone()]
        );
    }
}
