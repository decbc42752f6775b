//! inotify on the config file's directory: wakes the file source when a
//! write finishes or a file is renamed into place, so an edit is applied at
//! once rather than at the next poll. Watching the directory (not the file)
//! survives the write-then-rename that editors and tools use.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Events that mean a file in the directory may have new content.
const EVENTS: u32 = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO;

pub struct DirWatch {
    fd: AsyncFd<OwnedFd>,
}

impl DirWatch {
    /// Watches `dir`. Needs a tokio runtime with I/O enabled.
    pub fn new(dir: &Path) -> io::Result<DirWatch> {
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: inotify_init1 has no preconditions; a non-negative return
        // is a new descriptor that we own.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `fd` is an inotify descriptor and `path` a valid C string.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), EVENTS) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd, which alone owns
        // it from here until it is dropped, so the descriptor stays open and
        // the same.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(DirWatch { fd })
    }

    /// Returns after the next batch of events (which are discarded: the
    /// caller re-reads the file and compares its content). If the
    /// descriptor fails it never returns, leaving the caller's poll.
    pub async fn changed(&mut self) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            let mut buf = [0u8; 4096];
            let mut got = false;
            loop {
                // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
                let n = unsafe {
                    libc::read(
                        ready.get_inner().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n > 0 {
                    got = true;
                    continue;
                }
                if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                    // A broken descriptor: stop waking (no busy loop).
                    return std::future::pending().await;
                }
                ready.clear_ready();
                break;
            }
            if got {
                return;
            }
        }
    }
}
