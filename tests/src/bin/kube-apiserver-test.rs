//! `kube-apiserver-test`: the test Kubernetes API server
//! (`mesh_tests::kube_api`) as a process, for kubectl by hand or for
//! tests that run the mesh as processes.
//!
//! ```sh
//! kube-apiserver-test --listen 127.0.0.1:6443 --kubeconfig /tmp/kubeconfig \
//!     [--bookmark-interval-ms 1000] [--retain-events 10000] [FILE.yaml ...]
//! KUBECONFIG=/tmp/kubeconfig kubectl get ns
//! ```
//!
//! The files are created in order, as `kubectl create -f` would. It
//! prints `listening on <addr>` once ready, and runs until SIGTERM or
//! SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_tests::kube_api::{load_yaml, ApiServer, Store, DEFAULT_BOOKMARK_INTERVAL};

struct Args {
    listen: SocketAddr,
    kubeconfig: Option<PathBuf>,
    bookmark_interval: Duration,
    retain: usize,
    files: Vec<PathBuf>,
}

fn usage(problem: &str) -> ! {
    eprintln!("kube-apiserver-test: {problem}");
    eprintln!(
        "usage: kube-apiserver-test [--listen ADDR] [--kubeconfig PATH] [--bookmark-interval-ms N] [--retain-events N] [FILE.yaml ...]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        kubeconfig: None,
        bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
        retain: mesh_tests::kube_api::store::DEFAULT_RETAINED_EVENTS,
        files: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen");
                a.listen = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--listen {v:?}")));
            }
            "--kubeconfig" => a.kubeconfig = Some(value("--kubeconfig").into()),
            "--bookmark-interval-ms" => {
                let v = value("--bookmark-interval-ms");
                let ms = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--bookmark-interval-ms {v:?}")));
                a.bookmark_interval = Duration::from_millis(ms);
            }
            "--retain-events" => {
                let v = value("--retain-events");
                a.retain = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--retain-events {v:?}")));
            }
            "-h" | "--help" => usage("help"),
            flag if flag.starts_with("--") => usage(&format!("unknown flag {flag}")),
            file => a.files.push(file.into()),
        }
    }
    a
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = parse();
    let store = Arc::new(Store::new(args.retain));
    for f in &args.files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("kube-apiserver-test: reading {}: {e}", f.display());
                return std::process::ExitCode::FAILURE;
            }
        };
        if let Err(e) = load_yaml(&store, &text) {
            eprintln!("kube-apiserver-test: loading {}: {e}", f.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    let server = match ApiServer::start_with(store, args.listen, args.bookmark_interval) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kube-apiserver-test: binding {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.kubeconfig {
        if let Err(e) = server.write_kubeconfig(path) {
            eprintln!("kube-apiserver-test: writing {}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    println!("listening on {}", server.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    std::process::ExitCode::SUCCESS
}
