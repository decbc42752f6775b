//! Data through a tunnel: bulk transfer byte for byte, and half-close in
//! each direction.

mod common;

use std::time::{Duration, Instant};

use common::{echo_roundtrip, spawn_upstream, Behavior, Mesh, Pattern, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carries_100_mib_both_ways_byte_for_byte() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();

    let stream = client
        .connect(&mesh.request(&server, upstream))
        .await
        .unwrap();
    let total = 100 * MIB;
    // The check is not vacuous: another seed's bytes do not match.
    assert!(!Pattern::new(1).matches(7, &Pattern::new(9).chunk(7, 4096)));
    let start = Instant::now();
    let got = echo_roundtrip(stream, &Pattern::new(1), total)
        .await
        .unwrap();
    assert_eq!(got, total, "echo came back short");
    eprintln!("100 MiB each way in {:?}", start.elapsed());

    // The stream released its pool slot and the server finished the stream.
    assert_eq!(client.stats().active_streams, 0);
    server.assert_streams_done().await;
    assert_eq!(client.stats().connections_opened, 1);
}

/// The upstream reads the client's bytes to EOF, checks them, and only then
/// replies: the client must still read after shutting down its write side.
#[tokio::test]
async fn client_half_close_still_reads_the_reply() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let pattern = Pattern::new(2);
    let p = pattern.clone();
    let upstream = spawn_upstream(move |mut sock| {
        let p = p.clone();
        async move {
            let got = p.read_to_end(&mut sock).await.unwrap();
            sock.write_all(format!("got {got}").as_bytes())
                .await
                .unwrap();
            sock.shutdown().await.unwrap();
        }
    })
    .await;
    let client = mesh.client();

    let mut stream = client
        .connect(&mesh.request(&server, upstream))
        .await
        .unwrap();
    pattern.write(&mut stream, 3 * MIB, 100_000).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut reply))
        .await
        .expect("reply after half-close")
        .unwrap();
    assert_eq!(reply, format!("got {}", 3 * MIB));
    // Writing after our own half-close is refused locally.
    assert!(stream.write_all(b"late").await.is_err());
    drop(stream);
    server.assert_streams_done().await;
}

/// The upstream greets and half-closes first; the client reads the greeting
/// and EOF, and can still send its data, which arrives intact.
#[tokio::test]
async fn server_half_close_first_client_still_writes() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let pattern = Pattern::new(3);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let p = pattern.clone();
    let upstream = spawn_upstream(move |mut sock| {
        let (p, tx) = (p.clone(), tx.clone());
        async move {
            sock.write_all(b"hello, then goodbye").await.unwrap();
            sock.shutdown().await.unwrap();
            let _ = tx.send(p.read_to_end(&mut sock).await.map_err(|e| e.to_string()));
        }
    })
    .await;
    let client = mesh.client();

    let mut stream = client
        .connect(&mesh.request(&server, upstream))
        .await
        .unwrap();
    let mut greeting = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut greeting))
        .await
        .expect("EOF after the server's half-close")
        .unwrap();
    assert_eq!(greeting, b"hello, then goodbye");

    pattern.write(&mut stream, 2 * MIB, 65_536).await.unwrap();
    stream.shutdown().await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("upstream saw EOF")
        .unwrap();
    assert_eq!(received, Ok(2 * MIB));
    drop(stream);
    server.assert_streams_done().await;
}

/// Several tunnels on one connection carry independent, interleaved data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tunnels_do_not_mix_bytes() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();

    let tunnels = (0..8u64).map(|i| {
        let (client, req) = (client.clone(), mesh.request(&server, upstream));
        async move {
            let stream = client.connect(&req).await.unwrap();
            echo_roundtrip(stream, &Pattern::new(100 + i), 4 * MIB).await
        }
    });
    for got in futures::future::join_all(tunnels).await {
        assert_eq!(got.unwrap(), 4 * MIB);
    }
    assert_eq!(client.stats().connections_opened, 1);
    server.assert_streams_done().await;
}
