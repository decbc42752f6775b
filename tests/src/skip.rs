//! Whether netns tests can run here, and what to do when they cannot.

use std::sync::OnceLock;

use crate::command::run;

/// Returns true when netns tests can run (root, `ip netns` works, `nft`
/// exists). Otherwise: with `CI` set, panics so the test fails; without it,
/// prints `SKIPPED: <reason> (set CI=true to make this a failure)` and returns
/// false so the test can return early.
pub fn require_root() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    match PROBE.get_or_init(probe) {
        Ok(()) => true,
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("netns test cannot run: {reason} (CI is set, so this is a failure)")
        }
        Err(reason) => {
            eprintln!("SKIPPED: {reason} (set CI=true to make this a failure)");
            false
        }
    }
}

fn probe() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    let name = format!(
        "{}{}-probe",
        crate::topology::NAME_PREFIX,
        std::process::id()
    );
    run(&format!("ip netns add {name}"))
        .map_err(|e| format!("network namespaces unsupported: {e}"))?;
    let tools = run(&format!(
        "ip netns exec {name} sh -c 'command -v nft && ip link set lo up'"
    ));
    let _ = run(&format!("ip netns del {name}"));
    tools.map_err(|e| format!("nft or ip unusable inside a namespace: {e}"))?;
    Ok(())
}
