//! What a waypoint's xDS stream carries (DESIGN §6): a waypoint
//! authenticated with a token bound to its identity is sent only the
//! `Address` resources of what it serves, not the whole mesh. Pure.
//!
//! - the Services bound to it (their `waypoint` is its identity), and the
//!   workloads behind them (their endpoints);
//! - the pods bound to it directly;
//! - the waypoint workloads any of those name, so the client can resolve
//!   each `waypoint` reference (an unresolvable one drops its owner).
//!
//! Authorization policies are sent whole: the waypoint authorizes opaque
//! TCP with the endpoints' policies, which may be global or namespace-wide.

use std::collections::BTreeSet;

use mesh_model::state::{Snapshot, UseWaypoint, Waypoint};
use mesh_model::SpiffeId;

use crate::convert::service_name;

/// The waypoint `wp` names, when it is ready.
fn ready(wp: &Option<UseWaypoint>) -> Option<&Waypoint> {
    wp.as_ref().and_then(UseWaypoint::ready)
}

/// The `Address` resource names a waypoint with identity `id` is sent.
pub fn waypoint_addresses(snap: &Snapshot, id: &SpiffeId) -> BTreeSet<String> {
    let bound = |wp: &Option<UseWaypoint>| ready(wp).is_some_and(|w| w.identity == *id);
    let mut names = BTreeSet::new();
    let mut waypoints: Vec<&Waypoint> = Vec::new();
    for svc in snap.services().filter(|s| bound(&s.waypoint)) {
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
                "shop/cart.shop.svc.cluster.local",
                "shop/pinned",
                "shop/wp",
            ]
        );
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
