//! The HBONE server against peers that abuse it: connection floods past
//! its caps, tunnels left without streams, HTTP/2 rapid reset (HEADERS then
//! RST_STREAM, over and over) and oversized header lists. The attacker
//! holds a valid mesh certificate and writes HTTP/2 frames by hand over
//! real TLS; each test checks that the attacker is cut off, the server
//! survives, and a real client is served meanwhile.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::{echo_roundtrip, eventually, Behavior, Mesh, Pattern, TestServer};
use hbone::limit::LimitReason;
use hbone::server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing, new name, no Huffman.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// The header block of an HBONE CONNECT to `authority`, plus `pad` bytes
/// of an extra header.
fn connect_block(authority: SocketAddr, pad: usize) -> Vec<u8> {
    let mut b = Vec::new();
    hpack_literal(&mut b, ":method", "CONNECT");
    hpack_literal(&mut b, ":authority", &authority.to_string());
    if pad > 0 {
        hpack_literal(&mut b, "x-pad", &"a".repeat(pad));
    }
    b
}

/// What the attacker saw before the server closed the connection.
#[derive(Debug, Default)]
struct Seen {
    goaway: Option<u32>,
    headers: usize,
    resets: usize,
}

/// An HTTP/2 client that writes frames by hand over mutual TLS with a valid
/// mesh certificate. A reader task answers SETTINGS and PING, and records
/// what comes back until the server closes the connection.
struct RawH2 {
    write: Arc<Mutex<WriteHalf<TlsStream<TcpStream>>>>,
    reader: JoinHandle<Seen>,
}

impl RawH2 {
    async fn connect(mesh: &Mesh, server: &TestServer) -> RawH2 {
        let cert = mesh.client_certs.get(&mesh.client_id).await.unwrap();
        let config =
            hbone::tls::client_config(&cert, std::slice::from_ref(&mesh.server_id)).unwrap();
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(hbone::tls::server_name(server.addr), tcp)
            .await
            .unwrap();
        let (read, write) = tokio::io::split(tls);
        let write = Arc::new(Mutex::new(write));
        let mut preface = PREFACE.to_vec();
        preface.extend(frame(SETTINGS, 0, 0, &[]));
        write.lock().await.write_all(&preface).await.unwrap();
        let reader = tokio::spawn(read_frames(read, write.clone()));
        RawH2 { write, reader }
    }

    /// Writes `bytes`; false once the server closed the connection.
    async fn send(&self, bytes: &[u8]) -> bool {
        self.write.lock().await.write_all(bytes).await.is_ok()
    }

    /// What the attacker saw, once the server closed the connection (within
    /// 10 s).
    async fn closed(self) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), self.reader)
            .await
            .expect("the server closes the attacker's connection")
            .unwrap()
    }
}

async fn read_frames(
    mut read: ReadHalf<TlsStream<TcpStream>>,
    write: Arc<Mutex<WriteHalf<TlsStream<TcpStream>>>>,
) -> Seen {
    let mut seen = Seen::default();
    let mut head = [0u8; 9];
    loop {
        if read.read_exact(&mut head).await.is_err() {
            return seen;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let mut payload = vec![0u8; len];
        if read.read_exact(&mut payload).await.is_err() {
            return seen;
        }
        let reply = match kind {
            SETTINGS if flags & ACK == 0 => Some(frame(SETTINGS, ACK, 0, &[])),
            PING if flags & ACK == 0 => Some(frame(PING, ACK, 0, &payload)),
            GOAWAY => {
                seen.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                None
            }
            HEADERS => {
                seen.headers += 1;
                None
            }
            RST_STREAM => {
                seen.resets += 1;
                None
            }
            _ => None,
        };
        if let Some(r) = reply {
            let _ = write.lock().await.write_all(&r).await;
        }
    }
}

/// A real client tunnels bytes through `server` to `upstream`.
async fn real_client_is_served(mesh: &Mesh, server: &TestServer, upstream: SocketAddr) {
    let client = mesh.client();
    for seed in 0..3 {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            client.connect(&mesh.request(server, upstream)),
        )
        .await
        .expect("a real client is answered in time")
        .expect("a real client tunnels");
        let got = echo_roundtrip(stream, &Pattern::new(seed), 64 * 1024)
            .await
            .unwrap();
        assert_eq!(got, 64 * 1024);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_a_goaway_and_a_real_client_is_served() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let attacker = RawH2::connect(&mesh, &server).await;
    let attack = async {
        // HEADERS then RST_STREAM, 100 pairs per write, up to 100,000.
        let mut stream = 1u32;
        for _ in 0..1000 {
            let mut batch = Vec::new();
            for _ in 0..100 {
                batch.extend(frame(
                    HEADERS,
                    END_HEADERS,
                    stream,
                    &connect_block(upstream, 0),
                ));
                batch.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
                stream += 2;
            }
            if !attacker.send(&batch).await {
                break;
            }
        }
        stream / 2
    };
    let (sent, ()) = tokio::join!(attack, real_client_is_served(&mesh, &server, upstream));
    let seen = attacker.closed().await;
    eprintln!("rapid reset: sent {sent}, {seen:?}");
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
    assert!(
        sent < 100_000,
        "the attacker could send everything: {seen:?}"
    );
    // Still serving, and the attacker's streams are all gone.
    real_client_is_served(&mesh, &server, upstream).await;
    server.assert_streams_done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_lists_are_refused_and_a_real_client_is_served() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let attacker = RawH2::connect(&mesh, &server).await;
    // 64 KiB header lists (the server takes 16 KiB), in 16 KiB frames.
    let attack = async {
        let mut stream = 1u32;
        for _ in 0..1000 {
            let block = connect_block(upstream, 64 * 1024);
            let mut chunks = block.chunks(16 * 1024).peekable();
            let mut bytes = frame(HEADERS, 0, stream, chunks.next().unwrap());
            while let Some(c) = chunks.next() {
                let flags = if chunks.peek().is_none() {
                    END_HEADERS
                } else {
                    0
                };
                bytes.extend(frame(CONTINUATION, flags, stream, c));
            }
            if !attacker.send(&bytes).await {
                break;
            }
            stream += 2;
        }
    };
    let ((), ()) = tokio::join!(attack, real_client_is_served(&mesh, &server, upstream));
    let seen = attacker.closed().await;
    eprintln!("oversized: {seen:?}");
    assert!(seen.goaway.is_some(), "{seen:?}");
    assert_eq!(
        server
            .handler
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        3,
        "only the real client's CONNECTs reach the handler"
    );
    real_client_is_served(&mesh, &server, upstream).await;
}

/// A header block that never ends (CONTINUATION after CONTINUATION): the
/// server must not buffer it without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_header_block_is_cut_off() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let attacker = RawH2::connect(&mesh, &server).await;
    let block = connect_block(upstream, 0);
    let mut sent = 0usize;
    if attacker.send(&frame(HEADERS, 0, 1, &block)).await {
        let pad = vec![0x40u8; 16 * 1024]; // never a complete block
        for _ in 0..6400 {
            if !attacker.send(&frame(CONTINUATION, 0, 1, &pad)).await {
                break;
            }
            sent += pad.len();
        }
    }
    let seen = attacker.closed().await;
    eprintln!("endless: sent {sent}, {seen:?}");
    assert!(
        sent < 100 * 1024 * 1024,
        "the server read 100 MiB of headers"
    );
    assert!(seen.goaway.is_some(), "{seen:?}");
    real_client_is_served(&mesh, &server, upstream).await;
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection from `127.0.0.<from>` that never sends a byte; `None`
/// when the server reset it before `connect` returned.
async fn silent_from(from: u8, to: SocketAddr) -> Option<TcpStream> {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(loopback(from), 0)).unwrap();
    s.connect(to).await.ok()
}

