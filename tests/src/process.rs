//! What a binary built on the harness (`demo`, `netns-bench`, `mesh-bench`)
//! needs around it: the `ztunnel` binary next to it, cleanup on every exit
//! path (Ctrl-C, SIGTERM, panic), finding a proxy's process, and its CPU
//! and memory from `/proc`.
//!
//! A [`Topology`](crate::Topology) removes its namespaces when it drops;
//! what it cannot do is run destructors when the process is killed by a
//! signal. So [`install_signal_cleanup`] catches SIGINT/SIGTERM/SIGHUP and
//! lets one thread react: it kills every process inside this process's
//! namespaces, deletes the namespaces and scratch directories, and exits
//! with 128+signal.

use std::path::Path;
use std::process::Command;

use crate::topology::NAME_PREFIX;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// `mesh::ztunnel_bin` looks next to a *test* executable
/// (`target/<profile>/deps/..`); a binary lives in `target/<profile>/`
/// itself. Without `$ZTUNNEL_BIN`, re-exec this program with it pointing at
/// the sibling `ztunnel` (the process environment is never mutated in place).
pub fn ensure_ztunnel_bin() {
    if std::env::var_os("ZTUNNEL_BIN").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("own executable path");
    let sibling = exe.with_file_name("ztunnel");
    if !sibling.exists() {
        eprintln!(
            "{} is missing: build it (cargo build -p ztunnel) or set ZTUNNEL_BIN",
            sibling.display()
        );
        std::process::exit(2);
    }
    use std::os::unix::process::CommandExt;
    let err = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("ZTUNNEL_BIN", sibling)
        .exec();
    panic!("re-exec with ZTUNNEL_BIN set: {err}");
}

/// The prefix of every namespace (and mesh scratch dir) this process creates.
pub fn own_prefix() -> String {
    format!("{NAME_PREFIX}{}-", std::process::id())
}

/// Write end of the self-pipe the signal handler writes the signal number to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; the buffer is one valid byte.
    unsafe {
        libc::write(
            SIGNAL_PIPE.load(Ordering::Relaxed),
            (&byte as *const u8).cast(),
            1,
        );
    }
}

