//! Benchmark load: the apps in server pods and the client workloads of
//! `netns-bench` and `mesh-bench`, every byte checked.
//!
//! Server pods: an echo on [`ECHO_PORT`] (every server pod), and in the
//! measured server pod a sink that answers with (count, sum) on
//! [`SINK_PORT`] and one-shot 16-byte echoes on a fresh port per
//! (repetition, mode) from [`ONESHOT_PORT`] (see tests/NETNS-BENCH.md on
//! TIME_WAIT left behind by a mesh).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::echo::payload;
use crate::netns::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SINK_PORT: u16 = 5001;
pub const ECHO_PORT: u16 = 5002;
pub const ONESHOT_PORT: u16 = 5100;
pub const REQ_LEN: usize = 1024;
const SHOT_LEN: usize = 16;
const BULK_BUF: usize = 256 * 1024;
const WARM_UP: u64 = 200;

/// Readies `ns` for connection churn: TIME_WAIT ports are reused and the
/// ephemeral range widened to 1024–65000, minus 15000–15090 (the proxies'
/// ports), which are reserved: a sidecar starting in a pod must never find
/// 15001/15006/15008 taken by one of the pod's own client connections.
pub fn prepare_for_churn(ns: &Netns) -> Result<(), crate::HarnessError> {
    ns.exec(
        "sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range='1024 65000' \
         net.ipv4.ip_local_reserved_ports=15000-15090",
    )
    .map(drop)
}

/// Runs a client future on a thread inside `ns` with its own current-thread
/// runtime, so its sockets are created in that pod.
pub fn in_ns<T: Send, F: std::future::Future<Output = T> + Send>(ns: &Netns, fut: F) -> T {
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime")
            .block_on(fut)
    })
    .expect("enter client namespace")
}

