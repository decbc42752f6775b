//! The processes and clients under test: a real `control-plane` on
//! loopback, a fleet of in-process delta ADS clients (ztunnel's own
//! [`XdsClient`]), and a real `ztunnel` in xDS mode. Each owns a scratch
//! directory or child process and cleans up on drop.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::drain::Drain;
use mesh_model::xds::store::XdsStore;
use mesh_runtime::xds::client::{XdsClient, XdsStats};
use proto::discovery::Node;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::mesh::{self, Scale, MARKER_IP, NODES, OBSERVER_NODE};

/// The name in the control plane's serving certificate.
const SERVER_NAME: &str = "control-plane";
const START_TIMEOUT: Duration = Duration::from_secs(120);

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// `$<env>`, or `name` next to this executable (`target/<profile>/`).
fn binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("own path");
    let p = exe.with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: cargo build --release -p {name} (or set {env})",
        p.display()
    );
    p
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    mesh_tests::mesh::http_get_on(s, path)
}

/// Polls `GET path` until it answers 200; panics after [`START_TIMEOUT`].
fn wait_ready(addr: SocketAddr, path: &str, child: &mut Child, what: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !matches!(http_get(addr, path), Ok((200, _))) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during startup: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} not ready after {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn token(node: &str) -> String {
    // The control plane refuses tokens under 32 characters.
    format!("bench-token-{node}-{}-0123456789abcdef", std::process::id())
}

/// A `control-plane` process on loopback with its own CA, tokens and
/// config file in a scratch directory.
pub struct ControlPlane {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
    generation: AtomicUsize,
}

impl ControlPlane {
    /// Writes the config for `scale` at `generation`, starts the control
    /// plane and waits until it has loaded it.
    pub fn start(scale: &Scale, generation: usize) -> ControlPlane {
        let dir = std::env::temp_dir().join(format!(
            "xds-bench-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let mut tokens = String::new();
        for n in (0..NODES)
            .map(mesh::node_name)
            .chain([OBSERVER_NODE.to_owned()])
        {
            tokens += &format!("{n}: {}\n", token(&n));
        }
        std::fs::write(dir.join("tokens.yaml"), tokens).expect("tokens");
        std::fs::write(dir.join("config.yaml"), mesh::config(scale, generation)).expect("config");
        let (port, metrics_port) = (free_port(), free_port());
        let mut child = Command::new(binary("control-plane", "CONTROL_PLANE_BIN"))
            .arg("--config-file")
            .arg(dir.join("config.yaml"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .arg("--tokens-file")
            .arg(dir.join("tokens.yaml"))
            .arg("--listen")
            .arg(loopback(port).to_string())
            .arg("--metrics-listen")
            .arg(loopback(metrics_port).to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn control-plane");
        wait_ready(
            loopback(metrics_port),
            "/healthz/ready",
            &mut child,
            "control-plane",
        );
        ControlPlane {
            child,
            dir,
            addr: loopback(port),
            generation: AtomicUsize::new(generation),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The generation of the config file in place.
    pub fn generation(&self) -> usize {
        self.generation.load(Ordering::Relaxed)
    }

    /// Replaces the config file (write, then rename) with the next
    /// generation: the same mesh with the marker renamed.
    pub fn rewrite(&self, scale: &Scale) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let tmp = self.dir.join("config.yaml.tmp");
        std::fs::write(&tmp, mesh::config(scale, generation)).expect("write config");
        std::fs::rename(&tmp, self.dir.join("config.yaml")).expect("rename config");
    }

    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.root_path()).expect("root certificate")
    }

    fn root_path(&self) -> PathBuf {
        self.dir.join("ca").join("root-cert.pem")
    }

    /// An endpoint that verifies the control plane against the mesh root.
    pub fn endpoint(&self) -> Endpoint {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.root_pem()))
            .domain_name(SERVER_NAME);
        Endpoint::from_shared(format!("https://{}", self.addr))
            .and_then(|e| e.tls_config(tls))
            .expect("valid endpoint")
            .tcp_nodelay(true)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// (client index, marker workload name, when the snapshot was published).
type Applied = (usize, String, Instant);

/// `n` delta ADS clients, each with its own TLS connection and node token.
pub struct Fleet {
    drain: Drain,
    applied: mpsc::UnboundedReceiver<Applied>,
    /// Per client: the marker it holds and when it first published it.
    latest: Vec<Option<(String, Instant)>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    pub fn connect(cp: &ControlPlane, n: usize) -> Fleet {
        let drain = Drain::new();
        let (tx, applied) = mpsc::unbounded_channel();
        let endpoint = cp.endpoint();
        let mut tasks = Vec::new();
        for i in 0..n {
            let node = mesh::node_name(i);
            let (publish, mut snapshots) = mpsc::channel(8);
            let client = XdsClient {
                endpoint: endpoint.clone(),
                mark: None,
                node: Node {
                    id: format!("ztunnel~{node}"),
                    ..Default::default()
                },
                token: Some(token(&node).into()),
                store: XdsStore::default(),
                stats: Arc::new(XdsStats::default()),
                publish,
                synced: Default::default(),
                types: &mesh_runtime::xds::client::TYPE_URLS,
            };
            tasks.push(tokio::spawn(client.run(drain.clone())));
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(snap) = snapshots.recv().await {
                    let at = Instant::now();
                    let marker = snap
                        .workload_by_ip(MARKER_IP)
                        .map(|w| w.name.clone())
                        .unwrap_or_default();
                    drop(snap);
                    if tx.send((i, marker, at)).is_err() {
                        return;
                    }
                }
            }));
        }
        Fleet {
            drain,
            applied,
            latest: vec![None; n],
            tasks,
        }
    }

    /// Waits until every client has published a snapshot holding `marker`;
    /// returns when each first did, or `None` after `timeout`.
    pub async fn wait_all(&mut self, marker: &str, timeout: Duration) -> Option<Vec<Instant>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let done: Option<Vec<Instant>> = self
                .latest
                .iter()
                .map(|l| l.as_ref().filter(|(m, _)| m == marker).map(|(_, t)| *t))
                .collect();
            if done.is_some() {
                return done;
            }
            let (i, m, at) = tokio::time::timeout_at(deadline, self.applied.recv())
                .await
                .ok()??;
            if self.latest[i].as_ref().is_none_or(|(held, _)| *held != m) {
                self.latest[i] = Some((m, at));
            }
        }
    }

    pub async fn stop(self) {
        self.drain.signal();
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// A real `ztunnel` in xDS mode without capture, every port on loopback.
pub struct Ztunnel {
    child: Child,
    admin: SocketAddr,
}

impl Ztunnel {
    /// Starts it as the observer node and waits until it is ready (which
    /// it is only after its first complete xDS sync).
    pub fn start(cp: &ControlPlane) -> Ztunnel {
        let token_file = cp.dir.join("observer.token");
        std::fs::write(&token_file, token(OBSERVER_NODE)).expect("token file");
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let flag = |name: &str, port: u16| [format!("--{name}"), loopback(port).to_string()];
        let mut cmd = Command::new(binary("ztunnel", "ZTUNNEL_BIN"));
        cmd.args([
            "--node",
            OBSERVER_NODE,
            "--no-capture",
            "--access-log",
            "off",
        ])
        .arg("--xds-address")
        .arg(format!("https://{}", cp.addr))
        .arg("--xds-root-cert")
        .arg(cp.root_path())
        .arg("--xds-token-file")
        .arg(&token_file);
        for (name, port) in [
            "outbound-addr",
            "inbound-plaintext-addr",
            "hbone-addr",
            "admin-addr",
            "metrics-addr",
            "readiness-addr",
        ]
        .iter()
        .zip(&ports)
        {
            cmd.args(flag(name, *port));
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn ztunnel");
        wait_ready(loopback(ports[5]), "/healthz/ready", &mut child, "ztunnel");
        Ztunnel {
            child,
            admin: loopback(ports[3]),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Workloads in the ztunnel's `/config_dump`.
    pub fn workloads_held(&self) -> usize {
        let (status, body) = http_get(self.admin, "/config_dump").expect("GET /config_dump");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("config_dump is JSON");
        v["workloads"].as_array().map_or(0, Vec::len)
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of `pid`, in seconds.
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after `(comm)`: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
