//! Table tests on the rendered ruleset (no I/O).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::rules::{ip_rule_selector, render_delete, ListenerPorts};

/// The ruleset for `pods` with the default listener ports.
fn render_ruleset(pods: &BTreeSet<Ipv4Addr>) -> String {
    super::rules::render_ruleset(pods, &ListenerPorts::default())
}

fn pods(ips: &[[u8; 4]]) -> BTreeSet<Ipv4Addr> {
    ips.iter().map(|o| Ipv4Addr::from(*o)).collect()
}

fn lines(script: &str) -> Vec<&str> {
    script.lines().map(str::trim).collect()
}

fn position(script: &str, needle: &str) -> usize {
    lines(script)
        .iter()
        .position(|l| *l == needle)
        .unwrap_or_else(|| panic!("missing line `{needle}` in:\n{script}"))
}

#[test]
fn replaces_the_table_atomically() {
    let s = render_ruleset(&pods(&[[10, 1, 1, 10]]));
    let l = lines(&s);
    assert_eq!(l[0], "table inet ambient {}");
    assert_eq!(l[1], "delete table inet ambient");
    assert_eq!(l[2], "table inet ambient {");
    assert_eq!(*l.last().unwrap(), "}");
    assert_eq!(s.matches("delete").count(), 1);
}

#[test]
fn pod_set_elements() {
    let cases: &[(&[[u8; 4]], Option<&str>)] = &[
        (&[], None),
        (&[[10, 1, 1, 10]], Some("elements = { 10.1.1.10 }")),
        (
            &[[10, 1, 1, 12], [10, 1, 1, 10], [10, 1, 1, 12]],
            Some("elements = { 10.1.1.10, 10.1.1.12 }"),
        ),
    ];
    for (ips, want) in cases {
        let s = render_ruleset(&pods(ips));
        assert!(s.contains("set ambient_pods {"));
        assert!(s.contains("type ipv4_addr"));
        match want {
            Some(line) => assert!(lines(&s).contains(line), "{ips:?}: {s}"),
            None => assert!(!s.contains("elements"), "{s}"),
        }
    }
}

#[test]
fn prerouting_rules_in_order() {
    let s = render_ruleset(&pods(&[[10, 1, 1, 10]]));
    let ordered = [
        "chain prerouting {",
        "type filter hook prerouting priority mangle; policy accept;",
        "meta l4proto != tcp return",
        "meta mark 0x539 return",
        "ct mark 0x539 meta mark set 0x400 return",
        "ct direction reply return",
        "fib daddr type local return",
        "meta l4proto tcp ip saddr @ambient_pods meta mark set 0x400 tproxy ip to :15001 accept",
        "ip daddr @ambient_pods tcp dport 15008 meta mark set 0x400 tproxy ip to :15008 accept",
        "meta l4proto tcp ip daddr @ambient_pods meta mark set 0x400 tproxy ip to :15006 accept",
    ];
    let at: Vec<usize> = ordered.iter().map(|l| position(&s, l)).collect();
    assert!(
        at.windows(2).all(|w| w[1] == w[0] + 1),
        "rules out of order: {at:?}\n{s}"
    );
}

/// The listener flags move the rules' targets: each capture rule delivers
/// to its listener's port. HBONE is still matched on the mesh's 15008, which
/// is what peers dial.
#[test]
fn tproxy_targets_follow_the_listener_ports() {
    let pods = pods(&[[10, 1, 1, 10]]);
    let cases: &[(ListenerPorts, [&str; 3])] = &[
        (
            ListenerPorts::default(),
            [
                "meta l4proto tcp ip saddr @ambient_pods meta mark set 0x400 tproxy ip to :15001 accept",
                "ip daddr @ambient_pods tcp dport 15008 meta mark set 0x400 tproxy ip to :15008 accept",
                "meta l4proto tcp ip daddr @ambient_pods meta mark set 0x400 tproxy ip to :15006 accept",
            ],
        ),
        (
            ListenerPorts {
                outbound: 16001,
                inbound_plaintext: 16006,
                hbone: 16008,
            },
            [
                "meta l4proto tcp ip saddr @ambient_pods meta mark set 0x400 tproxy ip to :16001 accept",
                "ip daddr @ambient_pods tcp dport 15008 meta mark set 0x400 tproxy ip to :16008 accept",
                "meta l4proto tcp ip daddr @ambient_pods meta mark set 0x400 tproxy ip to :16006 accept",
            ],
        ),
        // Only one moved: the others keep their defaults.
        (
            ListenerPorts {
                hbone: 25008,
                ..ListenerPorts::default()
            },
            [
                "meta l4proto tcp ip saddr @ambient_pods meta mark set 0x400 tproxy ip to :15001 accept",
                "ip daddr @ambient_pods tcp dport 15008 meta mark set 0x400 tproxy ip to :25008 accept",
                "meta l4proto tcp ip daddr @ambient_pods meta mark set 0x400 tproxy ip to :15006 accept",
            ],
        ),
    ];
    for (ports, want) in cases {
        let s = super::rules::render_ruleset(&pods, ports);
        let tproxy: Vec<&str> = lines(&s)
            .into_iter()
            .filter(|l| l.contains("tproxy"))
            .collect();
        assert_eq!(tproxy, want, "{ports:?}");
    }
}

#[test]
fn output_chain_saves_ztunnel_mark() {
    let s = render_ruleset(&BTreeSet::new());
    let chain = position(&s, "chain output {");
    assert_eq!(
        position(&s, "type route hook output priority mangle; policy accept;"),
        chain + 1
    );
    assert_eq!(position(&s, "meta mark 0x539 ct mark set 0x539"), chain + 2);
}

#[test]
fn every_tproxy_rule_sets_the_capture_mark_first() {
    let s = render_ruleset(&pods(&[[10, 1, 2, 3]]));
    let tproxy: Vec<&str> = lines(&s)
        .into_iter()
        .filter(|l| l.contains("tproxy"))
        .collect();
    assert_eq!(tproxy.len(), 3);
    for rule in tproxy {
        let mark = rule.find("meta mark set 0x400").expect(rule);
        assert!(mark < rule.find("tproxy").unwrap(), "{rule}");
        assert!(rule.ends_with("accept"), "{rule}");
    }
}

#[test]
fn delete_script_is_idempotent_form() {
    assert_eq!(
        render_delete(),
        "table inet ambient {}\ndelete table inet ambient\n"
    );
    assert_eq!(ip_rule_selector(), "fwmark 0x400/0xfff lookup 100");
}

#[test]
fn nft_errors_name_the_command_and_carry_stderr() {
    // A syntax error is reported by nft before it touches the kernel, so this
    // needs no privileges; only the binary.
    let script = "table inet ambient {\n\tchain prerouting {\n\t\tbogus_keyword 1\n\t}\n}\n";
    match super::apply_nft(script, "replace table inet ambient") {
        Err(super::CaptureError::Spawn { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "nft is not installed (CI is set, so this is a failure)"
            );
            eprintln!("SKIPPED: nft is not installed (set CI=true to make this a failure)");
        }
        Err(err @ super::CaptureError::Failed { .. }) => {
            let msg = err.to_string();
            assert!(
                msg.contains("nft -f - (replace table inet ambient)"),
                "{msg}"
            );
            assert!(msg.contains("bogus_keyword"), "nft stderr missing: {msg}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}
