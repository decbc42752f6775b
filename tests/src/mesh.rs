//! Real `ztunnel` processes on the nodes of a [`Topology`], sharing one dev
//! CA and one config file, with their access logs and stderr in a scratch
//! directory that is removed on drop (and printed first if the test failed).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::command::ChildGuard;
use crate::netns::Netns;
use crate::topology::Topology;
pub use crate::wire::{assert_hbone_on_the_wire, LinkCapture};

/// How long a ztunnel may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
pub const READINESS_PORT: u16 = 15021;
pub const METRICS_PORT: u16 = 15020;
pub const ADMIN_PORT: u16 = 15000;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The `ztunnel` binary under test: `$ZTUNNEL_BIN`, or `ztunnel` next to the
/// test executable's directory (`target/<profile>/ztunnel`).
pub fn ztunnel_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ZTUNNEL_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("ztunnel");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p ztunnel` first (scripts/test-all does), or set ZTUNNEL_BIN",
        bin.display()
    );
    bin
}

/// Node `n`'s bootstrap token (the control plane wants 32 characters).
fn node_token(n: usize) -> String {
    format!("token-node{n}-{}-0123456789abcdef", std::process::id())
}

/// The `control-plane` binary, next to `ztunnel` (or `$CONTROL_PLANE_BIN`).
pub fn control_plane_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CONTROL_PLANE_BIN") {
        return bin.into();
    }
    let bin = ztunnel_bin().with_file_name("control-plane");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p control-plane` first (scripts/test-all does)",
        bin.display()
    );
    bin
}

/// What a ztunnel logs once it accepts on listeners taken over from the
/// running one.
pub const TOOK_OVER: &str = "took over the listeners";

/// Where the control plane listens in xDS mode (inside node 1's namespace).
pub const CONTROL_PLANE_ADDR: &str = "10.0.0.1:15012";
/// The control plane's `/metrics` and `/healthz/ready` (node 1's namespace).
pub const CONTROL_PLANE_METRICS_ADDR: &str = "10.0.0.1:15014";

/// One ztunnel per node, started on demand.
pub struct Mesh {
    dir: PathBuf,
    config: PathBuf,
    ca_dir: PathBuf,
    nodes: Vec<Netns>,
    ztunnels: Vec<Option<ChildGuard>>,
    /// Each node's last CA dir and extra flags, so an upgrade starts the new
    /// process exactly as the old one.
    launched: Vec<Option<(PathBuf, Vec<String>)>>,
    /// With a control plane, ztunnels use xDS instead of the file.
    control_plane: Option<ChildGuard>,
    /// Extra flags of the control plane ([`Mesh::with_control_plane_args`]).
    control_plane_args: Vec<String>,
    xds: bool,
}

