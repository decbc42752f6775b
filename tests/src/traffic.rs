//! Traffic that checks itself while something happens to the mesh (an
//! upgrade, certificate rotation, a soak): [`Churn`], connections opened
//! one after another, each round-tripping a distinct payload; and
//! [`LongStream`], one connection moving bytes until stopped. Both check
//! every byte that comes back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::echo::{echo_through, payload};
use crate::Netns;

/// Clients opening connections one after another (each round-trips a
/// distinct payload, checked byte for byte) until stopped.
pub struct Churn {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<(u64, Vec<String>)>>,
}

/// At most this many connections per churn worker (a bound, never reached
/// in practice).
const CHURN_MAX: u64 = 50_000;

impl Churn {
    pub fn start(from: &Netns, to: SocketAddr, workers: usize) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|w| {
                let (from, stop) = (from.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failures) = (0, Vec::new());
                    for i in 0..CHURN_MAX {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let data = payload(64 + (w * 131 + i as usize) % 2000);
                        match echo_through(&from, to, &data).await {
                            Ok(back) if back == data => ok += 1,
                            Ok(back) => failures.push(format!(
                                "worker {w} connection {i}: {} bytes back of {}, or different",
                                back.len(),
                                data.len()
                            )),
                            Err(e) => failures.push(format!("worker {w} connection {i}: {e}")),
                        }
                    }
                    (ok, failures)
                })
            })
            .collect();
        Churn { stop, workers }
    }

    /// Stops the workers; returns the connections that round-tripped and the
    /// failures.
    pub async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failures) = (0, Vec::new());
        for w in self.workers {
            let (n, f) = w.await.expect("churn worker");
            ok += n;
            failures.extend(f);
        }
        (ok, failures)
    }
}

/// Byte `i` of a long stream.
pub fn stream_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 12)) as u8
}

/// One long connection moving bytes (16 KiB every 2 ms) until stopped; the
/// echo is checked byte for byte as it comes back.
pub struct LongStream {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<u64, String>>,
}

impl LongStream {
    pub async fn open(from: &Netns, to: SocketAddr) -> LongStream {
        let stream = from.connect(to).await.expect("long stream connects");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (mut rd, mut wr) = stream.into_split();
            let writer = async move {
                let mut sent = 0u64;
                while !stopped.load(Ordering::Relaxed) && sent < 1 << 30 {
                    let chunk: Vec<u8> = (sent..sent + 16384).map(stream_byte).collect();
                    wr.write_all(&chunk)
                        .await
                        .map_err(|e| format!("write at {sent}: {e}"))?;
                    sent += chunk.len() as u64;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                wr.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
                Ok::<u64, String>(sent)
            };
            let reader = async move {
                let (mut got, mut buf) = (0u64, vec![0u8; 65536]);
                loop {
                    let n = rd
                        .read(&mut buf)
                        .await
                        .map_err(|e| format!("read at {got}: {e}"))?;
                    if n == 0 {
                        return Ok::<u64, String>(got);
                    }
                    if let Some(bad) = (0..n).find(|&k| buf[k] != stream_byte(got + k as u64)) {
                        return Err(format!("byte {} corrupted", got + bad as u64));
                    }
                    got += n as u64;
                }
            };
            let (sent, got) = tokio::join!(writer, reader);
            let (sent, got) = (sent?, got?);
            if sent != got {
                return Err(format!("sent {sent} bytes, {got} came back"));
            }
            Ok(sent)
        });
        LongStream { stop, task }
    }

    /// Stops writing, half-closes, and returns the bytes moved once all came
    /// back (within 10 s).
    pub async fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .map_err(|_| "the long stream did not finish".to_owned())?
            .expect("long stream task")
    }
}
