//! Table tests of the Gateway API and waypoint-policy conversions, from
//! YAML as the API server serves it (CRD defaults filled in, server
//! fields present).

use mesh_model::l7policy::{L7Policy, Operation, PolicyTarget};
use mesh_model::route::{Backend, ParentRef, RouteKind, ServiceRef};
use mesh_model::state::{PolicyAction, StringMatch};

use super::super::gateway::{Gateway, GrpcRoute, HttpRoute};
use super::super::istio::AuthorizationPolicy;
use super::policy::{self, Converted};
use super::tests::{labels, yaml};
use super::waypoint::*;
use super::PodInfo;

/// An HTTPRoute as `kubectl get -o yaml` shows it on a real cluster: the
/// CRD's defaults (`group`, `kind`, `weight`, the match's `type`) and the
/// server's fields (`uid`, `managedFields`, `status`).
const REVIEWS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: shop
  uid: 8c1f7a8e-2f55-4d4b-9b65-0c6a2a1f0e11
  resourceVersion: "41873"
  generation: 2
  creationTimestamp: "2024-05-01T10:00:00Z"
  annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}"}
  managedFields:
  - {apiVersion: gateway.networking.k8s.io/v1, fieldsType: FieldsV1, manager: kubectl, operation: Apply}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  - {group: gateway.networking.k8s.io, kind: Gateway, name: ingress}
  rules:
  - matches:
    - path: {type: PathPrefix, value: /}
      headers: [{type: Exact, name: x-canary, value: "true"}]
    backendRefs:
    - {group: "", kind: Service, name: reviews-v2, port: 9080, weight: 1}
  - matches:
    - path: {type: PathPrefix, value: /}
    backendRefs:
    - {group: "", kind: Service, name: reviews-v1, port: 9080, weight: 90}
    - {group: "", kind: Service, name: reviews-v2, port: 9080, weight: 10}
    timeouts: {request: 10s}
status:
  parents:
  - parentRef: {group: "", kind: Service, name: reviews, port: 9080}
    controllerName: istio.io/gateway-controller
    conditions: [{type: Accepted, status: "True", reason: Accepted}]
"#;

fn route(text: &str) -> RouteState {
    let r: HttpRoute = yaml(text);
    http_route_info(&r).unwrap().state
}

#[test]
fn an_httproute_as_served_becomes_the_mesh_route_of_its_service_parents() {
    let RouteState::Route(r) = route(REVIEWS) else {
        panic!("{:?}", route(REVIEWS));
    };
    assert_eq!(r.kind, RouteKind::Http);
    assert_eq!(r.key().to_string(), "HTTPRoute/shop/reviews");
    assert_eq!(r.created.map(|t| t.seconds), Some(1_714_557_600));
    // The Gateway parent is an ingress's, not the mesh's.
    assert_eq!(
        r.parents,
        vec![ParentRef {
            namespace: "shop".into(),
            name: "reviews".into(),
            port: Some(9080)
        }]
    );
    assert_eq!(r.rules.len(), 2);
    assert_eq!(r.rules[0].matches[0].headers.len(), 1);
    assert_eq!(
        r.rules[1].backends,
        vec![
            Backend {
                service: ServiceRef {
                    namespace: "shop".into(),
                    name: "reviews-v1".into(),
                    port: 9080
                },
                weight: 90
            },
            Backend {
                service: ServiceRef {
                    namespace: "shop".into(),
                    name: "reviews-v2".into(),
                    port: 9080
                },
                weight: 10
            },
        ]
    );
    assert_eq!(
        r.rules[1].timeouts.request(),
        Some(std::time::Duration::from_secs(10))
    );
}

