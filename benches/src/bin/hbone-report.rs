//! Runs the HBONE benchmark scenarios with plain `std::time` timing for a
//! fixed number of iterations and prints a markdown table plus one JSON line.
//!
//! `cargo run --release -p mesh-benches --bin hbone-report [-- --quick] [--block-on]`
//!
//! The scenarios run as one task on the 2-worker runtime (as a ztunnel
//! connection handler would); `--block-on` drives them from the main thread
//! instead, as the first version of this report did.
//!
//! `--quick` (CI) uses tiny sizes and finishes in a few seconds. In every
//! mode each transfer is checked byte-for-byte (sink byte counts, echoed
//! payloads); any mismatch makes the process exit non-zero.

// The proxies' allocator, so the figures match what ztunnel runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::client::HboneClient;
use mesh_benches::{
    close_gracefully, connect_plain, echo_bulk_verify, echo_roundtrip, pattern, percentile,
    rss_bytes, runtime, send_to_sink, spawn_echo, spawn_forwarder, spawn_sink, trim_heap,
    HboneFixture, BULK_CHUNK, NULL_AUTHORITY, NULL_SINK_AUTHORITY,
};
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Clone, Copy)]
struct Sizes {
    bulk_bytes: u64,
    bulk_iters: usize,
    verify_bytes: usize,
    echo_warmup: usize,
    echo_samples: usize,
    pooled_setups: usize,
    fresh_setups: usize,
    idle_streams: usize,
}

const FULL: Sizes = Sizes {
    bulk_bytes: 64 * 1024 * 1024,
    bulk_iters: 8,
    verify_bytes: 16 * 1024 * 1024,
    echo_warmup: 1_000,
    echo_samples: 20_000,
    pooled_setups: 2_000,
    fresh_setups: 300,
    idle_streams: 2_000,
};

const QUICK: Sizes = Sizes {
    bulk_bytes: 1024 * 1024,
    bulk_iters: 2,
    verify_bytes: 2 * 1024 * 1024,
    echo_warmup: 20,
    echo_samples: 200,
    pooled_setups: 50,
    fresh_setups: 10,
    idle_streams: 200,
};

const ECHO_BYTES: usize = 1024;

static MISMATCHES: AtomicUsize = AtomicUsize::new(0);

fn mismatch(what: &str) {
    eprintln!("BYTE MISMATCH: {what}");
    MISMATCHES.fetch_add(1, Ordering::Relaxed);
}

struct Fx {
    fixture: HboneFixture,
    client: Arc<HboneClient>,
    sink: SocketAddr,
    /// A plain TCP forwarder to `sink`.
    forwarder: SocketAddr,
    echo: SocketAddr,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

/// Bulk throughput in MiB/s, each row measured over the same iterations.
struct Throughput {
    /// bench -> loopback TCP -> sink.
    plain: f64,
    /// bench -> TCP -> in-process plain forwarder -> TCP -> sink.
    plain_forwarder: f64,
    /// bench -> tunnel -> server handler -> TCP -> sink.
    hbone: f64,
    /// bench -> tunnel -> server handler counting in-process.
    hbone_null_upstream: f64,
}

/// Time `iters` bulk transfers (after one unmeasured warm-up) over
/// connections from `open`, checking each reported byte count; returns MiB/s
/// over the measured ones. The timer covers the open, as for every row.
async fn bulk<S, F, Fut>(s: &Sizes, chunk: &[u8], what: &str, mut open: F) -> f64
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    let mut spent = Duration::ZERO;
    for i in 0..=s.bulk_iters {
        let start = Instant::now();
        let mut c = open().await;
        let n = send_to_sink(&mut c, chunk, s.bulk_bytes)
            .await
            .unwrap_or_else(|e| panic!("{what} bulk: {e}"));
        if i > 0 {
            spent += start.elapsed();
        }
        if n != s.bulk_bytes {
            mismatch(&format!("{what} sink got {n} of {} bytes", s.bulk_bytes));
        }
    }
    mibps(s.bulk_bytes * s.bulk_iters as u64, spent)
}

