//! Table tests of [`authorize_request`], and properties of the path
//! matcher.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use proptest::prelude::*;

use super::*;
use crate::identity::SpiffeId;
use crate::policy::{Decision, Denial};

fn pats(p: &[&str]) -> Vec<StringMatch> {
    p.iter().map(|s| StringMatch::from_pattern(s)).collect()
}

fn cidrs(c: &[&str]) -> Vec<Cidr> {
    c.iter().map(|s| s.parse().unwrap()).collect()
}

fn policy(name: &str, action: PolicyAction, rules: Vec<L7Rule>) -> L7Policy {
    L7Policy {
        name: name.into(),
        namespace: "shop".into(),
        targets: vec![PolicyTarget::Gateway("waypoint".into())],
        action,
        rules,
    }
}

fn allow(rules: Vec<L7Rule>) -> L7Policy {
    policy("a", PolicyAction::Allow, rules)
}

fn deny(rules: Vec<L7Rule>) -> L7Policy {
    policy("d", PolicyAction::Deny, rules)
}

fn to(op: Operation) -> Vec<L7Rule> {
    vec![L7Rule {
        to: vec![op],
        ..L7Rule::default()
    }]
}

fn from(src: Source) -> Vec<L7Rule> {
    vec![L7Rule {
        from: vec![src],
        ..L7Rule::default()
    }]
}

fn when(c: Condition) -> Vec<L7Rule> {
    vec![L7Rule {
        when: vec![c],
        ..L7Rule::default()
    }]
}

/// A request: `who` is `ns/sa` or `-` (no identity); `line` is
/// `METHOD path`, sent to `host` on port 9080 from 10.1.1.10.
struct Req {
    who: &'static str,
    line: &'static str,
    host: &'static str,
    headers: &'static [(&'static str, &'static str)],
    source_ip: &'static str,
    remote_ip: &'static str,
    port: u16,
}

const FRONTEND: Req = Req {
    who: "shop/frontend",
    line: "GET /",
    host: "reviews.shop.svc.cluster.local:9080",
    headers: &[],
    source_ip: "10.1.1.10",
    remote_ip: "10.1.1.10",
    port: 9080,
};

const fn req(who: &'static str, line: &'static str) -> Req {
    Req {
        who,
        line,
        ..FRONTEND
    }
}

