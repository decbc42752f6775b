//! Where one config edit's control-plane time goes, in-process, on the
//! xds-bench mesh (`--workloads N`, default 10,000, a tenth as many
//! services): parsing the file, converting and encoding the resource set,
//! and one client's delta. Each stage is timed over a few edits that rename
//! one workload; prints the median per stage.
//!
//! `cargo run --release -p control-plane --example edit_cost [-- --workloads N]`

use std::fmt::Write;
use std::time::{Duration, Instant};

use control_plane::delta::Subscription;
use control_plane::resources::ResourceSet;
use proto::discovery::DeltaDiscoveryRequest;

const NODES: usize = 50;
const NAMESPACES: usize = 20;
const APPS: usize = 1000;
const EDITS: usize = 9;

/// The same shape as xds-bench's mesh.
fn config(workloads: usize, services: usize, generation: usize) -> String {
    let mut y = String::with_capacity(workloads * 160 + 4096);
    y.push_str("trustDomain: cluster.local\nnodes:\n");
    for n in 0..NODES {
        let _ = writeln!(y, "  - {{name: node{}, ip: 10.0.0.{}}}", n + 1, n + 1);
    }
    y.push_str("namespaces:\n");
    for ns in 0..NAMESPACES {
        let _ = writeln!(
            y,
            "  - {{name: ns{ns}, labels: {{istio.io/dataplane-mode: ambient}}}}"
        );
    }
    y.push_str("workloads:\n");
    for i in 0..workloads {
        let _ = writeln!(
            y,
            "  - {{name: w{i}, namespace: ns{}, serviceAccount: sa{}, ip: 10.{}.{}.{}, node: node{}, labels: {{app: app{}}}}}",
            i % NAMESPACES,
            i % 50,
            128 + (i >> 16),
            (i >> 8) & 255,
            i & 255,
            i % NODES + 1,
            i % APPS
        );
    }
    let _ = writeln!(
        y,
        "  - {{name: marker-{generation}, namespace: ns0, serviceAccount: marker, ip: 10.255.0.1, node: node1}}"
    );
    if services > 0 {
        y.push_str("services:\n");
    }
    for j in 0..services {
        let _ = writeln!(
            y,
            "  - {{name: s{j}, namespace: ns{}, vip: 10.96.{}.{}, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: app{}}}}}",
            j % NAMESPACES,
            j / 250,
            j % 250 + 1,
            j % APPS
        );
    }
    y
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut workloads = 10_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workloads" => workloads = args.next().and_then(|n| n.parse().ok()).expect("N"),
            other => panic!("unknown argument {other:?}"),
        }
    }
    let services = workloads / 10;
    let texts: Vec<String> = (0..=EDITS)
        .map(|g| config(workloads, services, g))
        .collect();
    println!(
        "{workloads} workloads, {services} services, file {} KiB, {EDITS} edits",
        texts[0].len() / 1024
    );
    let mut stages: Vec<(&str, Vec<Duration>)> = Vec::new();
    let mut time = |name: &'static str, d: Duration| match stages.iter_mut().find(|s| s.0 == name) {
        Some(s) => s.1.push(d),
        None => stages.push((name, vec![d])),
    };

    let mut sub = Subscription::default();
    sub.on_request(&DeltaDiscoveryRequest::default());
    let first = ztunnel::config::parse(&texts[0]).unwrap();
    let mut set = ResourceSet::from_snapshot(&first);
    sub.commit(&sub.diff(&set.addresses));
    for text in &texts[1..] {
        let t = Instant::now();
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
        time("serde_yaml_ng to Value (reference)", t.elapsed());
        drop(value);

        let t = Instant::now();
        let snap = ztunnel::config::parse(text).unwrap();
        time(
            "config::parse (YAML + checks + Snapshot::build)",
            t.elapsed(),
        );

        let t = Instant::now();
        let addrs = control_plane::convert::addresses(&snap);
        time("convert::addresses (no encoding)", t.elapsed());
        drop(addrs);

        let t = Instant::now();
        set = ResourceSet::from_snapshot(&snap);
        time("ResourceSet::from_snapshot", t.elapsed());

        let t = Instant::now();
        let delta = sub.diff(&set.addresses);
        time("one client's diff", t.elapsed());
        assert_eq!(delta.updated.len(), 1);
        assert_eq!(delta.removed.len(), 1);
        sub.commit(&delta);
    }
    for (name, v) in stages {
        println!("{:>10.2} ms  {name}", median(v).as_secs_f64() * 1e3);
    }
}
