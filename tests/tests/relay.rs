//! `tcp-relay` (netns-bench's floors) on loopback: it relays byte-exact both
//! ways with half-close, survives a peer's reset and an unreachable next
//! hop (one stderr line each), and exits 0 on SIGTERM. No root needed:
//! the relay listens on 127.0.0.1 and forwards to 127.0.0.2, where the
//! test's server listens on an ephemeral port. In TLS mode, a `connect`
//! relay on 127.0.0.1 reaches an `accept` relay on 127.0.0.3 over mutual
//! TLS; plaintext, a server from another CA, and a client presenting
//! another CA's certificate all get nowhere. In HBONE mode the same chain
//! runs through the `hbone` library, and a CONNECT to a port the accepting
//! relay does not relay is refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mesh_tests::echo::payload;

const WAIT: Duration = Duration::from_secs(10);

/// The relay process; killed and reaped if the test fails before stopping it.
struct Relay {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Relay {
    fn start(ports: &[u16]) -> Relay {
        Relay::start_with("127.0.0.1", "127.0.0.2", ports, &[])
    }

    fn start_with(listen: &str, next_hop: &str, ports: &[u16], extra: &[&str]) -> Relay {
        let ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcp-relay"))
            .args(["--listen", listen, "--next-hop", next_hop])
            .args(["--ports", &ports])
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcp-relay");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let relay = Relay { child, lines };
        let first = relay.next_line();
        assert!(first.starts_with("tcp-relay: listening"), "{first}");
        relay
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("a line on tcp-relay's stderr")
    }