fn run(policies: &[L7Policy], r: &Req) -> String {
    let id = r
        .who
        .split_once('/')
        .map(|(ns, sa)| SpiffeId::new("cluster.local", ns, sa).unwrap());
    let (method, path) = r.line.split_once(' ').unwrap();
    let mut headers = HeaderMap::new();
    for (n, v) in r.headers {
        headers.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let ctx = RequestCtx {
        source_identity: id.as_ref(),
        source_ip: r.source_ip.parse().unwrap(),
        remote_ip: r.remote_ip.parse().unwrap(),
        destination_ip: "10.96.0.20".parse::<IpAddr>().unwrap(),
        destination_port: r.port,
        host: r.host,
        method,
        path,
        headers: &headers,
    };
    match authorize_request(policies, &ctx) {
        Decision::Allow => "allow".into(),
        Decision::Deny(Denial::DenyPolicy(k)) => format!("deny {k}"),
        Decision::Deny(Denial::NoAllowMatch) => "deny no-allow".into(),
        Decision::Deny(d @ Denial::StrictMtls { .. }) => panic!("authorize_request said {d}"),
    }
}

fn check(cases: &[(&str, Vec<L7Policy>, Req, &str)]) {
    for (what, policies, r, want) in cases {
        assert_eq!(run(policies, r), *want, "{what}");
    }
}

#[test]
fn deny_post_admin_lets_get_admin_pass() {
    let p = || {
        vec![deny(to(Operation {
            methods: pats(&["POST"]),
            paths: pats(&["/admin"]),
            ..Operation::default()
        }))]
    };
    check(&[
        (
            "POST /admin is denied",
            p(),
            req("shop/frontend", "POST /admin"),
            "deny shop/d",
        ),
        (
            "GET /admin passes",
            p(),
            req("shop/frontend", "GET /admin"),
            "allow",
        ),
        (
            "POST elsewhere passes",
            p(),
            req("shop/frontend", "POST /cart"),
            "allow",
        ),
        (
            "a query does not hide the path",
            p(),
            req("shop/frontend", "POST /admin?x=1"),
            "deny shop/d",
        ),
        (
            "dot segments do not hide it",
            p(),
            req("shop/frontend", "POST /x/../admin"),
            "deny shop/d",
        ),
        (
            "nor ./",
            p(),
            req("shop/frontend", "POST /./admin"),
            "deny shop/d",
        ),
        (
            "nor an escaped unreserved char",
            p(),
            req("shop/frontend", "POST /%61dmin"),
            "deny shop/d",
        ),
        (
            "nor escaped dots",
            p(),
            req("shop/frontend", "POST /a/%2e%2e/admin"),
            "deny shop/d",
        ),
        (
            "exact is exact",
            p(),
            req("shop/frontend", "POST /admin/"),
            "allow",
        ),
    ]);
}

#[test]
fn principal_allow_admits_only_its_client() {
    let p = || {
        vec![allow(from(Source {
            principals: pats(&["cluster.local/ns/shop/sa/frontend"]),
            ..Source::default()
        }))]
    };
    check(&[
        ("its client", p(), req("shop/frontend", "GET /"), "allow"),
        (
            "another client",
            p(),
            req("bank/ledger", "GET /"),
            "deny no-allow",
        ),
        ("no identity", p(), req("-", "GET /"), "deny no-allow"),
    ]);
}

#[test]
fn actions_and_rule_shapes() {
    let all = || vec![L7Rule::default()];
    check(&[
        ("no policies", vec![], req("-", "GET /"), "allow"),
        (
            "an empty rule matches all",
            vec![allow(all())],
            req("-", "GET /"),
            "allow",
        ),
        (
            "ALLOW without rules allows nothing",
            vec![allow(vec![])],
            req("shop/frontend", "GET /"),
            "deny no-allow",
        ),
        (
            "DENY without rules never matches",
            vec![deny(vec![])],
            req("shop/frontend", "GET /"),
            "allow",
        ),
        (
            "DENY beats ALLOW",
            vec![allow(all()), deny(all())],
            req("shop/frontend", "GET /"),
            "deny shop/d",
        ),
        (
            "from and to must both hold",
            vec![allow(vec![L7Rule {
                from: vec![Source {
                    namespaces: pats(&["shop"]),
                    ..Source::default()
                }],
                to: vec![Operation {
                    methods: pats(&["GET"]),
                    ..Operation::default()
                }],
                when: vec![],
            }])],
            req("shop/frontend", "POST /"),
            "deny no-allow",
        ),
        (
            "any operation of a rule",
            vec![allow(vec![L7Rule {
                to: vec![
                    Operation {
                        methods: pats(&["PUT"]),
                        ..Operation::default()
                    },
                    Operation {
                        paths: pats(&["/"]),
                        ..Operation::default()
                    },
                ],
                ..L7Rule::default()
            }])],
            req("shop/frontend", "POST /"),
            "allow",
        ),
    ]);
}

#[test]
fn path_patterns() {
    let allow_paths = |p: &[&str]| {
        vec![allow(to(Operation {
            paths: pats(p),
            ..Operation::default()
        }))]
    };
    check(&[
        (
            "prefix /api/*",
            allow_paths(&["/api/*"]),
            req("-", "GET /api/v1/items"),
            "allow",
        ),
        (
            "prefix /api/* needs the slash",
            allow_paths(&["/api/*"]),
            req("-", "GET /api"),
            "deny no-allow",
        ),
        (
            "prefix is literal",
            allow_paths(&["/api*"]),
            req("-", "GET /apix"),
            "allow",
        ),
        (
            "suffix *.js",
            allow_paths(&["*.js"]),
            req("-", "GET /static/app.js"),
            "allow",
        ),
        (
            "suffix miss",
            allow_paths(&["*.js"]),
            req("-", "GET /static/app.css"),
            "deny no-allow",
        ),
        (
            "* is any path",
            allow_paths(&["*"]),
            req("-", "GET /x"),
            "allow",
        ),
        (
            "notPaths",
            vec![deny(to(Operation {
                not_paths: pats(&["/health"]),
                ..Operation::default()
            }))],
            req("-", "GET /health"),
            "allow",
        ),
        (
            "notPaths hit",
            vec![deny(to(Operation {
                not_paths: pats(&["/health"]),
                ..Operation::default()
            }))],
            req("-", "GET /other"),
            "deny shop/d",
        ),
    ]);
}

#[test]
fn hosts_ports_methods() {
    let op = |o: Operation| vec![allow(to(o))];
    let d = Operation::default;
    check(&[
        (
            "host, case-insensitive",
            op(Operation {
                hosts: pats(&["reviews.shop.svc.cluster.local:9080"]),
                ..d()
            }),
            Req {
                host: "Reviews.Shop.svc.cluster.local:9080",
                ..FRONTEND
            },
            "allow",
        ),
        (
            "host prefix",
            op(Operation {
                hosts: pats(&["reviews.*"]),
                ..d()
            }),
            FRONTEND,
            "allow",
        ),
        (
            "notHosts",
            op(Operation {
                not_hosts: pats(&["reviews*"]),
                ..d()
            }),
            FRONTEND,
            "deny no-allow",
        ),
        (
            "port",
            op(Operation {
                ports: vec![9080],
                ..d()
            }),
            FRONTEND,
            "allow",
        ),
        (
            "other port",
            op(Operation {
                ports: vec![80],
                ..d()
            }),
            FRONTEND,
            "deny no-allow",
        ),
        (
            "notPorts",
            op(Operation {
                not_ports: vec![9080],
                ..d()
            }),
            FRONTEND,
            "deny no-allow",
        ),
        (
            "methods",
            op(Operation {
                methods: pats(&["GET", "HEAD"]),
                ..d()
            }),
            req("-", "HEAD /"),
            "allow",
        ),
        (
            "notMethods",
            op(Operation {
                not_methods: pats(&["DELETE"]),
                ..d()
            }),
            req("-", "DELETE /"),
            "deny no-allow",
        ),
    ]);
}

#[test]
fn sources() {
    let src = |s: Source| vec![allow(from(s))];
    let d = Source::default;
    check(&[
        (
            "namespaces",
            src(Source {
                namespaces: pats(&["shop"]),
                ..d()
            }),
            req("shop/frontend", "GET /"),
            "allow",
        ),
        (
            "namespaces need an identity",
            src(Source {
                namespaces: pats(&["*"]),
                ..d()
            }),
            req("-", "GET /"),
            "deny no-allow",
        ),
        (
            "notNamespaces holds without identity",
            vec![deny(from(Source {
                not_namespaces: pats(&["shop"]),
                ..d()
            }))],
            req("-", "GET /"),
            "deny shop/d",
        ),
        (
            "notPrincipals",
            vec![deny(from(Source {
                not_principals: pats(&["*"]),
                ..d()
            }))],
            req("shop/frontend", "GET /"),
            "allow",
        ),
        (
            "ipBlocks",
            src(Source {
                ip_blocks: cidrs(&["10.1.1.0/24"]),
                ..d()
            }),
            FRONTEND,
            "allow",
        ),
        (
            "ipBlocks is the tunnel source",
            src(Source {
                ip_blocks: cidrs(&["192.0.2.0/24"]),
                ..d()
            }),
            Req {
                remote_ip: "192.0.2.7",
                ..FRONTEND
            },
            "deny no-allow",
        ),
        (
            "remoteIpBlocks is the original client",
            src(Source {
                remote_ip_blocks: cidrs(&["192.0.2.0/24"]),
                ..d()
            }),
            Req {
                remote_ip: "192.0.2.7",
                ..FRONTEND
            },
            "allow",
        ),
        (
            "notIpBlocks",
            src(Source {
                not_ip_blocks: cidrs(&["10.1.1.10/32"]),
                ..d()
            }),
            FRONTEND,
            "deny no-allow",
        ),
        (
            "notRemoteIpBlocks",
            src(Source {
                not_remote_ip_blocks: cidrs(&["10.0.0.0/8"]),
                ..d()
            }),
            FRONTEND,
            "deny no-allow",
        ),
    ]);
}

#[test]
fn conditions() {
    let set = |v: &[&str], n: &[&str]| ValueSet {
        values: pats(v),
        not_values: pats(n),
    };
    let hdr = |v: &[&str], n: &[&str]| {
        Condition::RequestHeader(HeaderName::from_static("x-token"), set(v, n))
    };
    const TOKEN: &[(&str, &str)] = &[("x-token", "abc-123")];
    check(&[
        (
            "header value",
            vec![allow(when(hdr(&["abc-*"], &[])))],
            Req {
                headers: TOKEN,
                ..FRONTEND
            },
            "allow",
        ),
        (
            "header absent",
            vec![allow(when(hdr(&["abc-*"], &[])))],
            FRONTEND,
            "deny no-allow",
        ),
        (
            "header notValues: absent holds",
            vec![deny(when(hdr(&[], &["abc-123"])))],
            FRONTEND,
            "deny shop/d",
        ),
        (
            "header notValues: present value",
            vec![deny(when(hdr(&[], &["abc-123"])))],
            Req {
                headers: TOKEN,
                ..FRONTEND
            },
            "allow",
        ),
        (
            "values and notValues",
            vec![allow(when(hdr(&["*"], &["*-123"])))],
            Req {
                headers: TOKEN,
                ..FRONTEND
            },
            "deny no-allow",
        ),
        (
            "source.ip",
            vec![allow(when(Condition::SourceIp(ValueSet {
                values: cidrs(&["10.1.0.0/16"]),
                not_values: vec![],
            })))],
            FRONTEND,
            "allow",
        ),
        (
            "remote.ip",
            vec![allow(when(Condition::RemoteIp(ValueSet {
                values: cidrs(&["10.1.0.0/16"]),
                not_values: vec![],
            })))],
            Req {
                remote_ip: "192.0.2.1",
                ..FRONTEND
            },
            "deny no-allow",
        ),
        (
            "destination.ip",
            vec![allow(when(Condition::DestinationIp(ValueSet {
                values: cidrs(&["10.96.0.20"]),
                not_values: vec![],
            })))],
            FRONTEND,
            "allow",
        ),
        (
            "destination.port",
            vec![allow(when(Condition::DestinationPort(ValueSet {
                values: vec![9080],
                not_values: vec![],
            })))],
            FRONTEND,
            "allow",
        ),
        (
            "source.namespace",
            vec![allow(when(Condition::SourceNamespace(set(&["bank"], &[]))))],
            FRONTEND,
            "deny no-allow",
        ),
        (
            "source.principal",
            vec![allow(when(Condition::SourcePrincipal(set(
                &["*/sa/frontend"],
                &[],
            ))))],
            FRONTEND,
            "allow",
        ),
        (
            "every condition must hold",
            vec![allow(vec![L7Rule {
                when: vec![
                    hdr(&["abc-123"], &[]),
                    Condition::DestinationPort(ValueSet {
                        values: vec![80],
                        not_values: vec![],
                    }),
                ],
                ..L7Rule::default()
            }])],
            Req {
                headers: TOKEN,
                ..FRONTEND
            },
            "deny no-allow",
        ),
    ]);
}

#[test]
fn condition_keys() {
    assert_eq!(
        ConditionKey::parse("request.headers[X-User]"),
        Ok(ConditionKey::RequestHeader(HeaderName::from_static(
            "x-user"
        )))
    );
    assert_eq!(ConditionKey::parse("source.ip"), Ok(ConditionKey::SourceIp));
    assert!(matches!(
        ConditionKey::parse("request.auth.claims[iss]"),
        Err(ConditionKeyError::Unsupported(_))
    ));
    assert!(matches!(
        ConditionKey::parse("request.headers[bad header]"),
        Err(ConditionKeyError::BadHeader(_))
    ));
}

#[test]
fn normalize_path_table() {
    for (input, want) in [
        ("/a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../a", "/a"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/a//b", "/a//b"),
        ("/%41%2e%2E/x", "/A../x"),
        ("/a/%2e%2e/b", "/b"),
        ("/a%2Fb", "/a%2Fb"),
        ("/a?b=../c", "/a"),
        ("/a#frag", "/a"),
        ("*", "*"),
        ("", ""),
        ("/%zz", "/%zz"),
        ("/é/%", "/é/%"),
    ] {
        assert_eq!(normalize_path(input), want, "{input}");
    }
}

proptest! {
    #[test]
    fn normalized_paths_are_stable_and_dot_free(p in "[/a-z.%0-9A-F?#é]{0,16}") {
        let once = normalize_path(&p).into_owned();
        let twice = normalize_path(&once).into_owned();
        prop_assert_eq!(twice, once.clone(), "idempotent");
        if once.starts_with('/') {
            prop_assert!(once.split('/').all(|s| s != "." && s != ".."), "{}", once);
        }
        prop_assert!(!once.contains(['?', '#']));
    }

    #[test]
    fn path_matchers_never_panic(pattern in ".{0,8}", path in ".{0,16}", deny_it: bool) {
        let op = Operation { paths: pats(&[&pattern]), ..Operation::default() };
        let p = if deny_it { deny(to(op)) } else { allow(to(op)) };
        let headers = HeaderMap::new();
        let ctx = RequestCtx {
            source_identity: None,
            source_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: "10.0.0.1".parse().unwrap(),
            destination_ip: "10.0.0.2".parse().unwrap(),
            destination_port: 80,
            host: "h",
            method: "GET",
            path: &path,
            headers: &headers,
        };
        let d = authorize_request([&p], &ctx);
        // Exact patterns decide on the normalized path alone.
        if !pattern.starts_with('*') && !pattern.ends_with('*') && !deny_it {
            prop_assert_eq!(d.is_allow(), normalize_path(&path) == pattern.as_str());
        }
    }
}
