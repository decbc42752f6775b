//! A real `waypoint` process in a pod's namespace, following the mesh's
//! config file (with its dev CA) or its control plane, with its access
//! log and stderr in the mesh's scratch directory.

pub mod scenario;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::command::ChildGuard;
use crate::mesh::{
    http_get, read_access_log, terminate_proxy, wait_access_log_event, wait_proxy_ready, Mesh,
    ADMIN_PORT,
};
use crate::netns::Netns;

/// The `waypoint` binary: `$WAYPOINT_BIN`, or `waypoint` next to
/// `ztunnel` (`cargo build -p waypoint` first).
pub fn waypoint_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WAYPOINT_BIN") {
        return bin.into();
    }
    let bin = crate::mesh::ztunnel_bin().with_file_name("waypoint");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p waypoint` first, or set WAYPOINT_BIN",
        bin.display()
    );
    bin
}

/// How the waypoint gets its config and certificate.
pub enum Source<'a> {
    /// The mesh's config file and dev CA.
    File,
    /// The control plane, with this token file (bound to the waypoint's
    /// identity in the control plane's tokens file).
    Xds {
        address: &'a str,
        token_file: &'a Path,
    },
}

/// A running waypoint; killed on drop (stderr printed if the test failed).
pub struct WaypointProc {
    ns: Netns,
    child: Option<ChildGuard>,
    stderr: PathBuf,
    access_log: PathBuf,
    who: String,
}

impl WaypointProc {
    /// Starts waypoint `namespace/name` in `ns` and waits until it is ready.
    pub fn start(
        mesh: &Mesh,
        ns: &Netns,
        name: &str,
        namespace: &str,
        source: Source<'_>,
        extra: &[&str],
    ) -> WaypointProc {
        let dir = mesh.scratch(&format!("waypoint-{namespace}-{name}"));
        let (stderr, access_log) = (dir.join("stderr"), dir.join("access.log"));
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        let mut argv: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            format!("exec \"$0\" \"$@\" 2>>{}", stderr.display()),
            path(&waypoint_bin()),
            "--name".into(),
            name.into(),
            "--namespace".into(),
            namespace.into(),
            "--access-log".into(),
            path(&access_log),
            "--poll-interval".into(),
            "100ms".into(),
            "--drain-timeout".into(),
            "2s".into(),
        ];
        match source {
            Source::File => argv.extend([
                "--config-file".into(),
                path(mesh.config_path()),
                "--ca-dir".into(),
                path(mesh.ca_dir()),
            ]),
            Source::Xds {
                address,
                token_file,
            } => argv.extend([
                "--xds-address".into(),
                format!("https://{address}"),
                "--root-cert".into(),
                path(&mesh.ca_dir().join("root-cert.pem")),
                "--token-file".into(),
                path(token_file),
            ]),
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut child = ns.spawn(&argv).expect("spawn waypoint");
        let who = format!("waypoint {namespace}/{name}");
        wait_proxy_ready(ns, &mut child, &who, &stderr);
        WaypointProc {
            ns: ns.clone(),
            child: Some(child),
            stderr,
            access_log,
            who,
        }
    }

    /// Every access-log event so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        read_access_log(&self.access_log)
    }

    /// Waits up to 5 s for an access-log event matching `pred`.
    pub fn wait_event<F>(&self, what: &str, pred: F) -> serde_json::Value
    where
        F: Fn(&serde_json::Value) -> bool,
    {
        wait_access_log_event(
            &self.access_log,
            &format!("at the waypoint for {what}"),
            pred,
        )
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        crate::mesh::metrics(&self.ns)
    }

    /// `/config_dump` as JSON.
    pub fn config_dump(&self) -> serde_json::Value {
        let (status, body) = http_get(&self.ns, ADMIN_PORT, "/config_dump").expect("config_dump");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("config_dump is JSON")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        self.child
            .as_ref()
            .expect("running")
            .signal(nix::sys::signal::Signal::SIGTERM)
            .expect("signal waypoint");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        terminate_proxy(self.child.take().expect("running"), &self.who)
    }

    /// Waits (up to 15 s) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        child
            .wait_exit(std::time::Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{} did not exit", self.who))
    }
}

impl Drop for WaypointProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
        if std::thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.who, self.stderr());
        }
    }
}
