//! The checks of the xDS fuzz targets, one function per target: run by
//! cargo-fuzz (`fuzz_targets/<target>.rs`, nightly, `scripts/fuzz`) and on
//! stable by `runtime/tests/fuzz.rs` (each corpus replayed, then a bounded
//! proptest loop of arbitrary bytes and mutated seeds; see the
//! `fuzz-replay` crate).
//!
//! Each feeds a store already holding a small mesh (two workloads, a
//! service, a policy: [`baseline`]) the path ztunnel's xDS client takes
//! with a response: the push reassembly ([`Pending`]), the store's
//! [`XdsStore::apply_owned`], and the ACK or NACK ([`answer`]).
#![allow(dead_code, reason = "each fuzz binary uses one check")]

use mesh_model::state::{Policy, PolicyAction, Snapshot};
use mesh_model::xds::store::{Applied, XdsStore};
use mesh_runtime::xds::client::answer;
use mesh_runtime::xds::client::pending::Pending;
use prost::Message;
use prost_types::Any;
use proto::discovery::{DeltaDiscoveryResponse, Resource};
use proto::workload::address::Type as AddressType;
use proto::{security as pb_sec, workload as pb};
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_AUTHORIZATION_TYPE_URL, ROUTE_TYPE_URL};

const TYPES: [&str; 4] = [
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    ROUTE_TYPE_URL,
    L7_AUTHORIZATION_TYPE_URL,
];

pub fn resource(type_url: &str, name: &str, value: Vec<u8>) -> Resource {
    Resource {
        name: name.into(),
        version: "v1".into(),
        resource: Some(Any {
            type_url: type_url.into(),
            value,
        }),
        ..Default::default()
    }
}

pub fn workload(uid: &str, ip: [u8; 4]) -> Resource {
    let w = pb::Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "shop".into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: uid.into(),
        node: "node1".into(),
        services: [(
            "shop/cart.shop.svc.cluster.local".to_owned(),
            pb::PortList::default(),
        )]
        .into(),
        ..Default::default()
    };
    let body = pb::Address {
        r#type: Some(AddressType::Workload(w)),
    };
    resource(ADDRESS_TYPE_URL, uid, body.encode_to_vec())
}

pub fn service() -> Resource {
    let s = pb::Service {
        name: "cart".into(),
        namespace: "shop".into(),
        hostname: "cart.shop.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 1],
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            ..Default::default()
        }],
        ..Default::default()
    };
    let body = pb::Address {
        r#type: Some(AddressType::Service(s)),
    };
    resource(
        ADDRESS_TYPE_URL,
        "shop/cart.shop.svc.cluster.local",
        body.encode_to_vec(),
    )
}

pub fn policy(name: &str, action: pb_sec::Action) -> Resource {
    let a = pb_sec::Authorization {
        name: name.into(),
        namespace: "shop".into(),
        scope: pb_sec::Scope::Namespace as i32,
        action: action as i32,
        rules: vec![pb_sec::Rule::default()],
    };
    resource(
        AUTHORIZATION_TYPE_URL,
        &format!("shop/{name}"),
        a.encode_to_vec(),
    )
}

/// A store holding two workloads, their service and an ALLOW policy.
pub fn baseline() -> XdsStore {
    let mut store = XdsStore::default();
    let addresses = [
        workload("a", [10, 1, 1, 1]),
        workload("b", [10, 1, 1, 2]),
        service(),
    ];
    assert!(matches!(
        store.apply(ADDRESS_TYPE_URL, &addresses, &[]),
        Applied::Ok(_)
    ));
    let policies = [policy("allow-a", pb_sec::Action::Allow)];
    assert!(matches!(
        store.apply(AUTHORIZATION_TYPE_URL, &policies, &[]),
        Applied::Ok(_)
    ));
    store
}

/// What a snapshot holds, comparable (its own type has no `PartialEq`).
#[derive(Debug, PartialEq)]
struct View {
    workloads: Vec<mesh_model::state::Workload>,
    services: Vec<(mesh_model::state::Service, Vec<String>)>,
    policies: Vec<Policy>,
}

fn view(s: &Snapshot) -> View {
    let mut workloads: Vec<_> = s.workloads().map(|w| (**w).clone()).collect();
    workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut services: Vec<_> = s
        .services()
        .map(|svc| {
            let eps = s.endpoints(svc).iter().map(|w| w.uid.clone()).collect();
            ((**svc).clone(), eps)
        })
        .collect();
    services.sort_by(|a, b| (&a.0.namespace, &a.0.name).cmp(&(&b.0.namespace, &b.0.name)));
    let mut policies: Vec<Policy> = s.policies().iter().cloned().collect();
    policies.sort_by_key(|p| format!("{p:?}"));
    View {
        workloads,
        services,
        policies,
    }
}

