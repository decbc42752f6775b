use super::*;

#[test]
fn capture_rules_follow_the_listener_flags() {
    let default = Listeners::default().sidecar_rules(vec![]);
    assert_eq!(default.outbound_port, 15001);
    assert_eq!(default.inbound_port, 15006);
    assert_eq!(default.inbound_exclude, [15008, 15000, 15020, 15021]);
    let p = |s: &str| s.parse().unwrap();
    let moved = Listeners {
        outbound: p("0.0.0.0:16001"),
        inbound_plaintext: p("0.0.0.0:16006"),
        hbone: p("0.0.0.0:16008"),
        admin: p("127.0.0.1:16000"),
        metrics: p("0.0.0.0:16020"),
        readiness: p("0.0.0.0:16021"),
    };
    let rules = moved.sidecar_rules(vec!["10.0.0.2".parse().unwrap()]);
    assert_eq!(rules.outbound_port, 16001);
    assert_eq!(rules.inbound_port, 16006);
    assert_eq!(rules.inbound_exclude, [16008, 16000, 16020, 16021]);
    assert_eq!(
        rules.inbound_exempt_sources,
        ["10.0.0.2".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(rules.mark, crate::capture::rules::ZTUNNEL_MARK);
    assert_eq!(moved.capture_ports(), [16001, 16006]);
    assert_eq!(
        moved.tproxy_ports(),
        ListenerPorts {
            outbound: 16001,
            inbound_plaintext: 16006,
            hbone: 16008,
        }
    );
    assert_eq!(
        Listeners::default().tproxy_ports(),
        ListenerPorts::default()
    );
    let text = sidecar::ruleset(&rules);
    assert!(text.contains("redirect to :16001"), "{text}");
    assert!(text.contains("redirect to :16006"), "{text}");
    assert!(
        text.contains("tcp dport { 16008, 16000, 16020, 16021 } return"),
        "{text}"
    );
}

#[test]
fn probe_sources_prefer_the_flag_then_the_config() {
    let snap = mesh_model::config::parse(
        "nodes: [{name: n1, ip: 10.0.0.1}, {name: n6, ip: 'fd00::6'}]\n\
         namespaces: [{name: shop}]\n\
         workloads: [{name: a, namespace: shop, ip: 10.1.1.2, node: n1}]\n",
    )
    .unwrap();
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
    let cases: [(Option<&str>, &str, Vec<std::net::Ipv4Addr>); 7] = [
        (Some("10.9.9.9"), "n1", vec![ip("10.9.9.9")]),
        (None, "n1", vec![ip("10.0.0.1")]),
        (Some("10.9.9.9"), "unknown", vec![ip("10.9.9.9")]),
        // Not in the config (as over xDS) and no flag: nothing is exempt.
        (None, "unknown", vec![]),
        // An IPv6-only node: the IPv4 ruleset has nothing to exempt.
        (None, "n6", vec![]),
        // An IPv6 flag is ignored: the config's address still counts.
        (Some("fd00::9"), "n1", vec![ip("10.0.0.1")]),
        (Some("fd00::9"), "unknown", vec![]),
    ];
    for (flag, node, want) in cases {
        let flag_ip = flag.map(|f| f.parse::<std::net::IpAddr>().unwrap());
        assert_eq!(
            probe_sources(flag_ip, &snap, node),
            want,
            "--node-ip {flag:?}, node {node}"
        );
    }
}
