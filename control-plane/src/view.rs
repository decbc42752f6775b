//! What a waypoint's xDS stream carries (DESIGN §6): a waypoint
//! authenticated with a token bound to its identity is sent only the
//! `Address` resources of what it serves, not the whole mesh. Pure.
//!
//! - the Services bound to it (their `waypoint` is its identity), and the
//!   workloads behind them (their endpoints);
//! - the Services the routes of those name as backends or mirrors, with
//!   their endpoints;
//! - the pods bound to it directly;
//! - the waypoint workloads any of those name, so the client can resolve
//!   each `waypoint` reference (an unresolvable one drops its owner).
//!
//! Its `Route`s are those attached to the Services bound to it; its
//! `L7Authorization`s those targeting its Gateway (by Istio's convention
//! the Gateway is named after the waypoint's service account, in its
//! namespace) or a Service bound to it. Authorization policies are sent
//! whole: the waypoint authorizes opaque TCP with the endpoints' policies,
//! which may be global or namespace-wide.

use std::collections::BTreeSet;

use mesh_model::l7policy::PolicyTarget;
use mesh_model::state::{Service, Snapshot, UseWaypoint, Waypoint};
use mesh_model::SpiffeId;

use crate::convert::{policy_name, service_name};

/// The waypoint `wp` names, when it is ready.
fn ready(wp: &Option<UseWaypoint>) -> Option<&Waypoint> {
    wp.as_ref().and_then(UseWaypoint::ready)
}

/// The Services bound to the waypoint `id`.
fn bound_services<'a>(snap: &'a Snapshot, id: &'a SpiffeId) -> impl Iterator<Item = &'a Service> {
    snap.services()
        .filter(move |s| ready(&s.waypoint).is_some_and(|w| w.identity == *id))
        .map(|s| &**s)
}

/// The `Route` resource names the waypoint `id` is sent.
pub fn waypoint_routes(snap: &Snapshot, id: &SpiffeId) -> BTreeSet<String> {
    bound_services(snap, id)
        .flat_map(|s| s.ports.iter().flat_map(move |p| snap.routes_for(s, p.port)))
        .map(|r| r.key().to_string())
        .collect()
}

/// The `L7Authorization` resource names the waypoint `id` is sent.
pub fn waypoint_l7_policies(snap: &Snapshot, id: &SpiffeId) -> BTreeSet<String> {
    let services: Vec<&Service> = bound_services(snap, id).collect();
    snap.l7_policies()
        .filter(|p| {
            p.targets.iter().any(|t| match t {
                PolicyTarget::Gateway(n) => {
                    p.namespace == id.namespace() && n == id.service_account()
                }
                PolicyTarget::Service(n) => services
                    .iter()
                    .any(|s| s.namespace == p.namespace && s.name == *n),
            })
        })
        .map(|p| policy_name(&p.namespace, &p.name))
        .collect()
}

