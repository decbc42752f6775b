//! ztunnel's xDS client (mesh-runtime) against the real `control-plane`
//! process: a control plane frozen with SIGSTOP keeps its TCP connection
//! open (the kernel still acknowledges), so only HTTP/2 keepalive can tell
//! it is gone. The client must notice within the keepalive bound, and
//! reconnect once the control plane answers again.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mesh_runtime::xds::connector::ChannelOptions;
use nix::sys::signal::Signal;
use support::{until, ControlPlane, Follower, Options, MESH};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_control_plane_is_detected_and_the_stream_reconnects() {
    let cp = ControlPlane::start(MESH, Options::default());
    let opts = ChannelOptions {
        connect_timeout: Duration::from_secs(1),
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
    };
    let (client, mut f) = Follower::client(cp.endpoint(None));
    f.task = tokio::spawn(client.run_with(f.drain(), opts));
    f.next(Duration::from_secs(10)).await.expect("first sync");
    let stats = f.stats.clone();
    assert_eq!(stats.connects.load(Ordering::Relaxed), 1);

    cp.signal(Signal::SIGSTOP);
    let frozen = Instant::now();
    // A PING goes out within one interval and is given one timeout.
    let bound = opts.keepalive_interval + opts.keepalive_timeout + Duration::from_secs(3);
    let detected = until(bound, || stats.disconnects.load(Ordering::Relaxed) >= 1).await;
    assert!(
        detected,
        "a frozen control plane went unnoticed for {bound:?}"
    );
    eprintln!("frozen control plane noticed after {:?}", frozen.elapsed());
    // Attempts while it is frozen fail at the connect deadline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stats.connects.load(Ordering::Relaxed), 1);
    while f.snapshots.try_recv().is_ok() {}

    cp.signal(Signal::SIGCONT);
    let thawed = Instant::now();
    let back = until(Duration::from_secs(20), || {
        stats.connects.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert!(back, "no reconnect after SIGCONT:\n{}", cp.log());
    let snap = f
        .next(Duration::from_secs(10))
        .await
        .expect("a response on the new stream");
    assert_eq!(snap.workloads().count(), 1);
    eprintln!("reconnected {:?} after SIGCONT", thawed.elapsed());
    f.stop().await;
}
