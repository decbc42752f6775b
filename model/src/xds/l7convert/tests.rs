//! Round trips (domain → proto → domain is the identity) and the errors
//! of the proto → domain conversion, each naming its field.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use proto::mesh as pb;

use crate::l7policy::{Condition, L7Policy, L7Rule, Operation, PolicyTarget, Source, ValueSet};
use crate::route::*;
use crate::state::{Cidr, PolicyAction, StringMatch};

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,5}"
}

fn value_match() -> impl Strategy<Value = ValueMatch> + Clone {
    prop_oneof![
        "[a-zA-Z0-9]{1,5}".prop_map(ValueMatch::Exact),
        prop::sample::select(vec!["v[0-9]+", ".*", "a|b"])
            .prop_map(|s| ValueMatch::RegularExpression(Pattern::new(s).unwrap())),
    ]
}

fn path_match() -> impl Strategy<Value = PathMatch> {
    prop_oneof![
        "/([a-z]{1,4}/?)?".prop_map(PathMatch::Exact),
        prop_oneof![Just("/".to_owned()), "(/[a-z]{1,4}){1,2}"].prop_map(PathMatch::Prefix),
        prop::sample::select(vec!["/[a-z]+", "/api/v[0-9]/.*"])
            .prop_map(|s| PathMatch::RegularExpression(Pattern::new(s).unwrap())),
    ]
}

/// Distinct names from a pool, paired with values.
fn distinct<T: std::fmt::Debug + Clone>(
    pool: &'static [&'static str],
    value: impl Strategy<Value = T> + Clone,
) -> impl Strategy<Value = Vec<(&'static str, T)>> {
    prop::sample::subsequence(pool.to_vec(), 0..=pool.len()).prop_flat_map(move |names| {
        let n = names.len();
        (Just(names), prop::collection::vec(value.clone(), n))
            .prop_map(|(names, values)| names.into_iter().zip(values).collect())
    })
}

fn http_match() -> impl Strategy<Value = HttpRouteMatch> {
    let method = prop::option::of(prop::sample::select(vec!["GET", "POST", "DELETE"]));
    (
        path_match(),
        distinct(&["x-a", "x-b", "x-c"], value_match()),
        distinct(&["q", "r"], value_match()),
        method,
    )
        .prop_map(|(path, headers, queries, method)| HttpRouteMatch {
            path,
            headers: headers
                .into_iter()
                .map(|(n, value)| HeaderMatch {
                    name: HeaderName::from_static(n),
                    value,
                })
                .collect(),
            query_params: queries
                .into_iter()
                .map(|(n, value)| QueryParamMatch {
                    name: n.into(),
                    value,
                })
                .collect(),
            method: method.map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
        })
}

fn grpc_match() -> impl Strategy<Value = GrpcRouteMatch> {
    let method = prop_oneof![
        Just(None),
        (
            prop::option::of("[a-z]\\.[A-Z][a-z]{0,3}"),
            "[A-Z][a-z]{0,3}"
        )
            .prop_map(|(service, method)| Some(GrpcMethodMatch::Exact {
                service,
                method: Some(method)
            })),
        Just(Some(GrpcMethodMatch::RegularExpression {
            service: Some(Pattern::new("shop\\..*").unwrap()),
            method: None
        })),
    ];
    (method, distinct(&["x-a"], value_match())).prop_map(|(method, h)| GrpcRouteMatch {
        method,
        headers: h
            .into_iter()
            .map(|(n, value)| HeaderMatch {
                name: HeaderName::from_static(n),
                value,
            })
            .collect(),
    })
}

fn service_ref() -> impl Strategy<Value = ServiceRef> {
    (name(), name(), 1u16..).prop_map(|(namespace, name, port)| ServiceRef {
        namespace,
        name,
        port,
    })
}

fn header_modifier() -> impl Strategy<Value = HeaderModifier> {
    distinct(&["x-1", "x-2", "x-3", "x-4"], (0u8..3, "[a-z0-9]{0,4}")).prop_map(|items| {
        let mut m = HeaderModifier::default();
        for (n, (action, v)) in items {
            let (n, v) = (
                HeaderName::from_static(n),
                HeaderValue::from_str(&v).unwrap(),
            );
            match action {
                0 => m.set.push((n, v)),
                1 => m.add.push((n, v)),
                _ => m.remove.push(n),
            }
        }
        m
    })
}

fn fraction(denominator: u32) -> impl Strategy<Value = Fraction> {
    (0..=denominator).prop_map(move |numerator| Fraction {
        numerator,
        denominator,
    })
}

