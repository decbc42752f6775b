//! Fail closed: a policy that cannot be converted stands as deny-all for
//! the scope it names ([`crate::xds::store::fail_closed`]).

use super::*;

fn auth_resource(name: &str, version: &str, a: &pb_sec::Authorization) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(Any {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            value: a.encode_to_vec(),
        }),
        ..Default::default()
    }
}

/// A policy `namespace/name` with one rule: from `principal` (or from
/// anyone when `None`).
fn policy(
    namespace: &str,
    name: &str,
    scope: i32,
    action: pb_sec::Action,
    principal: Option<&str>,
) -> pb_sec::Authorization {
    let matches = match principal {
        Some(p) => vec![pb_sec::Match {
            principals: vec![pb_sec::StringMatch {
                match_type: Some(pb_sec::string_match::MatchType::Exact(p.into())),
            }],
            ..Default::default()
        }],
        None => vec![],
    };
    let clauses = if matches.is_empty() {
        vec![]
    } else {
        vec![pb_sec::Clause { matches }]
    };
    pb_sec::Authorization {
        name: name.into(),
        namespace: namespace.into(),
        scope,
        action: action as i32,
        rules: vec![pb_sec::Rule { clauses }],
    }
}

/// `p` with a field this ztunnel cannot represent (destination IPs).
fn unconvertible(mut p: pb_sec::Authorization) -> pb_sec::Authorization {
    p.rules.push(pb_sec::Rule {
        clauses: vec![pb_sec::Clause {
            matches: vec![pb_sec::Match {
                destination_ips: vec![pb_sec::Address {
                    address: vec![10, 0, 0, 1],
                    length: 32,
                }],
                ..Default::default()
            }],
        }],
    });
    p
}

const ALLOWED_PRINCIPAL: &str = "cluster.local/ns/shop/sa/front";

/// Three destinations: shop/a (selected by `shop/sel`), shop/c, bank/b.
fn policy_store() -> XdsStore {
    let mut store = XdsStore::default();
    let mut a = workload("a", "a", "shop", [10, 1, 1, 1], &[]);
    a.authorization_policies = vec!["shop/sel".into()];
    let c = workload("c", "c", "shop", [10, 1, 1, 2], &[]);
    let b = workload("b", "b", "bank", [10, 1, 1, 3], &[]);
    let rs = [("a", a), ("c", c), ("b", b)]
        .into_iter()
        .map(|(n, w)| addr_resource(n, "v1", AddressType::Workload(w)))
        .collect();
    snap(store.apply_owned(ADDRESS_TYPE_URL, rs, &[]));
    store
}

/// Whether `front` may reach shop/a, shop/c and bank/b.
fn reachable(s: &Snapshot) -> [bool; 3] {
    let front: crate::identity::SpiffeId = format!("spiffe://{ALLOWED_PRINCIPAL}").parse().unwrap();
    ["a", "c", "b"].map(|uid| {
        let dst = s.workload_by_uid(uid).unwrap();
        let ctx = crate::policy::ConnCtx {
            src_identity: Some(front.clone()),
            src_ip: ip("10.9.9.9"),
            dst,
            dst_port: 8080,
        };
        crate::policy::authorize(s.policies(), &ctx).is_allow()
    })
}

