use proptest::prelude::*;

use super::*;

const DEMO: &str = include_str!("../../../../ztunnel/examples/demo-config.yaml");

/// The reference: the whole text through serde, as [`super::super::parse`] does.
fn whole(text: &str) -> Option<File> {
    serde_yaml_ng::from_str::<Option<File>>(text)
        .ok()
        .map(Option::unwrap_or_default)
}

fn keys_and_items(text: &str) -> Option<Vec<(&str, Option<usize>)>> {
    Some(
        split(text)?
            .into_iter()
            .map(|s| (s.key, s.items.map(|i| i.len())))
            .collect(),
    )
}

#[test]
fn split_table() {
    type Want = Option<Vec<(&'static str, Option<usize>)>>;
    let cases: Vec<(&str, &str, Want)> =
        vec![
        ("empty", "", Some(vec![])),
        ("comments only", "# a\n\n  # b\n", Some(vec![])),
        (
            "block items",
            "trustDomain: td\nnodes:\n  - {name: a, ip: 10.0.0.1}\n  - name: b\n    ip: 10.0.0.2\n",
            Some(vec![("trustDomain", None), ("nodes", Some(2))]),
        ),
        (
            "items at column 0, comments between",
            "nodes:\n# c\n- {name: a, ip: 10.0.0.1}\n\n  # c\n- {name: b, ip: 10.0.0.2}\n",
            Some(vec![("nodes", Some(2))]),
        ),
        (
            "flow list is one piece",
            "nodes: [{name: a, ip: 10.0.0.1}]\n",
            Some(vec![("nodes", None)]),
        ),
        (
            "header comment",
            "nodes:   # the nodes\n  - {name: a, ip: 10.0.0.1}\n",
            Some(vec![("nodes", Some(1))]),
        ),
        (
            "uneven items are one piece",
            "nodes:\n  - {name: a, ip: 10.0.0.1}\n - {name: b, ip: 10.0.0.2}\n",
            Some(vec![("nodes", None)]),
        ),
        (
            "a mapping, not a list, is one piece",
            "nodes:\n  name: a\n",
            Some(vec![("nodes", None)]),
        ),
        ("CRLF", "nodes:\r\n  - {name: a, ip: 1.2.3.4}\r\n", Some(vec![("nodes", Some(1))])),
        ("document marker", "---\nnodes: []\n", None),
        ("directive", "%YAML 1.2\n---\nnodes: []\n", None),
        ("quoted key", "\"nodes\": []\n", None),
        ("not a key", "nodes:[]\n", None),
        ("duplicate section", "nodes: []\nnodes: []\n", None),
        ("indented first line", "  nodes: []\n", None),
        ("list document", "- a\n", None),
        ("flow document", "{nodes: []}\n", None),
        ("tab", "\tnodes: []\n", None),
    ];
    for (what, text, want) in cases {
        assert_eq!(keys_and_items(text), want, "{what}");
    }
}

#[test]
fn demo_matches_the_whole_parse_and_reuses_on_an_edit() {
    let mut p = IncrementalParser::new();
    assert_eq!(p.file(DEMO), whole(DEMO));
    assert!(p.stats().parsed > 10, "{:?}", p.stats());
    let edited = DEMO.replace("ip: 10.1.2.12", "ip: 10.1.2.13");
    assert_eq!(p.file(&edited), whole(&edited));
    // `file` does not reset the stats; `parse` does.
    p.parse(&edited).unwrap();
    let s = p.stats();
    assert_eq!((s.parsed, s.whole), (0, false), "{s:?}");
    let again = DEMO.replace("name: cart-3", "name: cart-4");
    p.parse(&again).unwrap();
    assert_eq!(p.stats().parsed, 1, "only the edited item: {:?}", p.stats());
}

#[test]
fn errors_are_the_whole_parses() {
    let bad = [
        // Syntax error inside one item: the line is the file's.
        DEMO.replace(
            "    node: node2\n    labels: {app: ledger}",
            "    node: node2\n    labels: {app: [ledger}",
        ),
        // An unknown key in an item.
        DEMO.replacen("serviceAccount: cart\n", "serviceAcount: cart\n", 1),
        // An unknown section.
        format!("{DEMO}\nextra: 1\n"),
        // A semantic error, located by key.
        DEMO.replacen("node: node2", "node: node9", 1),
        // A duplicate section.
        format!("{DEMO}\nnodes: []\n"),
    ];
    let mut p = IncrementalParser::new();
    p.parse(DEMO).unwrap();
    for text in &bad {
        let want = super::super::parse(text).map(drop).unwrap_err();
        let got = p.parse(text).map(drop).unwrap_err();
        assert_eq!(got.to_string(), want.to_string());
        assert_eq!(
            format!(
                "{:?}",
                std::error::Error::source(&got).map(ToString::to_string)
            ),
            format!(
                "{:?}",
                std::error::Error::source(&want).map(ToString::to_string)
            ),
        );
        // Back to the good file: at most the edited piece is parsed again
        // (a piece that failed is never cached; one that parsed but broke a
        // check is).
        p.parse(DEMO).unwrap();
        assert!(p.stats().parsed <= 1, "{:?}", p.stats());
        assert!(!p.stats().whole);
    }
}

#[test]
fn an_alias_across_items_falls_back_to_the_whole_parse() {
    let text = "nodes:\n  - name: a\n    ip: &ip 10.0.0.1\n  - name: b\n    ip: *ip\n";
    let mut p = IncrementalParser::new();
    // Both fail (duplicate IP), but the whole parse is what reports it.
    let _ = p.parse(text);
    assert!(p.stats().whole);
    let ok = "nodes:\n  - name: a\n    labels: &l {x: y}\n    ip: 10.0.0.1\n";
    assert_eq!(p.file(ok), whole(ok));
}

/// One list item in one of the layouts people write.
fn item(style: u8, fields: &[(&str, String)], labels: &[(String, String)]) -> String {
    let labels_flow = labels
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    match style % 3 {
        // flow mapping on one line
        0 => {
            let mut f: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            if !labels.is_empty() {
                f.push(format!("labels: {{{labels_flow}}}"));
            }
            format!("  - {{{}}}\n", f.join(", "))
        }
        // block mapping, labels as a block, a comment inside
        1 => {
            let mut s = String::new();
            for (i, (k, v)) in fields.iter().enumerate() {
                s += &format!("{}{k}: {v}\n", if i == 0 { "  - " } else { "    " });
            }
            if !labels.is_empty() {
                s += "    # labels\n    labels:\n";
                for (k, v) in labels {
                    s += &format!("      {k}: {v}\n");
                }
            }
            s
        }
        // block mapping at column 0 with quoted values and a blank line
        _ => {
            let mut s = String::new();
            for (i, (k, v)) in fields.iter().enumerate() {
                s += &format!("{}{k}: \"{v}\"\n", if i == 0 { "- " } else { "  " });
            }
            if !labels.is_empty() {
                s += &format!("  labels: {{{labels_flow}}}\n\n");
            }
            s
        }
    }
}

#[derive(Debug, Clone)]
struct Pod {
    name: u8,
    ns: u8,
    node: u8,
    ip: u8,
    app: u8,
    style: u8,
}

fn pod() -> impl Strategy<Value = Pod> {
    (0u8..30, 0u8..3, 0u8..3, 0u8..40, 0u8..4, 0u8..3).prop_map(
        |(name, ns, node, ip, app, style)| Pod {
            name,
            ns,
            node,
            ip,
            app,
            style,
        },
    )
}

/// A config in mixed layouts; some are invalid (duplicates, unknown
/// references) or malformed (`broken`), which both parsers must agree on.
fn render(pods: &[Pod], ambient: &[bool; 3], broken: Option<usize>, flow_nodes: bool) -> String {
    let mut y = String::from("# generated\ntrustDomain: cluster.local\n");
    if flow_nodes {
        y += "nodes: [{name: n0, ip: 10.0.0.1}, {name: n1, ip: 10.0.0.2}]\n";
    } else {
        y += "nodes:\n  - {name: n0, ip: 10.0.0.1}\n  - name: n1\n    ip: 10.0.0.2\n";
    }
    y += "namespaces:\n";
    for (i, a) in ambient.iter().enumerate() {
        let labels = if *a {
            "{istio.io/dataplane-mode: ambient}"
        } else {
            "{}"
        };
        y += &format!("  - {{name: ns{i}, labels: {labels}}}\n");
    }
    y += "workloads:\n";
    for (i, p) in pods.iter().enumerate() {
        let fields = [
            ("name", format!("p{}", p.name)),
            ("namespace", format!("ns{}", p.ns)),
            ("ip", format!("10.1.0.{}", p.ip)),
            ("node", format!("n{}", p.node)),
        ];
        let labels = [("app".to_owned(), format!("a{}", p.app))];
        let mut it = item(p.style, &fields, &labels);
        if broken == Some(i) {
            it = it.replacen(':', ": [", 1);
        }
        y += &it;
    }
    y += "services:\n  - {name: s, namespace: ns0, vip: 10.96.0.1, ports: [{port: 80}], selector: {app: a1}}\n";
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For any sequence of versions, the incremental parser gives exactly
    /// the whole parse's model, or the same error.
    #[test]
    fn incremental_equals_whole(
        versions in prop::collection::vec(
            (
                prop::collection::vec(pod(), 0..12),
                prop::array::uniform3(any::<bool>()),
                prop::option::weighted(0.15, 0usize..12),
                any::<bool>(),
            ),
            1..6,
        )
    ) {
        let mut p = IncrementalParser::new();
        for (pods, ambient, broken, flow) in versions {
            let text = render(&pods, &ambient, broken, flow);
            if let Some(file) = p.file(&text) {
                prop_assert_eq!(Some(file), whole(&text), "{}", text);
            }
            let want = super::super::parse(&text).map_err(|e| e.to_string());
            let got = p.parse(&text).map_err(|e| e.to_string());
            match (want, got) {
                (Ok(a), Ok(b)) => {
                    let uids = |s: &Snapshot| s.workloads().map(|w| (**w).clone()).collect::<Vec<_>>();
                    prop_assert_eq!(uids(&a), uids(&b));
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "whole {:?} vs incremental {:?}", a.map(drop), b.map(drop)),
            }
        }
    }
}
