//! What ztunnel's capture left in a node namespace: the `inet ambient` nft
//! table, the `fwmark 0x400/0xfff lookup 100` ip rule and the local route
//! in table 100. Shared by the capture and end-to-end suites.

use ztunnel::capture::rules::{ip_rule_selector, POD_SET, ROUTE_TABLE, TABLE};

use crate::Netns;

/// The capture table's set of ambient pod addresses in `node`, as `nft`
/// lists it (empty when there is no table).
pub fn pod_set(node: &Netns) -> String {
    node.exec(&format!("nft list set inet {TABLE} {POD_SET}"))
        .unwrap_or_default()
}

/// Copies of the capture ip rule in `node`.
pub fn ip_rule_count(node: &Netns) -> usize {
    let selector = ip_rule_selector();
    node.exec("ip -4 rule list")
        .expect("ip rule list")
        .lines()
        .filter(|l| l.trim_end().ends_with(&selector))
        .count()
}

/// Asserts the table, the ip rule and the local route exist exactly once.
pub fn assert_installed_once(node: &Netns) {
    let tables = node.exec("nft list tables").expect("nft list tables");
    let want = format!("table inet {TABLE}");
    let count = tables.lines().filter(|l| l.trim() == want).count();
    assert_eq!(count, 1, "one nft table: {tables}");
    assert_eq!(ip_rule_count(node), 1, "one ip rule");
    let routes = node
        .exec(&format!("ip -4 route show table {ROUTE_TABLE}"))
        .expect("ip route show");
    let local = routes
        .lines()
        .filter(|l| l.starts_with("local default"))
        .count();
    assert_eq!(local, 1, "one local route: {routes}");
}

/// Asserts no table, ip rule or route of ztunnel's is left.
pub fn assert_nothing_left(node: &Netns) {
    let tables = node.exec("nft list tables").expect("nft list tables");
    assert!(!tables.contains(TABLE), "table left: {tables}");
    let rules = node.exec("ip rule list").expect("ip rule list");
    let lookup = format!("lookup {ROUTE_TABLE}");
    assert!(!rules.contains(&lookup), "ip rule left: {rules}");
    let routes = node
        .exec(&format!(
            "ip route show table {ROUTE_TABLE} 2>/dev/null || true"
        ))
        .expect("ip route show");
    assert!(routes.trim().is_empty(), "route left: {routes}");
}