/// Starts the echo in `ns`; with `measured`, also the sink and `shot_ports`
/// one-shot echoes.
pub fn serve(rt: &tokio::runtime::Runtime, ns: &Netns, measured: bool, shot_ports: usize) {
    let _enter = rt.enter();
    let listen = |port| {
        ns.listen(SocketAddr::from(([0, 0, 0, 0], port)))
            .expect("server listener")
    };
    let echo = listen(ECHO_PORT);
    rt.spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut rd, mut wr) = s.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    if !measured {
        return;
    }
    let sink = listen(SINK_PORT);
    rt.spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; BULK_BUF];
                let (mut count, mut sum) = (0u64, 0u64);
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    count += n as u64;
                    sum = buf[..n]
                        .iter()
                        .fold(sum, |a, b| a.wrapping_add(u64::from(*b)));
                }
                let mut reply = count.to_le_bytes().to_vec();
                reply.extend_from_slice(&sum.to_le_bytes());
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    for i in 0..shot_ports {
        let shot = listen(ONESHOT_PORT + i as u16);
        rt.spawn(async move {
            while let Ok((mut s, _)) = shot.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; SHOT_LEN];
                    if s.read_exact(&mut buf).await.is_ok() {
                        let _ = s.write_all(&buf).await;
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
    }
}

/// One echo round trip of `msg` on a fresh connection (path check).
pub async fn warm_up(to: SocketAddr, msg: &[u8]) -> Result<(), String> {
    let s = tokio::net::TcpStream::connect(to)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let back = crate::echo::round_trip(s, msg)
        .await
        .map_err(|e| format!("echo: {e}"))?;
    if back != msg {
        return Err(format!(
            "echoed {} bytes, not the {} sent",
            back.len(),
            msg.len()
        ));
    }
    Ok(())
}

/// Streams for `dur`, half-closes, and checks the server's (count, sum).
/// Returns (bytes, seconds).
pub async fn bulk(to: SocketAddr, dur: Duration) -> Result<(u64, f64), String> {
    let buf = payload(BULK_BUF);
    let buf_sum = buf.iter().fold(0u64, |a, b| a.wrapping_add(u64::from(*b)));
    let mut s = tokio::net::TcpStream::connect(to)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < dur {
        s.write_all(&buf).await.map_err(|e| format!("write: {e}"))?;
        writes += 1;
    }
    s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply)
        .await
        .map_err(|e| format!("reading the count: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    let count = u64::from_le_bytes(reply[..8].try_into().expect("8 bytes"));
    let sum = u64::from_le_bytes(reply[8..].try_into().expect("8 bytes"));
    let sent = writes * BULK_BUF as u64;
    if count != sent || sum != buf_sum.wrapping_mul(writes) {
        return Err(format!("server got {count} bytes (sum {sum}), sent {sent}"));
    }
    Ok((sent, secs))
}

/// The `i`-th 1 KiB request: a fixed pattern with `i` in the first 8 bytes,
/// so a response from the wrong request (or a corrupted one) is caught.
fn request(base: &[u8], i: u64) -> Vec<u8> {
    let mut r = base.to_vec();
    r[..8].copy_from_slice(&i.to_le_bytes());
    r
}

/// 1 KiB request, 1 KiB echo, on one connection, back to back for `dur`
/// after warm-up round trips. Every round trip in µs.
pub async fn closed_loop(to: SocketAddr, dur: Duration) -> Result<Vec<f64>, String> {
    let base = payload(REQ_LEN);
    let mut resp = vec![0u8; REQ_LEN];
    let mut s = tokio::net::TcpStream::connect(to)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut rtts = Vec::new();
    let mut i = 0u64;
    let mut start = Instant::now();
    while i < WARM_UP || start.elapsed() < dur {
        let req = request(&base, i);
        let t = Instant::now();
        s.write_all(&req).await.map_err(|e| format!("write: {e}"))?;
        s.read_exact(&mut resp)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let rtt = t.elapsed();
        if resp != req {
            return Err(format!("round trip {i}: response differs from request"));
        }
        if i >= WARM_UP {
            rtts.push(rtt.as_secs_f64() * 1e6);
        } else if i + 1 == WARM_UP {
            start = Instant::now();
        }
        i += 1;
    }
    Ok(rtts)
}

/// 1 KiB requests sent at a fixed `rate` per second for `dur`, whatever the
/// responses do (open loop): the sender never waits for a response, so
/// queueing in the proxies shows up as latency. Each latency runs from the
/// moment the request was actually written (tokio's timer wakes up to 1 ms
/// late, which would otherwise count against every mode; the sender's own
/// socket never fills at these rates). One connection; responses come back
/// in order.
pub async fn open_loop(to: SocketAddr, rate: f64, dur: Duration) -> Result<Vec<f64>, String> {
    closed_loop(to, Duration::ZERO).await?; // warm-up on its own connection
    let base = payload(REQ_LEN);
    let s = tokio::net::TcpStream::connect(to)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = s.into_split();
    let n = (rate * dur.as_secs_f64()).ceil().max(1.0) as u64;
    let start = tokio::time::Instant::now() + Duration::from_millis(5);
    let at = move |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let base2 = base.clone();
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = async move {
        for i in 0..n {
            tokio::time::sleep_until(at(i)).await;
            let _ = sent_tx.send(Instant::now());
            wr.write_all(&request(&base2, i))
                .await
                .map_err(|e| format!("write {i}: {e}"))?;
        }
        Ok::<_, String>(wr)
    };
    let reader = async move {
        let mut resp = vec![0u8; REQ_LEN];
        let mut lat = Vec::with_capacity(n as usize);
        for i in 0..n {
            rd.read_exact(&mut resp)
                .await
                .map_err(|e| format!("read {i}: {e}"))?;
            let now = Instant::now();
            let sent = sent_rx.recv().await.ok_or("open loop: sender gone")?;
            if resp != request(&base, i) {
                return Err(format!("open loop {i}: response differs from request"));
            }
            lat.push(now.saturating_duration_since(sent).as_secs_f64() * 1e6);
        }
        Ok(lat)
    };
    let (w, r) = tokio::join!(writer, reader);
    w?;
    r
}

/// `workers` loops of connect, 16-byte echo, read to EOF, for `dur`.
/// Returns (connections, seconds).
pub async fn churn(to: SocketAddr, workers: usize, dur: Duration) -> Result<(u64, f64), String> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            tokio::spawn(async move {
                let mut done = 0u64;
                while start.elapsed() < dur {
                    let mut msg = [w as u8; SHOT_LEN];
                    msg[..8].copy_from_slice(&done.to_le_bytes());
                    let mut s = tokio::net::TcpStream::connect(to)
                        .await
                        .map_err(|e| format!("connect {done}: {e}"))?;
                    s.write_all(&msg).await.map_err(|e| format!("write: {e}"))?;
                    let mut back = Vec::with_capacity(SHOT_LEN);
                    s.read_to_end(&mut back)
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if back != msg {
                        return Err(format!(
                            "connection {done}: got {} bytes back, not the 16 sent",
                            back.len()
                        ));
                    }
                    done += 1;
                }
                Ok::<u64, String>(done)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| e.to_string())??;
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

/// Idle connections held open from many client pods.
pub struct IdleConns {
    conns: Vec<tokio::net::TcpStream>,
}

impl IdleConns {
    /// Opens `per_pod` connections from each `(client ns, server echo addr)`,
    /// each checked with an 8-byte echo.
    pub async fn open(pairs: &[(Netns, SocketAddr)], per_pod: usize) -> Result<IdleConns, String> {
        let mut conns = Vec::with_capacity(pairs.len() * per_pod);
        for (ns, to) in pairs {
            for _ in 0..per_pod {
                let mut s = ns
                    .connect(*to)
                    .await
                    .map_err(|e| format!("idle connection to {to}: {e}"))?;
                let k = conns.len() as u64;
                echo8(&mut s, k).await?;
                conns.push(s);
            }
        }
        Ok(IdleConns { conns })
    }

    /// Checks every connection still echoes, byte-exact.
    pub async fn check(&mut self) -> Result<usize, String> {
        for (k, s) in self.conns.iter_mut().enumerate() {
            echo8(s, k as u64 ^ 0xffff).await?;
        }
        Ok(self.conns.len())
    }
}

async fn echo8(s: &mut tokio::net::TcpStream, k: u64) -> Result<(), String> {
    let msg = k.to_le_bytes();
    s.write_all(&msg)
        .await
        .map_err(|e| format!("idle {k} write: {e}"))?;
    let mut back = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .map_err(|_| format!("idle {k}: echo timed out"))?
        .map_err(|e| format!("idle {k} read: {e}"))?;
    if back != msg {
        return Err(format!("idle connection {k} echoed wrong bytes"));
    }
    Ok(())
}
