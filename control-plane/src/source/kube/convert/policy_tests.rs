//! Table tests of the policy conversions, from YAML as a user would
//! `kubectl apply` it.

use mesh_model::state::{
    Clause, Match, MtlsMode, PolicyAction, PolicyScope, Rule, ServiceAccountMatch, StringMatch,
};

use super::super::istio::{AuthorizationPolicy, PeerAuthentication};
use super::policy::{self, Converted, PeerMode};
use super::tests::{labels, yaml};

fn ap(text: &str) -> Converted {
    let ap: AuthorizationPolicy = yaml(text);
    policy::authorization_policy(&ap, "istio-system").unwrap()
}

fn converted(c: Converted) -> (mesh_model::state::Policy, Vec<String>) {
    match c {
        Converted::Policy { policy, dropped } => (policy, dropped),
        Converted::Skipped(why) => panic!("skipped: {why}"),
        Converted::Waypoint { policy, .. } => panic!("the waypoint's: {policy:?}"),
    }
}

#[test]
fn authorization_policies_convert_as_the_file_config_does() {
    let (p, dropped) = converted(ap(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-shop, namespace: bank}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/shop/sa/*"], notNamespaces: [test]}
    - source: {ipBlocks: [10.0.0.0/8], serviceAccounts: [shop/client]}
    to:
    - operation: {ports: ["8080", "8443"]}
    when:
    - {key: source.namespace, values: [shop]}
"#));
    assert!(dropped.is_empty());
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str()),
        ("bank", "allow-shop")
    );
    assert_eq!(
        p.scope,
        PolicyScope::WorkloadSelector {
            match_labels: labels(&[("app", "server")])
        }
    );
    assert_eq!(p.action, PolicyAction::Allow);
    assert_eq!(
        p.rules,
        vec![Rule {
            clauses: vec![
                Clause {
                    matches: vec![
                        Match {
                            principals: vec![StringMatch::Prefix(
                                "cluster.local/ns/shop/sa/".into()
                            )],
                            not_namespaces: vec![StringMatch::Exact("test".into())],
                            ..Match::default()
                        },
                        Match {
                            source_ips: vec!["10.0.0.0/8".parse().unwrap()],
                            service_accounts: vec![ServiceAccountMatch {
                                namespace: "shop".into(),
                                service_account: "client".into()
                            }],
                            ..Match::default()
                        },
                    ]
                },
                Clause {
                    matches: vec![Match {
                        destination_ports: vec![8080, 8443],
                        ..Match::default()
                    }]
                },
                Clause {
                    matches: vec![Match {
                        namespaces: vec![StringMatch::Exact("shop".into())],
                        ..Match::default()
                    }]
                },
            ]
        }]
    );
}

#[test]
fn authorization_policy_scopes_and_actions() {
    let scope_of = |ns: &str, spec: &str| -> Converted {
        ap(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec: {spec}\n"
        ))
    };
    let (p, _) = converted(scope_of("istio-system", "{action: DENY, rules: [{}]}"));
    assert_eq!(
        (p.scope, p.action),
        (PolicyScope::Global, PolicyAction::Deny)
    );
    assert_eq!(p.rules, vec![Rule::default()], "an empty rule matches all");
    let (p, _) = converted(scope_of("bank", "{}"));
    assert_eq!(p.scope, PolicyScope::Namespace);
    assert!(p.rules.is_empty(), "ALLOW without rules allows nothing");
    let (p, _) = converted(scope_of("bank", "{selector: {matchLabels: {}}}"));
    assert_eq!(p.scope, PolicyScope::Namespace);
    for spec in [
        "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]}",
        "{targetRef: {kind: Service, group: \"\", name: web}}",
    ] {
        assert!(
            matches!(
                scope_of("bank", spec),
                Converted::Waypoint { problem: None, .. }
            ),
            "{spec}: the waypoint's"
        );
    }
    for (spec, why) in [
        (
            "{targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: x}]}",
            "neither",
        ),
        ("{action: AUDIT}", "AUDIT"),
        ("{action: CUSTOM, provider: {name: ext}}", "CUSTOM"),
    ] {
        match scope_of("bank", spec) {
            Converted::Skipped(reason) => assert!(reason.contains(why), "{spec}: {reason}"),
            c => panic!("{spec}: {c:?}"),
        }
    }
}

#[test]
fn what_ztunnel_cannot_enforce_fails_closed() {
    let text = |action: &str| {
        format!(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: bank}}
spec:
  action: {action}
  rules:
  - from: [{{source: {{namespaces: [shop]}}}}]
    to: [{{operation: {{methods: [GET], ports: ["8080"]}}}}]
  - to: [{{operation: {{ports: ["9090"]}}}}]
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
  - when: [{{key: "request.headers[x-user]", values: [admin]}}]
  - to: [{{operation: {{ports: [not-a-port]}}}}]
"#
        )
    };
    // ALLOW: a rule needing L7 never matches (dropped); the L4 one stays.
    let (p, dropped) = converted(ap(&text("ALLOW")));
    assert_eq!(
        p.rules,
        vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    destination_ports: vec![9090],
                    ..Match::default()
                }]
            }]
        }]
    );
    assert_eq!(dropped.len(), 4, "{dropped:?}");
    // DENY: the L7 part is dropped, the rest still denies (more).
    let (p, _) = converted(ap(&text("DENY")));
    assert_eq!(p.rules.len(), 5);
    assert_eq!(
        p.rules[0].clauses[1].matches,
        vec![Match {
            destination_ports: vec![8080],
            ..Match::default()
        }],
        "GET on 8080 denies all of 8080"
    );
    assert_eq!(
        p.rules[2],
        Rule {
            clauses: vec![Clause {
                matches: vec![Match::default()]
            }]
        },
        "a source only of request principals denies every source"
    );
    assert_eq!(p.rules[4].clauses[0].matches, vec![Match::default()]);
}

fn pa(text: &str) -> policy::PeerAuthInfo {
    let pa: PeerAuthentication = yaml(text);
    policy::peer_authentication_info(&pa).unwrap()
}

#[test]
fn peer_authentication_sets_namespace_modes() {
    let strict_mesh = pa(r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
"#);
    let permissive_ns = pa(r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop, creationTimestamp: "2024-01-02T00:00:00Z"}
spec: {mtls: {mode: PERMISSIVE}}
"#);
    let unset_ns = pa(r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: inherit, namespace: bank, creationTimestamp: "2024-01-02T00:00:00Z"}
spec: {}
"#);
    let newer_strict = pa(r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: later, namespace: shop, creationTimestamp: "2024-02-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
"#);
    let selected = pa(r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db-strict, namespace: bank}
spec: {selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}}
"#);
    assert_eq!(unset_ns.mode, PeerMode::Unset);
    // (namespace's own, mesh-wide, mode)
    let cases: &[(&[&policy::PeerAuthInfo], &[&policy::PeerAuthInfo], MtlsMode)] = &[
        (&[], &[], MtlsMode::Permissive),
        (&[], &[&strict_mesh], MtlsMode::Strict),
        (&[&permissive_ns], &[&strict_mesh], MtlsMode::Permissive),
        (&[&unset_ns], &[&strict_mesh], MtlsMode::Strict),
        // The oldest namespace-wide one wins, as in Istio.
        (&[&newer_strict, &permissive_ns], &[], MtlsMode::Permissive),
        // A workload-level one does not set the namespace's mode.
        (&[&selected], &[], MtlsMode::Permissive),
    ];
    for (own, mesh, want) in cases {
        assert_eq!(
            policy::namespace_mtls(own.iter().copied(), mesh.iter().copied()),
            *want,
            "{own:?} {mesh:?}"
        );
    }
    // A workload-level STRICT is Istio's selector DENY of plaintext.
    let p = policy::peer_authentication_policy(&selected).unwrap();
    assert_eq!(p.name, "converted_peer_authentication_db-strict");
    assert_eq!(
        p.scope,
        PolicyScope::WorkloadSelector {
            match_labels: labels(&[("app", "db")])
        }
    );
    assert_eq!(p.action, PolicyAction::Deny);
    assert_eq!(
        p.rules[0].clauses[0].matches[0].not_principals,
        vec![StringMatch::Presence]
    );
    assert!(policy::peer_authentication_policy(&permissive_ns).is_none());
}
