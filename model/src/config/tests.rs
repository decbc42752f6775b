use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;
use crate::state::{
    AppProtocol, MissingWaypoint, MtlsMode, PolicyAction, PolicyScope, StringMatch, Tunnel,
    UseWaypoint,
};

const DEMO: &str = include_str!("../../../ztunnel/examples/demo-config.yaml");

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn demo_config_loads() {
    let snap = parse(DEMO).unwrap();
    assert_eq!(snap.trust_domain(), "cluster.local");
    assert_eq!(snap.node("node2").unwrap().ip, ip("10.0.0.2"));
    assert_eq!(snap.mtls_mode("shop"), MtlsMode::Strict);
    assert_eq!(snap.mtls_mode("bank"), MtlsMode::Permissive);

    let cart = snap.service_by_vip(ip("10.96.0.10")).unwrap();
    assert_eq!(cart.hostname, "cart.shop.svc.cluster.local");
    assert_eq!(cart.target_port(80), Some(8080));
    let eps: Vec<&str> = snap
        .endpoints(cart)
        .iter()
        .map(|w| w.uid.as_str())
        .collect();
    assert_eq!(eps, ["shop/cart-1", "shop/cart-2", "shop/cart-3"]);
    let nodes: BTreeSet<&str> = snap
        .endpoints(cart)
        .iter()
        .map(|w| w.node.as_str())
        .collect();
    assert_eq!(nodes.len(), 2, "endpoints span both nodes");

    let frontend = snap.workload_by_ip(ip("10.1.1.10")).unwrap();
    assert_eq!(frontend.tunnel, Tunnel::Hbone);
    assert_eq!(
        frontend.identity().to_string(),
        "spiffe://cluster.local/ns/shop/sa/frontend"
    );
    let old = snap.workload_by_ip(ip("10.1.1.40")).unwrap();
    assert_eq!(old.tunnel, Tunnel::None);
    assert_eq!(old.service_account, "default");

    let wp = snap
        .workload_by_ip(ip("10.1.2.20"))
        .unwrap()
        .waypoint
        .clone();
    assert_eq!(wp.unwrap().ready().unwrap().address, ip("10.1.1.30"));
    assert!(snap
        .workload_by_ip(ip("10.1.1.30"))
        .unwrap()
        .waypoint
        .is_none());

    let local: Vec<IpAddr> = snap.local_ambient_ips("node1").into_iter().collect();
    assert_eq!(local, [ip("10.1.1.10"), ip("10.1.1.11")]);

    let deny = snap.policies().iter().next().unwrap();
    assert_eq!(deny.action, PolicyAction::Deny);
    assert!(matches!(deny.scope, PolicyScope::WorkloadSelector { .. }));
    assert_eq!(deny.rules[0].clauses.len(), 2);
    assert_eq!(
        deny.rules[0].clauses[1].matches[0].destination_ports,
        [8080]
    );
}

#[test]
fn defaults() {
    let snap = parse(
        "nodes: [{name: n, ip: 10.0.0.1}]\n\
         namespaces: [{name: a, labels: {istio.io/dataplane-mode: ambient}}]\n\
         workloads: [{name: p, namespace: a, ip: 10.1.0.1, node: n}]\n\
         services: [{name: s, namespace: a, vip: 10.96.0.1, ports: [{port: 80}]}]\n\
         policies: [{name: all, namespace: istio-system}, {name: ns, namespace: a}]\n",
    )
    .unwrap();
    assert_eq!(snap.trust_domain(), "cluster.local");
    assert_eq!(snap.mtls_mode("a"), MtlsMode::Permissive);
    let w = snap.workload_by_uid("a/p").unwrap();
    assert_eq!(w.tunnel, Tunnel::Hbone);
    assert_eq!(w.trust_domain, "cluster.local");
    let s = snap.service_by_vip(ip("10.96.0.1")).unwrap();
    assert_eq!(s.target_port(80), Some(80));
    assert!(snap.endpoints(s).is_empty(), "no selector selects nothing");
    let scopes: Vec<_> = snap.policies().iter().map(|p| p.scope.clone()).collect();
    assert_eq!(scopes, [PolicyScope::Global, PolicyScope::Namespace]);
    assert!(snap
        .policies()
        .iter()
        .all(|p| p.action == PolicyAction::Allow));
}

#[test]
fn empty_documents_are_empty_meshes() {
    for doc in ["", "# nothing\n", "{}"] {
        let snap = parse(doc).unwrap();
        assert_eq!(snap.workloads().count(), 0, "{doc:?}");
    }
}