#[test]
fn routes_that_are_not_the_mesh_s_or_not_valid() {
    let cases: [(&str, &str, Option<&str>); 5] = [
        (
            "only a Gateway parent (the CRD's default group and kind)",
            "parentRefs: [{name: ingress}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
            None,
        ),
        ("no parents", "rules: []", None),
        (
            "an unknown filter",
            "parentRefs: [{group: \"\", kind: Service, name: web}]\n  rules: [{filters: [{type: CORS, cors: {}}]}]",
            Some("cors"),
        ),
        (
            "a bad regular expression",
            "parentRefs: [{group: \"\", kind: Service, name: web}]\n  rules: [{matches: [{path: {type: RegularExpression, value: \"(\"}}]}]",
            Some("HTTPRoute/shop/r.spec.rules[0].matches[0].path"),
        ),
        (
            "a backend without a port",
            "parentRefs: [{group: \"\", kind: Service, name: web}]\n  rules: [{backendRefs: [{group: \"\", kind: Service, name: web}]}]",
            Some("backendRefs[0].port"),
        ),
    ];
    for (what, spec, invalid) in cases {
        let text = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  {spec}\n"
        );
        match (route(&text), invalid) {
            (RouteState::NotMesh, None) => {}
            (RouteState::Invalid(why), Some(needle)) => {
                assert!(why.contains(needle), "{what}: {why}")
            }
            (other, _) => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn a_grpcroute_matches_services_and_methods() {
    let r: GrpcRoute = yaml(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: cart, namespace: shop, creationTimestamp: "2024-05-01T10:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 9090}]
  rules:
  - matches: [{method: {type: Exact, service: shop.Cart, method: Get}}]
    backendRefs: [{group: "", kind: Service, name: cart-v2, port: 9090, weight: 1}]
"#,
    );
    let RouteState::Route(r) = grpc_route_info(&r).unwrap().state else {
        panic!("not converted");
    };
    assert_eq!(r.key().to_string(), "GRPCRoute/shop/cart");
    assert_eq!(r.rules[0].grpc_matches.len(), 1);
    assert_eq!(r.rules[0].backends[0].service.name, "cart-v2");
}

#[test]
fn a_gateway_is_a_waypoint_by_its_class_and_its_ready_pods_answer_for_it() {
    let gw = |class: &str| -> Gateway {
        yaml(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: waypoint, namespace: shop}}\nspec:\n  gatewayClassName: {class}\n  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]\n"
        ))
    };
    assert!(gateway_info(&gw("istio-waypoint")).unwrap().waypoint);
    assert!(!gateway_info(&gw("istio")).unwrap().waypoint);

    let mut pod = PodInfo {
        namespace: "shop".into(),
        name: "waypoint-5d8f9c7b4-x2x7q".into(),
        labels: labels(&[("gateway.networking.k8s.io/gateway-name", "waypoint")]),
        ips: vec!["10.1.0.9".parse().unwrap()],
        node: "node-a".into(),
        service_account: "waypoint".into(),
        ready: true,
        live: true,
        host_network: false,
        named_ports: Default::default(),
    };
    assert_eq!(waypoint_alias(&pod, |g| g == "waypoint"), Some("waypoint"));
    assert_eq!(waypoint_alias(&pod, |_| false), None, "no such waypoint");
    pod.service_account = "intruder".into();
    assert_eq!(
        waypoint_alias(&pod, |_| true),
        None,
        "not the Gateway's service account"
    );
    pod.service_account = "waypoint".into();
    pod.ready = false;
    assert_eq!(waypoint_alias(&pod, |_| true), None, "not ready");
}

fn ap(text: &str) -> Converted {
    let ap: AuthorizationPolicy = yaml(text);
    policy::authorization_policy(&ap, "istio-system").unwrap()
}

fn l7(c: Converted) -> (L7Policy, Option<String>) {
    match c {
        Converted::Waypoint { policy, problem } => (policy, problem),
        other => panic!("not the waypoint's: {other:?}"),
    }
}

/// DESIGN §5–§6: the same L7 rule, bound three ways.
#[test]
fn the_l4_l7_split() {
    let text = |binding: &str, action: &str| {
        format!(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admin, namespace: shop}}
spec:
  {binding}
  action: {action}
  rules:
  - from: [{{source: {{namespaces: [shop]}}}}]
    to: [{{operation: {{methods: [POST], paths: ["/admin/*"]}}}}]
"#
        )
    };
    // targetRefs: the waypoint's, with every field.
    let (p, problem) = l7(ap(&text(
        "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}, {kind: Service, group: \"\", name: web}]",
        "DENY",
    )));
    assert_eq!(problem, None);
    assert_eq!(
        p.targets,
        vec![
            PolicyTarget::Gateway("waypoint".into()),
            PolicyTarget::Service("web".into())
        ]
    );
    assert_eq!(p.action, PolicyAction::Deny);
    assert_eq!(
        p.rules[0].to,
        vec![Operation {
            methods: vec![StringMatch::Exact("POST".into())],
            paths: vec![StringMatch::Prefix("/admin/".into())],
            ..Operation::default()
        }]
    );
    // A ztunnel ALLOW: the rule needs L7, so it never matches (nothing
    // it cannot check is allowed).
    let Converted::Policy { policy, dropped } =
        ap(&text("selector: {matchLabels: {app: web}}", "ALLOW"))
    else {
        panic!("ztunnel's");
    };
    assert!(policy.rules.is_empty(), "{policy:?}");
    assert_eq!(dropped.len(), 2);
    // A ztunnel DENY: cut to its L4 part, which still denies (more).
    let Converted::Policy { policy, .. } = ap(&text("selector: {matchLabels: {app: web}}", "DENY"))
    else {
        panic!("ztunnel's");
    };
    assert_eq!(policy.rules.len(), 1);
    assert_eq!(
        policy.rules[0].clauses[0].matches[0].namespaces,
        vec![StringMatch::Exact("shop".into())]
    );
}

#[test]
fn waypoint_policies_that_cannot_be_enforced_fail_closed() {
    for (what, rule, needle) in [
        (
            "JWT principals",
            "from: [{source: {requestPrincipals: [\"*\"]}}]",
            "requestPrincipals",
        ),
        (
            "a bad CIDR",
            "from: [{source: {ipBlocks: [10.0.0.300/8]}}]",
            "ipBlocks[0]",
        ),
        (
            "an unknown condition",
            "when: [{key: \"request.auth.claims[iss]\", values: [x]}]",
            "request.auth.claims",
        ),
    ] {
        let (p, problem) = l7(ap(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  action: DENY\n  rules: [{{{rule}}}]\n"
        )));
        let problem = problem.unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(problem.contains(needle), "{what}: {problem}");
        assert_eq!(p.action, PolicyAction::Allow, "{what}");
        assert!(p.rules.is_empty(), "{what}: allows nothing");
        assert_eq!(p.targets, vec![PolicyTarget::Gateway("waypoint".into())]);
    }
}