#[test]
fn a_policy_that_cannot_be_converted_fails_closed_for_its_scope() {
    use pb_sec::Action::{Allow, Deny};
    use pb_sec::Scope::{Global, Namespace, WorkloadSelector};
    let ns = Namespace as i32;
    let garbage = |name: &str| Resource {
        name: name.into(),
        version: "v2".into(),
        resource: Some(Any {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            value: vec![0xff, 0xff, 0xff],
        }),
        ..Default::default()
    };
    let allow_front = policy("shop", "p", ns, Allow, Some(ALLOWED_PRINCIPAL));
    // (what, held before, the response, stand-in scope, reachable a/c/b)
    type Case<'a> = (&'a str, Option<Resource>, Resource, &'a str, [bool; 3]);
    let cases: Vec<Case<'_>> = vec![
        (
            "a new DENY applies to its namespace",
            None,
            auth_resource(
                "shop/p",
                "v2",
                &unconvertible(policy("shop", "p", ns, Deny, None)),
            ),
            "namespace",
            [false, false, true],
        ),
        (
            "a new sole ALLOW does not leave its namespace allow-all",
            None,
            auth_resource("shop/p", "v2", &unconvertible(allow_front.clone())),
            "namespace",
            [false, false, true],
        ),
        (
            "an update does not keep the old version",
            Some(auth_resource("shop/p", "v1", &allow_front)),
            auth_resource("shop/p", "v2", &unconvertible(allow_front.clone())),
            "namespace",
            [false, false, true],
        ),
        (
            "a workload selector denies the workloads that list it",
            None,
            auth_resource(
                "shop/sel",
                "v2",
                &unconvertible(policy("shop", "sel", WorkloadSelector as i32, Allow, None)),
            ),
            "workload_selector",
            [false, true, true],
        ),
        (
            "global denies everywhere",
            None,
            auth_resource(
                "istio-system/g",
                "v2",
                &unconvertible(policy("istio-system", "g", Global as i32, Deny, None)),
            ),
            "global",
            [false, false, false],
        ),
        (
            "an unknown scope is read as global",
            None,
            auth_resource("shop/p", "v2", &policy("shop", "p", 7, Deny, None)),
            "global",
            [false, false, false],
        ),
        (
            "an unknown action, in a known scope",
            None,
            auth_resource("shop/p", "v2", &{
                let mut p = allow_front.clone();
                p.action = 9;
                p
            }),
            "namespace",
            [false, false, true],
        ),
        (
            "a namespace scope with no namespace is read as global",
            None,
            auth_resource(
                "shop/p",
                "v2",
                &unconvertible(policy("", "p", ns, Deny, None)),
            ),
            "global",
            [false, false, false],
        ),
        (
            "a selector with no name is read as global",
            None,
            auth_resource(
                "shop/sel",
                "v2",
                &unconvertible(policy("shop", "", WorkloadSelector as i32, Deny, None)),
            ),
            "global",
            [false, false, false],
        ),
        (
            "a body that does not decode is read as global",
            None,
            garbage("shop/p"),
            "global",
            [false, false, false],
        ),
        (
            "a body of another type is read as global",
            None,
            {
                let mut r = auth_resource("shop/p", "v2", &allow_front);
                r.resource.as_mut().unwrap().type_url = ADDRESS_TYPE_URL.into();
                r
            },
            "global",
            [false, false, false],
        ),
    ];
    for (what, before, resource, scope, want) in cases {
        let mut store = policy_store();
        if let Some(b) = before {
            let s = snap(store.apply_owned(AUTHORIZATION_TYPE_URL, vec![b], &[]));
            assert_eq!(reachable(&s), [true, true, true], "{what}: before");
        }
        let name = resource.name.clone();
        let applied = store.apply_owned(AUTHORIZATION_TYPE_URL, vec![resource], &[]);
        let Applied::Partial(s, rejected) = applied else {
            panic!("{what}: expected a NACK, got {applied:?}");
        };
        assert_eq!(rejected.len(), 1, "{what}");
        assert_eq!(rejected[0].name, name, "{what}");
        let stand_in = rejected[0].fail_closed.as_ref().expect("a stand-in");
        assert_eq!(
            crate::xds::store::fail_closed::scope_label(&stand_in.scope),
            scope,
            "{what}"
        );
        assert_eq!(stand_in.action, crate::state::PolicyAction::Deny, "{what}");
        assert_eq!(reachable(&s), want, "{what}");
        // Not held as the server's version: a reconnect asks again.
        assert!(
            !store.versions(AUTHORIZATION_TYPE_URL).contains_key(&name),
            "{what}"
        );
    }
}

#[test]
fn a_good_version_or_a_removal_replaces_the_stand_in() {
    use pb_sec::Action::Allow;
    let ns = pb_sec::Scope::Namespace as i32;
    let allow_front = policy("shop", "p", ns, Allow, Some(ALLOWED_PRINCIPAL));
    let mut store = policy_store();
    let bad = auth_resource("shop/p", "v1", &unconvertible(allow_front.clone()));
    let Applied::Partial(s, _) = store.apply_owned(AUTHORIZATION_TYPE_URL, vec![bad.clone()], &[])
    else {
        panic!("expected a NACK");
    };
    assert_eq!(reachable(&s), [false, false, true]);
    let good = auth_resource("shop/p", "v2", &allow_front);
    let s = snap(store.apply_owned(AUTHORIZATION_TYPE_URL, vec![good], &[]));
    assert_eq!(
        reachable(&s),
        [true, true, true],
        "the good version replaced it"
    );
    assert_eq!(store.versions(AUTHORIZATION_TYPE_URL)["shop/p"], "v2");
    store.apply_owned(AUTHORIZATION_TYPE_URL, vec![bad], &[]);
    let s = snap(store.apply_owned(AUTHORIZATION_TYPE_URL, vec![], &["shop/p".into()]));
    assert_eq!(
        reachable(&s),
        [true, true, true],
        "removed with its resource"
    );
    assert!(s.policies().is_empty());
}
