//! The waypoint's resources in the store: routes and L7 policies apply,
//! index, survive other deltas, and a bad one is rejected alone.

use std::sync::Arc;

use prost::Message;
use prost_types::Any;
use proto::discovery::Resource;
use proto::mesh as pb;
use proto::security as pb_sec;
use proto::workload as pb_wl;

use super::*;

fn any_resource(name: &str, version: &str, type_url: &str, value: Vec<u8>) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(Any {
            type_url: type_url.into(),
            value,
        }),
        ..Default::default()
    }
}

fn route(name: &str, version: &str, backend: &str) -> Resource {
    let r = pb::Route {
        name: name.into(),
        namespace: "shop".into(),
        parent_refs: vec![pb::ParentRef {
            name: "reviews".into(),
            ..Default::default()
        }],
        rules: vec![pb::RouteRule {
            backend_refs: vec![pb::BackendRef {
                name: backend.into(),
                port: 9080,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    any_resource(
        &format!("HTTPRoute/shop/{name}"),
        version,
        ROUTE_TYPE_URL,
        r.encode_to_vec(),
    )
}

fn policy(name: &str) -> Resource {
    let p = pb::L7Authorization {
        name: name.into(),
        namespace: "shop".into(),
        target_refs: vec![pb::PolicyTargetRef {
            kind: pb::policy_target_ref::Kind::Gateway as i32,
            name: "waypoint".into(),
        }],
        action: pb_sec::Action::Deny as i32,
        rules: vec![pb::L7Rule::default()],
    };
    any_resource(
        &format!("shop/{name}"),
        "v1",
        L7_AUTHORIZATION_TYPE_URL,
        p.encode_to_vec(),
    )
}

fn reviews(s: &Snapshot) -> Arc<crate::state::Service> {
    s.service_by_name("shop", "reviews").unwrap().clone()
}

fn backends(s: &Snapshot) -> Vec<String> {
    let svc = reviews(s);
    s.routes_for(&svc, 9080)
        .map(|r| format!("{}:{}", r.name, r.rules[0].backends[0].service.name))
        .collect()
}

fn ok(a: Applied) -> Arc<Snapshot> {
    match a {
        Applied::Ok(s) => s,
        other => panic!("expected Ok, got {other:?}"),
    }
}

fn reviews_service() -> Resource {
    let s = pb_wl::Service {
        name: "reviews".into(),
        namespace: "shop".into(),
        hostname: "reviews.shop.svc.cluster.local".into(),
        ..Default::default()
    };
    let body = pb_wl::Address {
        r#type: Some(pb_wl::address::Type::Service(s)),
    };
    any_resource(
        "shop/reviews.shop.svc.cluster.local",
        "v1",
        ADDRESS_TYPE_URL,
        body.encode_to_vec(),
    )
}

#[test]
fn routes_and_policies_apply_index_and_remove() {
    let mut store = XdsStore::default();
    ok(store.apply_owned(ADDRESS_TYPE_URL, vec![reviews_service()], &[]));
    let s = ok(store.apply_owned(
        ROUTE_TYPE_URL,
        vec![route("a", "v1", "v1"), route("b", "v1", "v2")],
        &[],
    ));
    assert_eq!(backends(&s), ["a:v1", "b:v2"]);
    let s = ok(store.apply_owned(L7_AUTHORIZATION_TYPE_URL, vec![policy("deny-all")], &[]));
    assert_eq!(
        backends(&s),
        ["a:v1", "b:v2"],
        "routes kept across another type's delta"
    );
    let names: Vec<String> = s
        .l7_policies_for("shop", "waypoint", None)
        .map(|p| p.key().to_string())
        .collect();
    assert_eq!(names, ["shop/deny-all"]);
    assert_eq!(store.versions(ROUTE_TYPE_URL).len(), 2);
    assert_eq!(
        store.versions(L7_AUTHORIZATION_TYPE_URL)["shop/deny-all"],
        "v1"
    );
    assert_eq!(store.len(), 4);

    // An address delta (patched, not rebuilt) keeps routes and policies.
    let s = ok(store.apply_owned(ADDRESS_TYPE_URL, vec![], &["nothing-there".into()]));
    assert_eq!(backends(&s), ["a:v1", "b:v2"]);
    assert_eq!(s.l7_policies().count(), 1);

    let s = ok(store.apply_owned(ROUTE_TYPE_URL, vec![], &["HTTPRoute/shop/a".into()]));
    assert_eq!(backends(&s), ["b:v2"]);
    let s = ok(store.apply_owned(L7_AUTHORIZATION_TYPE_URL, vec![], &["shop/deny-all".into()]));
    assert_eq!(s.l7_policies().count(), 0);
    assert_eq!(
        store.snapshot().unwrap().routes().count(),
        1,
        "a full rebuild agrees"
    );
}

#[test]
fn a_bad_route_is_rejected_alone_and_the_last_good_one_stays() {
    let mut store = XdsStore::default();
    ok(store.apply_owned(ADDRESS_TYPE_URL, vec![reviews_service()], &[]));
    ok(store.apply_owned(ROUTE_TYPE_URL, vec![route("a", "v1", "v1")], &[]));
    let mut bad =
        pb::Route::decode(route("a", "v2", "v2").resource.unwrap().value.as_slice()).unwrap();
    bad.rules[0].backend_refs[0].port = 0;
    let bad = any_resource(
        "HTTPRoute/shop/a",
        "v2",
        ROUTE_TYPE_URL,
        bad.encode_to_vec(),
    );
    let applied = store.apply_owned(ROUTE_TYPE_URL, vec![bad, route("c", "v1", "v3")], &[]);
    let Applied::Partial(s, rejected) = applied else {
        panic!("expected a partial apply, got {applied:?}");
    };
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].name, "HTTPRoute/shop/a");
    assert_eq!(
        rejected[0].error.to_string(),
        "rules[0].backend_refs[0].port: 0 is out of range 1..=65535"
    );
    assert_eq!(rejected[0].error.reason(), "bad_value");
    assert_eq!(backends(&s), ["a:v1", "c:v3"], "the old a stays, c applies");
    assert_eq!(store.versions(ROUTE_TYPE_URL)["HTTPRoute/shop/a"], "v1");

    let mut wrong = policy("p");
    wrong.resource.as_mut().unwrap().type_url = ROUTE_TYPE_URL.into();
    let applied = store.apply_owned(L7_AUTHORIZATION_TYPE_URL, vec![wrong], &[]);
    let Applied::Partial(_, rejected) = applied else {
        panic!("expected a partial apply, got {applied:?}");
    };
    assert_eq!(rejected[0].error.reason(), "wrong_type");
}