#[test]
fn policy_patterns_and_blocks() {
    let snap = parse(
        "namespaces: [{name: a}]\n\
         policies:\n\
         - name: p\n  namespace: a\n  action: DENY\n  rules:\n\
         \x20 - from: [{source: {principals: ['*/sa/x', 'td/*'], notIpBlocks: ['10.0.0.0/8', 10.1.1.1]}}]\n\
         \x20   to: [{operation: {notPorts: [22, '23']}}]\n",
    )
    .unwrap();
    let p = snap.policies().iter().next().unwrap();
    let from = &p.rules[0].clauses[0].matches[0];
    assert_eq!(
        from.principals,
        [
            StringMatch::Suffix("/sa/x".into()),
            StringMatch::Prefix("td/".into())
        ]
    );
    assert_eq!(from.not_source_ips.len(), 2);
    assert_eq!(
        p.rules[0].clauses[1].matches[0].not_destination_ports,
        [22, 23]
    );
}

/// Each malformed or inconsistent file, and the error message it gets.
#[test]
fn rejects_bad_configs() {
    let base = "nodes: [{name: n1, ip: 10.0.0.1}]\nnamespaces: [{name: a}]\n";
    let cases: &[(&str, &str)] = &[
        (
            "workloads: [{name: p, namespace: b, ip: 10.1.0.1, node: n1}]",
            "workloads[0].namespace: unknown namespace \"b\"",
        ),
        (
            "workloads: [{name: p, namespace: a, ip: 10.1.0.1, node: n9}]",
            "workloads[0].node: unknown node \"n9\"",
        ),
        (
            "workloads: [{name: p, namespace: a, ip: 10.1.0.300, node: n1}]",
            "workloads[0].ip: \"10.1.0.300\" is not an IP address",
        ),
        (
            "workloads: [{name: p, namespace: a, ip: 10.1.0.1, node: n1},\n\
             \x20            {name: q, namespace: a, ip: 10.1.0.1, node: n1}]",
            "workloads[1].ip: IP 10.1.0.1 is already used by workloads[0].ip",
        ),
        (
            "workloads: [{name: p, namespace: a, ip: 10.1.0.1, node: n1}]\n\
             services: [{name: s, namespace: a, vip: 10.1.0.1}]",
            "services[0].vip: IP 10.1.0.1 is already used by workloads[0].ip",
        ),
        (
            "workloads: [{name: p, namespace: a, serviceAccount: 'a/b', ip: 10.1.0.1, node: n1}]",
            "workloads[0].serviceAccount: \"a/b\" cannot be part of a SPIFFE identity",
        ),
        (
            "workloads: [{name: p, namespace: a, ip: 10.1.0.1, node: n1},\n\
             \x20            {name: p, namespace: a, ip: 10.1.0.2, node: n1}]",
            "workloads[1].name: \"a/p\" is defined more than once",
        ),
        (
            "workloads: [{uid: u1, name: p, namespace: a, ip: 10.1.0.1, node: n1},\n\
             \x20            {uid: u1, name: q, namespace: a, ip: 10.1.0.2, node: n1}]",
            "workloads[1].uid: \"u1\" is defined more than once",
        ),
        (
            "services: [{name: s, namespace: a, vip: 10.96.0.1}, {name: s, namespace: a, vip: 10.96.0.2}]",
            "services[1].name: \"service/a/s\" is defined more than once",
        ),
        (
            "services: [{name: s, namespace: a, vip: 10.96.0.1, ports: [{port: 70000}]}]",
            "services[0].ports[0].port: 70000 is not a port from 1 to 65535",
        ),
        (
            "services: [{name: s, namespace: a, vip: 10.96.0.1, ports: [{port: 80, targetPort: 'http'}]}]",
            "services[0].ports[0].targetPort: \"http\" is not a port from 1 to 65535",
        ),
        (
            "services: [{name: s, namespace: a, vip: 10.96.0.1, ports: [{port: 80}, {port: 80}]}]",
            "services[0].ports[1].port: \"80\" is defined more than once",
        ),
        (
            "policies: [{name: p, namespace: a, rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}]",
            "policies[0].rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/40\" is not a CIDR block",
        ),
        (
            "policies: [{name: p, namespace: a, rules: [{to: [{operation: {ports: ['0']}}]}]}]",
            "policies[0].rules[0].to[0].operation.ports[0]: \"0\" is not a port from 1 to 65535",
        ),
        (
            "policies: [{name: p, namespace: zz}]",
            "policies[0].namespace: unknown namespace \"zz\"",
        ),
        // serde_yaml_ng reports a duplicate top-level key at the document start.
        (
            "nodes: [{name: n1, ip: 10.0.0.2}]",
            "malformed config at line 1, column 1",
        ),
        ("trustDomain: Bad_TD", "trustDomain: \"Bad_TD\" cannot be part of a SPIFFE identity"),
    ];
    for (extra, want) in cases {
        let doc = format!("{base}{extra}\n");
        let err = parse(&doc).expect_err(extra);
        assert_eq!(without_line(&err), *want, "{extra}");
    }
}

