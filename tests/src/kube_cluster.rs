//! A Kubernetes cluster for tests, as far as the mesh can tell: the test
//! API server ([`crate::kube_api`]) in-process, the real `control-plane`
//! binary watching it (`--source kubernetes`), delta-xDS clients (the
//! ztunnel's own [`XdsClient`]) following the control plane, and `kubectl`
//! to change the cluster as a user does.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::drain::Drain;
use mesh_model::state::Snapshot;
use mesh_model::xds::store::XdsStore;
use mesh_runtime::xds::client::{XdsClient, XdsStats};
use proto::discovery::Node;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::kube_api::{load_yaml, ApiServer, Store};

static SEQ: AtomicUsize = AtomicUsize::new(0);
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `$CONTROL_PLANE_BIN`, or `control-plane` in the test's `target/<profile>/`.
pub fn control_plane_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONTROL_PLANE_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = dir.join("control-plane");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p control-plane` first, or set CONTROL_PLANE_BIN",
        bin.display()
    );
    bin
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    crate::mesh::http_get_on(s, path)
}

/// The node token the control plane accepts for `node`.
pub fn token(node: &str) -> String {
    // At least 32 characters, as the control plane requires.
    format!("kube-test-token-{node}-{:016}", std::process::id())
}

/// Returns true when `kubectl` runs here. Otherwise: with `CI` set,
/// panics so the test fails; without it, prints `SKIPPED: ...` and returns
/// false (as [`crate::require_root`] does for netns).
pub fn require_kubectl() -> bool {
    let works = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("kubectl is missing (CI is set, so this is a failure)");
    }
    eprintln!("SKIPPED: kubectl is missing (set CI=true to make this a failure)");
    false
}

/// The nodes the control plane has tokens for.
pub const NODES: [&str; 2] = ["node-a", "node-b"];

/// The waypoints (namespace, name) the control plane has tokens for, each
/// bound to `spiffe://cluster.local/ns/<namespace>/sa/<name>`.
pub const WAYPOINTS: [(&str, &str); 1] = [("shop", "waypoint")];

/// The token of the waypoint `namespace/name` (one of [`WAYPOINTS`]).
pub fn waypoint_token(namespace: &str, name: &str) -> String {
    token(&format!("waypoint-{namespace}-{name}"))
}

/// The API server, a scratch directory with its kubeconfig, and the
/// control plane watching it.
pub struct KubeCluster {
    pub api: ApiServer,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    control_plane: Option<Child>,
    pub xds_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// More control-plane replicas on the same API server
    /// ([`Self::start_replicated`]).
    pub replicas: Vec<Replica>,
}

impl KubeCluster {
    /// Starts the API server with the objects of `yaml`, and the control
    /// plane, and waits until the control plane has published.
    pub async fn start(yaml: &str) -> KubeCluster {
        let store = Arc::new(Store::default());
        load_yaml(&store, yaml).expect("cluster YAML loads");
        KubeCluster::start_with(store).await
    }

    /// [`Self::start`] over a store already filled.
    pub async fn start_with(store: Arc<Store>) -> KubeCluster {
        KubeCluster::start_replicated(store, 0).await
    }