fn filters(grpc: bool) -> impl Strategy<Value = Vec<Filter>> {
    let mirror = (
        service_ref(),
        prop_oneof![Just(Fraction::ALL), fraction(100), fraction(1000)],
    )
        .prop_map(|(service, fraction)| Filter::RequestMirror(Mirror { service, fraction }));
    let rewrite = (
        prop::option::of("[a-z]{1,4}\\.example"),
        prop::option::of("/[a-z]{1,4}"),
    )
        .prop_map(|(hostname, full)| {
            Filter::UrlRewrite(UrlRewrite {
                hostname,
                path: full.map(PathModifier::ReplaceFullPath),
            })
        });
    (
        prop::option::of(header_modifier()),
        prop::option::of(header_modifier()),
        prop::collection::vec(mirror, 0..2),
        prop::option::of(rewrite),
    )
        .prop_map(move |(req, resp, mirrors, rewrite)| {
            let mut f: Vec<Filter> = req.into_iter().map(Filter::RequestHeaderModifier).collect();
            f.extend(resp.map(Filter::ResponseHeaderModifier));
            f.extend(mirrors);
            if !grpc {
                f.extend(rewrite);
            }
            f
        })
}

fn fault() -> impl Strategy<Value = Fault> {
    let delay = (0u64..100_000, fraction(1_000_000)).prop_map(|(ms, fraction)| FaultDelay {
        delay: Duration::from_millis(ms),
        fraction,
    });
    let status = prop_oneof![
        (200u16..600).prop_map(AbortStatus::Http),
        (1u32..17).prop_map(AbortStatus::Grpc)
    ];
    let abort = (status, fraction(1_000_000))
        .prop_map(|(status, fraction)| FaultAbort { status, fraction });
    (prop::option::of(delay), prop::option::of(abort))
        .prop_filter("delay or abort", |(d, a)| d.is_some() || a.is_some())
        .prop_map(|(delay, abort)| Fault { delay, abort })
}

fn rule(grpc: bool) -> impl Strategy<Value = RouteRule> {
    let matches = prop::collection::vec(http_match(), 1..3);
    let grpc_matches = prop::collection::vec(grpc_match(), 1..3);
    let backends = prop::collection::vec((service_ref(), 0..=MAX_WEIGHT), 0..3);
    let timeouts = (
        prop::option::of(0u64..60_000),
        prop::option::of(0u64..60_000),
    )
        .prop_map(|(r, b)| {
            // backendRequest may not exceed a non-zero request timeout.
            let b = match (r, b) {
                (Some(r), Some(b)) if r != 0 && b > r => Some(r),
                (_, b) => b,
            };
            Timeouts {
                request: r.map(Duration::from_millis),
                backend_request: b.map(Duration::from_millis),
            }
        });
    let retry = prop::option::of((
        prop::option::of(0u32..5),
        prop::sample::subsequence(vec![500u16, 502, 503, 504], 0..=4),
        prop::option::of((1u64..1000).prop_map(Duration::from_millis)),
    ))
    .prop_map(|r| {
        r.map(|(attempts, codes, backoff)| Retry {
            attempts,
            codes,
            backoff,
        })
    });
    (
        prop::option::of(name()),
        matches,
        grpc_matches,
        filters(grpc),
        backends,
        timeouts,
        retry,
        prop::option::of(fault()),
    )
        .prop_map(
            move |(name, matches, grpc_matches, filters, backends, timeouts, retry, fault)| {
                RouteRule {
                    name,
                    matches: if grpc { Vec::new() } else { matches },
                    grpc_matches: if grpc { grpc_matches } else { Vec::new() },
                    filters,
                    backends: backends
                        .into_iter()
                        .map(|(service, weight)| Backend { service, weight })
                        .collect(),
                    timeouts,
                    retry,
                    fault,
                }
            },
        )
}

fn route() -> impl Strategy<Value = Route> {
    any::<bool>().prop_flat_map(|grpc| {
        let parents = prop::collection::vec(
            (name(), name(), prop::option::of(1u16..)).prop_map(|(namespace, name, port)| {
                ParentRef {
                    namespace,
                    name,
                    port,
                }
            }),
            0..3,
        );
        let created = prop::option::of((0i64..10_000_000_000, 0u32..1_000_000_000))
            .prop_map(|t| t.map(|(seconds, nanos)| Timestamp { seconds, nanos }));
        (
            name(),
            name(),
            created,
            parents,
            prop::collection::vec(rule(grpc), 1..3),
        )
            .prop_map(move |(name, namespace, created, parents, rules)| Route {
                kind: if grpc {
                    RouteKind::Grpc
                } else {
                    RouteKind::Http
                },
                name,
                namespace,
                created,
                parents,
                rules,
            })
    })
}

