//! Process limits every long-running binary lifts at start.

/// The open-file limit after [`raise_fd_limit`]: `soft` is what the process
/// may use now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Lifts the soft open-file limit to the hard one, as Istio's ztunnel does:
/// a node proxy holds two sockets per proxied connection, and the control
/// plane one per connected node (plus those still handshaking). Returns the
/// limit in force afterwards (`None` if it cannot be read); a failure to
/// raise it is logged and the old limit stays.
pub fn raise_fd_limit() -> Option<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            } else {
                tracing::warn!(
                    soft = lim.rlim_cur,
                    hard = lim.rlim_max,
                    "could not raise the open-file limit"
                );
            }
        }
    }
    Some(FdLimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// The open-file limit in force now.
pub fn fd_limit() -> Option<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes a valid rlimit struct.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    ok.then_some(FdLimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_ends_at_the_hard_one() {
        let lim = raise_fd_limit().expect("RLIMIT_NOFILE is readable");
        assert_eq!(lim.soft, lim.hard);
        assert_eq!(fd_limit(), Some(lim));
    }
}