/// Duplicate nodes and namespaces are caught before anything refers to them;
/// so are two policies of one name in one namespace (the same name in two
/// namespaces is fine).
#[test]
fn rejects_duplicate_definitions() {
    let cases: &[(&str, &str)] = &[
        (
            "nodes: [{name: n1, ip: 10.0.0.1}, {name: n1, ip: 10.0.0.2}]",
            "nodes[1].name: \"n1\" is defined more than once",
        ),
        (
            "namespaces: [{name: a}, {name: a}]",
            "namespaces[1].name: \"a\" is defined more than once",
        ),
        (
            "namespaces: [{name: a}, {name: b}]\npolicies:\n  - {name: p, namespace: a, action: DENY}\n  - {name: p, namespace: b, action: DENY}\n  - {name: p, namespace: a, action: ALLOW}\n",
            "policies[2].name: \"a/p\" is defined more than once",
        ),
    ];
    for (doc, want) in cases {
        assert_eq!(without_line(&parse(doc).unwrap_err()), *want, "{doc}");
    }
}

/// Syntax and schema errors carry the line, and the reason in `source()`.
#[test]
fn syntax_errors_carry_line_and_reason() {
    let cases: &[(&str, usize, &str)] = &[
        ("namespaces:\n  - name: a\n    lables: {}\n", 3, "unknown field `lables`"),
        ("namespaces:\n  - name: a\n    mtls: STRIKT\n", 3, "unknown variant `STRIKT`"),
        ("nodes:\n  - name: [\n", 2, ""),
        (
            "policies:\n  - name: p\n    namespace: a\n    action: AUDIT\n",
            4,
            "unknown variant `AUDIT`",
        ),
        (
            // JWT fields are not supported (L7 fields on an L4 policy are a
            // semantic error: config::l7_tests).
            "policies:\n  - name: p\n    namespace: a\n    rules:\n      - from: [{source: {requestPrincipals: [x]}}]\n",
            5,
            "unknown field `requestPrincipals`",
        ),
    ];
    for (doc, want_line, reason) in cases {
        match parse(doc) {
            Err(ConfigError::Syntax { line, source, .. }) => {
                assert_eq!(line, *want_line, "{doc}");
                assert!(source.to_string().contains(reason), "{doc}: {source}");
            }
            other => panic!("{doc}: expected a syntax error, got {other:?}"),
        }
    }
}

#[test]
fn load_reports_missing_file() {
    let err = load(std::path::Path::new("/nonexistent/ztunnel.yaml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "reading config file /nonexistent/ztunnel.yaml"
    );
}

/// The message without the `line N: ` prefix of located semantic errors.
fn without_line(err: &ConfigError) -> String {
    match err {
        ConfigError::At { error, .. } => error.to_string(),
        other => other.to_string(),
    }
}

/// Semantic errors found after parsing still name their line.
#[test]
fn semantic_errors_name_their_line() {
    let doc = "\
nodes:
  - {name: n1, ip: 10.0.0.1}
namespaces:
  - {name: a}
workloads:
  - name: p
    namespace: a
    ip: 10.1.0.1
    node: n1
  - name: q
    namespace: a
    ip: 10.1.0.2
    node: n7
";
    let err = parse(doc).unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 13: workloads[1].node: unknown node \"n7\""
    );
    let doc = "\
namespaces: [{name: a}]
policies:
  - name: p
    namespace: a
    action: DENY
  - name: p
    namespace: a
    action: ALLOW
";
    assert_eq!(
        parse(doc).unwrap_err().to_string(),
        "line 6: policies[1].name: \"a/p\" is defined more than once"
    );
    let doc = "\
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces: [{name: a}]
workloads:
  - {name: w, namespace: a, ip: 10.1.0.1, node: n1}
  - {name: w, namespace: a, ip: 10.1.0.2, node: n1}
";
    assert_eq!(
        parse(doc).unwrap_err().to_string(),
        "line 5: workloads[1].name: \"a/w\" is defined more than once"
    );
}

