//! A full push larger than a client's message limit (tonic's 4 MiB): the
//! real `control-plane` process cuts it into several responses and the
//! real xDS client (mesh-runtime's) receives every workload, ACKing each
//! response. Before, the one response exceeded the limit, the client
//! failed to decode it and reconnected, for ever.

mod support;

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mesh_runtime::xds::client::MAX_MESSAGE_BYTES;
use support::{ControlPlane, Follower, Options};

/// Workloads in the mesh: well past the size where one response of
/// addresses would exceed 4 MiB (about 27,800 here: 151 bytes per
/// workload, see the output).
const WORKLOADS: usize = 40_000;

fn mesh(n: usize) -> String {
    let mut y = String::from(
        "nodes: [{name: node1, ip: 10.0.0.1}]\n\
         namespaces: [{name: shop, labels: {istio.io/dataplane-mode: ambient}}]\n\
         workloads:\n",
    );
    for i in 0..n {
        let (a, b, c) = (1 + i / 65536, (i / 256) % 256, i % 256);
        writeln!(
            y,
            "- {{name: w-{i:05}, namespace: shop, serviceAccount: cart, ip: 10.{a}.{b}.{c}, node: node1}}"
        )
        .unwrap();
    }
    y
}

/// The bytes one response holding every address of `yaml` would take, and
/// the average per workload: computed from the encoded resources, as the
/// control plane encodes them.
fn one_response_bytes(yaml: &str) -> (usize, usize) {
    use control_plane::delta::{resource_len, Delta};
    use control_plane::resources::{Kind, ResourceSet};
    let snap = mesh_model::config::parse(yaml).unwrap();
    let set = ResourceSet::from_snapshot(&snap);
    let delta = Delta {
        updated: set.addresses.values().cloned().collect(),
        removed: vec![],
    };
    let total = control_plane::xds::response(Kind::Address, &delta, "1".into());
    let per = delta
        .updated
        .iter()
        .map(|r| resource_len(Kind::Address, r))
        .sum::<usize>()
        / delta.updated.len();
    (prost::Message::encoded_len(&total), per)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_past_the_message_limit_arrives_whole_in_several_acked_responses() {
    let yaml = mesh(WORKLOADS);
    let (whole, per_workload) = one_response_bytes(&yaml);
    eprintln!(
        "one response of {WORKLOADS} workloads: {whole} bytes ({per_workload} per workload); \
         the {MAX_MESSAGE_BYTES}-byte limit is passed from {} workloads",
        MAX_MESSAGE_BYTES / per_workload + 1
    );
    assert!(
        whole > MAX_MESSAGE_BYTES * 5 / 4,
        "the mesh is too small to test the limit"
    );
    let cp = ControlPlane::start(&yaml, Options::default());
    let started = Instant::now();
    let mut client = Follower::start(cp.endpoint(None));
    let snap = client
        .next(Duration::from_secs(120))
        .await
        .unwrap_or_else(|| panic!("no complete sync:\n{}", cp.log()));
    assert_eq!(snap.workloads().count(), WORKLOADS);
    eprintln!("{WORKLOADS} workloads synced in {:?}", started.elapsed());

    let s = &client.stats;
    let (responses, acks, nacks) = (
        s.responses.load(Ordering::Relaxed),
        s.acks.load(Ordering::Relaxed),
        s.nacks.load(Ordering::Relaxed),
    );
    eprintln!("received in {responses} responses");
    // Addresses in several responses, plus the (empty) policies.
    assert!(responses >= 5, "{responses} responses");
    assert_eq!((acks, nacks), (responses, 0), "every response ACKed");
    assert_eq!(s.connects.load(Ordering::Relaxed), 1, "no reconnect");
    client.stop().await;
}
