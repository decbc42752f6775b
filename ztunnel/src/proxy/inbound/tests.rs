use super::*;
use mesh_model::config;

const CONFIG: &str = r#"
nodes: [{name: n1, ip: 10.0.0.1}, {name: n2, ip: 10.0.0.2}]
namespaces:
  - {name: shop, labels: {istio.io/dataplane-mode: ambient}, mtls: STRICT}
  - {name: bank, labels: {istio.io/dataplane-mode: ambient}}
  - {name: legacy}
workloads:
  - {name: client, namespace: shop, serviceAccount: client, ip: 10.1.1.10, node: n1}
  - {name: cart, namespace: shop, serviceAccount: cart, ip: 10.1.1.11, node: n1}
  - {name: ledger, namespace: bank, serviceAccount: ledger, ip: 10.1.1.12, node: n1}
  - {name: remote, namespace: bank, serviceAccount: ledger, ip: 10.1.2.12, node: n2}
  - {name: opted-out, namespace: bank, ip: 10.1.1.13, node: n1, labels: {istio.io/dataplane-mode: none}}
  - {name: old, namespace: legacy, ip: 10.1.1.40, node: n1}
  - {name: side, namespace: legacy, serviceAccount: side, ip: 10.1.1.41, node: n1, labels: {security.istio.io/tlsMode: istio}}
policies:
  - name: ledger-no-9090
    namespace: bank
    action: DENY
    rules: [{to: [{operation: {ports: ["9090"]}}]}]
  - name: ledger-only-shop
    namespace: bank
    action: ALLOW
    rules: [{from: [{source: {namespaces: [shop]}}]}]
"#;

/// The capture listeners' ports (outbound, inbound plaintext).
const PROXY_PORTS: &[u16] = &[15001, 15006];