    /// The relay's next stderr line, which must contain `needle`.
    fn expect_line(&self, needle: &str) {
        let line = self.next_line();
        assert!(line.contains(needle), "{line}");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `c` to its end (or an error) and checks that nothing came back.
fn nothing_back(mut c: TcpStream, what: &str) {
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{what}: {rest:?}");
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect relay");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

/// The two tests pick ephemeral ports on 127.0.0.2 and then listen on the
/// same numbers on other loopback addresses; run one at a time so one's
/// freed "dead" port cannot become the other's live one.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn relays_both_ways_with_half_close_and_survives_resets() {
    let _serial = serial();
    let server = TcpListener::bind("127.0.0.2:0").expect("server on 127.0.0.2");
    let port = server.local_addr().expect("addr").port();
    // A port nothing listens on at the next hop.
    let dead = TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let relay = Relay::start(&[port, dead]);

    exchange(&server, port);

    // The client resets mid-stream: one error line, and the relay goes on.
    std::thread::scope(|scope| {
        let (relayed, relayed_rx) = mpsc::channel();
        let server = &server;
        let srv = scope.spawn(move || {
            let (mut s, _) = server.accept().expect("accept");
            s.set_read_timeout(Some(WAIT)).expect("timeout");
            let mut first = [0u8; 7];
            s.read_exact(&mut first)
                .expect("the bytes before the reset");
            relayed.send(()).expect("tell the client");
            let mut buf = [0u8; 64];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        });
        let c = connect(port);
        (&c).write_all(b"partial").expect("send");
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .expect("linger 0");
        // Reset only once the relay has dialled and forwarded: the error
        // line is then about the copy, not the set-up.
        relayed_rx.recv_timeout(WAIT).expect("relayed");
        drop(c); // RST
        srv.join().expect("server");
    });
    relay.expect_line(&format!("127.0.0.2:{port}"));

    // No listener at the next hop: the client's connection is closed and
    // the relay says why.
    nothing_back(connect(dead), "a reply with no next hop");
    let line = relay.next_line();
    assert!(
        line.contains(&format!("127.0.0.2:{dead}")) && line.contains("connecting"),
        "{line}"
    );

    // Still relaying, then a clean exit on SIGTERM.
    std::thread::scope(|scope| {
        let srv = scope.spawn(|| {
            let (mut s, _) = server.accept().expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf).expect("echo");
        });
        let mut c = connect(port);
        c.write_all(b"again").expect("send");
        let mut back = [0u8; 5];
        c.read_exact(&mut back).expect("echo back");
        assert_eq!(&back, b"again");
        srv.join().expect("server");
    });
    let mut relay = relay;
    let pid = nix::unistd::Pid::from_raw(relay.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = relay.child.wait().expect("wait");
    assert!(status.success(), "tcp-relay exited with {status}");
    // Nothing else went wrong on the way: no error lines beyond the two.
    let mut extra = Vec::new();
    while let Ok(line) = relay.lines.recv_timeout(WAIT) {
        extra.push(line);
    }
    assert!(extra.is_empty(), "unexpected relay output: {extra:?}");
}

/// A `--tls` relay with the CA in `ca` (created by the first relay to start).
fn tls_relay(listen: &str, next_hop: &str, port: u16, side: &str, ca: &std::path::Path) -> Relay {
    let ca = ca.to_str().expect("utf-8 path");
    Relay::start_with(listen, next_hop, &[port], &["--tls", side, "--ca", ca])
}

/// 1 MiB up, half-close, then the server's reply down after it saw EOF.
fn exchange(server: &TcpListener, port: u16) {
    let sent = payload(1 << 20);
    std::thread::scope(|scope| {
        let srv = scope.spawn(|| {
            let (mut s, _) = server.accept().expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("server read to EOF");
            s.write_all(format!("got {}", got.len()).as_bytes())
                .expect("reply");
            s.shutdown(Shutdown::Write).expect("server half-close");
            got
        });
        let mut c = connect(port);
        c.write_all(&sent).expect("send");
        c.shutdown(Shutdown::Write).expect("client half-close");
        let mut reply = String::new();
        c.read_to_string(&mut reply).expect("reply to EOF");
        assert_eq!(reply, format!("got {}", sent.len()));
        assert!(srv.join().expect("server") == sent, "bytes differ");
    });
}

#[test]
fn tls_relays_tunnel_byte_exact_and_refuse_strangers() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TcpListener::bind("127.0.0.2:0").expect("server on 127.0.0.2");
    let port = server.local_addr().expect("addr").port();
    // 127.0.0.1 --plain--> connect relay --TLS--> 127.0.0.3 accept relay
    // --plain--> 127.0.0.2 server, the same port at every hop.
    let ca = dir.path().join("ca");
    let accept = tls_relay("127.0.0.3", "127.0.0.2", port, "accept", &ca);
    let connect_relay = tls_relay("127.0.0.1", "127.0.0.3", port, "connect", &ca);
    exchange(&server, port);
    exchange(&server, port);

    // Plaintext straight to the TLS side: the handshake fails, the bytes go
    // nowhere, and the relay says why.
    let mut c = TcpStream::connect(("127.0.0.3", port)).expect("connect accept relay");
    c.set_read_timeout(Some(WAIT)).expect("timeout");
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("send");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    accept.expect_line("TLS handshake");
    drop(connect_relay);
    drop(accept);

    // A connect relay whose CA the accept relay does not trust: both sides
    // refuse the handshake, and the client's connection carries nothing.
    let stranger = tls_relay(
        "127.0.0.1",
        "127.0.0.3",
        port,
        "connect",
        &dir.path().join("other-ca"),
    );
    let accept = tls_relay("127.0.0.3", "127.0.0.2", port, "accept", &ca);
    let mut c = connect(port);
    c.write_all(b"secret").expect("send");
    nothing_back(c, "a reply through an untrusted tunnel");
    stranger.expect_line("TLS handshake");
    accept.expect_line("TLS handshake");
    drop(stranger);

    // A client that trusts the right root, so it accepts the relay's
    // certificate, but presents one from another CA: the accept relay must
    // refuse it and never dial the server.
    let ca_root = hbone::ca::DevCa::load_or_create(&ca).expect("the relays' CA");
    let other = hbone::ca::DevCa::load_or_create(&dir.path().join("other-ca")).expect("other CA");
    let id = hbone::SpiffeId::new("cluster.local", "bench", "tcp-relay").expect("identity");
    let foreign = other.issue(&id).expect("a foreign certificate");
    let foreign = hbone::cert::WorkloadCert::new(
        id.clone(),
        foreign.chain().to_vec(),
        foreign.key(),
        foreign.not_before(),
        foreign.not_after(),
        vec![ca_root.root()],
    );
    let config = hbone::tls::client_config(&foreign, &[id]).expect("client config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = SocketAddr::from(([127, 0, 0, 3], port));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = hbone::tls::server_name(addr);
        // TLS 1.3: the client finishes its side before the server has
        // judged its certificate, so the refusal shows on the first read.
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        tls.write_all(b"secret").await?;
        let mut buf = [0u8; 16];
        tokio::time::timeout(WAIT, tls.read(&mut buf)).await?
    });
    assert!(
        !matches!(outcome, Ok(n) if n > 0),
        "a reply to a client with a foreign certificate: {outcome:?}"
    );
    accept.expect_line("TLS handshake");
    server.set_nonblocking(true).expect("non-blocking listener");
    assert!(
        server.accept().is_err(),
        "the server was reached through an untrusted tunnel"
    );
}

#[test]
fn hbone_relays_tunnel_byte_exact_and_refuse_other_ports() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca");
    let server = TcpListener::bind("127.0.0.2:0").expect("server on 127.0.0.2");
    let port = server.local_addr().expect("addr").port();
    let other = TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let ca_arg = ca.to_str().expect("utf-8 path");
    // Both ports at the connect relay; only `port` is relayed by the accept
    // relay, which serves HBONE on 127.0.0.3:15008.
    let accept = Relay::start_with(
        "127.0.0.3",
        "127.0.0.2",
        &[port],
        &["--hbone", "accept", "--ca", ca_arg],
    );
    let connect_relay = Relay::start_with(
        "127.0.0.1",
        "127.0.0.3",
        &[port, other],
        &["--hbone", "connect", "--ca", ca_arg],
    );
    exchange(&server, port);
    exchange(&server, port);

    let c = connect(other);
    nothing_back(c, "a reply through a refused CONNECT");
    accept.expect_line("is not relayed");
    connect_relay.expect_line("HBONE CONNECT");
}
