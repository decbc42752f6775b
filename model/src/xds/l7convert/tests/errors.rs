//! Each bad field is refused with its path.

use proto::mesh as pb;
use proto::security as pb_sec;

use crate::l7policy::L7Policy;
use crate::route::{HttpRouteMatch, PathMatch, Route};

/// What is broken, how, and the start of the error it gives.
type Case<'a, M> = (&'static str, Box<dyn FnOnce(&mut M) + 'a>, &'static str);

fn valid_route() -> pb::Route {
    pb::Route {
        kind: pb::route::Kind::Http as i32,
        name: "reviews".into(),
        namespace: "shop".into(),
        parent_refs: vec![pb::ParentRef {
            name: "reviews".into(),
            ..Default::default()
        }],
        rules: vec![pb::RouteRule {
            matches: vec![pb::HttpRouteMatch {
                path: Some(pb::PathMatch {
                    r#type: pb::path_match::Type::PathPrefix as i32,
                    value: "/api/".into(),
                }),
                ..Default::default()
            }],
            backend_refs: vec![pb::BackendRef {
                name: "reviews-v1".into(),
                port: 9080,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn filter(kind: pb::filter::Kind) -> pb::Filter {
    pb::Filter { kind: Some(kind) }
}

fn route_error(edit: impl FnOnce(&mut pb::Route)) -> String {
    let mut r = valid_route();
    edit(&mut r);
    Route::try_from(&r).unwrap_err().to_string()
}

#[test]
fn defaults_are_the_apis() {
    let r = Route::try_from(&valid_route()).unwrap();
    assert_eq!(r.parents[0].namespace, "shop", "parentRef namespace");
    assert_eq!(r.parents[0].port, None);
    let rule = &r.rules[0];
    assert_eq!(
        rule.matches[0].path,
        PathMatch::Prefix("/api".into()),
        "trailing / dropped"
    );
    assert_eq!(rule.backends[0].weight, 1, "weight 1");
    assert_eq!(rule.backends[0].service.namespace, "shop");
    let mut bare = valid_route();
    bare.rules[0].matches.clear();
    let r = Route::try_from(&bare).unwrap();
    assert_eq!(
        r.rules[0].matches,
        [HttpRouteMatch::default()],
        "no matches: PathPrefix /"
    );
    bare.kind = pb::route::Kind::Grpc as i32;
    let r = Route::try_from(&bare).unwrap();
    assert_eq!(
        r.rules[0].grpc_matches.len(),
        1,
        "no gRPC matches: every call"
    );
    assert!(r.rules[0].grpc_matches[0].method.is_none());
}

#[test]
fn route_errors_name_their_field() {
    use pb::filter::Kind as K;
    let prefix_rw = || {
        filter(K::UrlRewrite(pb::UrlRewrite {
            path: Some(pb::PathModifier {
                r#type: Some(pb::path_modifier::Type::ReplacePrefixMatch("/v2".into())),
            }),
            ..Default::default()
        }))
    };
    let redirect = |status_code| {
        filter(K::RequestRedirect(pb::RequestRedirect {
            status_code,
            ..Default::default()
        }))
    };
    let cases: Vec<Case<'_, pb::Route>> = vec![
        ("kind", Box::new(|r| r.kind = 7), "kind: unknown enum value 7"),
        ("name", Box::new(|r| r.name.clear()), "name: is required"),
        ("rules", Box::new(|r| r.rules.clear()), "rules: is required"),
        ("parent name", Box::new(|r| r.parent_refs[0].name.clear()), "parent_refs[0].name: is required"),
        ("parent port", Box::new(|r| r.parent_refs[0].port = 70000), "parent_refs[0].port: 70000 is out of range 1..=65535"),
        ("relative path", Box::new(|r| r.rules[0].matches[0].path.as_mut().unwrap().value = "api".into()), "rules[0].matches[0].path.value: \"api\" is not an absolute path"),
        ("dot segment", Box::new(|r| r.rules[0].matches[0].path.as_mut().unwrap().value = "/a/../b".into()), "rules[0].matches[0].path.value: \"/a/../b\" is not an absolute path"),
        (
            "bad regex",
            Box::new(|r| *r.rules[0].matches[0].path.as_mut().unwrap() = pb::PathMatch { r#type: 2, value: "(".into() }),
            "rules[0].matches[0].path.value: \"(\" is not a valid regular expression",
        ),
        ("method", Box::new(|r| r.rules[0].matches[0].method = "FETCH".into()), "rules[0].matches[0].method: \"FETCH\" is not one of GET"),
        (
            "header name",
            Box::new(|r| r.rules[0].matches[0].headers.push(pb::HeaderMatch { name: "bad name".into(), value: "v".into(), ..Default::default() })),
            "rules[0].matches[0].headers[0].name: \"bad name\" is not a valid header name",
        ),
        (
            "header value",
            Box::new(|r| r.rules[0].matches[0].headers.push(pb::HeaderMatch { name: "x".into(), ..Default::default() })),
            "rules[0].matches[0].headers[0].value: is required",
        ),
        ("gRPC matches on HTTP", Box::new(|r| r.rules[0].grpc_matches.push(Default::default())), "rules[0].grpc_matches: an HTTPRoute has no gRPC matches"),
        ("backend port", Box::new(|r| r.rules[0].backend_refs[0].port = 0), "rules[0].backend_refs[0].port: 0 is out of range 1..=65535"),
        ("backend weight", Box::new(|r| r.rules[0].backend_refs[0].weight = Some(1_000_001)), "rules[0].backend_refs[0].weight: 1000001 is out of range 0..=1000000"),
        ("empty filter", Box::new(|r| r.rules[0].filters.push(pb::Filter { kind: None })), "rules[0].filters[0].kind: is required"),
        ("redirect with backends", Box::new(|r| r.rules[0].filters.push(redirect(0))), "rules[0].filters[0]: RequestRedirect cannot be used with backendRefs"),
        ("redirect status", Box::new(|r| r.rules[0].filters.push(redirect(305))), "rules[0].filters[0].request_redirect.status_code: \"305\" is not one of 301, 302, 303, 307, 308"),
        (
            "rewrite with redirect",
            Box::new(move |r| { r.rules[0].backend_refs.clear(); r.rules[0].filters = vec![redirect(0), prefix_rw()]; }),
            "rules[0].filters[0]: RequestRedirect and URLRewrite cannot be combined",
        ),
        (
            "ReplacePrefixMatch on an Exact match",
            Box::new(move |r| { r.rules[0].matches[0].path.as_mut().unwrap().r#type = 1; r.rules[0].filters = vec![prefix_rw()]; }),
            "rules[0].filters[0]: ReplacePrefixMatch needs exactly one match, a PathPrefix",
        ),
        (
            "duplicate header action",
            Box::new(|r| r.rules[0].filters.push(filter(K::RequestHeaderModifier(pb::HeaderModifier {
                set: vec![pb::Header { name: "X-A".into(), value: "1".into() }],
                remove: vec!["x-a".into()],
                ..Default::default()
            })))),
            "rules[0].filters[0].request_header_modifier: header \"x-a\" appears in more than one action",
        ),
        (
            "repeated filter type",
            Box::new(|r| r.rules[0].filters = vec![filter(K::RequestHeaderModifier(Default::default())), filter(K::RequestHeaderModifier(Default::default()))]),
            "rules[0].filters[1]: this filter type may appear only once in a rule",
        ),
        (
            "timeouts",
            Box::new(|r| r.rules[0].timeouts = Some(pb::Timeouts {
                request: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
                backend_request: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
            })),
            "rules[0].timeouts.backend_request: longer than the request timeout",
        ),
        ("retry code", Box::new(|r| r.rules[0].retry = Some(pb::Retry { codes: vec![200], ..Default::default() })), "rules[0].retry.codes[0]: 200 is out of range 400..=599"),
        (
            "fault percentage",
            Box::new(|r| r.rules[0].fault = Some(pb::FaultInjection {
                abort: Some(pb::fault_injection::Abort { error_type: Some(pb::fault_injection::abort::ErrorType::HttpStatus(503)), percentage: 101.0 }),
                ..Default::default()
            })),
            "rules[0].fault.abort.percentage: a percentage must be from 0 to 100",
        ),
        (
            "fault grpc status",
            Box::new(|r| r.rules[0].fault = Some(pb::FaultInjection {
                abort: Some(pb::fault_injection::Abort { error_type: Some(pb::fault_injection::abort::ErrorType::GrpcStatus("OK".into())), percentage: 1.0 }),
                ..Default::default()
            })),
            "rules[0].fault.abort.grpc_status: \"OK\" is not one of a gRPC status name other than OK",
        ),
        ("empty fault", Box::new(|r| r.rules[0].fault = Some(Default::default())), "rules[0].fault: one of delay and abort is required"),
        (
            "GRPCRoute redirect",
            Box::new(move |r| { r.kind = 1; r.rules[0].matches.clear(); r.rules[0].backend_refs.clear(); r.rules[0].filters = vec![redirect(0)]; }),
            "rules[0].filters[0].request_redirect: not a GRPCRoute filter",
        ),
    ];
    for (what, edit, want) in cases {
        let got = route_error(edit);
        assert!(got.starts_with(want), "{what}: got {got:?}, want {want:?}");
    }
}

fn valid_policy() -> pb::L7Authorization {
    pb::L7Authorization {
        name: "deny-admin".into(),
        namespace: "shop".into(),
        target_refs: vec![pb::PolicyTargetRef {
            kind: pb::policy_target_ref::Kind::Gateway as i32,
            name: "waypoint".into(),
        }],
        action: pb_sec::Action::Deny as i32,
        rules: vec![pb::L7Rule {
            to: vec![pb::L7Operation {
                paths: vec![pb_sec::StringMatch {
                    match_type: Some(pb_sec::string_match::MatchType::Exact("/admin".into())),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn l7_policy_errors_name_their_field() {
    let exact = |s: &str| pb_sec::StringMatch {
        match_type: Some(pb_sec::string_match::MatchType::Exact(s.into())),
    };
    let cases: Vec<Case<'_, pb::L7Authorization>> = vec![
        (
            "targets",
            Box::new(|p| p.target_refs.clear()),
            "target_refs: is required",
        ),
        (
            "target kind",
            Box::new(|p| p.target_refs[0].kind = 9),
            "target_refs[0].kind: unknown enum value 9",
        ),
        (
            "action",
            Box::new(|p| p.action = 5),
            "action: unknown enum value 5",
        ),
        (
            "empty string match",
            Box::new(|p| {
                p.rules[0].to[0]
                    .paths
                    .push(pb_sec::StringMatch { match_type: None })
            }),
            "rules[0].to[0].paths[1].match_type: is required",
        ),
        (
            "path template",
            Box::new(move |p| p.rules[0].to[0].paths.push(exact("/api/{*}/x"))),
            "rules[0].to[0].paths[1]: a path template ({*}, {**}) is not supported",
        ),
        (
            "port",
            Box::new(|p| p.rules[0].to[0].ports.push(0)),
            "rules[0].to[0].ports[0]: 0 is out of range 1..=65535",
        ),
        (
            "unsupported key",
            Box::new(|p| {
                p.rules[0].when.push(pb::L7Condition {
                    key: "request.auth.claims[iss]".into(),
                    values: vec!["x".into()],
                    ..Default::default()
                })
            }),
            "rules[0].when[0].key: \"request.auth.claims[iss]\" is not a condition key",
        ),
        (
            "no values",
            Box::new(|p| {
                p.rules[0].when.push(pb::L7Condition {
                    key: "source.ip".into(),
                    ..Default::default()
                })
            }),
            "rules[0].when[0].values: is required",
        ),
        (
            "bad cidr",
            Box::new(|p| {
                p.rules[0].when.push(pb::L7Condition {
                    key: "source.ip".into(),
                    not_values: vec!["10.0.0.0/33".into()],
                    ..Default::default()
                })
            }),
            "rules[0].when[0].not_values[0]: \"10.0.0.0/33\" is not a valid address or CIDR",
        ),
        (
            "bad port value",
            Box::new(|p| {
                p.rules[0].when.push(pb::L7Condition {
                    key: "destination.port".into(),
                    values: vec!["http".into()],
                    ..Default::default()
                })
            }),
            "rules[0].when[0].values[0]: \"http\" is not one of a port",
        ),
        (
            "bad source address",
            Box::new(|p| {
                p.rules[0].from.push(pb::L7Source {
                    ip_blocks: vec![pb_sec::Address {
                        address: vec![1, 2, 3],
                        length: 8,
                    }],
                    ..Default::default()
                })
            }),
            "rules[0].from[0].ip_blocks[0]:",
        ),
    ];
    for (what, edit, want) in cases {
        let mut p = valid_policy();
        edit(&mut p);
        let got = L7Policy::try_from(&p).unwrap_err().to_string();
        assert!(got.starts_with(want), "{what}: got {got:?}, want {want:?}");
    }
    let ok = L7Policy::try_from(&valid_policy()).unwrap();
    assert_eq!(ok.key().to_string(), "shop/deny-admin");
}

#[test]
fn hosts_are_held_lower_case() {
    let mut p = valid_policy();
    p.rules[0].to[0].hosts = vec![pb_sec::StringMatch {
        match_type: Some(pb_sec::string_match::MatchType::Prefix("Reviews.".into())),
    }];
    let got = L7Policy::try_from(&p).unwrap();
    assert_eq!(
        got.rules[0].to[0].hosts,
        [crate::state::StringMatch::Prefix("reviews.".into())]
    );
}