/// The `Address` resource names a waypoint with identity `id` is sent.
pub fn waypoint_addresses(snap: &Snapshot, id: &SpiffeId) -> BTreeSet<String> {
    let bound = |wp: &Option<UseWaypoint>| ready(wp).is_some_and(|w| w.identity == *id);
    let mut names = BTreeSet::new();
    let mut waypoints: Vec<&Waypoint> = Vec::new();
    let bound_svcs: Vec<&Service> = bound_services(snap, id).collect();
    // The routes' backends and mirrors are served too.
    let referenced = bound_svcs
        .iter()
        .flat_map(|s| s.ports.iter().flat_map(move |p| snap.routes_for(s, p.port)))
        .flat_map(|r| &r.rules)
        .flat_map(|rule| {
            rule.backends
                .iter()
                .map(|b| &b.service)
                .chain(rule.mirrors().map(|m| &m.service))
        })
        .filter_map(|r| snap.service_by_name(&r.namespace, &r.name))
        .map(|s| &**s);
    let served: Vec<&Service> = bound_svcs.iter().copied().chain(referenced).collect();
    for svc in served {
        names.insert(service_name(svc));
        waypoints.extend(ready(&svc.waypoint));
        for w in snap.endpoints(svc) {
            names.insert(w.uid.clone());
            waypoints.extend(ready(&w.waypoint));
        }
    }
    for w in snap.workloads().filter(|w| bound(&w.waypoint)) {
        names.insert(w.uid.clone());
        waypoints.extend(ready(&w.waypoint));
    }
    for wp in waypoints {
        if let Some(w) = snap.workload_by_ip(wp.address) {
            names.insert(w.uid.clone());
        } else if let Some(s) = snap.service_by_vip(wp.address) {
            names.insert(service_name(s));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces:
  - {name: shop, labels: {istio.io/dataplane-mode: ambient}}
  - {name: bank, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: bank-wp}}
workloads:
  - {name: wp, namespace: shop, serviceAccount: wp, ip: 10.1.1.2, node: n1, labels: {istio.io/dataplane-mode: none}}
  - {name: bank-wp, namespace: bank, serviceAccount: bank-wp, ip: 10.1.1.3, node: n1, labels: {istio.io/dataplane-mode: none}}
  - {name: cart-1, namespace: shop, ip: 10.1.1.10, node: n1, labels: {app: cart}}
  - {name: cart-2, namespace: shop, ip: 10.1.1.11, node: n1, labels: {app: cart, istio.io/use-waypoint: bank-wp, istio.io/use-waypoint-namespace: bank}}
  - {name: pinned, namespace: shop, ip: 10.1.1.12, node: n1, labels: {istio.io/use-waypoint: wp}}
  - {name: lone, namespace: shop, ip: 10.1.1.13, node: n1, labels: {app: lone}}
  - {name: vault, namespace: bank, ip: 10.1.1.20, node: n1, labels: {app: vault}}
services:
  - {name: cart, namespace: shop, vip: 10.96.0.10, ports: [{port: 80}], selector: {app: cart}, labels: {istio.io/use-waypoint: wp}}
  - {name: lone, namespace: shop, vip: 10.96.0.11, ports: [{port: 80}], selector: {app: lone}}
  - {name: vault, namespace: bank, vip: 10.96.0.20, ports: [{port: 80}], selector: {app: vault}}
  - {name: cart-v2, namespace: shop, vip: 10.96.0.12, ports: [{port: 80}], selector: {app: lone}}
routes:
  - kind: HTTPRoute
    metadata: {name: cart, namespace: shop}
    spec: {parentRefs: [{name: cart}], rules: [{backendRefs: [{name: cart-v2, port: 80}]}]}
  - kind: HTTPRoute
    metadata: {name: vault, namespace: bank}
    spec: {parentRefs: [{name: vault}], rules: [{backendRefs: [{name: vault, port: 80}]}]}
policies:
  - {name: on-gateway, namespace: shop, targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}], rules: [{}]}
  - {name: on-cart, namespace: shop, targetRefs: [{kind: Service, group: "", name: cart}], rules: [{}]}
  - {name: on-vault, namespace: bank, targetRefs: [{kind: Service, group: "", name: vault}], rules: [{}]}
"#;

    #[test]
    fn a_waypoint_sees_what_it_serves() {
        let snap = mesh_model::config::parse(MESH).unwrap();
        let wp: SpiffeId = "spiffe://cluster.local/ns/shop/sa/wp".parse().unwrap();
        let got: Vec<String> = waypoint_addresses(&snap, &wp).into_iter().collect();
        assert_eq!(
            got,
            [
                // cart-2 names the bank waypoint: it comes too, so the
                // endpoint's own waypoint resolves.
                "bank/bank-wp",
                "shop/cart-1",
                "shop/cart-2",
                // The route's backend, and the pod behind it.
                "shop/cart-v2.shop.svc.cluster.local",
                "shop/cart.shop.svc.cluster.local",
                "shop/lone",
                "shop/pinned",
                "shop/wp",
            ]
        );
        let routes: Vec<String> = waypoint_routes(&snap, &wp).into_iter().collect();
        assert_eq!(routes, ["HTTPRoute/shop/cart"]);
        let l7: Vec<String> = waypoint_l7_policies(&snap, &wp).into_iter().collect();
        assert_eq!(l7, ["shop/on-cart", "shop/on-gateway"]);
        let bank: SpiffeId = "spiffe://cluster.local/ns/bank/sa/bank-wp".parse().unwrap();
        let got: Vec<String> = waypoint_addresses(&snap, &bank).into_iter().collect();
        assert_eq!(
            got,
            [
                "bank/bank-wp",
                "bank/vault",
                "bank/vault.bank.svc.cluster.local",
                "shop/cart-2"
            ]
        );
        let nobody: SpiffeId = "spiffe://cluster.local/ns/shop/sa/nobody".parse().unwrap();
        assert!(waypoint_addresses(&snap, &nobody).is_empty());
    }
}