/// (1) Bulk throughput: all iterations of one row, then the next row.
async fn throughput(fx: &Fx, s: &Sizes) -> Throughput {
    let chunk = pattern(BULK_CHUNK, 42);
    let tunnel = |authority| {
        let req = fx.fixture.request(authority);
        move || {
            let req = req.clone();
            async move { fx.client.connect(&req).await.expect("tunnel connect") }
        }
    };
    let plain = |addr| move || async move { connect_plain(addr).await.expect("plain connect") };
    Throughput {
        plain: bulk(s, &chunk, "plain", plain(fx.sink)).await,
        plain_forwarder: bulk(s, &chunk, "plain forwarder", plain(fx.forwarder)).await,
        hbone: bulk(s, &chunk, "tunnel", tunnel(fx.sink)).await,
        hbone_null_upstream: bulk(s, &chunk, "tunnel null sink", tunnel(NULL_SINK_AUTHORITY)).await,
    }
}

/// Content check in both directions through an echo upstream.
async fn verify_echo_bulk(fx: &Fx, s: &Sizes) {
    let data = Arc::new(pattern(s.verify_bytes, 99));
    let plain = connect_plain(fx.echo).await.expect("plain connect");
    if !echo_bulk_verify(plain, data.clone())
        .await
        .expect("plain echo")
    {
        mismatch("plain bulk echo");
    }
    let t = fx
        .client
        .connect(&fx.fixture.request(fx.echo))
        .await
        .expect("tunnel connect");
    if !echo_bulk_verify(t, data).await.expect("tunnel echo") {
        mismatch("tunnel bulk echo");
    }
}

/// (2) 1 KiB request/response samples on one established connection.
async fn echo_samples<S>(mut conn: S, s: &Sizes, what: &str) -> Vec<Duration>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = pattern(ECHO_BYTES, 7);
    let mut resp = vec![0u8; ECHO_BYTES];
    let mut samples = Vec::with_capacity(s.echo_samples);
    for i in 0..(s.echo_warmup + s.echo_samples) {
        req[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let start = Instant::now();
        echo_roundtrip(&mut conn, &req, &mut resp)
            .await
            .expect("echo");
        let t = start.elapsed();
        if resp != req {
            mismatch(&format!("{what} echo round trip {i}"));
        }
        if i >= s.echo_warmup {
            samples.push(t);
        }
    }
    close_gracefully(conn).await.expect("close");
    samples.sort();
    samples
}

/// (3) Setup samples: only the open is timed, the close is not.
async fn setup_pooled(fx: &Fx, n: usize, authority: SocketAddr) -> Vec<Duration> {
    let req = fx.fixture.request(authority);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let t = fx.client.connect(&req).await.expect("pooled connect");
        v.push(start.elapsed());
        close_gracefully(t).await.expect("close");
    }
    v.sort();
    v
}

async fn setup_fresh(fx: &Fx, n: usize) -> Vec<Duration> {
    let req = fx.fixture.request(fx.echo);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let client = fx.fixture.client();
        let t = client.connect(&req).await.expect("fresh connect");
        v.push(start.elapsed());
        close_gracefully(t).await.expect("close");
    }
    v.sort();
    v
}

async fn setup_plain(fx: &Fx, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let c = connect_plain(fx.echo).await.expect("plain connect");
        v.push(start.elapsed());
        close_gracefully(c).await.expect("close");
    }
    v.sort();
    v
}

