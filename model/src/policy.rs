//! L4 authorization at the destination: may this connection reach this
//! workload? Pure: no I/O, no clock, no locks.
//!
//! Semantics (as Istio's ztunnel):
//! - any applicable DENY policy that matches denies;
//! - with no applicable ALLOW policy, allow;
//! - otherwise an applicable ALLOW policy must match, or the connection is
//!   denied.
//!
//! A plaintext connection has no identity: positive `namespaces`,
//! `principals` and `service_accounts` matches never hold for it, and their
//! `not_` forms always do (so `DENY notPrincipals: ["*"]` denies plaintext).
//!
//! STRICT mTLS is not a policy: [`admit_peer`] checks it (plaintext into a
//! STRICT namespace is refused) and then calls [`authorize`]; use it for
//! every admission decision at a destination.

mod admit;

pub use admit::admit_peer;

use std::fmt;
use std::net::IpAddr;

use crate::identity::SpiffeId;

use crate::state::{
    Clause, Match, Policies, Policy, PolicyAction, PolicyKey, PolicyScope, Rule,
    ServiceAccountMatch, Workload,
};

/// What is known about a connection when it is authorized.
#[derive(Debug, Clone)]
pub struct ConnCtx<'a> {
    /// The peer's verified identity; `None` for plaintext.
    pub src_identity: Option<SpiffeId>,
    pub src_ip: IpAddr,
    pub dst: &'a Workload,
    pub dst_port: u16,
}

/// The verdict, with the reason for a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Denial),
}

/// Why a connection was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// This DENY policy matched.
    DenyPolicy(PolicyKey),
    /// ALLOW policies apply to the workload but none matched.
    NoAllowMatch,
    /// Plaintext into a namespace that requires mutual TLS
    /// ([`admit_peer`]; never from [`authorize`]).
    StrictMtls { namespace: String },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

impl Denial {
    /// A low-cardinality label for metrics and access logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::DenyPolicy(_) => "deny_policy",
            Denial::NoAllowMatch => "no_allow_match",
            Denial::StrictMtls { .. } => "strict_mtls",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::DenyPolicy(key) => write!(f, "denied by policy {key}"),
            Denial::NoAllowMatch => f.write_str("no ALLOW policy matched"),
            Denial::StrictMtls { namespace } => {
                write!(
                    f,
                    "namespace {namespace} requires mutual TLS; plaintext refused"
                )
            }
        }
    }
}

/// Decides whether `ctx` may proceed under `policies`.
pub fn authorize(policies: &Policies, ctx: &ConnCtx<'_>) -> Decision {
    let applicable = || policies.iter().filter(|p| applies(p, ctx.dst));
    if let Some(deny) = applicable()
        .filter(|p| p.action == PolicyAction::Deny)
        .find(|p| policy_matches(p, ctx))
    {
        return Decision::Deny(Denial::DenyPolicy(deny.key()));
    }
    let mut allows = applicable()
        .filter(|p| p.action == PolicyAction::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow;
    }
    if allows.any(|p| policy_matches(p, ctx)) {
        Decision::Allow
    } else {
        Decision::Deny(Denial::NoAllowMatch)
    }
}

/// Whether `policy` governs traffic to `dst`.
pub fn applies(policy: &Policy, dst: &Workload) -> bool {
    match &policy.scope {
        PolicyScope::Global => true,
        PolicyScope::Namespace => policy.namespace == dst.namespace,
        // Selectors were resolved into the workload's list (by the config
        // parser or the control plane); labels are not consulted here.
        PolicyScope::WorkloadSelector { .. } => {
            policy.namespace == dst.namespace && dst.authorization_policies.contains(&policy.key())
        }
    }
}

fn policy_matches(policy: &Policy, ctx: &ConnCtx<'_>) -> bool {
    policy.rules.iter().any(|r| rule_matches(r, ctx))
}

