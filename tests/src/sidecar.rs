//! Real `ztunnel --mode sidecar` processes, one per pod, each inside its
//! pod's network namespace, sharing the config source and CA of a
//! [`Mesh`]. Access logs and stderr go to a scratch directory that is
//! removed on drop (stderr is printed first if the test failed).

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::command::ChildGuard;
use crate::mesh::{
    http_get, metrics, read_access_log, terminate_proxy, wait_access_log_event, wait_proxy_ready,
    ztunnel_argv, Mesh,
};
use crate::netns::Netns;
use crate::topology::Pod;

/// The nft table sidecar capture installs in a pod namespace.
pub use ztunnel::capture::sidecar::{FAMILY as TABLE_FAMILY, TABLE};

struct Running {
    ns: Netns,
    child: Option<ChildGuard>,
}

/// The sidecars of a mesh's pods, by pod name.
pub struct Sidecars {
    dir: PathBuf,
    /// `--config-file/--ca-dir` or `--xds-*` for each node (index 0 = node 1).
    sources: Vec<Vec<String>>,
    running: std::collections::BTreeMap<String, Running>,
}

impl Sidecars {
    /// Sidecars using `mesh`'s config source and CA; starts none. `nodes`
    /// is the topology's node count.
    pub fn new(mesh: &Mesh, nodes: usize) -> Sidecars {
        let dir = mesh.scratch("sidecars");
        let sources = (1..=nodes)
            .map(|n| mesh.source_args(n, mesh.ca_dir()))
            .collect();
        Sidecars {
            dir,
            sources,
            running: Default::default(),
        }
    }

    /// The access log of `pod`'s sidecar.
    pub fn access_log_path(&self, pod: &str) -> PathBuf {
        self.dir.join(format!("access-{pod}.log"))
    }

    fn stderr_path(&self, pod: &str) -> PathBuf {
        self.dir.join(format!("sidecar-{pod}.stderr"))
    }

    /// Starts a sidecar for `pod` serving `workload` (`<namespace>/<name>`)
    /// and waits until it is ready.
    pub fn start(&mut self, pod: &Pod, workload: &str) {
        self.start_with(pod, workload, &[]);
        self.wait_ready(&pod.name);
    }

    /// Starts a sidecar for `pod` with `extra` ztunnel flags; does not wait.
    pub fn start_with(&mut self, pod: &Pod, workload: &str, extra: &[&str]) {
        let mut args: Vec<String> = vec![
            "--mode".into(),
            "sidecar".into(),
            "--node".into(),
            format!("node{}", pod.node),
            "--workload".into(),
            workload.into(),
        ];
        args.extend(self.sources[pod.node - 1].iter().cloned());
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let argv = ztunnel_argv(
            &self.stderr_path(&pod.name),
            &self.access_log_path(&pod.name),
            &args,
        );
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let child = pod.ns.spawn(&argv).expect("spawn sidecar");
        self.running.insert(
            pod.name.clone(),
            Running {
                ns: pod.ns.clone(),
                child: Some(child),
            },
        );
    }

    fn running(&self, pod: &str) -> &Running {
        self.running
            .get(pod)
            .unwrap_or_else(|| panic!("no sidecar for pod {pod}"))
    }

    /// Waits until `pod`'s sidecar answers 200 on /healthz/ready.
    pub fn wait_ready(&mut self, pod: &str) {
        let stderr = self.stderr_path(pod);
        let r = self.running.get_mut(pod).expect("started");
        let child = r
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("sidecar of {pod} was stopped"));
        wait_proxy_ready(&r.ns, child, &format!("sidecar of {pod}"), &stderr);
    }

    /// The process id of `pod`'s sidecar (the `sh -c exec` keeps the pid).
    pub fn pid(&self, pod: &str) -> u32 {
        self.running(pod).child.as_ref().map_or(0, ChildGuard::id)
    }

    /// How many file descriptors `pod`'s sidecar holds open now
    /// (`/proc/<pid>/fd`).
    pub fn fd_count(&self, pod: &str) -> usize {
        let dir = format!("/proc/{}/fd", self.pid(pod));
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
            .count()
    }

    /// Sends SIGTERM and waits (up to 15 s) for the exit status.
    pub fn terminate(&mut self, pod: &str) -> ExitStatus {
        let child = self
            .running
            .get_mut(pod)
            .and_then(|r| r.child.take())
            .expect("sidecar running");
        terminate_proxy(child, &format!("sidecar of {pod}"))
    }

    /// SIGKILLs `pod`'s sidecar (a crash): nothing gets cleaned up.
    pub fn kill(&mut self, pod: &str) {
        if let Some(mut child) = self.running.get_mut(pod).and_then(|r| r.child.take()) {
            child.kill();
        }
    }

    /// A plain HTTP GET to `127.0.0.1:port` inside `pod`'s namespace.
    pub fn http_get(&self, pod: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
        http_get(&self.running(pod).ns, port, path)
    }

    /// `/metrics` of `pod`'s sidecar.
    pub fn metrics(&self, pod: &str) -> String {
        metrics(&self.running(pod).ns)
    }

    /// Every access-log event of `pod`'s sidecar so far.
    pub fn access_log(&self, pod: &str) -> Vec<serde_json::Value> {
        read_access_log(&self.access_log_path(pod))
    }

    /// Waits up to 5 s for an access-log event of `pod`'s sidecar matching
    /// `pred`.
    pub fn wait_event<F>(&self, pod: &str, what: &str, pred: F) -> serde_json::Value
    where
        F: Fn(&serde_json::Value) -> bool,
    {
        wait_access_log_event(
            &self.access_log_path(pod),
            &format!("of {pod}'s sidecar for {what}"),
            pred,
        )
    }

    /// `pod`'s sidecar stderr so far.
    pub fn stderr(&self, pod: &str) -> String {
        std::fs::read_to_string(self.stderr_path(pod)).unwrap_or_default()
    }

    /// The scratch directory (removed with the mesh).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Sidecars {
    fn drop(&mut self) {
        for r in self.running.values_mut() {
            if let Some(mut c) = r.child.take() {
                c.kill();
            }
        }
        if std::thread::panicking() {
            for pod in self.running.keys() {
                eprintln!("--- sidecar {pod} stderr ---\n{}", self.stderr(pod));
            }
        }
    }
}

/// How many `ambient_sidecar` tables `ns` holds.
pub fn table_count(ns: &Netns) -> usize {
    let want = format!("table {TABLE_FAMILY} {TABLE}");
    ns.exec("nft list tables")
        .expect("nft list tables")
        .lines()
        .filter(|l| l.trim() == want)
        .count()
}
