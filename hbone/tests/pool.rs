//! The client pool: stream multiplexing, certificate rotation under load, and
//! healing after the server restarts.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{echo_roundtrip, Behavior, Mesh, Pattern, TestServer};
use hbone::ca::DevCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_share_ten_connections() {
    const STREAMS: usize = 1000;
    const BYTES: u64 = 16 * 1024;
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();
    // Every stream is open at the barrier, so the pool must hold all 1,000
    // at once: exactly ceil(1000 / 100) connections.
    let barrier = Arc::new(Barrier::new(STREAMS));
    let peak = Arc::new(AtomicUsize::new(0));

    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| {
            let (client, barrier, peak) = (client.clone(), barrier.clone(), peak.clone());
            let req = mesh.request(&server, upstream);
            tokio::spawn(async move {
                let stream = client.connect(&req).await.map_err(|e| e.to_string())?;
                if barrier.wait().await.is_leader() {
                    peak.store(client.stats().active_streams, Ordering::Release);
                }
                echo_roundtrip(stream, &Pattern::new(i as u64), BYTES)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(tasks))
        .await
        .expect("1,000 streams finish in time");
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), Ok(BYTES), "stream {i}");
    }

    let stats = client.stats();
    assert_eq!(peak.load(Ordering::Acquire), STREAMS);
    assert!(stats.connections_opened <= 10, "{stats:?}");
    assert_eq!(stats.connections, stats.connections_opened, "{stats:?}");
    assert_eq!(stats.active_streams, 0);
    assert_eq!(server.handler.requests.load(Ordering::Relaxed), STREAMS);
    server.assert_streams_done().await;
    assert_eq!(server.open_connections(), stats.connections);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_drops_no_stream() {
    const RUN: Duration = Duration::from_millis(5500);
    // Leaves live 4 s and are renewed at half-life, so a 5.5 s run crosses
    // at least two rotations on each side.
    let ca = DevCa::generate()
        .unwrap()
        .with_leaf_ttl(Duration::from_secs(4));
    let mesh = Mesh::with_ca(ca);
    let rotate_client = mesh.client_certs.spawn_rotation(Duration::from_millis(100));
    let rotate_server = mesh.server_certs.spawn_rotation(Duration::from_millis(100));
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();
    let first_client = mesh.client_certs.get(&mesh.client_id).await.unwrap();
    let first_server = mesh.server_certs.get(&mesh.server_id).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    // Short tunnels opened back to back, on whatever connection is current.
    let short: Vec<_> = (0..4u64)
        .map(|w| {
            let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
            let req = mesh.request(&server, upstream);
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let stream = client.connect(&req).await.map_err(|e| e.to_string())?;
                    let got = echo_roundtrip(stream, &Pattern::new(w * 1000 + n), 64 * 1024)
                        .await
                        .map_err(|e| e.to_string())?;
                    assert_eq!(got, 64 * 1024);
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    // Long tunnels that trickle data across every rotation.
    let long: Vec<_> = (0..2u64)
        .map(|w| {
            let (client, stop) = (client.clone(), stop.clone());
            let req = mesh.request(&server, upstream);
            tokio::spawn(async move {
                let stream = client.connect(&req).await.map_err(|e| e.to_string())?;
                let pattern = Pattern::new(9000 + w);
                let (mut r, mut w) = tokio::io::split(stream);
                let writer = async {
                    let mut sent = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        w.write_all(&pattern.chunk(sent, 1000)).await?;
                        sent += 1000;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    w.shutdown().await?;
                    Ok::<_, std::io::Error>(sent)
                };
                let (sent, got) = tokio::try_join!(writer, pattern.read_to_end(&mut r))
                    .map_err(|e| e.to_string())?;
                assert_eq!(sent, got, "long tunnel echo");
                Ok::<_, String>(())
            })
        })
        .collect();

    // Watch which certificates the stores hand out while the load runs.
    let mut generations = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + RUN;
    while tokio::time::Instant::now() < deadline {
        if let Some(c) = mesh.client_certs.cached(&mesh.client_id) {
            generations.insert(c.generation());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Release);
    for t in short.into_iter().chain(long) {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("load finishes")
            .unwrap()
            .unwrap();
    }

    let last_client = mesh.client_certs.get(&mesh.client_id).await.unwrap();
    let last_server = mesh.server_certs.get(&mesh.server_id).await.unwrap();
    assert_ne!(first_client.generation(), last_client.generation());
    assert_ne!(first_server.generation(), last_server.generation());
    // Renewal happens at half-life (~2 s), not on every rotation tick.
    assert!(
        (2..=5).contains(&generations.len()),
        "client certificate generations seen: {}",
        generations.len()
    );
    assert!(done.load(Ordering::Relaxed) > 20, "too little load ran");
    // New certificates mean new connections.
    assert!(
        client.stats().connections_opened >= 2,
        "{:?}",
        client.stats()
    );
    rotate_client.abort();
    rotate_server.abort();
}

fn restart_on(
    mesh: &Mesh,
    addr: std::net::SocketAddr,
) -> impl std::future::Future<Output = TestServer> + '_ {
    TestServer::start_with(
        mesh.server_certs.clone(),
        mesh.server_id.clone(),
        Behavior::Forward,
        Default::default(),
        addr,
    )
}

/// The server restarts while our pooled connection to the old one is still
/// open (draining one stream): the next tunnel is refused on the stale
/// connection and retried once on a fresh one, and the old stream finishes.
#[tokio::test]
async fn restart_while_draining_heals_the_pool() {
    let mesh = Mesh::new();
    let mut old = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();
    let req = mesh.request(&old, upstream);

    let mut draining = client.connect(&req).await.unwrap();
    draining.write_all(b"before").await.unwrap();
    old.stop_accepting().await;
    let new = restart_on(&mesh, old.addr).await;

    let stream = client
        .connect(&req)
        .await
        .expect("retried on a fresh connection");
    let got = echo_roundtrip(stream, &Pattern::new(11), 100_000)
        .await
        .unwrap();
    assert_eq!(got, 100_000);
    assert_eq!(client.stats().connections_opened, 2);
    assert_eq!(new.handler.requests.load(Ordering::Relaxed), 1);
    assert_eq!(old.handler.requests.load(Ordering::Relaxed), 1);

    // The stream on the old server still works until it ends.
    draining.write_all(b" and after").await.unwrap();
    draining.shutdown().await.unwrap();
    let mut reply = Vec::new();
    draining.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"before and after");
    drop(draining);
    old.stop().await;
    assert_pool_has_one_live_connection(&client).await;
    new.assert_streams_done().await;
}

async fn assert_pool_has_one_live_connection(client: &hbone::client::HboneClient) {
    let ok = common::eventually(common::CLEANUP, || client.stats().connections == 1).await;
    assert!(ok, "{:?}", client.stats());
}

/// The server is fully stopped, then a new one starts on the same port.
#[tokio::test]
async fn restarted_server_heals_the_pool() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let addr = server.addr;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();
    let req = mesh.request(&server, upstream);

    let stream = client.connect(&req).await.unwrap();
    assert_eq!(
        echo_roundtrip(stream, &Pattern::new(10), 1000)
            .await
            .unwrap(),
        1000
    );
    server.stop().await;
    let server = restart_on(&mesh, addr).await;

    let stream = client.connect(&req).await.unwrap();
    let got = echo_roundtrip(stream, &Pattern::new(11), 100_000)
        .await
        .unwrap();
    assert_eq!(got, 100_000);
    assert_eq!(client.stats().connections_opened, 2);
    assert_pool_has_one_live_connection(&client).await;
    server.assert_streams_done().await;
}

