//! Capture: node-level TPROXY (DESIGN.md §4), and sidecar-mode REDIRECT in
//! a pod's own namespace ([`sidecar`]).
//!
//! - [`rules`]: the pure nftables ruleset for table `inet ambient`;
//! - [`fail_closed`]: its `input` chain, which resets captured traffic that
//!   finds no ztunnel socket (a crash, or between two processes);
//! - [`ipv6`]: its `forward` chain, which resets (and counts) IPv6 TCP from
//!   or to a captured pod: capture is IPv4, so a dual-stack pod's IPv6 is
//!   refused rather than let around ztunnel;
//! - [`bridge`]: what capture cannot see on a bridge CNI (Flannel's
//!   `cni0`), said at start;
//! - [`Capture`]: applies it (`nft -f -`), plus the `ip rule` and the local
//!   route that deliver marked packets to ztunnel, and removes them again;
//! - [`transparent_listener`] and [`orig_dst`]: the sockets that receive
//!   TPROXY-ed connections.
//!
//! Everything acts on the network namespace of the calling thread (the node's,
//! since ztunnel runs with hostNetwork).

pub mod bridge;
pub mod fail_closed;
pub mod ipv6;
mod listener;
pub mod rules;
pub mod sidecar;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, ExitStatus, Stdio};

pub use listener::{
    orig_dst, redirected_orig_dst, transparent_listener, transparent_std_listener, LISTEN_BACKLOG,
};
pub use rules::{render_ruleset, ListenerPorts};

const NFT: &str = "nft";
const IP: &str = "ip";
const LOCAL_ROUTE: [&str; 5] = ["local", "0.0.0.0/0", "dev", "lo", "table"];

/// A capture command failed. The message names the command (for nft, the
/// table it was applying) and carries the tool's stderr, which for nft points
/// at the offending rule.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The tool could not be started (missing binary, no permission, ...).
    #[error("starting `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// The tool ran and failed.
    #[error("`{command}` exited with {status}: {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// Installed capture in the current network namespace: table `inet ambient`,
/// `ip rule fwmark 0x400/0xfff lookup 100` and `local 0.0.0.0/0 dev lo table
/// 100`. Dropping it leaves the rules in place: a restarting or upgraded
/// ztunnel must not open a gap, and while none serves, captured traffic is
/// reset ([`fail_closed`]). [`Capture::remove`] is for uninstalling
/// (`ztunnel uninstall`, `--uninstall-on-exit`).
#[derive(Debug)]
pub struct Capture {
    pods: BTreeSet<IpAddr>,
    ports: ListenerPorts,
}

impl Capture {
    /// Installs capture for `pods`, delivering to the listeners on `ports`.
    /// Idempotent: running it again (say after a restart) replaces the
    /// table and does not duplicate the ip rule.
    pub fn install(pods: &BTreeSet<IpAddr>, ports: ListenerPorts) -> Result<Capture, CaptureError> {
        local_route("replace")?;
        ensure_ip_rule()?;
        let mut capture = Capture {
            pods: BTreeSet::new(),
            ports,
        };
        capture.update(pods)?;
        Ok(capture)
    }

    /// Atomically replaces the ruleset so exactly `pods` are captured (their
    /// IPv4 addresses; IPv6 ones are refused, [`ipv6`]).
    pub fn update(&mut self, pods: &BTreeSet<IpAddr>) -> Result<(), CaptureError> {
        apply_nft(
            &render_script(pods, &self.ports),
            "replace table inet ambient",
        )?;
        self.pods = pods.clone();
        Ok(())
    }

    /// The pods currently captured.
    pub fn pods(&self) -> &BTreeSet<IpAddr> {
        &self.pods
    }

    /// Removes the table, every copy of the ip rule and the local route from
    /// the current namespace. Idempotent: absent pieces are not an error.
    pub fn remove() -> Result<(), CaptureError> {
        apply_nft(&rules::render_delete(), "delete table inet ambient")?;
        let selector = rules::ip_rule_selector();
        for _ in 0..ip_rule_count()? {
            let mut args = vec!["rule", "del"];
            args.extend(selector.split(' '));
            run(IP, &args, None)?;
        }
        match local_route("del") {
            Err(CaptureError::Failed { stderr, .. })
                if stderr.contains("No such process") || stderr.contains("does not exist") =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }
}

/// The whole `nft -f -` script for `pods`, delivering to the listeners on
/// `ports`: the table with its capture rules (the IPv4 addresses), then the
/// fail-closed chain, then the chain refusing the IPv6 ones, in one
/// transaction.
pub fn render_script(pods: &BTreeSet<IpAddr>, ports: &ListenerPorts) -> String {
    let (mut v4, mut v6) = (BTreeSet::<Ipv4Addr>::new(), BTreeSet::<Ipv6Addr>::new());
    for ip in pods {
        match ip {
            IpAddr::V4(a) => v4.insert(*a),
            IpAddr::V6(a) => v6.insert(*a),
        };
    }
    let mut script = render_ruleset(&v4, ports);
    script.push_str(&fail_closed::render_fail_closed());
    script.push_str(&ipv6::render_refuse_ipv6(&v6));
    script
}

/// `ip route <verb> local 0.0.0.0/0 dev lo table 100`.
fn local_route(verb: &str) -> Result<String, CaptureError> {
    let table = rules::ROUTE_TABLE.to_string();
    let mut args = vec!["route", verb];
    args.extend(LOCAL_ROUTE);
    args.push(&table);
    run(IP, &args, None)
}

/// Adds the ip rule when missing; removes extra copies left by older versions.
fn ensure_ip_rule() -> Result<(), CaptureError> {
    let selector = rules::ip_rule_selector();
    let count = ip_rule_count()?;
    let (verb, times) = if count == 0 {
        ("add", 1)
    } else {
        ("del", count - 1)
    };
    for _ in 0..times {
        let mut args = vec!["rule", verb];
        args.extend(selector.split(' '));
        run(IP, &args, None)?;
    }
    Ok(())
}

fn ip_rule_count() -> Result<usize, CaptureError> {
    let selector = rules::ip_rule_selector();
    let listed = run(IP, &["-4", "rule", "list"], None)?;
    Ok(listed
        .lines()
        .filter(|line| line.trim_end().ends_with(&selector))
        .count())
}

fn apply_nft(script: &str, what: &str) -> Result<(), CaptureError> {
    run(NFT, &["-f", "-"], Some((script, what))).map(drop)
}

/// Runs `program args`, feeding `stdin` when given (with a description used
/// in errors instead of the whole script). Returns stdout.
fn run(program: &str, args: &[&str], stdin: Option<(&str, &str)>) -> Result<String, CaptureError> {
    let mut command = format!("{program} {}", args.join(" "));
    if let Some((_, what)) = stdin {
        command = format!("{command} ({what})");
    }
    let spawn_err = |source| CaptureError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some((script, _)), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(script.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(CaptureError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
