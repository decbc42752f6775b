//! What an idle connection through the mesh costs on the heap: two real
//! ztunnels in one process on loopback (outbound → HBONE → inbound, as in
//! `datapath.rs`), many connections opened, echoed once and held, and the
//! live heap bytes of this process counted by a wrapping allocator.
//!
//! The same connections made straight to the app (no mesh) are counted
//! first, so what the client and the app hold cancels out: the difference
//! is what both ztunnels hold per connection (the task and its future, the
//! copy buffers, the HTTP/2 stream on either side, the records). Growth is
//! taken between two counts of connections, so one-time costs (the pooled
//! HBONE connections' first stream, the first metric series) cancel too.
//! `netns-bench` measures the same as RSS of the real processes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hbone::ca::DevCa;
use hbone::cert::CertStore;
use hbone::client::{ClientConfig, HboneClient};
use hbone::drain::Drain;
use hbone::server::{HboneServer, ServerConfig};
use mesh_runtime::accesslog::{AccessLog, AccessLogCounters};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use ztunnel::metrics::Metrics;
use ztunnel::proxy::inbound::{HboneInbound, LocalIdentities};
use ztunnel::proxy::outbound::serve_outbound;
use ztunnel::proxy::record::Telemetry;
use ztunnel::proxy::{OrigDstSource, Proxy};

/// Counts the bytes allocated and not yet freed, process-wide.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` with the caller's arguments;
// the counter is only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Idle connections held at the first count, and added before the second.
const FIRST: usize = 100;
const MORE: usize = 200;
/// Both ztunnels together, per idle connection (a debug build; about
/// 8.9 KiB now, 12.8 KiB when the copy kept its buffers and the outbound
/// task held the tunnel's connect state).
const MAX_BYTES_PER_CONN: f64 = 10.0 * 1024.0;

/// The live heap once the process has settled (nothing allocated or freed
/// for a moment).
async fn settled_heap() -> isize {
    let mut last = LIVE.load(Ordering::Relaxed);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = LIVE.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// An echo app holding as little as it can per connection, the same with
/// and without the mesh.
async fn echo_app(listener: TcpListener) {
    while let Ok((mut sock, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok(n) = sock.read(&mut buf).await {
                if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// `n` connections from `from` to `to`, each echoing 8 bytes once.
async fn open_idle(from: IpAddr, to: SocketAddr, first: usize, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for i in first..first + n {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        let mut s = tokio::time::timeout(Duration::from_secs(20), sock.connect(to))
            .await
            .expect("connect in time")
            .expect("connect");
        let msg = (i as u64).to_le_bytes();
        s.write_all(&msg).await.unwrap();
        let mut back = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, msg, "connection {i} echoed other bytes");
        conns.push(s);
    }
    conns
}

/// Heap growth per connection between `FIRST` and `FIRST + MORE` idle
/// connections from `from` to `to`.
async fn growth_per_conn(from: IpAddr, to: SocketAddr) -> f64 {
    let mut conns = open_idle(from, to, 0, FIRST).await;
    let a = settled_heap().await;
    conns.extend(open_idle(from, to, FIRST, MORE).await);
    let b = settled_heap().await;
    // Still alive, and byte-exact, after the counts.
    for (i, s) in conns.iter_mut().enumerate() {
        let msg = (i as u64 ^ 0xffff).to_le_bytes();
        s.write_all(&msg).await.unwrap();
        let mut back = [0u8; 8];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg, "idle connection {i} broke");
    }
    (b - a) as f64 / MORE as f64
}

fn telemetry() -> Telemetry {
    Telemetry {
        metrics: Metrics::new(),
        access_log: Arc::new(AccessLog::spawn(
            Box::new(std::io::sink()),
            AccessLogCounters::default(),
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_through_both_ztunnels_holds_little_heap() {
    let (a, b, hbone) = loop {
        let (a, b) = (rand::random_range(1..=254u8), rand::random::<u8>());
        match TcpListener::bind((Ipv4Addr::new(127, a, b, 3), mesh_model::HBONE_PORT)).await {
            Ok(l) => break (a, b, l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("binding the HBONE listener on loopback: {e}"),
        }
    };
    let ip = |last: u8| IpAddr::V4(Ipv4Addr::new(127, a, b, last));
    let (node1, client_pod, server_pod) = (ip(1), ip(2), ip(3));
    let app = TcpListener::bind((server_pod, 0)).await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(echo_app(app));
    let yaml = format!(
        "nodes: [{{name: n1, ip: 127.{a}.{b}.1}}, {{name: n2, ip: 127.{a}.{b}.4}}]
namespaces:
  - {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
workloads:
  - {{name: client, namespace: shop, serviceAccount: client, ip: 127.{a}.{b}.2, node: n1}}
  - {{name: server, namespace: shop, serviceAccount: server, ip: 127.{a}.{b}.3, node: n2}}
"
    );
    let snap = Arc::new(mesh_model::config::parse(&yaml).unwrap());
    let ca = Arc::new(DevCa::generate().unwrap());

    let drain2 = Drain::new();
    let certs2 = CertStore::new(ca.clone());
    let proxy2 = Proxy::new(
        mesh_model::state::Scope::Node("n2".into()),
        watch::channel(snap.clone()).1,
        certs2.clone(),
        HboneClient::new(certs2, ClientConfig::default()),
        telemetry(),
        drain2.clone(),
        false,
        vec![],
    );
    let server = HboneServer::new(
        Arc::new(LocalIdentities(proxy2.clone())),
        Arc::new(HboneInbound(proxy2)),
        ServerConfig::default(),
    );
    let d = drain2.clone();
    tokio::spawn(async move { server.serve(hbone, d).await });

    let drain1 = Drain::new();
    let certs1 = CertStore::new(ca);
    let listener = TcpListener::bind((node1, 0)).await.unwrap();
    let to_app = listener.local_addr().unwrap();
    let mut proxy1 = Proxy::new(
        mesh_model::state::Scope::Node("n1".into()),
        watch::channel(snap).1,
        certs1.clone(),
        HboneClient::new(certs1, ClientConfig::default()),
        telemetry(),
        drain1.clone(),
        false,
        vec![],
    );
    Arc::get_mut(&mut proxy1).unwrap().orig_dst =
        OrigDstSource::Forwarded(Arc::new(HashMap::from([(to_app, app_addr)])));
    tokio::spawn(serve_outbound(proxy1, listener));

    // Warm up both paths (certificates, the first pooled connection, the
    // metric series), then count.
    drop(open_idle(client_pod, to_app, 0, 10).await);
    drop(open_idle(client_pod, app_addr, 0, 10).await);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let direct = growth_per_conn(client_pod, app_addr).await;
    let meshed = growth_per_conn(client_pod, to_app).await;
    let per_conn = meshed - direct;
    eprintln!(
        "heap per idle connection: {meshed:.0} B meshed, {direct:.0} B direct: \
         both ztunnels hold {per_conn:.0} B"
    );
    assert!(
        per_conn < MAX_BYTES_PER_CONN,
        "an idle connection holds {per_conn:.0} B in the two ztunnels (at most {MAX_BYTES_PER_CONN})"
    );
}