/// Catches SIGINT/SIGTERM/SIGHUP with a handler that only writes to a pipe; a
/// thread reading the pipe does the cleanup and exits with 128+signal.
/// A handler (unlike a blocked mask, which children would inherit across
/// exec) is reset to the default in every process we spawn, so ztunnel and
/// tcpdump still react to SIGTERM/SIGINT.
pub fn install_signal_cleanup() {
    let (rd, wr) = nix::unistd::pipe().expect("signal pipe");
    SIGNAL_PIPE.store(wr.into_raw_fd(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only calls write(2), which is async-signal-safe.
        unsafe { sigaction(s, &action) }.expect("install signal handler");
    }
    std::thread::Builder::new()
        .name("signal-cleanup".into())
        .spawn(move || {
            let mut buf = [0u8; 1];
            let mut rd = std::fs::File::from(rd);
            if std::io::Read::read_exact(&mut rd, &mut buf).is_err() {
                return;
            }
            let sig = i32::from(buf[0]);
            let name = Signal::try_from(sig).map_or("signal", Signal::as_str);
            eprintln!("\n{name}: tearing down the namespaces and processes of this run");
            let removed = emergency_cleanup();
            eprintln!("removed {removed} namespace(s); exiting");
            std::process::exit(128 + sig);
        })
        .expect("spawn signal thread");
}

/// Kills every process living in one of this process's namespaces, deletes
/// those namespaces (with their veths, routes and nft tables) and the mesh
/// scratch directories. Idempotent; returns how many namespaces it deleted.
pub fn emergency_cleanup() -> usize {
    let prefix = own_prefix();
    let me = std::process::id().to_string();
    let mut removed = 0;
    for name in own_namespaces(&prefix) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if pid != me {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        let ok = Command::new("ip")
            .args(["netns", "del", &name])
            .status()
            .is_ok_and(|s| s.success());
        removed += usize::from(ok);
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    removed
}

/// Names under /run/netns starting with `prefix`.
pub fn own_namespaces(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// After teardown: the namespaces of this run that still exist, and whether
/// the root namespace holds an `ambient` nft table (it never should: ztunnel
/// runs inside the node namespaces).
pub fn leftovers() -> (Vec<String>, bool) {
    let ns = own_namespaces(&own_prefix());
    let nft = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("ambient"))
        .unwrap_or(false);
    (ns, nft)
}

/// Runs a binary's body, then tears down whatever it left (even when it
/// panicked): [`emergency_cleanup`], and exit 1 if [`leftovers`] still
/// finds a namespace of this run or a root `ambient` table. `None` when
/// the body panicked (the panic message is already printed).
pub fn run_guarded<T>(body: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    let result = std::panic::catch_unwind(body);
    emergency_cleanup();
    let (ns, nft) = leftovers();
    if !ns.is_empty() || nft {
        eprintln!("teardown left namespaces {ns:?} / root nft table: {nft}");
        std::process::exit(1);
    }
    result.ok()
}

/// The pid of the ztunnel whose command line contains `arg` (the harness
/// gives each node's ztunnel its own `--access-log` path).
pub fn find_pid_with_arg(arg: &Path) -> Option<u32> {
    let want = arg.as_os_str().as_encoded_bytes();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        let exe = args.next().unwrap_or_default();
        // Skip the `sh -c exec ...` wrapper if it is still around.
        if exe.ends_with(b"sh") {
            continue;
        }
        if cmdline.split(|b| *b == 0).any(|a| a == want) {
            return Some(pid);
        }
    }
    None
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the `(comm)`, which may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `Pss:` of `/proc/<pid>/smaps_rollup`, KiB (0 if unreadable): pages
/// shared between processes (the binary) are split between them.
pub fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Pss:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// The command line of a harness binary, flag by flag. A missing or
/// unparsable value ends the program through `usage` (which prints the
/// message and the usage text, and exits).
pub struct Flags {
    args: std::vec::IntoIter<String>,
    usage: fn(&str) -> !,
}

impl Flags {
    /// This process's arguments (without the program name).
    pub fn from_env(usage: fn(&str) -> !) -> Flags {
        Flags::new(std::env::args().skip(1).collect(), usage)
    }

    /// `args` (without the program name).
    pub fn new(args: Vec<String>, usage: fn(&str) -> !) -> Flags {
        Flags {
            args: args.into_iter(),
            usage,
        }
    }

    /// The next flag, if any.
    pub fn next_flag(&mut self) -> Option<String> {
        self.args.next()
    }

    /// The value after `flag`.
    pub fn string(&mut self, flag: &str) -> String {
        let usage = self.usage;
        self.args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
    }

    /// The value after `flag`, parsed.
    pub fn value<T: std::str::FromStr>(&mut self, flag: &str) -> T {
        let v = self.string(flag);
        v.parse()
            .unwrap_or_else(|_| (self.usage)(&format!("{flag}: invalid value {v:?}")))
    }

    /// The comma-separated values after `flag`, each parsed.
    pub fn list<T: std::str::FromStr>(&mut self, flag: &str) -> Vec<T> {
        let v = self.string(flag);
        v.split(',')
            .map(|item| {
                item.trim().parse().unwrap_or_else(|_| {
                    (self.usage)(&format!("{flag}: invalid value {item:?} in {v:?}"))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Flags;

    fn no_usage(err: &str) -> ! {
        panic!("usage: {err}")
    }

    #[test]
    fn flags_yield_values_parsed_and_lists_split() {
        let args = [
            "--reps",
            "5",
            "--pods",
            "10, 25,50",
            "--out",
            "x/y",
            "--smoke",
        ];
        let mut f = Flags::new(args.iter().map(|a| (*a).to_owned()).collect(), no_usage);
        assert_eq!(f.next_flag().as_deref(), Some("--reps"));
        assert_eq!(f.value::<usize>("--reps"), 5);
        assert_eq!(f.next_flag().as_deref(), Some("--pods"));
        assert_eq!(f.list::<usize>("--pods"), vec![10, 25, 50]);
        assert_eq!(f.next_flag().as_deref(), Some("--out"));
        assert_eq!(f.string("--out"), "x/y");
        assert_eq!(f.next_flag().as_deref(), Some("--smoke"));
        assert_eq!(f.next_flag(), None);
    }

    #[test]
    #[should_panic(expected = "usage: --reps: invalid value \"x\"")]
    fn a_bad_value_goes_to_usage_naming_the_flag() {
        let mut f = Flags::new(vec!["x".into()], no_usage);
        f.value::<usize>("--reps");
    }

    #[test]
    #[should_panic(expected = "usage: --out needs a value")]
    fn a_missing_value_goes_to_usage() {
        Flags::new(vec![], no_usage).string("--out");
    }
}
