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

/// How long [`echo_through`] waits for the connect and for the round trip.
pub const ECHO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects from inside `from` to `to`, sends `data`, half-closes, and
/// returns what came back; each step times out after [`ECHO_TIMEOUT`].
pub async fn echo_through(
    from: &crate::Netns,
    to: std::net::SocketAddr,
    data: &[u8],
) -> io::Result<Vec<u8>> {
    let stream = tokio::time::timeout(ECHO_TIMEOUT, from.connect(to))
        .await
        .map_err(|_| io::Error::other("connect timed out"))??;
    tokio::time::timeout(ECHO_TIMEOUT, round_trip(stream, data))
        .await
        .map_err(|_| io::Error::other("round trip timed out"))?
}
