//! A tokio echo server and a byte-exact round-trip check, for reachability tests.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::netns::Netns;

/// Echoes every accepted connection until EOF. Abort the handle to stop.
pub fn spawn_echo(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(echo_connection(stream, ""));
        }
    })
}

/// Sends `greeting` (if any), then echoes until EOF and half-closes.
async fn echo_connection(mut stream: TcpStream, greeting: &'static str) {
    if !greeting.is_empty() && stream.write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    let (mut rd, mut wr) = stream.split();
    let _ = tokio::io::copy(&mut rd, &mut wr).await;
    let _ = wr.shutdown().await;
}

/// An echo app in a pod (on `0.0.0.0:port` of its netns) that records the
/// peer address of every connection it accepted. Stops when dropped.
pub struct App {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl App {
    /// Echoes each connection.
    pub fn serve(ns: &Netns, port: u16) -> App {
        App::serve_with_greeting(ns, port, "")
    }

    /// Echoes each connection after first sending `greeting` (so a client
    /// can tell which endpoint answered).
    pub fn serve_with_greeting(ns: &Netns, port: u16, greeting: &'static str) -> App {
        let listener = ns
            .listen(SocketAddr::from(([0, 0, 0, 0], port)))
            .expect("app listener");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                seen.lock().unwrap().push(peer);
                tokio::spawn(echo_connection(stream, greeting));
            }
        });
        App { peers, task }
    }

    /// Every peer accepted so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
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

/// How soon a connection that fails closed must be refused: a correctness
/// bound (a reset answers the SYN), not a speed test. Without the
/// fail-closed rule the SYN goes unanswered until the client gives up.
pub const REFUSAL_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// Connects from `from` to `dst` and expects a reset answering the SYN
/// within [`REFUSAL_BOUND`]; panics naming `what` otherwise.
pub async fn assert_refused_at_once(from: &Netns, dst: SocketAddr, what: &str) {
    match tokio::time::timeout(REFUSAL_BOUND, from.connect(dst)).await {
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        Ok(Err(e)) => panic!("{what}: expected a reset, got {e}"),
        Ok(Ok(_)) => panic!("{what}: connected with no ztunnel listening"),
        Err(_) => panic!("{what}: no answer within {REFUSAL_BOUND:?} (the SYN went unanswered)"),
    }
}

/// Asserts `listener` accepts nothing for 300 ms (a host service that
/// captured traffic must never reach).
pub async fn assert_never_accepts(listener: &TcpListener, what: &str) {
    let stray =
        tokio::time::timeout(std::time::Duration::from_millis(300), listener.accept()).await;
    assert!(
        stray.is_err(),
        "{what}: accepted a connection that had to be refused"
    );
}