#[test]
fn native_tunnel_from_the_sidecar_label_or_the_field() {
    let snap = parse(
        r#"
nodes: [{name: n, ip: 10.0.0.1}]
namespaces: [{name: amb, labels: {istio.io/dataplane-mode: ambient}}, {name: plain}]
workloads:
  - {name: labelled, namespace: plain, ip: 10.1.0.1, node: n, labels: {security.istio.io/tlsMode: istio}}
  - {name: field, namespace: plain, ip: 10.1.0.2, node: n, nativeTunnel: true}
  - {name: off, namespace: plain, ip: 10.1.0.3, node: n, nativeTunnel: false, labels: {security.istio.io/tlsMode: istio}}
  - {name: disabled, namespace: plain, ip: 10.1.0.4, node: n, labels: {security.istio.io/tlsMode: disabled}}
  - {name: in-ambient, namespace: amb, ip: 10.1.0.5, node: n, labels: {security.istio.io/tlsMode: istio}}
  - {name: ambient, namespace: amb, ip: 10.1.0.6, node: n}
"#,
    )
    .unwrap();
    // (pod, native_tunnel, tunnel, captured by the node ztunnel)
    let cases: &[(&str, bool, Tunnel, bool)] = &[
        ("plain/labelled", true, Tunnel::Hbone, false),
        ("plain/field", true, Tunnel::Hbone, false),
        ("plain/off", false, Tunnel::None, false),
        ("plain/disabled", false, Tunnel::None, false),
        // A pod with a sidecar in an ambient namespace is left to it.
        ("amb/in-ambient", true, Tunnel::Hbone, false),
        ("amb/ambient", false, Tunnel::Hbone, true),
    ];
    for (uid, native, tunnel, ambient) in cases {
        let w = snap.workload_by_uid(uid).unwrap();
        assert_eq!(w.native_tunnel, *native, "{uid} native_tunnel");
        assert_eq!(w.tunnel, *tunnel, "{uid} tunnel");
        assert_eq!(snap.is_ambient(w), *ambient, "{uid} ambient");
    }
    assert_eq!(
        snap.local_ambient_ips("n").into_iter().collect::<Vec<_>>(),
        [ip("10.1.0.6")]
    );
}

#[test]
fn service_port_protocols() {
    let snap = parse(
        "namespaces: [{name: a}]\n\
         services: [{name: s, namespace: a, vip: 10.96.0.1, ports: [\
           {port: 80, name: http-web},\
           {port: 81, name: tcp-x, appProtocol: kubernetes.io/h2c},\
           {port: 82, appProtocol: grpc},\
           {port: 83, name: web}]}]\n",
    )
    .unwrap();
    let s = snap.service_by_vip(ip("10.96.0.1")).unwrap();
    let protocols: Vec<_> = s.ports.iter().map(|p| p.app_protocol).collect();
    assert_eq!(
        protocols,
        [
            Some(AppProtocol::Http11),
            Some(AppProtocol::Http2),
            Some(AppProtocol::Grpc),
            None
        ]
    );
}

/// A `use-waypoint` label naming a waypoint that does not exist is not an
/// error: the pod and the Service stay (captured, under policy) with the
/// waypoint marked missing, as over xDS, and ztunnel refuses what must
/// cross it.
#[test]
fn a_missing_waypoint_keeps_its_owners() {
    let snap = parse(
        "nodes: [{name: n1, ip: 10.0.0.1}]\n\
         namespaces: [{name: a, labels: {istio.io/dataplane-mode: ambient}}]\n\
         workloads: [{name: p, namespace: a, ip: 10.1.0.1, node: n1, labels: {app: p, istio.io/use-waypoint: wp}}]\n\
         services: [{name: s, namespace: a, vip: 10.96.0.1, ports: [{port: 80}], selector: {app: p}, labels: {istio.io/use-waypoint: gone, istio.io/use-waypoint-namespace: b}}]\n",
    )
    .expect("a missing waypoint is not a config error");
    let missing = |namespace: &str, name: &str| {
        Some(UseWaypoint::Missing(Box::new(MissingWaypoint::Named {
            namespace: namespace.into(),
            name: name.into(),
        })))
    };
    let p = snap.workload_by_ip(ip("10.1.0.1")).expect("the pod stays");
    assert_eq!(p.waypoint, missing("a", "wp"));
    assert!(snap.is_ambient(p), "and stays captured");
    let s = snap
        .service_by_vip(ip("10.96.0.1"))
        .expect("the service stays");
    assert_eq!(s.waypoint, missing("b", "gone"));
}

#[test]
fn a_dual_stack_pod_has_its_extra_addresses() {
    let doc = "nodes: [{name: n1, ip: 10.0.0.1}]\n\
        namespaces: [{name: shop, labels: {istio.io/dataplane-mode: ambient}}]\n\
        workloads:\n\
        - {name: a, namespace: shop, ip: 10.1.1.1, extraIps: ['fd00::1:1'], node: n1}\n";
    let snap = parse(doc).unwrap();
    let a = snap
        .workload_by_ip(ip("fd00::1:1"))
        .expect("found by its IPv6");
    assert_eq!(a.ips, [ip("10.1.1.1"), ip("fd00::1:1")]);
    assert!(snap.local_ambient_ips("n1").contains(&ip("fd00::1:1")));
    let dup = doc.replace("fd00::1:1", "10.1.1.1");
    let err = parse(&dup).expect_err("an address claimed twice");
    assert!(err.to_string().contains("extraIps"), "{err}");
}
