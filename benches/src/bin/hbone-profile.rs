//! One HBONE scenario in a loop, for profilers (`perf record`, `valgrind
//! --tool=callgrind`): no statistics, no baseline, just the hot path.
//!
//! `hbone-profile <bulk|bulk-null|echo|setup|setup-null> [iterations]`
//!
//! - `bulk`: 64 MiB per iteration through one new pooled stream into a sink;
//! - `bulk-null`: the same, counted by the HBONE server itself (no upstream);
//! - `echo`: 1 KiB round trips on one established tunnel;
//! - `setup`: pooled stream opens with the upstream dial (closed gracefully);
//! - `setup-null`: the same without an upstream.

// The proxies' allocator, so the figures match what ztunnel runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use mesh_benches::{
    close_gracefully, echo_roundtrip, pattern, runtime, send_to_sink, spawn_echo, spawn_sink,
    HboneFixture, BULK_CHUNK, NULL_AUTHORITY, NULL_SINK_AUTHORITY,
};

const BULK_BYTES: u64 = 64 * 1024 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first().cloned() else {
        eprintln!("usage: hbone-profile <bulk|bulk-null|echo|setup|setup-null> [iterations]");
        return ExitCode::from(2);
    };
    let iters: usize = match args.get(1).map(|s| s.parse()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("iterations must be a number");
            return ExitCode::from(2);
        }
    };
    let rt = runtime(2);
    let spawned = std::env::var_os("PROFILE_SPAWN").is_some();
    let work = async move {
        let fixture = HboneFixture::start().await;
        let client = fixture.client();
        let sink = spawn_sink().await.expect("sink");
        let echo = spawn_echo().await.expect("echo");
        let warm = client.connect(&fixture.request(echo)).await.expect("warm");
        close_gracefully(warm).await.expect("close");
        let start = Instant::now();
        let cpu_start = cpu_time();
        match mode.as_str() {
            "bulk" | "bulk-null" => {
                let chunk = pattern(BULK_CHUNK, 42);
                let n = if iters == 0 { 16 } else { iters };
                let authority = if mode == "bulk" {
                    sink
                } else {
                    NULL_SINK_AUTHORITY
                };
                for _ in 0..n {
                    let mut t = client
                        .connect(&fixture.request(authority))
                        .await
                        .expect("open");
                    let got = send_to_sink(&mut t, &chunk, BULK_BYTES)
                        .await
                        .expect("bulk");
                    assert_eq!(got, BULK_BYTES, "sink byte count");
                }
                let secs = start.elapsed().as_secs_f64();
                let mib = (BULK_BYTES * n as u64) as f64 / (1024.0 * 1024.0);
                let cpu = (cpu_time() - cpu_start).as_secs_f64();
                println!(
                    "{mode}: {:.0} MiB/s wall, {:.0} µs CPU (user+sys, whole process) per MiB, {:.2} cores busy",
                    mib / secs,
                    cpu * 1e6 / mib,
                    cpu / secs
                );
            }
            "echo" => {
                let n = if iters == 0 { 50_000 } else { iters };
                let mut t = client.connect(&fixture.request(echo)).await.expect("open");
                let req = pattern(1024, 7);
                let mut resp = vec![0u8; 1024];
                for _ in 0..n {
                    echo_roundtrip(&mut t, &req, &mut resp).await.expect("echo");
                }
                assert_eq!(resp, req, "echoed bytes");
                close_gracefully(t).await.expect("close");
                let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
                let cpu = (cpu_time() - cpu_start).as_secs_f64() * 1e6 / n as f64;
                println!("echo: {us:.1} µs mean wall, {cpu:.1} µs CPU per round trip");
            }
            "setup" | "setup-null" => {
                let n = if iters == 0 { 20_000 } else { iters };
                let authority = if mode == "setup" {
                    echo
                } else {
                    NULL_AUTHORITY
                };
                let req = fixture.request(authority);
                for _ in 0..n {
                    let t = client.connect(&req).await.expect("open");
                    close_gracefully(t).await.expect("close");
                }
                let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
                let cpu = (cpu_time() - cpu_start).as_secs_f64() * 1e6 / n as f64;
                println!("{mode}: {us:.1} µs mean wall, {cpu:.1} µs CPU per open+close");
            }
            other => {
                eprintln!("unknown mode {other:?}");
                return ExitCode::from(2);
            }
        }
        let ru = rusage();
        println!(
            "process totals: {} minor page faults, {} voluntary context switches",
            ru.ru_minflt, ru.ru_nvcsw
        );
        ExitCode::SUCCESS
    };
    if spawned {
        rt.block_on(async { tokio::spawn(work).await.expect("profile task") })
    } else {
        rt.block_on(work)
    }
}

/// User plus system CPU time of the whole process (every thread): less
/// sensitive than wall time to other load on a shared machine.
fn cpu_time() -> Duration {
    let ru = rusage();
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn rusage() -> libc::rusage {
    // SAFETY: getrusage only writes the struct it is given.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    }
}