fn rule_matches(rule: &Rule, ctx: &ConnCtx<'_>) -> bool {
    rule.clauses.iter().all(|c| clause_matches(c, ctx))
}

fn clause_matches(clause: &Clause, ctx: &ConnCtx<'_>) -> bool {
    clause.matches.iter().any(|m| match_matches(m, ctx))
}

fn match_matches(m: &Match, ctx: &ConnCtx<'_>) -> bool {
    let id = ctx.src_identity.as_ref();
    let principal = id.map(principal_string);
    let ns = id.map(|i| i.namespace());
    let principal = principal.as_deref();
    field(&m.namespaces, &m.not_namespaces, |s| {
        ns.is_some_and(|ns| s.matches(ns))
    }) && field(&m.principals, &m.not_principals, |s| {
        principal.is_some_and(|p| s.matches(p))
    }) && field(&m.service_accounts, &m.not_service_accounts, |sa| {
        id.is_some_and(|id| sa_matches(sa, id))
    }) && field(&m.source_ips, &m.not_source_ips, |c| c.contains(ctx.src_ip))
        && field(&m.destination_ports, &m.not_destination_ports, |p| {
            *p == ctx.dst_port
        })
}

/// A positive list holds when empty or any entry matches; a `not_` list
/// holds when no entry matches.
fn field<T>(positive: &[T], negative: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&matches)) && !negative.iter().any(&matches)
}

fn sa_matches(sa: &ServiceAccountMatch, id: &SpiffeId) -> bool {
    sa.namespace == id.namespace() && sa.service_account == id.service_account()
}