    /// [`Self::start_with`], with `extra` more control-plane replicas
    /// started at the same moment (racing for the CA Secret and the
    /// leader Lease), each waited for.
    pub async fn start_replicated(store: Arc<Store>, extra: usize) -> KubeCluster {
        // The control plane's namespace, as the chart makes it: the CA
        // Secret and the leader Lease live there.
        let _ = store.create(
            crate::kube_api::store::namespace_resource(),
            "",
            serde_json::json!({"metadata": {"name": "istio-system"}}),
        );
        let dir = std::env::temp_dir().join(format!(
            "kube-cluster-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let api = ApiServer::start(store, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("API server binds");
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let mut tokens: String = NODES
            .iter()
            .map(|n| format!("{n}: {}\n", token(n)))
            .collect();
        for (ns, name) in WAYPOINTS {
            tokens += &format!(
                "spiffe://cluster.local/ns/{ns}/sa/{name}: {}\n",
                waypoint_token(ns, name)
            );
        }
        std::fs::write(dir.join("tokens.yaml"), tokens).expect("tokens");
        let mut c = KubeCluster {
            api,
            kubeconfig,
            control_plane: None,
            xds_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            metrics_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            replicas: Vec::new(),
            dir,
        };
        c.start_control_plane();
        for i in 0..extra {
            let r = Replica::spawn(&c.kubeconfig, &c.dir, &format!("replica-{i}"));
            c.replicas.push(r);
        }
        c.wait_ready().await;
        for r in &mut c.replicas {
            r.wait_ready().await;
        }
        c
    }

    fn start_control_plane(&mut self) {
        let child = spawn_control_plane(
            &self.kubeconfig,
            &self.dir,
            "control-plane",
            self.xds_addr,
            self.metrics_addr,
        );
        self.control_plane = Some(child);
    }

    /// The mesh roots (PEM) from the CA Secret the control plane reads or
    /// created (`istio-system/cacerts`, `root-cert.pem`).
    pub fn root_pem(&self) -> String {
        let secrets = crate::kube_api::resources::RESOURCES
            .iter()
            .position(|r| r.plural == "secrets")
            .expect("secrets are served");
        let s = self
            .api
            .store()
            .get(secrets, "istio-system", "cacerts")
            .expect("the control plane made the CA Secret");
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(s).expect("a Secret");
        let data = secret.data.expect("the Secret has data");
        String::from_utf8(data["root-cert.pem"].0.clone()).expect("PEM")
    }

    /// Waits until the control plane answers ready (it has published).
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if matches!(http_get(self.metrics_addr, "/healthz/ready"), Ok((200, _))) {
                return;
            }
            if let Some(Ok(Some(status))) = self.control_plane.as_mut().map(Child::try_wait) {
                panic!(
                    "control-plane exited: {status}\n{}",
                    self.control_plane_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "control plane not ready:\n{}",
                self.control_plane_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the (first) control plane as Kubernetes does (SIGTERM: it
    /// releases the leader Lease), and waits for it.
    pub fn terminate_control_plane(&mut self) {
        if let Some(mut c) = self.control_plane.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Whether the control plane answers ready.
    pub fn ready(&self) -> bool {
        matches!(http_get(self.metrics_addr, "/healthz/ready"), Ok((200, _)))
    }

    pub fn control_plane_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("control-plane.stderr")).unwrap_or_default()
    }

    /// The control plane's `/metrics`.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Runs `kubectl` against the API server; panics with its output if it
    /// fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs (is it installed?)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubectl {args:?} failed:\n{text}");
        text
    }

    /// [`Self::kubectl`], and when the API server committed the first
    /// write it made (what a propagation time is measured from).
    pub fn kubectl_timed(&self, args: &[&str]) -> Instant {
        let mut writes = self.api.store().subscribe();
        self.kubectl(args);
        loop {
            match writes.try_recv() {
                Ok(crate::kube_api::store::Broadcast::Event(e)) => return e.at,
                Ok(_) => {}
                Err(_) => panic!("kubectl {args:?} wrote nothing"),
            }
        }
    }

    /// [`Self::apply`], and when the API server committed its first write.
    pub fn apply_timed(&self, yaml: &str) -> Instant {
        let mut writes = self.api.store().subscribe();
        self.apply(yaml);
        loop {
            match writes.try_recv() {
                Ok(crate::kube_api::store::Broadcast::Event(e)) => return e.at,
                Ok(_) => {}
                Err(_) => panic!("kubectl apply wrote nothing"),
            }
        }
    }

    /// `kubectl apply -f` of `yaml`.
    pub fn apply(&self, yaml: &str) -> String {
        let path = self.dir.join(format!(
            "apply-{}.yaml",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, yaml).expect("write manifest");
        self.kubectl(&["apply", "-f", path.to_str().expect("utf-8 path")])
    }

    /// An xDS endpoint that verifies the control plane against its root.
    pub fn endpoint(&self) -> Endpoint {
        endpoint(self.xds_addr, &self.root_pem())
    }

    /// A delta-xDS client for `node` (one of [`NODES`]).
    pub fn xds_client(&self, node: &str) -> XdsFollower {
        XdsFollower::connect(self.endpoint(), node)
    }

    /// A delta-xDS client as the waypoint `namespace/name` (one of
    /// [`WAYPOINTS`]): its stream carries only what it serves, routes and
    /// L7 policies included.
    pub fn waypoint_xds_client(&self, namespace: &str, name: &str) -> XdsFollower {
        XdsFollower::follow(
            self.endpoint(),
            Node {
                id: format!("waypoint~{namespace}/{name}"),
                ..Default::default()
            },
            waypoint_token(namespace, name),
            &mesh_runtime::xds::client::WAYPOINT_TYPE_URLS,
        )
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.control_plane.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- control-plane stderr ---\n{}", self.control_plane_log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Brings the CA in `ca_dir` (the harness's dev root: `root-cert.pem`,
/// `root-key.pem`) into `store` as the cluster's CA, the `istio-system`
/// namespace and its `cacerts` Secret (Istio's plug-in layout), as a user
/// brings their own root: a control plane in Kubernetes mode then signs
/// from the root the harness's proxies trust.
pub fn bring_ca(store: &Store, ca_dir: &Path) {
    let read = |f: &str| std::fs::read_to_string(ca_dir.join(f)).expect("the harness's CA");
    let root = read("root-cert.pem");
    let material = control_plane::ca::keys::CaMaterial {
        ca_cert: root.clone(),
        ca_key: read("root-key.pem"),
        cert_chain: String::new(),
        root_cert: root,
    };
    let _ = store.create(
        crate::kube_api::store::namespace_resource(),
        "",
        serde_json::json!({"metadata": {"name": "istio-system"}}),
    );
    let secret = serde_json::to_string(&control_plane::ca::secret::secret(
        "istio-system",
        &material,
    ))
    .expect("a Secret");
    load_yaml(store, &secret).expect("the CA Secret loads");
}

/// An xDS/CA endpoint at `addr` verified against `root_pem`.
pub fn endpoint(addr: SocketAddr, root_pem: &str) -> Endpoint {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name("control-plane");
    Endpoint::from_shared(format!("https://{addr}"))
        .and_then(|e| e.tls_config(tls))
        .expect("valid endpoint")
}

/// The `control-plane` binary in Kubernetes mode, logging to
/// `<dir>/<name>.stderr`.
fn spawn_control_plane(
    kubeconfig: &Path,
    dir: &Path,
    name: &str,
    xds_addr: SocketAddr,
    metrics_addr: SocketAddr,
) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.stderr")))
        .expect("stderr file");
    Command::new(control_plane_bin())
        .args(["--source", "kubernetes", "--kubeconfig"])
        .arg(kubeconfig)
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .arg("--tokens-file")
        .arg(dir.join("tokens.yaml"))
        .arg("--listen")
        .arg(xds_addr.to_string())
        .arg("--metrics-listen")
        .arg(metrics_addr.to_string())
        .arg("--leader-identity")
        .arg(name)
        .env(
            "RUST_LOG",
            std::env::var("KUBE_TEST_CONTROL_PLANE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn control-plane")
}

/// Another control-plane replica on the cluster's API server.
pub struct Replica {
    pub name: String,
    pub xds_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn spawn(kubeconfig: &Path, dir: &Path, name: &str) -> Replica {
        let xds_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let child = spawn_control_plane(kubeconfig, dir, name, xds_addr, metrics_addr);
        Replica {
            name: name.to_owned(),
            xds_addr,
            metrics_addr,
            log: dir.join(format!("{name}.stderr")),
            child: Some(child),
        }
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !matches!(http_get(self.metrics_addr, "/healthz/ready"), Ok((200, _))) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("{} exited: {status}\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics_addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Stops it as Kubernetes does (SIGTERM), and waits for it.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.log());
        }
    }
}

/// ztunnel's xDS client, following the control plane: the latest snapshot
/// it published, and when.
pub struct XdsFollower {
    drain: Drain,
    latest: watch::Receiver<Option<(Arc<Snapshot>, Instant)>>,
}

impl XdsFollower {
    pub fn connect(endpoint: Endpoint, node: &str) -> XdsFollower {
        XdsFollower::follow(
            endpoint,
            Node {
                id: format!("ztunnel~{node}"),
                ..Default::default()
            },
            token(node),
            &mesh_runtime::xds::client::TYPE_URLS,
        )
    }

    /// A client as `node`, with `token`, subscribed to `types`.
    pub fn follow(
        endpoint: Endpoint,
        node: Node,
        token: String,
        types: &'static [&'static str],
    ) -> XdsFollower {
        let drain = Drain::new();
        let (publish, mut snapshots) = mpsc::channel(64);
        let client = XdsClient {
            endpoint,
            mark: None,
            node,
            token: Some(token.into()),
            store: XdsStore::default(),
            stats: Arc::new(XdsStats::default()),
            publish,
            synced: Default::default(),
            types,
        };
        tokio::spawn(client.run(drain.clone()));
        let (tx, latest) = watch::channel(None);
        tokio::spawn(async move {
            while let Some(snap) = snapshots.recv().await {
                tx.send_replace(Some((snap, Instant::now())));
            }
        });
        XdsFollower { drain, latest }
    }

    /// The latest snapshot, if any.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.latest.borrow().as_ref().map(|(s, _)| s.clone())
    }

    /// Waits until a published snapshot satisfies `cond`; returns when the
    /// client published it. Panics after `timeout`, saying `what`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Snapshot) -> bool,
    ) -> Instant {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((snap, at)) = self.latest.borrow_and_update().as_ref() {
                if cond(snap) {
                    return *at;
                }
            }
            if tokio::time::timeout_at(deadline, self.latest.changed())
                .await
                .is_err()
            {
                panic!("timed out after {timeout:?} waiting for: {what}");
            }
        }
    }
}

impl Drop for XdsFollower {
    fn drop(&mut self) {
        self.drain.signal();
    }
}
