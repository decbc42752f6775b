//! Soak: connection churn and bulk streams through two ztunnels for a
//! bounded time, with each ztunnel's RSS and open file descriptors sampled
//! throughout. After a warm-up they must stay flat: RSS grows by at most
//! 10% + 4 MiB from the second quarter of the run to the last, the
//! descriptors held under load do not climb, and once the load stops every
//! descriptor the load opened is closed again. Nothing is dropped.
//!
//! `MESH_SOAK_SECS` sets the length (default 60 s; CI keeps it at most
//! 120 s); run longer by hand, e.g. `MESH_SOAK_SECS=1800`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_tests::echo::{echo_through, App};
use mesh_tests::load::prepare_for_churn;
use mesh_tests::mesh::{metric_value, Mesh};
use mesh_tests::traffic::{Churn, LongStream};
use mesh_tests::{require_root, Topology};

/// One sample of a process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
}

fn sample(pid: u32, at: Duration) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count();
    Sample { at, rss_kib, fds }
}

fn soak_secs() -> u64 {
    std::env::var("MESH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
        .max(20)
}

/// Samples taken in `[from, to)` of the run.
fn window(samples: &[Sample], from: Duration, to: Duration) -> Vec<Sample> {
    samples
        .iter()
        .copied()
        .filter(|s| s.at >= from && s.at < to)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_and_bulk_leave_ztunnel_rss_and_fds_flat() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("server", 2)
        .build()
        .unwrap();
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    let config = format!(
        r#"
nodes: [{{name: node1, ip: 10.0.0.1}}, {{name: node2, ip: 10.0.0.2}}]
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
  - {{name: bank, labels: {{istio.io/dataplane-mode: ambient}}, mtls: STRICT}}
workloads:
  - {{name: client, namespace: shop, serviceAccount: client, ip: {}, node: node1}}
  - {{name: server, namespace: bank, serviceAccount: server, ip: {}, node: node2}}
"#,
        client.ip, server.ip
    );
    // Churn from one client for a minute or more outruns the default
    // ephemeral range (TIME_WAIT): reuse and widen it, as the benchmarks do.
    for ns in [&client.ns, &topo.node(1).ns, &topo.node(2).ns] {
        prepare_for_churn(ns).expect("sysctls for churn");
    }
    let mut mesh = Mesh::new(&topo, &config);
    mesh.start_all();
    let _app = App::serve(&server.ns, 8080);
    let to = SocketAddr::from((server.ip, 8080));
    let back = echo_through(&client.ns, to, b"hello")
        .await
        .expect("served");
    assert_eq!(back, b"hello");
    let pids = [mesh.ztunnel_pid(1), mesh.ztunnel_pid(2)];
    let idle: Vec<Sample> = pids.iter().map(|&p| sample(p, Duration::ZERO)).collect();

    let total = Duration::from_secs(soak_secs());
    let begin = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push(LongStream::open(&client.ns, to).await);
    }
    let churn = Churn::start(&client.ns, to, 4);
    let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    while begin.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (n, &pid) in pids.iter().enumerate() {
            samples[n].push(sample(pid, begin.elapsed()));
        }
    }
    let (connections, failures) = churn.stop().await;
    let mut moved = Vec::new();
    for s in streams {
        moved.push(s.finish().await.expect("a bulk stream through the soak"));
    }
    assert!(
        failures.is_empty(),
        "{} dropped or failed, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(connections > 100, "only {connections} connections");

    // Every connection closed: the descriptors the load opened are gone.
    for node in [1, 2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric_value(&mesh.metrics(node), "ztunnel_active_connections") != Some(0.0) {
            assert!(
                Instant::now() < deadline,
                "node{node}: connections stay open"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let quarter = total / 4;
    for (n, &pid) in pids.iter().enumerate() {
        let after = sample(pid, begin.elapsed());
        let second = window(&samples[n], quarter, 2 * quarter);
        let last = window(&samples[n], 3 * quarter, total + quarter);
        let max_rss = |w: &[Sample]| w.iter().map(|s| s.rss_kib).max().expect("samples");
        let max_fds = |w: &[Sample]| w.iter().map(|s| s.fds).max().expect("samples");
        let (rss_warm, rss_last) = (max_rss(&second), max_rss(&last));
        let (fds_warm, fds_last) = (max_fds(&second), max_fds(&last));
        eprintln!(
            "node{}: {connections} connections, bulk {moved:?} bytes in {total:?}; RSS {} KiB idle, {rss_warm} KiB after warm-up, {rss_last} KiB at the end; fds {} idle, {fds_warm}/{fds_last} under load, {} after",
            n + 1,
            idle[n].rss_kib,
            idle[n].fds,
            after.fds
        );
        assert!(
            rss_last <= rss_warm + rss_warm / 10 + 4096,
            "node{}: RSS grew from {rss_warm} KiB to {rss_last} KiB after warm-up",
            n + 1
        );
        assert!(
            fds_last <= fds_warm + 16,
            "node{}: descriptors climbed from {fds_warm} to {fds_last} under the same load",
            n + 1
        );
        assert!(
            after.fds <= idle[n].fds + 8,
            "node{}: {} descriptors after the load, {} before: leaked",
            n + 1,
            after.fds,
            idle[n].fds
        );
    }
    mesh.terminate_all();
}
