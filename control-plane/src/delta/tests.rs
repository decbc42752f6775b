use super::*;
use crate::resources::Versioned;

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
