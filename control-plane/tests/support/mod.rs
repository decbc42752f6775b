//! A real `control-plane` process on loopback, and a real xDS client
//! (mesh-runtime's) following it. Shared by the process-level suites.

#![allow(dead_code, reason = "each suite uses its own part")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hbone::drain::Drain;
use mesh_model::state::Snapshot;
use mesh_model::xds::store::XdsStore;
use mesh_runtime::xds::client::{XdsClient, XdsStats};
use proto::discovery::Node;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// node1's bootstrap token (32+ characters, as the control plane requires).
pub const TOKEN: &str = "node1-token-0123456789abcdef0123456789";
pub const MESH: &str = "nodes: [{name: node1, ip: 10.0.0.1}]\n\
namespaces: [{name: shop, labels: {istio.io/dataplane-mode: ambient}}]\n\
workloads:\n\
- {name: a, namespace: shop, serviceAccount: cart, ip: 10.1.1.1, node: node1}\n";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `control-plane` child process. Killed on drop.
pub struct ControlPlane {
    child: Child,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

/// How to start one.
#[derive(Default, Clone)]
pub struct Options {
    pub args: Vec<String>,
    /// `RLIMIT_NOFILE` (soft and hard) for the child.
    pub nofile: Option<u64>,
    /// Listen here instead of an ephemeral port.
    pub listen: Option<SocketAddr>,
}

impl ControlPlane {
    /// Starts one on a fresh directory holding `mesh` and node1's token.
    pub fn start(mesh: &str, opts: Options) -> ControlPlane {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_owned();
        std::fs::write(dir.join("mesh.yaml"), mesh).expect("mesh file");
        std::fs::write(dir.join("tokens.yaml"), format!("node1: {TOKEN}\n")).expect("tokens");
        let mut cp = ControlPlane::start_in(&dir, opts);
        cp._tmp = Some(tmp);
        cp
    }

    /// Starts one on `dir` (which holds `mesh.yaml`, `tokens.yaml` and
    /// maybe a CA already).
    pub fn start_in(dir: &Path, opts: Options) -> ControlPlane {
        let (child, log) = spawn(dir, &opts);
        let mut cp = ControlPlane {
            child,
            dir: dir.to_owned(),
            _tmp: None,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = cp.child.try_wait().expect("wait") {
                panic!("control plane exited with {status}:\n{}", cp.log());
            }
            let log = cp.log();
            if let Some(line) = log.lines().find(|l| l.contains("control plane listening")) {
                cp.addr = field(line, "addr=").expect("addr in the listening line");
                cp.metrics_addr =
                    field(line, "metrics_addr=").expect("metrics_addr in the listening line");
                return cp;
            }
            assert!(Instant::now() < deadline, "control plane not up:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything it logged so far (ANSI colours removed).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The mesh root, PEM.
    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca").join(hbone::ca::ROOT_CERT_FILE))
            .expect("root certificate")
    }

    /// User plus system CPU time so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("comm")
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of stat(5), in clock ticks.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// `GET /metrics` on 15014's stand-in.
    pub fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.metrics_addr).expect("metrics port");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("metrics");
        out
    }

    /// The value of one metric series (`name{labels}`), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics(), series)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal");
    }

    /// An endpoint for its TLS port, optionally leaving from `source`.
    pub fn endpoint(&self, source: Option<IpAddr>) -> Endpoint {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.root_pem()))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .local_address(source)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // A stopped process must be continued to die promptly.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGCONT,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, opts: &Options) -> (Child, Arc<Mutex<String>>) {
    let listen = opts
        .listen
        .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_control-plane"));
    cmd.arg("--config-file")
        .arg(dir.join("mesh.yaml"))
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .arg("--tokens-file")
        .arg(dir.join("tokens.yaml"))
        .args(["--listen", &listen, "--metrics-listen", "127.0.0.1:0"])
        .args(&opts.args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(n) = opts.nofile {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("spawning control-plane");
    let stderr = child.stderr.take().expect("piped");
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let mut l = sink.lock().unwrap();
            l.push_str(&strip_ansi(&line));
            l.push('\n');
        }
    });
    (child, log)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    let at = line
        .match_indices(key)
        .find(|(i, _)| *i == 0 || line.as_bytes()[i - 1] == b' ')?
        .0;
    let rest = &line[at + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The value of `series` in a Prometheus text exposition, 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A real xDS client following a control plane.
pub struct Follower {
    pub stats: Arc<XdsStats>,
    pub snapshots: mpsc::Receiver<Arc<Snapshot>>,
    drain: Drain,
    pub task: tokio::task::JoinHandle<()>,
}

impl Follower {
    pub fn client(endpoint: Endpoint) -> (XdsClient, Follower) {
        let (publish, snapshots) = mpsc::channel(64);
        let stats = Arc::new(XdsStats::default());
        let client = XdsClient {
            endpoint,
            mark: None,
            node: Node {
                id: "ztunnel~node1".into(),
                ..Default::default()
            },
            token: Some(TOKEN.into()),
            store: XdsStore::default(),
            stats: stats.clone(),
            publish,
            synced: Default::default(),
            types: &mesh_runtime::xds::client::TYPE_URLS,
        };
        let follower = Follower {
            stats,
            snapshots,
            drain: Drain::new(),
            task: tokio::spawn(async {}),
        };
        (client, follower)
    }

    /// Starts following with the client's defaults.
    pub fn start(endpoint: Endpoint) -> Follower {
        let (client, mut f) = Follower::client(endpoint);
        f.task = tokio::spawn(client.run(f.drain.clone()));
        f
    }

    /// The next snapshot, within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Arc<Snapshot>> {
        tokio::time::timeout(within, self.snapshots.recv())
            .await
            .ok()
            .flatten()
    }

    pub fn drain(&self) -> Drain {
        self.drain.clone()
    }

    pub async fn stop(self) {
        self.drain.signal();
        let _ = self.task.await;
    }
}

/// Polls `f` every 20 ms until it holds or `within` passes (async).
pub async fn until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` every 20 ms until it holds or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