fn node1() -> Scope {
    Scope::Node("n1".into())
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn admit_table() {
    let snap = config::parse(CONFIG).unwrap();
    let client = id("spiffe://cluster.local/ns/shop/sa/client");
    let stranger = id("spiffe://cluster.local/ns/other/sa/x");
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let hbone = |local: &str, peer| Arrival::Hbone {
        local: ip(local),
        peer,
    };
    let src = ip("10.1.2.50");
    type Want = Result<&'static str, Refusal>;
    let cases: Vec<(&str, Arrival<'_>, &str, Want)> = vec![
        (
            "hbone to the pod it arrived for",
            hbone("10.1.1.11", &client),
            "10.1.1.11:8080",
            Ok("cart"),
        ),
        (
            "authority names another pod",
            hbone("10.1.1.11", &client),
            "10.1.1.12:8080",
            Err(Refusal::AuthorityMismatch {
                authority: ip("10.1.1.12"),
                arrived: ip("10.1.1.11"),
            }),
        ),
        (
            "pod on another node",
            hbone("10.1.2.12", &client),
            "10.1.2.12:8080",
            Err(Refusal::NotLocal(ip("10.1.2.12"))),
        ),
        (
            "pod opted out",
            hbone("10.1.1.13", &client),
            "10.1.1.13:80",
            Err(Refusal::NotLocal(ip("10.1.1.13"))),
        ),
        (
            "non-ambient namespace",
            hbone("10.1.1.40", &client),
            "10.1.1.40:80",
            Err(Refusal::NotLocal(ip("10.1.1.40"))),
        ),
        (
            "unknown address",
            hbone("10.1.1.99", &client),
            "10.1.1.99:80",
            Err(Refusal::NotLocal(ip("10.1.1.99"))),
        ),
        (
            "ALLOW matches the namespace",
            hbone("10.1.1.12", &client),
            "10.1.1.12:8080",
            Ok("ledger"),
        ),
        (
            "ALLOW does not match",
            hbone("10.1.1.12", &stranger),
            "10.1.1.12:8080",
            Err(Refusal::Denied(Denial::NoAllowMatch)),
        ),
        (
            "DENY on the port wins over ALLOW",
            hbone("10.1.1.12", &client),
            "10.1.1.12:9090",
            Err(Refusal::Denied(Denial::DenyPolicy(
                mesh_model::state::PolicyKey {
                    namespace: "bank".into(),
                    name: "ledger-no-9090".into(),
                },
            ))),
        ),
        (
            "plaintext into STRICT",
            Arrival::Plaintext,
            "10.1.1.11:8080",
            Err(Refusal::Denied(Denial::StrictMtls {
                namespace: "shop".into(),
            })),
        ),
        (
            "plaintext into PERMISSIVE, but ALLOW needs a namespace",
            Arrival::Plaintext,
            "10.1.1.12:8080",
            Err(Refusal::Denied(Denial::NoAllowMatch)),
        ),
        (
            "in-process carries the source identity",
            Arrival::InProcess { source: &client },
            "10.1.1.12:8080",
            Ok("ledger"),
        ),
    ];
    for (name, arrival, dst, want) in cases {
        let got = admit(&snap, &node1(), PROXY_PORTS, arrival, src, addr(dst))
            .map(|(w, _)| w.name.clone());
        assert_eq!(got, want.map(str::to_owned), "{name}");
    }
}

#[test]
fn sidecar_admits_only_its_own_pod() {
    let snap = config::parse(CONFIG).unwrap();
    let client = id("spiffe://cluster.local/ns/shop/sa/client");
    let stranger = id("spiffe://cluster.local/ns/other/sa/x");
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let pod = |s: &str| {
        Scope::Pod(mesh_model::state::ServedPod {
            workload: s.parse().unwrap(),
            node: "n1".into(),
        })
    };
    let hbone = |local: &str, peer| Arrival::Hbone {
        local: ip(local),
        peer,
    };
    let src = ip("10.1.2.50");
    type Want = Result<&'static str, Refusal>;
    let cases: Vec<(&str, Scope, Arrival<'_>, &str, Want)> = vec![
        (
            "a sidecar pod (not ambient) is served by its own sidecar",
            pod("legacy/side"),
            hbone("10.1.1.41", &client),
            "10.1.1.41:8080",
            Ok("side"),
        ),
        (
            "a same-named pod on another node is not the served one",
            pod("bank/remote"),
            hbone("10.1.2.12", &client),
            "10.1.2.12:8080",
            Err(Refusal::NotLocal(ip("10.1.2.12"))),
        ),
        (
            "another pod on the same node is not",
            pod("legacy/side"),
            hbone("10.1.1.11", &client),
            "10.1.1.11:8080",
            Err(Refusal::NotLocal(ip("10.1.1.11"))),
        ),
        (
            "the node scope does not serve the sidecar pod",
            node1(),
            hbone("10.1.1.41", &client),
            "10.1.1.41:8080",
            Err(Refusal::NotLocal(ip("10.1.1.41"))),
        ),
        (
            "authority names another pod",
            pod("legacy/side"),
            hbone("10.1.1.41", &client),
            "10.1.1.11:8080",
            Err(Refusal::AuthorityMismatch {
                authority: ip("10.1.1.11"),
                arrived: ip("10.1.1.41"),
            }),
        ),
        (
            "an ambient pod's sidecar scope applies its namespace's policy",
            pod("bank/ledger"),
            hbone("10.1.1.12", &stranger),
            "10.1.1.12:8080",
            Err(Refusal::Denied(Denial::NoAllowMatch)),
        ),
        (
            "STRICT holds for a sidecar's plaintext too",
            pod("shop/cart"),
            Arrival::Plaintext,
            "10.1.1.11:8080",
            Err(Refusal::Denied(Denial::StrictMtls {
                namespace: "shop".into(),
            })),
        ),
        (
            "PERMISSIVE plaintext into the sidecar pod",
            pod("legacy/side"),
            Arrival::Plaintext,
            "10.1.1.41:8080",
            Ok("side"),
        ),
        (
            "plaintext to the sidecar's own outbound listener would loop",
            pod("legacy/side"),
            Arrival::Plaintext,
            "10.1.1.41:15001",
            Err(Refusal::OwnListener(addr("10.1.1.41:15001"))),
        ),
        (
            "plaintext to its own inbound listener would loop",
            pod("legacy/side"),
            Arrival::Plaintext,
            "10.1.1.41:15006",
            Err(Refusal::OwnListener(addr("10.1.1.41:15006"))),
        ),
        (
            "HBONE to its own listener would loop too",
            pod("legacy/side"),
            hbone("10.1.1.41", &client),
            "10.1.1.41:15006",
            Err(Refusal::OwnListener(addr("10.1.1.41:15006"))),
        ),
        (
            "loopback on a listener port",
            pod("legacy/side"),
            Arrival::Plaintext,
            "127.0.0.1:15001",
            Err(Refusal::OwnListener(addr("127.0.0.1:15001"))),
        ),
        (
            "node mode: the pod's 15001 is the app's, not ztunnel's",
            node1(),
            Arrival::Plaintext,
            "10.1.1.40:15001",
            Err(Refusal::NotLocal(ip("10.1.1.40"))),
        ),
    ];
    for (name, scope, arrival, dst, want) in cases {
        let got =
            admit(&snap, &scope, PROXY_PORTS, arrival, src, addr(dst)).map(|(w, _)| w.name.clone());
        assert_eq!(got, want.map(str::to_owned), "{name}");
    }
}

#[test]
fn plaintext_into_permissive_without_policy_is_allowed_without_identity() {
    let snap = config::parse(&CONFIG.replace("mtls: STRICT", "mtls: PERMISSIVE")).unwrap();
    let (w, identity) = admit(
        &snap,
        &node1(),
        PROXY_PORTS,
        Arrival::Plaintext,
        "10.1.1.40".parse().unwrap(),
        addr("10.1.1.11:8080"),
    )
    .unwrap();
    assert_eq!(w.name, "cart");
    assert_eq!(identity, None);
}

#[test]
fn refusals_map_to_design_statuses_flags_and_reasons() {
    let cases = [
        (
            Refusal::NotLocal("10.0.0.9".parse().unwrap()),
            StatusCode::BAD_REQUEST,
            "CONNECT",
            "not_local",
        ),
        (
            Refusal::AuthorityMismatch {
                authority: "10.0.0.9".parse().unwrap(),
                arrived: "10.0.0.8".parse().unwrap(),
            },
            StatusCode::BAD_REQUEST,
            "CONNECT",
            "authority_mismatch",
        ),
        (
            Refusal::OwnListener("10.0.0.9:15006".parse().unwrap()),
            StatusCode::BAD_REQUEST,
            "CONNECT",
            "own_listener",
        ),
        (
            Refusal::Denied(Denial::StrictMtls {
                namespace: "shop".into(),
            }),
            StatusCode::UNAUTHORIZED,
            "DENY",
            "strict_mtls",
        ),
        (
            Refusal::Denied(Denial::NoAllowMatch),
            StatusCode::UNAUTHORIZED,
            "DENY",
            "no_allow_match",
        ),
    ];
    for (refusal, status, flag, reason) in cases {
        assert_eq!(refusal.status(), status, "{refusal}");
        assert_eq!(refusal.flag().as_str(), flag, "{refusal}");
        assert_eq!(refusal.reason(), reason, "{refusal}");
    }
}