/// Applies `resp` to `store` and checks what came of it:
/// - the snapshot published is the one the store's contents build from
///   scratch (a patched snapshot never drifts);
/// - a response rejected as a whole changes nothing;
/// - a rejected resource is one the response carried; a rejected policy
///   stands as deny-all in the snapshot and is held without a version (a
///   reconnect asks for it again); nothing else fails closed;
/// - the reply NACKs exactly when something was rejected.
pub fn apply_and_check(store: &mut XdsStore, resp: &DeltaDiscoveryResponse) {
    let versions_before: Vec<_> = TYPES.iter().map(|t| store.versions(t)).collect();
    let view_before = store.snapshot().ok().map(|s| view(&s));
    let applied = store.apply_owned(
        &resp.type_url,
        resp.resources.clone(),
        &resp.removed_resources,
    );
    let names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
    let reply = match &applied {
        Applied::Ok(snap) | Applied::Partial(snap, _) => {
            let rebuilt = store
                .snapshot()
                .expect("what the store holds after an applied response is consistent");
            assert_eq!(
                view(snap),
                view(&rebuilt),
                "the published snapshot differs from one built from the store"
            );
            let rejected = match &applied {
                Applied::Partial(_, r) => r.as_slice(),
                _ => &[],
            };
            for r in rejected {
                assert!(names.contains(&r.name.as_str()), "{} was not sent", r.name);
                if resp.type_url == AUTHORIZATION_TYPE_URL {
                    let p = r
                        .fail_closed
                        .as_ref()
                        .expect("a rejected policy fails closed");
                    assert_eq!(p.action, PolicyAction::Deny);
                    assert!(snap.policies().iter().any(|q| q == p), "deny-all in force");
                    assert!(
                        !store.versions(AUTHORIZATION_TYPE_URL).contains_key(&r.name),
                        "a stand-in is held without a version"
                    );
                } else {
                    assert!(r.fail_closed.is_none());
                }
            }
            let reply = answer(resp, rejected, None);
            assert_eq!(reply.error_detail.is_some(), !rejected.is_empty());
            reply
        }
        Applied::Inconsistent(e) => {
            let after: Vec<_> = TYPES.iter().map(|t| store.versions(t)).collect();
            assert_eq!(
                after, versions_before,
                "an inconsistent response changed the store"
            );
            assert_eq!(
                store.snapshot().ok().map(|s| view(&s)),
                view_before,
                "an inconsistent response changed the snapshot"
            );
            let reply = answer(resp, &[], Some(&e.to_string()));
            assert!(reply.error_detail.is_some());
            reply
        }
    };
    assert_eq!(reply.response_nonce, resp.nonce);
    assert_eq!(reply.type_url, resp.type_url);
}

/// Arbitrary bytes as a `DeltaDiscoveryResponse` from the control plane,
/// through the push reassembly into the store.
pub fn xds_response(data: &[u8]) {
    let Ok(resp) = DeltaDiscoveryResponse::decode(data) else {
        return;
    };
    let mut store = baseline();
    let mut pending = Pending::default();
    if let Some(resp) = pending.offer(resp) {
        apply_and_check(&mut store, &resp);
    }
}

fn one(type_url: &str, name: &str, data: &[u8]) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: "n1".into(),
        resources: vec![resource(type_url, name, data.to_vec())],
        ..Default::default()
    }
}

/// Arbitrary bytes as the body of an `istio.workload.Address`, new and as
/// an update of a workload held.
pub fn xds_address(data: &[u8]) {
    for name in ["fuzz", "a"] {
        let mut store = baseline();
        apply_and_check(&mut store, &one(ADDRESS_TYPE_URL, name, data));
    }
}

/// Arbitrary bytes as the body of an `istio.security.Authorization`, new
/// and as an update of the policy held: accepted with its version, or deny
/// in force in its place.
pub fn xds_authorization(data: &[u8]) {
    for name in ["shop/fuzz", "shop/allow-a"] {
        let mut store = baseline();
        let resp = one(AUTHORIZATION_TYPE_URL, name, data);
        apply_and_check(&mut store, &resp);
        let held = store.versions(AUTHORIZATION_TYPE_URL).contains_key(name);
        let snap = store.snapshot().expect("consistent");
        let denies = snap.policies().iter().any(|p| {
            p.action == PolicyAction::Deny && p.rules.iter().any(|r| *r == Default::default())
        });
        assert!(held || denies, "{name}: neither applied nor failed closed");
    }
}