/// Whether the server closed `s` within 2 s.
async fn closed_soon(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn connections_past_the_caps_are_reset_and_reported() {
    let mesh = Mesh::new();
    let config = ServerConfig {
        handshake_timeout: Duration::from_secs(600),
        max_connections: 4,
        max_connections_per_source: 2,
        ..Default::default()
    };
    let server = TestServer::start_with(
        mesh.server_certs.clone(),
        mesh.server_id.clone(),
        Behavior::Forward,
        config,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let upstream = common::echo_upstream().await;
    let refused = || server.handler.refused.lock().unwrap().clone();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(silent_from(2, server.addr).await.unwrap());
    }
    assert!(eventually(common::CLEANUP, || server.open_connections() == 2).await);
    // A third from the same source is reset at once.
    if let Some(mut third) = silent_from(2, server.addr).await {
        assert!(closed_soon(&mut third).await);
    }
    assert!(eventually(common::CLEANUP, || refused() == [LimitReason::SourceLimit]).await);
    // Others still get in: a real client from 127.0.0.1.
    real_client_is_served(&mesh, &server, upstream).await;
    // Fill the server from a third source; the next one is refused.
    assert!(eventually(common::CLEANUP, || server.open_connections() == 2).await);
    for _ in 0..2 {
        held.push(silent_from(3, server.addr).await.unwrap());
    }
    assert!(eventually(common::CLEANUP, || server.open_connections() == 4).await);
    if let Some(mut fifth) = silent_from(4, server.addr).await {
        assert!(closed_soon(&mut fifth).await);
    }
    assert!(
        eventually(common::CLEANUP, || refused()
            == [LimitReason::SourceLimit, LimitReason::GlobalLimit])
        .await,
        "{:?}",
        refused()
    );
}

#[tokio::test]
async fn a_tunnel_connection_without_streams_is_closed_after_the_idle_timeout() {
    let mesh = Mesh::new();
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let server = TestServer::start_with(
        mesh.server_certs.clone(),
        mesh.server_id.clone(),
        Behavior::Forward,
        config,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let upstream = common::echo_upstream().await;
    // A client that finished its stream: the pool keeps the connection,
    // the server closes it, and the pool lets go of it.
    let client = mesh.client();
    let stream = client
        .connect(&mesh.request(&server, upstream))
        .await
        .unwrap();
    assert_eq!(
        echo_roundtrip(stream, &Pattern::new(1), 1024)
            .await
            .unwrap(),
        1024
    );
    common::assert_pool_empty(&client).await;
    // A connection that completed its handshake and never opens a stream
    // gets a GOAWAY and is closed.
    let raw = RawH2::connect(&mesh, &server).await;
    let seen = raw.closed().await;
    assert_eq!(seen.goaway, Some(0), "{seen:?}");
    server.assert_idle().await;
    // A connection with a long stream stays up past the idle timeout.
    let stream = client
        .connect(&mesh.request(&server, upstream))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        echo_roundtrip(stream, &Pattern::new(2), 1024)
            .await
            .unwrap(),
        1024
    );
}
