//! HBONE micro-benchmarks on real loopback sockets, each with a plain-TCP
//! baseline measured in the same run:
//!
//! - `throughput/*`: 64 MiB per iteration to a counting sink, through one
//!   tunnel (a new stream on a pooled connection) vs a plain TCP connection,
//!   plus two floors: a plain TCP forwarder in front of the sink (the tunnel
//!   row minus TLS and HTTP/2) and the tunnel to a server that counts the
//!   bytes itself (the tunnel row minus the upstream leg);
//! - `echo_1k/*`: 1 KiB request/response latency on an established pooled
//!   tunnel vs an established plain TCP connection;
//! - `setup/*`: how fast a tunnel opens: a new stream on a warm pooled
//!   connection, a fresh TLS + HTTP/2 connection (new client each time), and
//!   a plain TCP connect for reference.
//!
//! Run: `cargo bench -p mesh-benches --bench hbone`.

// The proxies' allocator, so the figures match what ztunnel runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh_benches::{
    close_gracefully, connect_plain, echo_roundtrip, pattern, runtime, send_to_sink, spawn_echo,
    spawn_forwarder, spawn_sink, HboneFixture, BULK_CHUNK, NULL_AUTHORITY, NULL_SINK_AUTHORITY,
};

const BULK_BYTES: u64 = 64 * 1024 * 1024;

/// Run a measured body as a task on the runtime's workers, like a ztunnel
/// connection handler, rather than on criterion's `block_on` thread (from
/// there every wake-up of the tunnel's tasks would cross threads).
async fn on_worker<F>(body: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(body).await.expect("benchmark task")
}
const ECHO_BYTES: usize = 1024;

fn benches(c: &mut Criterion) {
    let rt = runtime(2);
    let (fixture, sink, forwarder, echo) = rt.block_on(async {
        let fixture = HboneFixture::start().await;
        let sink = spawn_sink().await.expect("sink");
        let forwarder = spawn_forwarder(sink).await.expect("forwarder");
        let echo = spawn_echo().await.expect("echo");
        (Arc::new(fixture), sink, forwarder, echo)
    });
    let client = rt.block_on(async {
        let client = fixture.client();
        // Warm the pool: one connection stays open for the pooled cases.
        let s = client
            .connect(&fixture.request(echo))
            .await
            .expect("warm-up");
        close_gracefully(s).await.expect("warm-up close");
        client
    });
    let chunk = Arc::new(pattern(BULK_CHUNK, 42));

    // (1) Bulk throughput.
    {
        let mut g = c.benchmark_group("throughput");
        g.throughput(Throughput::Bytes(BULK_BYTES));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(15));
        for (name, addr) in [("plain_tcp", sink), ("plain_forwarder", forwarder)] {
            g.bench_function(name, |b| {
                let chunk = chunk.clone();
                b.to_async(&rt).iter(|| {
                    let chunk = chunk.clone();
                    on_worker(async move {
                        let mut s = connect_plain(addr).await.unwrap();
                        let n = send_to_sink(&mut s, &chunk, BULK_BYTES).await.unwrap();
                        assert_eq!(n, BULK_BYTES);
                    })
                })
            });
        }
        for (name, authority) in [
            ("hbone_tunnel", sink),
            ("hbone_tunnel_null_upstream", NULL_SINK_AUTHORITY),
        ] {
            g.bench_function(name, |b| {
                let (chunk, client, fixture) = (chunk.clone(), client.clone(), fixture.clone());
                b.to_async(&rt).iter(|| {
                    let (chunk, client, fixture) = (chunk.clone(), client.clone(), fixture.clone());
                    on_worker(async move {
                        let mut s = client.connect(&fixture.request(authority)).await.unwrap();
                        let n = send_to_sink(&mut s, &chunk, BULK_BYTES).await.unwrap();
                        assert_eq!(n, BULK_BYTES);
                    })
                })
            });
        }
        g.finish();
    }

    // (2) 1 KiB request/response latency on an established connection.
    {
        let mut g = c.benchmark_group("echo_1k");
        g.throughput(Throughput::Elements(1));
        let req = Arc::new(pattern(ECHO_BYTES, 7));
        g.bench_function("plain_tcp", |b| {
            let req = req.clone();
            b.to_async(&rt).iter_custom(|iters| {
                let req = req.clone();
                on_worker(async move {
                    let mut s = connect_plain(echo).await.unwrap();
                    let mut resp = vec![0u8; ECHO_BYTES];
                    let start = Instant::now();
                    for _ in 0..iters {
                        echo_roundtrip(&mut s, &req, &mut resp).await.unwrap();
                    }
                    let t = start.elapsed();
                    assert_eq!(resp, *req);
                    close_gracefully(s).await.unwrap();
                    t
                })
            })
        });
        g.bench_function("hbone_pooled", |b| {
            let (req, client, fixture) = (req.clone(), client.clone(), fixture.clone());
            b.to_async(&rt).iter_custom(|iters| {
                let (req, client, fixture) = (req.clone(), client.clone(), fixture.clone());
                on_worker(async move {
                    let mut s = client.connect(&fixture.request(echo)).await.unwrap();
                    let mut resp = vec![0u8; ECHO_BYTES];
                    let start = Instant::now();
                    for _ in 0..iters {
                        echo_roundtrip(&mut s, &req, &mut resp).await.unwrap();
                    }
                    let t = start.elapsed();
                    assert_eq!(resp, *req);
                    close_gracefully(s).await.unwrap();
                    t
                })
            })
        });
        g.finish();
    }

    // (3) Tunnel setup: only the open is timed; each tunnel is then closed
    // gracefully outside the timer.
    {
        let mut g = c.benchmark_group("setup");
        g.throughput(Throughput::Elements(1));
        g.bench_function("plain_tcp_connect", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                on_worker(async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let s = connect_plain(echo).await.unwrap();
                        total += start.elapsed();
                        close_gracefully(s).await.unwrap();
                    }
                    total
                })
            })
        });
        for (name, authority) in [
            ("pooled_stream", echo),
            ("pooled_stream_null_upstream", NULL_AUTHORITY),
        ] {
            g.bench_function(name, |b| {
                let (client, fixture) = (client.clone(), fixture.clone());
                b.to_async(&rt).iter_custom(|iters| {
                    let (client, fixture) = (client.clone(), fixture.clone());
                    on_worker(async move {
                        let req = fixture.request(authority);
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let start = Instant::now();
                            let s = client.connect(&req).await.unwrap();
                            total += start.elapsed();
                            close_gracefully(s).await.unwrap();
                        }
                        total
                    })
                })
            });
        }
        g.bench_function("fresh_connection", |b| {
            let fixture = fixture.clone();
            b.to_async(&rt).iter_custom(|iters| {
                let fixture = fixture.clone();
                on_worker(async move {
                    let req = fixture.request(echo);
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let client = fixture.client();
                        let s = client.connect(&req).await.unwrap();
                        total += start.elapsed();
                        close_gracefully(s).await.unwrap();
                    }
                    total
                })
            })
        });
        g.finish();
    }
}

criterion_group!(hbone, benches);
criterion_main!(hbone);