fn pattern() -> impl Strategy<Value = StringMatch> + Clone {
    "[a-z0-9./*-]{0,6}".prop_map(|s| StringMatch::from_pattern(&s))
}

fn cidr() -> impl Strategy<Value = Cidr> + Clone {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| Cidr::new(a.into(), l).unwrap()),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, l)| Cidr::new(a.into(), l).unwrap()),
    ]
}

fn patterns() -> impl Strategy<Value = Vec<StringMatch>> {
    prop::collection::vec(pattern(), 0..2)
}

fn cidrs() -> impl Strategy<Value = Vec<Cidr>> {
    prop::collection::vec(cidr(), 0..2)
}

fn set<T: std::fmt::Debug>(
    s: impl Strategy<Value = T> + Clone,
) -> impl Strategy<Value = ValueSet<T>> {
    (
        prop::collection::vec(s.clone(), 1..3),
        prop::collection::vec(s, 0..2),
    )
        .prop_map(|(values, not_values)| ValueSet { values, not_values })
}

fn condition() -> impl Strategy<Value = Condition> {
    prop_oneof![
        set(pattern())
            .prop_map(|s| Condition::RequestHeader(HeaderName::from_static("x-token"), s)),
        set(cidr()).prop_map(Condition::SourceIp),
        set(cidr()).prop_map(Condition::RemoteIp),
        set(cidr()).prop_map(Condition::DestinationIp),
        set(1u16..).prop_map(Condition::DestinationPort),
        set(pattern()).prop_map(Condition::SourceNamespace),
        set(pattern()).prop_map(Condition::SourcePrincipal),
    ]
}

fn l7_policy() -> impl Strategy<Value = L7Policy> {
    let source = (
        patterns(),
        patterns(),
        patterns(),
        patterns(),
        cidrs(),
        cidrs(),
        cidrs(),
        cidrs(),
    )
        .prop_map(
            |(
                principals,
                not_principals,
                namespaces,
                not_namespaces,
                ip_blocks,
                not_ip_blocks,
                remote_ip_blocks,
                not_remote_ip_blocks,
            )| Source {
                principals,
                not_principals,
                namespaces,
                not_namespaces,
                ip_blocks,
                not_ip_blocks,
                remote_ip_blocks,
                not_remote_ip_blocks,
            },
        );
    let ports = || prop::collection::vec(1u16.., 0..2);
    let operation = (
        patterns(),
        patterns(),
        ports(),
        ports(),
        patterns(),
        patterns(),
        patterns(),
        patterns(),
    )
        .prop_map(
            |(hosts, not_hosts, ports, not_ports, methods, not_methods, paths, not_paths)| {
                Operation {
                    hosts,
                    not_hosts,
                    ports,
                    not_ports,
                    methods,
                    not_methods,
                    paths,
                    not_paths,
                }
            },
        );
    let rule = (
        prop::collection::vec(source, 0..2),
        prop::collection::vec(operation, 0..2),
        prop::collection::vec(condition(), 0..2),
    )
        .prop_map(|(from, to, when)| L7Rule { from, to, when });
    let target = prop_oneof![
        name().prop_map(PolicyTarget::Gateway),
        name().prop_map(PolicyTarget::Service)
    ];
    (
        name(),
        name(),
        prop::collection::vec(target, 1..3),
        any::<bool>(),
        prop::collection::vec(rule, 0..3),
    )
        .prop_map(|(name, namespace, targets, deny, rules)| L7Policy {
            name,
            namespace,
            targets,
            action: if deny {
                PolicyAction::Deny
            } else {
                PolicyAction::Allow
            },
            rules,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn routes_round_trip(r in route()) {
        let wire = pb::Route::from(&r);
        prop_assert_eq!(Route::try_from(&wire), Ok(r));
    }

    #[test]
    fn l7_policies_round_trip(p in l7_policy()) {
        let wire = pb::L7Authorization::from(&p);
        prop_assert_eq!(L7Policy::try_from(&wire), Ok(p));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_conversion(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        use prost::Message;
        if let Ok(r) = pb::Route::decode(bytes.as_slice()) {
            let _ = Route::try_from(&r);
        }
        if let Ok(a) = pb::L7Authorization::decode(bytes.as_slice()) {
            let _ = L7Policy::try_from(&a);
        }
    }
}

mod errors;