/// A destination that accepts TCP but never answers the TLS hello: every
/// request waiting for the pool key gets the outcome of the one dial in
/// progress, so 20 concurrent connects fail together after one handshake
/// timeout (not 20 in a row), and the destination sees one connection.
#[tokio::test]
async fn waiters_for_a_dead_destination_share_one_dial() {
    const WAITERS: usize = 20;
    let mesh = Mesh::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let via = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            held.push(sock); // silent: the handshake never completes
        }
    });
    let timeout = Duration::from_millis(500);
    let client = hbone::client::HboneClient::new(
        mesh.client_certs.clone(),
        hbone::client::ClientConfig {
            handshake_timeout: timeout,
            ..Default::default()
        },
    );
    let req = hbone::client::ConnectRequest {
        source: mesh.client_id.clone(),
        source_ip: None,
        expected: vec![mesh.server_id.clone()],
        via,
        authority: "127.0.0.1:80".parse().unwrap(),
        meta: Default::default(),
    };
    // The certificate is loaded first, so every connect reaches the pool.
    mesh.client_certs.get(&mesh.client_id).await.unwrap();
    let start = tokio::time::Instant::now();
    let results = futures::future::join_all((0..WAITERS).map(|_| client.connect(&req))).await;
    let elapsed = start.elapsed();
    for r in &results {
        let Err(err) = r else {
            panic!("a silent destination never tunnels")
        };
        assert_eq!(err.reason(), "CONNECT", "{err:?}");
        assert!(err.to_string().contains("timed out"), "{err}");
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "one dial for all waiters"
    );
    // One handshake timeout, with room for a slow machine; 20 in a row
    // would be 10 s.
    assert!(elapsed < timeout * 5, "{WAITERS} waiters took {elapsed:?}");
}
