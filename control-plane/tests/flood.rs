//! The control plane's TLS port (15012) under attack, as a real process on
//! loopback: floods of connections that never finish their handshake, a
//! low open-file limit, peers that stop after TLS or never answer pings,
//! and a tokens file with a short token. A real xDS client must still be
//! served. Sources are distinct loopback addresses (127.0.0.x), so the
//! per-source cap sees the flood apart from the client.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use support::{metric, ControlPlane, Follower, Options, MESH};

const SERVED_WITHIN: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(source, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_millis(300))?;
    let s: TcpStream = s.into();
    s.set_nonblocking(true)?;
    Ok(s)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Connects and says nothing.
    Silent,
    /// Sends a TLS record header and then one byte every 200 ms.
    DripHello,
}

/// One attacker: keeps `n` connections from `source` open, opening a new
/// one whenever the server closes one, until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(to: SocketAddr, source: IpAddr, n: usize, kind: Kind) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), opened.clone());
        let thread = std::thread::spawn(move || flood(to, source, n, kind, &s, &o));
        Flood {
            stop,
            opened,
            thread: Some(thread),
        }
    }

    fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Closes every connection.
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn flood(
    to: SocketAddr,
    source: IpAddr,
    n: usize,
    kind: Kind,
    stop: &AtomicBool,
    opened: &AtomicU64,
) {
    let mut conns: Vec<(TcpStream, Instant)> = Vec::new();
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        // Drop what the server closed.
        conns.retain_mut(|(s, _)| match s.read(&mut buf) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        });
        let round = Instant::now();
        while conns.len() < n && round.elapsed() < Duration::from_millis(200) {
            match connect_from(source, to) {
                Ok(mut s) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    if kind == Kind::DripHello {
                        // A handshake record of 512 bytes, never completed.
                        let _ = s.write(&[0x16, 0x03, 0x01, 0x02, 0x00]);
                    }
                    conns.push((s, Instant::now()));
                }
                Err(_) => break,
            }
        }
        if kind == Kind::DripHello {
            for (s, last) in conns.iter_mut() {
                if last.elapsed() >= Duration::from_millis(200) {
                    let _ = s.write(&[0x01]);
                    *last = Instant::now();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slowloris_floods_leave_a_real_client_served() {
    // 512 descriptors: the two floods together want 800 connections.
    let cp = ControlPlane::start(
        MESH,
        Options {
            nofile: Some(512),
            args: args(&["--handshake-timeout", "1s"]),
            ..Default::default()
        },
    );
    let silent = Flood::start(cp.addr, ip("127.0.0.2"), 400, Kind::Silent);
    let slow = Flood::start(cp.addr, ip("127.0.0.3"), 400, Kind::DripHello);
    assert!(
        support::eventually(Duration::from_secs(20), || silent.opened() + slow.opened()
            >= 500),
        "the floods did not get going ({} silent, {} slow)",
        silent.opened(),
        slow.opened()
    );
    // Let them fill whatever they can.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let mut client = Follower::start(cp.endpoint(Some(ip("127.0.0.1"))));
    let snap = client
        .next(SERVED_WITHIN)
        .await
        .unwrap_or_else(|| panic!("no config during the flood:\n{}", cp.log()));
    assert_eq!(snap.workloads().count(), 1);
    eprintln!("served during the flood in {:?}", started.elapsed());

    let refused = |reason: &str| {
        cp.metric(&format!(
            "control_plane_connections_refused_total{{reason=\"{reason}\"}}"
        ))
    };
    assert!(refused("source_limit") > 0.0, "{}", cp.metrics());
    assert!(
        support::eventually(Duration::from_secs(5), || refused("handshake_timeout")
            > 0.0),
        "{}",
        cp.metrics()
    );
    assert_eq!(cp.metric("control_plane_xds_connected_clients"), 1.0);
    silent.stop();
    slow.stop();
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_at_a_low_file_limit_does_not_spin_the_accept_loop_and_it_recovers() {
    // Caps set out of the way on purpose, so the flood exhausts the
    // descriptors and `accept` fails with EMFILE.
    let cp = ControlPlane::start(
        MESH,
        Options {
            nofile: Some(64),
            args: args(&[
                "--max-connections",
                "100000",
                "--max-connections-per-ip",
                "100000",
                "--handshake-timeout",
                "120s",
            ]),
            ..Default::default()
        },
    );
    // About 60 accepted and the rest in the listen backlog (the kernel may
    // cap it at 128).
    let flood = Flood::start(cp.addr, ip("127.0.0.2"), 150, Kind::Silent);
    assert!(
        support::eventually(Duration::from_secs(20), || flood.opened() >= 150),
        "the flood did not get going ({})",
        flood.opened()
    );
    assert!(
        support::eventually(Duration::from_secs(10), || cp
            .log()
            .contains("accept failed; backing off")),
        "the descriptors never ran out:\n{}",
        cp.log()
    );

    // Not spinning: well under a fifth of one core while out of descriptors
    // (a correctness bound, not a speed test).
    let window = Duration::from_secs(3);
    let (cpu0, t0) = (cp.cpu_time(), Instant::now());
    std::thread::sleep(window);
    let used = (cp.cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    eprintln!(
        "CPU while out of descriptors: {:.1}% of one core",
        used * 100.0
    );
    assert!(
        used < 0.2,
        "the accept loop spins: {:.0}% of a core",
        used * 100.0
    );

    // The flood ends: descriptors come back and a real client is served.
    flood.stop();
    let mut client = Follower::start(cp.endpoint(Some(ip("127.0.0.1"))));
    let snap = client
        .next(SERVED_WITHIN)
        .await
        .unwrap_or_else(|| panic!("not served after the flood:\n{}", cp.log()));
    assert_eq!(snap.workloads().count(), 1);
    assert!(
        cp.log().contains("accepting connections again"),
        "{}",
        cp.log()
    );
    let m = cp.metrics();
    assert!(
        metric(&m, "control_plane_accept_errors_total{reason=\"fd_limit\"}") > 0.0,
        "{m}"
    );
    client.stop().await;
}

/// A TLS client of the control plane's port (verifies its certificate).
fn tls_connect(cp: &ControlPlane) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let root_pem = cp.root_pem();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = TcpStream::connect(cp.addr).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    tls
}

/// Reads until the server closes; how long that took.
fn time_to_close(tls: &mut impl Read, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        match tls.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[test]
fn a_client_silent_after_tls_is_dropped_at_the_handshake_deadline() {
    let cp = ControlPlane::start(
        MESH,
        Options {
            args: args(&["--handshake-timeout", "1s"]),
            ..Default::default()
        },
    );
    let mut tls = tls_connect(&cp);
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // TLS is done; the HTTP/2 preface never comes.
    let closed = time_to_close(&mut tls, Duration::from_secs(8));
    let closed = closed.expect("the connection outlived its handshake deadline");
    eprintln!("closed {closed:?} after the TLS handshake");
    assert!(
        support::eventually(Duration::from_secs(2), || cp
            .metric("control_plane_connections_refused_total{reason=\"bad_preface\"}")
            + cp.metric(
                "control_plane_connections_refused_total{reason=\"handshake_timeout\"}"
            )
            >= 1.0),
        "{}",
        cp.metrics()
    );
}

#[test]
fn a_peer_that_never_answers_pings_is_dropped() {
    let cp = ControlPlane::start(
        MESH,
        Options {
            args: args(&["--keepalive-interval", "1s", "--keepalive-timeout", "1s"]),
            ..Default::default()
        },
    );
    let mut tls = tls_connect(&cp);
    // The preface and an empty SETTINGS frame, then silence: whatever the
    // server sends (its SETTINGS, PINGs) is read and never answered.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    tls.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap();
    tls.flush().unwrap();
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let closed = time_to_close(&mut tls, Duration::from_secs(10))
        .expect("a peer that never answers PING was kept");
    eprintln!("dropped {closed:?} after the preface");
}

#[test]
fn a_short_token_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    std::fs::write(
        dir.path().join("tokens.yaml"),
        format!("node1: {}\nnode2: hunter2\n", support::TOKEN),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("--config-file")
        .arg(dir.path().join("mesh.yaml"))
        .arg("--ca-dir")
        .arg(dir.path().join("ca"))
        .arg("--tokens-file")
        .arg(dir.path().join("tokens.yaml"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node \"node2\"")
            && err.contains("7 characters")
            && err.contains("at least 32"),
        "{err}"
    );
}
