//! Where one config edit's control-plane time goes, in-process, on the
//! xds-bench mesh (`--workloads N`, default 10,000, a tenth as many
//! services): parsing the file, converting and encoding the resource set,
//! and one client's delta, both from scratch (as before issue 4) and
//! incrementally (what the control plane does now). Each stage is timed
//! over a few edits that rename one workload; prints the median per stage.
//!
//! `cargo run --release -p mesh-benches --bin edit-cost [-- --workloads N]`

use std::time::{Duration, Instant};

use std::sync::Arc;

use control_plane::delta::{History, Subscription};
use control_plane::resources::{Kind, ResourceSet};
use mesh_model::config::IncrementalParser;
use mesh_model::input::MeshInput;
use proto::discovery::DeltaDiscoveryRequest;

/// xds-bench's generated mesh; this tool uses only its config file.
#[allow(dead_code, reason = "this tool uses only the config file")]
#[path = "xds-bench/mesh.rs"]
mod mesh;

/// As in the `control-plane` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EDITS: usize = 9;

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
        .map(|g| {
            mesh::config(
                &mesh::Scale {
                    workloads,
                    services,
                },
                g,
            )
        })
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
    let mut parser = IncrementalParser::new();
    let mut input = MeshInput::default();
    let first = parser.parse_objects(&texts[0]).unwrap();
    let mut snap = input
        .replace(&first.trust_domain, first.objects)
        .unwrap()
        .snapshot;
    let mut set = ResourceSet::from_snapshot(&snap);
    let mut history = History::default();
    sub.commit_at(&sub.diff(&set.addresses), 0);
    for (generation, text) in (1..).zip(&texts[1..]) {
        // From scratch.
        let t = Instant::now();
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
        time("whole: serde_yaml_ng to a Value (reference)", t.elapsed());
        drop(value);
        let t = Instant::now();
        let whole = mesh_model::config::parse(text).unwrap();
        time(
            "whole: config::parse (YAML, checks, Snapshot::build)",
            t.elapsed(),
        );
        let t = Instant::now();
        let addrs = control_plane::convert::addresses(&whole);
        time("whole: convert::addresses (no encoding)", t.elapsed());
        drop(addrs);
        let t = Instant::now();
        let scratch = ResourceSet::from_snapshot(&whole);
        time("whole: ResourceSet::from_snapshot", t.elapsed());
        let t = Instant::now();
        let full = sub.diff(&scratch.addresses);
        time("whole: one client's full diff", t.elapsed());
        assert_eq!((full.updated.len(), full.removed.len()), (1, 1));

        // Incremental.
        let t = Instant::now();
        let parsed = parser.parse_objects(text).unwrap();
        time("incremental: IncrementalParser::parse_objects", t.elapsed());
        assert_eq!(parser.stats().parsed, 1, "{:?}", parser.stats());
        let t = Instant::now();
        let changes = input.diff(parsed.objects);
        time("incremental: MeshInput::diff (keyed changes)", t.elapsed());
        let t = Instant::now();
        let update = input.apply(changes).unwrap();
        time(
            "incremental: MeshInput::apply (touched, Snapshot::build)",
            t.elapsed(),
        );
        let next = update.snapshot;
        let t = Instant::now();
        let (next_set, changes) = set.update(&snap, &next, &update.touched);
        time("incremental: ResourceSet::update", t.elapsed());
        assert_eq!(changes.len(), 2);
        history.push(generation, Arc::new(changes));
        let t = Instant::now();
        let delta = sub.diff_published(&next_set.addresses, generation, &history, Kind::Address);
        time("incremental: one client's diff_published", t.elapsed());
        assert_eq!((delta.updated.len(), delta.removed.len()), (1, 1));
        sub.commit_at(&delta, generation);
        assert_eq!(next_set, scratch);
        (snap, set) = (next, next_set);
    }
    for (name, v) in stages {
        println!("{:>10.2} ms  {name}", median(v).as_secs_f64() * 1e3);
    }
}
