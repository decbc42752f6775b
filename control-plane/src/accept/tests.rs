use super::*;

#[test]
fn the_default_cap_stays_under_the_open_file_limit() {
    let cases: &[(Option<usize>, Option<u64>, usize)] = &[
        // Explicit: as given, whatever the limit (at least one).
        (Some(100_000), Some(64), 100_000),
        (Some(0), None, 1),
        // Default: the constant when descriptors are plentiful...
        (None, Some(1_048_576), DEFAULT_MAX_CONNECTIONS),
        (None, None, DEFAULT_MAX_CONNECTIONS),
        // ...else the limit less the reserve...
        (None, Some(1024), 1024 - RESERVED_FDS as usize),
        // ...but never less than half of it.
        (None, Some(200), 100),
        (None, Some(64), 32),
        (None, Some(1), 1),
    ];
    for (configured, limit, want) in cases {
        assert_eq!(
            connection_cap(*configured, *limit),
            *want,
            "{configured:?} {limit:?}"
        );
    }
}

#[test]
fn accept_errors_back_off_unless_they_belong_to_one_connection() {
    let cases: &[(i32, AcceptAction)] = &[
        (libc::EMFILE, AcceptAction::BackOff("fd_limit")),
        (libc::ENFILE, AcceptAction::BackOff("fd_limit")),
        (libc::ENOBUFS, AcceptAction::BackOff("memory")),
        (libc::ENOMEM, AcceptAction::BackOff("memory")),
        (libc::EINVAL, AcceptAction::BackOff("other")),
        (libc::ECONNABORTED, AcceptAction::Next),
        (libc::ECONNRESET, AcceptAction::Next),
        (libc::EPROTO, AcceptAction::Next),
        (libc::EPERM, AcceptAction::Next),
        (libc::EINTR, AcceptAction::Next),
    ];
    for (errno, want) in cases {
        let e = io::Error::from_raw_os_error(*errno);
        assert_eq!(accept_action(&e), *want, "{e}");
    }
    let no_errno = io::Error::other("?");
    assert_eq!(accept_action(&no_errno), AcceptAction::BackOff("other"));
}

#[test]
fn backoff_doubles_to_its_cap_and_resets() {
    let mut b = Backoff::default();
    assert!(!b.failing());
    let delays: Vec<u128> = (0..12).map(|_| b.failed().as_millis()).collect();
    assert_eq!(
        delays,
        [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]
    );
    assert!(b.failing());
    for _ in 0..100 {
        b.failed();
    }
    assert_eq!(b.failed(), BACKOFF_MAX, "no overflow after many failures");
    b.reset();
    assert!(!b.failing());
    assert_eq!(b.failed(), BACKOFF_MIN);
}
