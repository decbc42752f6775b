//! Running commands inside a namespace: one-shot (`run_in`) and long-running
//! children that are killed on drop (`ChildGuard`).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use crate::HarnessError;

/// Runs `cmd` through `sh -c` in the host (current) namespace; returns stdout.
pub fn run(cmd: &str) -> Result<String, HarnessError> {
    let mut command = Command::new("sh");
    command.args(["-c", cmd]);
    output(command, cmd)
}

/// Runs `cmd` through `sh -c` inside network namespace `ns`
/// (`ip netns exec <ns> sh -c <cmd>`); returns stdout.
pub fn run_in(ns: &str, cmd: &str) -> Result<String, HarnessError> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, "sh", "-c", cmd]);
    output(command, &format!("[{ns}] {cmd}"))
}

fn output(mut command: Command, name: &str) -> Result<String, HarnessError> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn {
            command: name.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Failed {
            command: name.to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A long-running process inside a namespace. Dropping it kills its whole
/// process group (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Spawns `argv` inside `ns` via `ip netns exec`, in its own process group.
    /// Stdout and stderr are inherited so they show up in test output.
    pub fn spawn(ns: &str, argv: &[&str]) -> Result<ChildGuard, HarnessError> {
        let name = format!("[{ns}] {}", argv.join(" "));
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .process_group(0);
        let child = command.spawn().map_err(|source| HarnessError::Spawn {
            command: name.clone(),
            source,
        })?;
        Ok(ChildGuard {
            child: Some(child),
            name,
        })
    }

    /// The process id (also the process group id).
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The command line, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `signal` to the process (not its group).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), nix::errno::Errno> {
        let pid = i32::try_from(self.id()).map_err(|_| nix::errno::Errno::ESRCH)?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still
    /// running (or was already reaped).
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => return None,
            }
        }
    }

    /// Kills the process group and waits for the child. Idempotent.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // Kill the group we created (the child is its leader) so shells and
            // their children go too; fall back to the child alone.
            let group = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).is_err() {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