/// Istio's principal form: `<td>/ns/<ns>/sa/<sa>`.
pub fn principal_string(id: &SpiffeId) -> String {
    format!(
        "{}/ns/{}/sa/{}",
        id.trust_domain(),
        id.namespace(),
        id.service_account()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Cidr, Labels, ServiceAccountMatch, StringMatch, Tunnel};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The destination in every case: shop/cart-1, labelled app=cart.
    fn dst() -> Workload {
        Workload {
            uid: "shop/cart-1".into(),
            name: "cart-1".into(),
            namespace: "shop".into(),
            service_account: "cart".into(),
            trust_domain: "cluster.local".into(),
            ips: vec!["10.1.1.11".parse().unwrap()],
            node: "node1".into(),
            tunnel: Tunnel::Hbone,
            native_tunnel: false,
            labels: labels(&[("app", "cart")]),
            waypoint: None,
            authorization_policies: Vec::new(),
        }
    }

    fn pol(
        name: &str,
        ns: &str,
        scope: PolicyScope,
        action: PolicyAction,
        rules: Vec<Rule>,
    ) -> Policy {
        Policy {
            name: name.into(),
            namespace: ns.into(),
            scope,
            action,
            rules,
        }
    }

    fn allow(name: &str, rules: Vec<Rule>) -> Policy {
        pol(
            name,
            "shop",
            PolicyScope::Namespace,
            PolicyAction::Allow,
            rules,
        )
    }

    fn deny(name: &str, rules: Vec<Rule>) -> Policy {
        pol(
            name,
            "shop",
            PolicyScope::Namespace,
            PolicyAction::Deny,
            rules,
        )
    }

    /// A rule with one clause holding these matches (one `from` list).
    fn any_of(matches: Vec<Match>) -> Vec<Rule> {
        vec![Rule {
            clauses: vec![Clause { matches }],
        }]
    }

    fn pats(p: &[&str]) -> Vec<StringMatch> {
        p.iter().map(|s| StringMatch::from_pattern(s)).collect()
    }

    fn cidrs(c: &[&str]) -> Vec<Cidr> {
        c.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn sa(ns: &str, sa: &str) -> Vec<ServiceAccountMatch> {
        vec![ServiceAccountMatch {
            namespace: ns.into(),
            service_account: sa.into(),
        }]
    }

    /// A connection: `ns/sa` identity or "-" for plaintext, source IP, port.
    type Conn = (&'static str, &'static str, u16);

    const FRONTEND: Conn = ("shop/frontend", "10.1.1.10", 8080);
    const LEDGER: Conn = ("bank/ledger", "10.1.2.20", 8080);
    const PLAIN: Conn = ("-", "10.1.1.40", 8080);

    fn run(policies: &[Policy], (who, src, port): Conn) -> String {
        let src_identity = who
            .split_once('/')
            .map(|(ns, sa)| SpiffeId::new("cluster.local", ns, sa).unwrap());
        let mut dst = dst();
        dst.authorization_policies = crate::state::selected_policies(policies, &dst);
        let ctx = ConnCtx {
            src_identity,
            src_ip: src.parse().unwrap(),
            dst: &dst,
            dst_port: port,
        };
        match authorize(&Policies::new(policies.to_vec()), &ctx) {
            Decision::Allow => "allow".into(),
            Decision::Deny(Denial::DenyPolicy(k)) => format!("deny {k}"),
            Decision::Deny(Denial::NoAllowMatch) => "deny no-allow".into(),
            Decision::Deny(d @ Denial::StrictMtls { .. }) => panic!("authorize said {d}"),
        }
    }

    struct Case {
        what: &'static str,
        policies: Vec<Policy>,
        conn: Conn,
        want: &'static str,
    }

    fn case(what: &'static str, policies: Vec<Policy>, conn: Conn, want: &'static str) -> Case {
        Case {
            what,
            policies,
            conn,
            want,
        }
    }

    fn check(cases: Vec<Case>) {
        for c in cases {
            assert_eq!(run(&c.policies, c.conn), c.want, "{}", c.what);
        }
    }

    fn ns(n: &[&str]) -> Match {
        Match {
            namespaces: pats(n),
            ..Match::default()
        }
    }

    fn ports(p: &[u16]) -> Match {
        Match {
            destination_ports: p.to_vec(),
            ..Match::default()
        }
    }

    #[test]
    #[rustfmt::skip]
    fn actions_and_defaults() {
        let all = || vec![Rule::default()];
        check(vec![
            case("no policies", vec![], FRONTEND, "allow"),
            case("DENY without rules never matches", vec![deny("d", vec![])], FRONTEND, "allow"),
            case("ALLOW without rules allows nothing", vec![allow("a", vec![])], FRONTEND, "deny no-allow"),
            case("ALLOW with an empty rule allows all", vec![allow("a", all())], PLAIN, "allow"),
            case("DENY with an empty rule denies all", vec![deny("d", all())], FRONTEND, "deny shop/d"),
            case("DENY beats ALLOW", vec![allow("a", all()), deny("d", all())], FRONTEND, "deny shop/d"),
            case("the first matching DENY is named", vec![deny("d1", vec![]), deny("d2", all()), deny("d3", all())], FRONTEND, "deny shop/d2"),
            case("any matching ALLOW allows", vec![allow("a1", vec![]), allow("a2", all())], FRONTEND, "allow"),
            case("a non-matching DENY alone allows", vec![deny("d", any_of(vec![ns(&["bank"])]))], FRONTEND, "allow"),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn scopes() {
        use PolicyAction::{Allow, Deny};
        use PolicyScope::{Global, Namespace};
        let all = || vec![Rule::default()];
        let sel = |l: &[(&str, &str)]| PolicyScope::WorkloadSelector { match_labels: labels(l) };
        check(vec![
            case("GLOBAL applies everywhere", vec![pol("g", "istio-system", Global, Deny, all())], FRONTEND, "deny istio-system/g"),
            case("NAMESPACE of the destination", vec![pol("n", "shop", Namespace, Deny, all())], FRONTEND, "deny shop/n"),
            case("NAMESPACE elsewhere does not apply", vec![pol("n", "bank", Namespace, Deny, all())], FRONTEND, "allow"),
            case("an ALLOW elsewhere does not restrict", vec![pol("n", "bank", Namespace, Allow, vec![])], FRONTEND, "allow"),
            case("selector matches labels", vec![pol("s", "shop", sel(&[("app", "cart")]), Deny, all())], FRONTEND, "deny shop/s"),
            case("selector with other labels", vec![pol("s", "shop", sel(&[("app", "web")]), Deny, all())], FRONTEND, "allow"),
            case("selector needs every label", vec![pol("s", "shop", sel(&[("app", "cart"), ("v", "2")]), Deny, all())], FRONTEND, "allow"),
            case("selector in another namespace", vec![pol("s", "bank", sel(&[("app", "cart")]), Deny, all())], FRONTEND, "allow"),
            case("selected ALLOW restricts", vec![pol("s", "shop", sel(&[("app", "cart")]), Allow, vec![])], FRONTEND, "deny no-allow"),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn source_fields() {
        let allow_if = |m: Match| vec![allow("a", any_of(vec![m]))];
        let deny_if = |m: Match| vec![deny("d", any_of(vec![m]))];
        let m = Match::default;
        let princ = |p: &[&str]| Match { principals: pats(p), ..m() };
        let not_ns = Match { not_namespaces: pats(&["shop"]), ..m() };
        let not_princ = Match { not_principals: pats(&["*"]), ..m() };
        let exact = "cluster.local/ns/shop/sa/frontend";
        check(vec![
            case("namespaces hit", allow_if(ns(&["shop"])), FRONTEND, "allow"),
            case("namespaces miss", allow_if(ns(&["shop"])), LEDGER, "deny no-allow"),
            case("namespaces prefix", allow_if(ns(&["ba*"])), LEDGER, "allow"),
            case("namespaces need an identity", allow_if(ns(&["*"])), PLAIN, "deny no-allow"),
            case("not_namespaces hit", deny_if(not_ns.clone()), LEDGER, "deny shop/d"),
            case("not_namespaces miss", deny_if(not_ns.clone()), FRONTEND, "allow"),
            case("not_namespaces holds for plaintext", deny_if(not_ns), PLAIN, "deny shop/d"),
            case("principal exact", allow_if(princ(&[exact])), FRONTEND, "allow"),
            case("principal exact miss", allow_if(princ(&[exact])), LEDGER, "deny no-allow"),
            case("principal has no spiffe://", allow_if(princ(&["spiffe://cluster.local/ns/shop/sa/frontend"])), FRONTEND, "deny no-allow"),
            case("principal prefix", allow_if(princ(&["cluster.local/ns/shop/*"])), FRONTEND, "allow"),
            case("principal suffix", allow_if(princ(&["*/sa/ledger"])), LEDGER, "allow"),
            case("principal of another trust domain", allow_if(princ(&["other.td/*"])), FRONTEND, "deny no-allow"),
            case("principal * needs mTLS", allow_if(princ(&["*"])), PLAIN, "deny no-allow"),
            case("principal * for mTLS", allow_if(princ(&["*"])), LEDGER, "allow"),
            case("notPrincipals * denies plaintext", deny_if(not_princ.clone()), PLAIN, "deny shop/d"),
            case("notPrincipals * spares mTLS", deny_if(not_princ), FRONTEND, "allow"),
            case("service account", allow_if(Match { service_accounts: sa("bank", "ledger"), ..m() }), LEDGER, "allow"),
            case("service account, wrong namespace", allow_if(Match { service_accounts: sa("shop", "ledger"), ..m() }), LEDGER, "deny no-allow"),
            case("service account needs mTLS", allow_if(Match { service_accounts: sa("bank", "ledger"), ..m() }), PLAIN, "deny no-allow"),
            case("not service account", deny_if(Match { not_service_accounts: sa("shop", "frontend"), ..m() }), LEDGER, "deny shop/d"),
            case("not service account spared", deny_if(Match { not_service_accounts: sa("shop", "frontend"), ..m() }), FRONTEND, "allow"),
            case("source IP in block", allow_if(Match { source_ips: cidrs(&["10.1.1.0/24"]), ..m() }), PLAIN, "allow"),
            case("source IP outside", allow_if(Match { source_ips: cidrs(&["10.1.1.0/24"]), ..m() }), LEDGER, "deny no-allow"),
            case("not source IP", deny_if(Match { not_source_ips: cidrs(&["10.1.1.0/24"]), ..m() }), LEDGER, "deny shop/d"),
            case("not source IP spared", deny_if(Match { not_source_ips: cidrs(&["10.1.1.0/24", "10.1.2.20"]), ..m() }), LEDGER, "allow"),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn ports_and_combinations() {
        let m = Match::default;
        let on = |port: u16, c: Conn| (c.0, c.1, port);
        let from_to = || vec![Rule { clauses: vec![Clause { matches: vec![ns(&["shop"])] }, Clause { matches: vec![ports(&[8080])] }] }];
        let both = Match { namespaces: pats(&["shop"]), destination_ports: vec![9090], ..m() };
        check(vec![
            case("port hit", vec![allow("a", any_of(vec![ports(&[80, 8080])]))], FRONTEND, "allow"),
            case("port miss", vec![allow("a", any_of(vec![ports(&[80])]))], FRONTEND, "deny no-allow"),
            case("not port", vec![deny("d", any_of(vec![Match { not_destination_ports: vec![22], ..m() }]))], FRONTEND, "deny shop/d"),
            case("not port spared", vec![deny("d", any_of(vec![Match { not_destination_ports: vec![8080], ..m() }]))], FRONTEND, "allow"),
            case("fields in one match are ANDed", vec![allow("a", any_of(vec![both]))], FRONTEND, "deny no-allow"),
            case("matches in a clause are ORed", vec![allow("a", any_of(vec![ns(&["bank"]), ns(&["shop"])]))], FRONTEND, "allow"),
            case("an empty clause never matches", vec![allow("a", any_of(vec![]))], FRONTEND, "deny no-allow"),
            case("from and to: both hold", vec![allow("a", from_to())], FRONTEND, "allow"),
            case("from and to: to fails", vec![allow("a", from_to())], on(9090, FRONTEND), "deny no-allow"),
            case("from and to: from fails", vec![allow("a", from_to())], LEDGER, "deny no-allow"),
            case("rules are ORed", vec![allow("a", [any_of(vec![ns(&["bank"])]), any_of(vec![ports(&[8080])])].concat())], FRONTEND, "allow"),
        ]);
    }

    #[test]
    fn the_demo_policies() {
        let snap =
            crate::config::parse(include_str!("../../ztunnel/examples/demo-config.yaml")).unwrap();
        let authz = |src: &str, id: Option<&str>, dst: &str, port: u16| {
            let dst = snap.workload_by_ip(dst.parse().unwrap()).unwrap();
            let ctx = ConnCtx {
                src_identity: id.map(|i| i.parse().unwrap()),
                src_ip: src.parse().unwrap(),
                dst,
                dst_port: port,
            };
            authorize(snap.policies(), &ctx)
        };
        let frontend = Some("spiffe://cluster.local/ns/shop/sa/frontend");
        let waypoint = Some("spiffe://cluster.local/ns/bank/sa/waypoint");
        assert!(authz("10.1.1.10", frontend, "10.1.2.11", 8080).is_allow());
        assert_eq!(
            authz("10.1.1.40", None, "10.1.2.11", 8080),
            Decision::Deny(Denial::DenyPolicy(PolicyKey {
                namespace: "shop".into(),
                name: "cart-deny-outsiders".into()
            }))
        );
        assert!(authz("10.1.1.40", None, "10.1.2.11", 9000).is_allow());
        assert!(authz("10.1.1.30", waypoint, "10.1.2.20", 8443).is_allow());
        let denied = authz("10.1.1.10", frontend, "10.1.2.20", 8443);
        assert_eq!(denied, Decision::Deny(Denial::NoAllowMatch));
        if let Decision::Deny(d) = denied {
            assert_eq!(d.to_string(), "no ALLOW policy matched");
            assert_eq!(d.reason(), "no_allow_match");
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn string_match() -> impl Strategy<Value = StringMatch> {
            "[a-z*./]{0,12}".prop_map(|s| StringMatch::from_pattern(&s))
        }

        fn cidr() -> impl Strategy<Value = Cidr> {
            prop_oneof![
                (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| Cidr::new(a.into(), l).unwrap()),
                (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, l)| Cidr::new(a.into(), l).unwrap()),
            ]
        }

        prop_compose! {
            fn a_match()(
                namespaces in proptest::collection::vec(string_match(), 0..3),
                not_namespaces in proptest::collection::vec(string_match(), 0..2),
                principals in proptest::collection::vec(string_match(), 0..3),
                not_principals in proptest::collection::vec(string_match(), 0..2),
                source_ips in proptest::collection::vec(cidr(), 0..3),
                not_source_ips in proptest::collection::vec(cidr(), 0..2),
                destination_ports in proptest::collection::vec(any::<u16>(), 0..3),
                not_destination_ports in proptest::collection::vec(any::<u16>(), 0..2),
                sa_ns in "[a-z]{1,4}",
                sa_name in "[a-z]{1,4}",
                use_sa: bool,
            ) -> Match {
                let service_accounts = if use_sa { sa(&sa_ns, &sa_name) } else { vec![] };
                Match {
                    namespaces, not_namespaces, principals, not_principals,
                    service_accounts, not_service_accounts: vec![],
                    source_ips, not_source_ips, destination_ports, not_destination_ports,
                }
            }
        }

        fn policy() -> impl Strategy<Value = Policy> {
            let rules = proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(a_match(), 0..3), 0..3),
                0..3,
            );
            (rules, any::<bool>(), 0..3u8).prop_map(|(rules, is_deny, scope)| {
                let rules = rules
                    .into_iter()
                    .map(|clauses| Rule {
                        clauses: clauses
                            .into_iter()
                            .map(|matches| Clause { matches })
                            .collect(),
                    })
                    .collect();
                let scope = match scope {
                    0 => PolicyScope::Global,
                    1 => PolicyScope::Namespace,
                    _ => PolicyScope::WorkloadSelector {
                        match_labels: labels(&[("app", "cart")]),
                    },
                };
                let action = if is_deny {
                    PolicyAction::Deny
                } else {
                    PolicyAction::Allow
                };
                pol("p", "shop", scope, action, rules)
            })
        }

        proptest! {
            #[test]
            fn authorize_never_panics(
                policies in proptest::collection::vec(policy(), 0..4),
                ns in "[a-z]{1,6}",
                sa in "[a-z]{1,6}",
                plaintext: bool,
                src in any::<std::net::IpAddr>(),
                port: u16,
            ) {
                let dst = dst();
                let ctx = ConnCtx {
                    src_identity: (!plaintext).then(|| SpiffeId::new("cluster.local", &ns, &sa).unwrap()),
                    src_ip: src,
                    dst: &dst,
                    dst_port: port,
                };
                let policies = Policies::new(policies);
                let decision = authorize(&policies, &ctx);
                // Deterministic, and a DENY verdict names a policy that exists.
                prop_assert_eq!(&decision, &authorize(&policies, &ctx));
                if let Decision::Deny(Denial::DenyPolicy(key)) = &decision {
                    prop_assert!(policies.iter().any(|p| &p.key() == key && p.action == PolicyAction::Deny));
                }
                if policies.is_empty() {
                    prop_assert!(decision.is_allow());
                }
            }
        }
    }
}
