//! A tokio echo server and a byte-exact round-trip check, for reachability tests.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Echoes every accepted connection until EOF. Abort the handle to stop.
pub fn spawn_echo(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    })
}

/// Deterministic test payload of `len` bytes (every byte value occurs).
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Writes `data` on `stream`, half-closes, and returns everything read back
/// until EOF.
pub async fn round_trip(mut stream: tokio::net::TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
    let (mut rd, mut wr) = stream.split();
    let write = async {
        wr.write_all(data).await?;
        wr.shutdown().await
    };
    let mut back = Vec::with_capacity(data.len());
    let read = rd.read_to_end(&mut back);
    let (w, r) = tokio::join!(write, read);
    w?;
    r?;
    Ok(back)
}
