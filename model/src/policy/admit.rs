//! Admission at the destination: STRICT mTLS, then L4 policy, in one
//! function. ztunnel calls it for a new inbound connection and again for
//! every live one after a config change, so the two checks cannot drift
//! apart. Pure.

use super::{authorize, ConnCtx, Decision, Denial};
use crate::state::{MtlsMode, Snapshot};

/// Whether the connection `ctx` may reach `ctx.dst` under `snap`:
/// a namespace in STRICT mTLS refuses plaintext (a connection with no
/// identity: [`Denial::StrictMtls`]); then [`authorize`] decides with the
/// snapshot's policies (DESIGN §5).
pub fn admit_peer(snap: &Snapshot, ctx: &ConnCtx<'_>) -> Decision {
    if ctx.src_identity.is_none() && snap.mtls_mode(&ctx.dst.namespace) == MtlsMode::Strict {
        return Decision::Deny(Denial::StrictMtls {
            namespace: ctx.dst.namespace.clone(),
        });
    }
    authorize(snap.policies(), ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::identity::SpiffeId;
    use crate::state::PolicyKey;

    const BASE: &str = r#"
nodes: [{name: n1, ip: 10.0.0.1}]
namespaces:
  - {name: shop, labels: {istio.io/dataplane-mode: ambient}}
  - {name: bank, labels: {istio.io/dataplane-mode: ambient}, mtls: MODE}
workloads:
  - {name: client, namespace: shop, serviceAccount: client, ip: 10.1.1.10, node: n1}
  - {name: server, namespace: bank, serviceAccount: server, ip: 10.1.1.11, node: n1}
"#;

    const DENY_SHOP: &str = r#"
policies:
  - name: no-shop
    namespace: bank
    action: DENY
    rules: [{from: [{source: {namespaces: [shop]}}]}]
"#;

    const ALLOW_SHOP: &str = r#"
policies:
  - name: only-shop
    namespace: bank
    action: ALLOW
    rules: [{from: [{source: {namespaces: [shop]}}]}]
"#;

    const DENY_9090: &str = r#"
policies:
  - name: no-9090
    namespace: bank
    action: DENY
    rules: [{to: [{operation: {ports: ["9090"]}}]}]
"#;

    fn snap(mtls: &str, policies: &str) -> Snapshot {
        config::parse(&format!("{}{}", BASE.replace("MODE", mtls), policies)).unwrap()
    }

    fn decide(snap: &Snapshot, identity: Option<&str>, port: u16) -> Decision {
        let dst = snap.workload_by_uid("bank/server").unwrap();
        let ctx = ConnCtx {
            src_identity: identity.map(|i| i.parse::<SpiffeId>().unwrap()),
            src_ip: "10.1.1.10".parse().unwrap(),
            dst,
            dst_port: port,
        };
        admit_peer(snap, &ctx)
    }

    #[test]
    fn strict_then_policy() {
        let shop = Some("spiffe://cluster.local/ns/shop/sa/client");
        let other = Some("spiffe://cluster.local/ns/other/sa/x");
        let strict = || {
            Decision::Deny(Denial::StrictMtls {
                namespace: "bank".into(),
            })
        };
        let key = |name: &str| PolicyKey {
            namespace: "bank".into(),
            name: name.into(),
        };
        /// (what, mTLS mode, policies, identity, port, decision)
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            Option<&'static str>,
            u16,
            Decision,
        );
        let cases: Vec<Case> = vec![
            (
                "permissive, no policy: mTLS",
                "PERMISSIVE",
                "",
                shop,
                8080,
                Decision::Allow,
            ),
            (
                "permissive, no policy: plaintext",
                "PERMISSIVE",
                "",
                None,
                8080,
                Decision::Allow,
            ),
            (
                "STRICT refuses plaintext",
                "STRICT",
                "",
                None,
                8080,
                strict(),
            ),
            (
                "STRICT admits mTLS",
                "STRICT",
                "",
                shop,
                8080,
                Decision::Allow,
            ),
            // STRICT is checked first: its denial names STRICT, not a policy.
            (
                "STRICT before an ALLOW",
                "STRICT",
                ALLOW_SHOP,
                None,
                8080,
                strict(),
            ),
            (
                "STRICT before a DENY",
                "STRICT",
                DENY_9090,
                None,
                9090,
                strict(),
            ),
            (
                "a DENY matches mTLS",
                "PERMISSIVE",
                DENY_SHOP,
                shop,
                8080,
                Decision::Deny(Denial::DenyPolicy(key("no-shop"))),
            ),
            (
                "a DENY that does not match",
                "STRICT",
                DENY_SHOP,
                other,
                8080,
                Decision::Allow,
            ),
            (
                "a DENY by port, plaintext",
                "PERMISSIVE",
                DENY_9090,
                None,
                9090,
                Decision::Deny(Denial::DenyPolicy(key("no-9090"))),
            ),
            (
                "an ALLOW matches",
                "STRICT",
                ALLOW_SHOP,
                shop,
                8080,
                Decision::Allow,
            ),
            (
                "an ALLOW does not match",
                "STRICT",
                ALLOW_SHOP,
                other,
                8080,
                Decision::Deny(Denial::NoAllowMatch),
            ),
            (
                "plaintext under an ALLOW by namespace",
                "PERMISSIVE",
                ALLOW_SHOP,
                None,
                8080,
                Decision::Deny(Denial::NoAllowMatch),
            ),
        ];
        for (what, mtls, policies, identity, port, want) in cases {
            let snap = snap(mtls, policies);
            assert_eq!(decide(&snap, identity, port), want, "{what}");
        }
    }

    #[test]
    fn strict_denial_speaks_for_itself() {
        let d = Denial::StrictMtls {
            namespace: "bank".into(),
        };
        assert_eq!(d.reason(), "strict_mtls");
        assert_eq!(
            d.to_string(),
            "namespace bank requires mutual TLS; plaintext refused"
        );
    }
}