/// (4) RSS growth per idle stream (client and server sides, both in this
/// process), on a fresh client so the pool's connections are counted too.
/// Returns (bytes per stream, connections used).
async fn idle_memory(fx: &Fx, n: usize, authority: SocketAddr) -> (f64, usize) {
    let client = fx.fixture.client();
    let req = fx.fixture.request(authority);
    // Warm the allocator and the pool's first connection.
    for _ in 0..50 {
        let t = client.connect(&req).await.expect("warm-up");
        close_gracefully(t).await.expect("close");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    trim_heap();
    let before = rss_bytes().unwrap_or(0);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(client.connect(&req).await.expect("idle stream"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    trim_heap();
    let after = rss_bytes().unwrap_or(0);
    let conns = client.stats().connections;
    // A stream still works after idling: check the last one.
    if authority != NULL_AUTHORITY {
        let mut last = held.pop().expect("n > 0");
        let req = pattern(ECHO_BYTES, 3);
        let mut resp = vec![0u8; ECHO_BYTES];
        echo_roundtrip(&mut last, &req, &mut resp)
            .await
            .expect("echo on idle stream");
        if resp != req {
            mismatch("echo on an idle pooled stream");
        }
        held.push(last);
    }
    for t in held {
        close_gracefully(t).await.expect("close");
    }
    (after.saturating_sub(before) as f64 / n as f64, conns)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let block_on = args.iter().any(|a| a == "--block-on");
    if let Some(bad) = args.iter().find(|a| *a != "--quick" && *a != "--block-on") {
        eprintln!("usage: hbone-report [--quick] [--block-on]  (unknown argument {bad:?})");
        return ExitCode::from(2);
    }
    let s = if quick { QUICK } else { FULL };
    let rt = runtime(2);
    let started = Instant::now();
    let scenarios = async move {
        let fixture = HboneFixture::start().await;
        let sink = spawn_sink().await.expect("sink");
        let echo = spawn_echo().await.expect("echo");
        let forwarder = spawn_forwarder(sink).await.expect("forwarder");
        let client = fixture.client();
        let fx = Fx {
            fixture,
            client,
            sink,
            forwarder,
            echo,
        };
        // Warm the pooled connection.
        let t = fx
            .client
            .connect(&fx.fixture.request(echo))
            .await
            .expect("warm-up");
        close_gracefully(t).await.expect("close");

        // Memory first, before the bulk runs leave large buffers around.
        let (mem_null, conns_null) = idle_memory(&fx, s.idle_streams, NULL_AUTHORITY).await;
        let (mem_fwd, conns_fwd) = idle_memory(&fx, s.idle_streams, echo).await;
        let tp = throughput(&fx, &s).await;
        verify_echo_bulk(&fx, &s).await;
        let plain_echo = echo_samples(connect_plain(echo).await.expect("plain"), &s, "plain").await;
        let tunnel_conn = fx
            .client
            .connect(&fx.fixture.request(echo))
            .await
            .expect("tunnel");
        let tunnel_echo = echo_samples(tunnel_conn, &s, "tunnel").await;
        let plain_setup = setup_plain(&fx, s.pooled_setups).await;
        let pooled_setup = setup_pooled(&fx, s.pooled_setups, echo).await;
        let pooled_null_setup = setup_pooled(&fx, s.pooled_setups, NULL_AUTHORITY).await;
        let fresh_setup = setup_fresh(&fx, s.fresh_setups).await;
        Report {
            tp,
            plain_echo,
            tunnel_echo,
            plain_setup,
            pooled_setup,
            pooled_null_setup,
            fresh_setup,
            mem_null,
            conns_null,
            mem_fwd,
            conns_fwd,
        }
    };
    // The scenarios run as a task on the runtime's workers, like a ztunnel
    // connection handler. `--block-on` drives them from the main thread
    // instead (as the first version of this report did): every wake-up between
    // the driver and the tunnel's tasks then crosses threads.
    let r = if block_on {
        rt.block_on(scenarios)
    } else {
        rt.block_on(async { tokio::spawn(scenarios).await.expect("scenario task") })
    };
    r.print(&s, quick, block_on, started.elapsed());
    let bad = MISMATCHES.load(Ordering::Relaxed);
    if bad > 0 {
        eprintln!("{bad} byte-exactness failure(s)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

struct Report {
    tp: Throughput,
    plain_echo: Vec<Duration>,
    tunnel_echo: Vec<Duration>,
    plain_setup: Vec<Duration>,
    pooled_setup: Vec<Duration>,
    pooled_null_setup: Vec<Duration>,
    fresh_setup: Vec<Duration>,
    mem_null: f64,
    conns_null: usize,
    mem_fwd: f64,
    conns_fwd: usize,
}

impl Report {
    fn print(&self, s: &Sizes, quick: bool, block_on: bool, elapsed: Duration) {
        let p = |v: &[Duration], q: f64| us(percentile(v, q));
        let tp = &self.tp;
        let tp_ratio = tp.hbone / tp.plain;
        let fwd_ratio = tp.plain_forwarder / tp.plain;
        let null_ratio = tp.hbone_null_upstream / tp.plain;
        let (pe50, pe99) = (p(&self.plain_echo, 50.0), p(&self.plain_echo, 99.0));
        let (te50, te99) = (p(&self.tunnel_echo, 50.0), p(&self.tunnel_echo, 99.0));
        let plain_setup = p(&self.plain_setup, 50.0);
        let pooled = p(&self.pooled_setup, 50.0);
        let pooled_null = p(&self.pooled_null_setup, 50.0);
        let fresh = p(&self.fresh_setup, 50.0);
        let mode = if quick { "quick" } else { "full" };
        let driver = if block_on { "block_on" } else { "task" };
        let mib = s.bulk_bytes / (1024 * 1024);
        println!(
            "## HBONE report ({mode}; driver: {driver}; {:.1} s)\n",
            elapsed.as_secs_f64()
        );
        println!("| Scenario | Plain TCP | HBONE | HBONE / plain |");
        println!("|---|---|---|---|");
        println!(
            "| Bulk throughput ({} x {mib} MiB), MiB/s | {:.0} | {:.0} | {tp_ratio:.2} |",
            s.bulk_iters, tp.plain, tp.hbone
        );
        println!(
            "| Floor: bulk through a plain TCP forwarder (HBONE row minus TLS and HTTP/2), MiB/s | {:.0} | {:.0} (forwarder) | {fwd_ratio:.2} |",
            tp.plain, tp.plain_forwarder
        );
        println!(
            "| Floor: bulk through the tunnel only (null upstream, counted in-process), MiB/s | {:.0} | {:.0} | {null_ratio:.2} |",
            tp.plain, tp.hbone_null_upstream
        );
        println!(
            "| 1 KiB echo p50 ({} samples), µs | {pe50:.1} | {te50:.1} | {:.2} |",
            s.echo_samples,
            te50 / pe50
        );
        println!(
            "| 1 KiB echo p99, µs | {pe99:.1} | {te99:.1} | {:.2} |",
            te99 / pe99
        );
        println!(
            "| Setup median, pooled stream + upstream connect ({}), µs | {plain_setup:.1} (TCP connect) | {pooled:.1} | {:.2} |",
            s.pooled_setups,
            pooled / plain_setup
        );
        println!(
            "| Setup median, pooled stream, null upstream ({}), µs | | {pooled_null:.1} | |",
            s.pooled_setups
        );
        println!(
            "| Setup median, fresh TLS connection ({}), µs | {plain_setup:.1} (TCP connect) | {fresh:.1} | {:.1} |",
            s.fresh_setups,
            fresh / plain_setup
        );
        println!(
            "| Setup p99: pooled / null / fresh, µs | {:.1} | {:.1} / {:.1} / {:.1} | |",
            p(&self.plain_setup, 99.0),
            p(&self.pooled_setup, 99.0),
            p(&self.pooled_null_setup, 99.0),
            p(&self.fresh_setup, 99.0)
        );
        println!(
            "| RSS per idle stream, null upstream ({} streams, {} conns), bytes | | {:.0} | |",
            s.idle_streams, self.conns_null, self.mem_null
        );
        println!(
            "| RSS per idle stream, forwarded to echo ({} streams, {} conns), bytes | | {:.0} | |",
            s.idle_streams, self.conns_fwd, self.mem_fwd
        );
        println!();
        let tp_ok = tp_ratio >= 0.60;
        let setup_ok = pooled < 50.0;
        println!(
            "Targets: throughput >= 60% of plain: {} ({:.0}%); pooled setup < 50 µs median: {} ({pooled:.1} µs with upstream connect, {pooled_null:.1} µs without)",
            if tp_ok { "MET" } else { "NOT MET" },
            tp_ratio * 100.0,
            if setup_ok { "MET" } else { "NOT MET" },
        );
        println!(
            "Memory counts client and server sides in one process (and, for the forwarded case, the loopback upstream's echo task)."
        );
        println!();
        println!(
            "{{\"mode\":\"{mode}\",\"driver\":\"{driver}\",\"throughput_mib_s\":{{\"plain\":{:.1},\"hbone\":{:.1},\"ratio\":{tp_ratio:.3},\
\"plain_forwarder\":{:.1},\"plain_forwarder_ratio\":{fwd_ratio:.3},\
\"hbone_null_upstream\":{:.1},\"hbone_null_upstream_ratio\":{null_ratio:.3}}},\
\"echo_1k_us\":{{\"plain_p50\":{pe50:.2},\"plain_p99\":{pe99:.2},\"hbone_p50\":{te50:.2},\"hbone_p99\":{te99:.2}}},\
\"setup_median_us\":{{\"plain_tcp_connect\":{plain_setup:.2},\"pooled_stream\":{pooled:.2},\"pooled_stream_null_upstream\":{pooled_null:.2},\"fresh_connection\":{fresh:.2}}},\
\"idle_stream_rss_bytes\":{{\"null_upstream\":{:.0},\"forwarded\":{:.0}}},\
\"targets\":{{\"throughput_ge_60pct\":{tp_ok},\"pooled_setup_lt_50us\":{setup_ok}}},\
\"byte_mismatches\":{}}}",
            tp.plain,
            tp.hbone,
            tp.plain_forwarder,
            tp.hbone_null_upstream,
            self.mem_null,
            self.mem_fwd,
            MISMATCHES.load(Ordering::Relaxed)
        );
    }
}