impl Mesh {
    /// Writes `config_yaml` and creates the shared CA; starts nothing.
    pub fn new(topo: &Topology, config_yaml: &str) -> Mesh {
        let dir = std::env::temp_dir().join(format!(
            "{}-mesh-{}-{}",
            topo.id(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("mesh scratch dir");
        let ca_dir = dir.join("ca");
        hbone::ca::DevCa::load_or_create(&ca_dir).expect("dev CA");
        let nodes: Vec<Netns> = topo.nodes().iter().map(|n| n.ns.clone()).collect();
        let mesh = Mesh {
            config: dir.join("config.yaml"),
            ca_dir,
            ztunnels: nodes.iter().map(|_| None).collect(),
            launched: nodes.iter().map(|_| None).collect(),
            nodes,
            dir,
            control_plane: None,
            control_plane_args: Vec::new(),
            xds: false,
        };
        mesh.write_config(config_yaml);
        mesh
    }

    /// Like [`Mesh::new`], but ztunnels follow a real `control-plane`
    /// (started in node 1's namespace, reading the same config file) over
    /// xDS, and get certificates from its CA with per-node tokens.
    pub fn with_control_plane(topo: &Topology, config_yaml: &str) -> Mesh {
        Mesh::with_control_plane_args(topo, config_yaml, &[])
    }

    /// Like [`Mesh::with_control_plane`], with `args` added to the control
    /// plane's flags (on every start).
    pub fn with_control_plane_args(topo: &Topology, config_yaml: &str, args: &[&str]) -> Mesh {
        let mut mesh = Mesh::new(topo, config_yaml);
        mesh.xds = true;
        mesh.control_plane_args = args.iter().map(|a| (*a).to_owned()).collect();
        let tokens: String = (1..=mesh.nodes.len())
            .map(|n| format!("node{n}: {}\n", node_token(n)))
            .collect();
        std::fs::write(mesh.dir.join("tokens.yaml"), tokens).expect("tokens file");
        for n in 1..=mesh.nodes.len() {
            std::fs::write(mesh.dir.join(format!("token-node{n}")), node_token(n)).expect("token");
        }
        mesh.start_control_plane();
        mesh
    }

    /// Binds `token` to `caller` (a node name, or a SPIFFE identity: a
    /// waypoint's) in the control plane's tokens file, and writes it to a
    /// file of its own, whose path is returned. The control plane reads the
    /// tokens when it starts: restart it afterwards.
    pub fn add_token(&self, caller: &str, token: &str) -> PathBuf {
        use std::io::Write as _;
        let mut tokens = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.join("tokens.yaml"))
            .expect("tokens file");
        writeln!(tokens, "{caller}: {token}").expect("append token");
        let file = self
            .dir
            .join(format!("token-{}", caller.replace(['/', ':'], "_")));
        std::fs::write(&file, token).expect("token file");
        file
    }

    /// Starts (or restarts) the control plane and waits until it listens.
    pub fn start_control_plane(&mut self) {
        let bin = control_plane_bin();
        let script = format!(
            "exec \"$0\" \"$@\" 2>>{}",
            self.dir.join("control-plane.stderr").display()
        );
        let tokens = self.dir.join("tokens.yaml");
        let argv = [
            "sh",
            "-c",
            &script,
            bin.to_str().expect("utf-8 path"),
            "--config-file",
            self.config.to_str().expect("utf-8 path"),
            "--ca-dir",
            self.ca_dir.to_str().expect("utf-8 path"),
            "--tokens-file",
            tokens.to_str().expect("utf-8 path"),
            "--listen",
            CONTROL_PLANE_ADDR,
            "--metrics-listen",
            CONTROL_PLANE_METRICS_ADDR,
        ];
        let mut argv = argv.to_vec();
        argv.extend(self.control_plane_args.iter().map(String::as_str));
        let child = self.nodes[0].spawn(&argv).expect("spawn control-plane");
        self.control_plane = Some(child);
        let addr: SocketAddr = CONTROL_PLANE_ADDR.parse().expect("constant");
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.nodes[0].std_connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "control plane not listening:\n{}",
                std::fs::read_to_string(self.dir.join("control-plane.stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The control plane's process id (`ip netns exec` and `sh -c exec`
    /// both exec, so it is the id of the process spawned), if running.
    pub fn control_plane_pid(&self) -> Option<u32> {
        self.control_plane.as_ref().map(ChildGuard::id)
    }

    /// `/metrics` of the control plane.
    pub fn control_plane_metrics(&self) -> String {
        let addr = CONTROL_PLANE_METRICS_ADDR.parse().expect("constant");
        let (status, body) =
            http_get_addr(&self.nodes[0], addr, "/metrics").expect("GET control-plane /metrics");
        assert_eq!(status, 200, "GET control-plane /metrics: {body}");
        body
    }

    /// SIGKILLs the control plane.
    pub fn kill_control_plane(&mut self) {
        if let Some(mut cp) = self.control_plane.take() {
            cp.kill();
        }
    }

    /// Replaces the config file atomically (write, then rename).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.join("config.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    pub fn ca_dir(&self) -> &Path {
        &self.ca_dir
    }

    /// The config file every proxy of this mesh reads (in file mode).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The ztunnel flags naming the config source for a proxy on `node`
    /// (1-based): the file and `ca_dir`, or the control plane with the
    /// node's token.
    pub fn source_args(&self, node: usize, ca_dir: &Path) -> Vec<String> {
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        if self.xds {
            vec![
                "--xds-address".into(),
                format!("https://{CONTROL_PLANE_ADDR}"),
                "--xds-root-cert".into(),
                path(&ca_dir.join("root-cert.pem")),
                "--xds-token-file".into(),
                path(&self.dir.join(format!("token-node{node}"))),
            ]
        } else {
            vec![
                "--config-file".into(),
                path(&self.config),
                "--ca-dir".into(),
                path(ca_dir),
            ]
        }
    }

    /// A fresh directory inside the scratch dir (removed on drop).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    /// The access log of node `node` (1-based).
    pub fn access_log_path(&self, node: usize) -> PathBuf {
        self.dir.join(format!("access-node{node}.log"))
    }

    fn stderr_path(&self, node: usize) -> PathBuf {
        self.dir.join(format!("ztunnel-node{node}.stderr"))
    }

    /// Starts ztunnel on node `node` (1-based) and waits until it is ready.
    pub fn start(&mut self, node: usize) {
        self.start_with_args(node, &[]);
    }

    /// Starts ztunnel on `node` with `extra` flags after the harness's own
    /// and waits until it is ready.
    pub fn start_with_args(&mut self, node: usize, extra: &[&str]) {
        let ca_dir = self.ca_dir.clone();
        self.spawn(node, &ca_dir, extra);
        self.wait_ready(node);
    }

    /// Starts ztunnel on `node` with its own CA in `ca_dir`: a proxy whose
    /// certificates the rest of the mesh must not trust.
    pub fn start_with_ca(&mut self, node: usize, ca_dir: &Path) {
        self.spawn(node, ca_dir, &[]);
        self.wait_ready(node);
    }

    /// Spawns ztunnel on `node` (replacing the handle the harness holds),
    /// with the node's own state dir (its handoff socket).
    fn spawn(&mut self, node: usize, ca_dir: &Path, extra: &[&str]) {
        let ns = self.nodes[node - 1].clone();
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        self.launched[node - 1] = Some((ca_dir.to_owned(), extra.clone()));
        let mut args = vec!["--node".to_owned(), format!("node{node}")];
        args.extend(self.source_args(node, ca_dir));
        args.push("--state-dir".into());
        args.push(self.state_dir(node).to_str().expect("utf-8 path").into());
        args.extend(extra);
        let argv = ztunnel_argv(&self.stderr_path(node), &self.access_log_path(node), &args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let child = ns.spawn(&argv).expect("spawn ztunnel");
        self.ztunnels[node - 1] = Some(child);
    }

    /// The node's `--state-dir`.
    pub fn state_dir(&self, node: usize) -> PathBuf {
        self.dir.join(format!("state-node{node}"))
    }

    /// Starts a second ztunnel on `node` with the old one's flags while the
    /// old one runs, and waits until the new one has taken the listeners
    /// over (it logs so). Returns the old process, which now drains: pass it
    /// to [`Mesh::finish_upgrade`].
    pub fn begin_upgrade(&mut self, node: usize) -> ChildGuard {
        let old = self.ztunnels[node - 1].take().expect("ztunnel running");
        let (ca_dir, extra) = self.launched[node - 1].clone().expect("started");
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let before = self.stderr(node).matches(TOOK_OVER).count();
        self.spawn(node, &ca_dir, &extra);
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.stderr(node).matches(TOOK_OVER).count() == before {
            let new = self.ztunnels[node - 1].as_mut().expect("just spawned");
            assert!(
                new.is_running() && Instant::now() < deadline,
                "the new ztunnel on node{node} did not take over:\n{}",
                self.stderr(node)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        old
    }

    /// Waits (up to 30 s) for the old ztunnel of an upgrade to drain and
    /// exit, checks it exited cleanly, and waits until the new one is ready.
    pub fn finish_upgrade(&mut self, node: usize, mut old: ChildGuard) {
        let status = old.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "the old ztunnel on node{node} did not exit after the handoff:\n{}",
                self.stderr(node)
            )
        });
        assert!(status.success(), "old ztunnel on node{node}: {status}");
        self.wait_ready(node);
    }

    /// Starts every node's ztunnel.
    pub fn start_all(&mut self) {
        for node in 1..=self.nodes.len() {
            self.start(node);
        }
    }

    fn wait_ready(&mut self, node: usize) {
        let stderr = self.stderr_path(node);
        let child = self.ztunnels[node - 1].as_mut().expect("started");
        wait_proxy_ready(
            &self.nodes[node - 1],
            child,
            &format!("ztunnel on node{node}"),
            &stderr,
        );
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, node: usize) -> ExitStatus {
        let child = self.ztunnels[node - 1].take().expect("ztunnel running");
        terminate_proxy(child, &format!("ztunnel on node{node}"))
    }

    /// SIGTERMs every node's ztunnel and checks each exited cleanly and kept
    /// its capture (a restart must never open the node); then removes it with
    /// `ztunnel uninstall` and checks nothing is left.
    pub fn terminate_all(&mut self) {
        for node in 1..=self.nodes.len() {
            let status = self.terminate(node);
            assert!(status.success(), "ztunnel node{node} exited with {status}");
            crate::rules::assert_installed_once(&self.nodes[node - 1]);
            self.uninstall(node);
            crate::rules::assert_nothing_left(&self.nodes[node - 1]);
        }
    }

    /// Runs `ztunnel uninstall` in the node's namespace; panics if it fails.
    pub fn uninstall(&self, node: usize) -> String {
        let bin = ztunnel_bin();
        self.nodes[node - 1]
            .exec(&format!("'{}' uninstall", bin.display()))
            .unwrap_or_else(|e| panic!("ztunnel uninstall on node{node}: {e}"))
    }

    /// The process id of the node's ztunnel (`ip netns exec` and `sh -c
    /// exec` both exec, so it is the id of the process spawned).
    pub fn ztunnel_pid(&self, node: usize) -> u32 {
        self.ztunnels[node - 1]
            .as_ref()
            .expect("ztunnel running")
            .id()
    }

    /// Sends `sig` to the node's ztunnel without waiting.
    pub fn signal(&self, node: usize, sig: nix::sys::signal::Signal) {
        self.ztunnels[node - 1]
            .as_ref()
            .expect("ztunnel running")
            .signal(sig)
            .expect("signal ztunnel");
    }

    /// Waits (up to 15 s) for the node's ztunnel to exit.
    pub fn wait_exit(&mut self, node: usize) -> ExitStatus {
        let mut child = self.ztunnels[node - 1].take().expect("ztunnel running");
        child
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("ztunnel on node{node} did not exit"))
    }

    /// SIGKILLs the node's ztunnel (a crash): nothing gets cleaned up.
    pub fn kill(&mut self, node: usize) {
        let mut child = self.ztunnels[node - 1].take().expect("ztunnel running");
        child.kill();
    }

    /// A plain HTTP/1.1 GET to `127.0.0.1:port` inside the node namespace.
    pub fn http_get(&self, node: usize, port: u16, path: &str) -> std::io::Result<(u16, String)> {
        http_get(&self.nodes[node - 1], port, path)
    }

    /// `/metrics` of the node's ztunnel.
    pub fn metrics(&self, node: usize) -> String {
        metrics(&self.nodes[node - 1])
    }

    /// Every access-log event of the node so far.
    pub fn access_log(&self, node: usize) -> Vec<serde_json::Value> {
        read_access_log(&self.access_log_path(node))
    }

    /// Every access-log event of the node, once every connection it has
    /// closed is in the log (written or counted lost): what a test that
    /// asserts the *absence* of an event must read.
    pub fn settled_access_log(&self, node: usize) -> Vec<serde_json::Value> {
        wait_until(&format!("node{node}'s access log caught up"), || {
            let text = self.metrics(node);
            let sum = |name| metric_sum(&text, name, None);
            sum("ztunnel_access_log_lines_total") + sum("ztunnel_access_log_lost_lines_total")
                >= sum("istio_tcp_connections_closed_total")
        });
        self.access_log(node)
    }

    /// Waits up to 5 s for an access-log event on `node` matching `pred`.
    pub fn wait_event<F>(&self, node: usize, what: &str, pred: F) -> serde_json::Value
    where
        F: Fn(&serde_json::Value) -> bool,
    {
        wait_access_log_event(
            &self.access_log_path(node),
            &format!("on node{node} for {what}"),
            pred,
        )
    }

    /// The node's ztunnel stderr so far.
    pub fn stderr(&self, node: usize) -> String {
        std::fs::read_to_string(self.stderr_path(node)).unwrap_or_default()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for z in self.ztunnels.iter_mut().flatten() {
            z.kill();
        }
        self.kill_control_plane();
        if std::thread::panicking() {
            for node in 1..=self.nodes.len() {
                eprintln!("--- ztunnel node{node} stderr ---\n{}", self.stderr(node));
            }
            let cp =
                std::fs::read_to_string(self.dir.join("control-plane.stderr")).unwrap_or_default();
            if !cp.is_empty() {
                eprintln!("--- control-plane stderr ---\n{cp}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The argv that runs ztunnel with `args` under `sh -c exec`, stderr
/// appended to `stderr`, with the harness's access log at `access_log`,
/// 100 ms config polling and a 2 s drain (unless `args` set one).
pub(crate) fn ztunnel_argv(stderr: &Path, access_log: &Path, args: &[String]) -> Vec<String> {
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        format!("exec \"$0\" \"$@\" 2>>{}", stderr.display()),
        path(&ztunnel_bin()),
        "--access-log".into(),
        path(access_log),
        "--poll-interval".into(),
        "100ms".into(),
    ];
    if !args.iter().any(|a| a == "--drain-timeout") {
        argv.extend(["--drain-timeout".into(), "2s".into()]);
    }
    argv.extend_from_slice(args);
    argv
}

/// `/metrics` (Prometheus text) of the proxy in `ns`.
pub fn metrics(ns: &Netns) -> String {
    let (status, body) = http_get(ns, METRICS_PORT, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// The value of one series in Prometheus text, e.g.
/// `ztunnel_access_log_lines_total` or `name{label="v"}`, written exactly as
/// the exposition prints it.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Sum of every sample of `name` (a metric name up to its labels) in a
/// Prometheus text exposition, optionally only lines containing `only`.
pub fn metric_sum(text: &str, name: &str, only: Option<&str>) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && only.is_none_or(|o| l.contains(o))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Polls the readiness port in `ns` until it answers 200; panics naming
/// `who`, with its stderr (the file `stderr`), if `child` exits first or
/// [`READY_TIMEOUT`] passes.
pub(crate) fn wait_proxy_ready(ns: &Netns, child: &mut ChildGuard, who: &str, stderr: &Path) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let log = || std::fs::read_to_string(stderr).unwrap_or_default();
    loop {
        if let Ok((200, _)) = http_get(ns, READINESS_PORT, "/healthz/ready") {
            return;
        }
        if !child.is_running() {
            panic!("{who} exited during startup:\n{}", log());
        }
        if Instant::now() > deadline {
            panic!("{who} not ready after {READY_TIMEOUT:?}:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM to `child` and waits up to 15 s for its exit status.
pub(crate) fn terminate_proxy(mut child: ChildGuard, who: &str) -> ExitStatus {
    child
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap_or_else(|e| panic!("signal {who}: {e}"));
    child
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{who} ignored SIGTERM"))
}

/// Every JSON event of the access log at `path` so far.
pub fn read_access_log(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits up to 5 s for an event of the access log at `path` matching
/// `pred`; panics with `what` and the log otherwise.
pub fn wait_access_log_event<F>(path: &Path, what: &str, pred: F) -> serde_json::Value
where
    F: Fn(&serde_json::Value) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(ev) = read_access_log(path).into_iter().find(|e| pred(e)) {
            return ev;
        }
        if Instant::now() > deadline {
            panic!(
                "no access-log event {what}; log:\n{}",
                std::fs::read_to_string(path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET to `127.0.0.1:port` inside `ns`: (status, body).
pub fn http_get(ns: &Netns, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_get_addr(ns, SocketAddr::from(([127, 0, 0, 1], port)), path)
}

/// A plain HTTP/1.1 GET to `addr` from inside `ns`: (status, body).
pub fn http_get_addr(ns: &Netns, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let s = ns.std_connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    http_get_on(s, path)
}

/// A plain HTTP/1.1 GET of `path` on an open connection: (status, body).
pub fn http_get_on<S: Read + Write>(mut s: S, path: &str) -> std::io::Result<(u16, String)> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_owned()))
}

/// Polls `cond` every 20 ms for up to 5 s; panics naming `what` if it never
/// holds.
pub fn wait_until<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
