//! What crossed a node's link: tcpdump on `peer0`, and checks that the
//! payload never appeared in cleartext.

use std::path::PathBuf;
use std::time::Duration;

use crate::command::ChildGuard;
use crate::mesh::wait_until;
use crate::netns::Netns;

/// tcpdump on a node's link to the other nodes (`peer0`), writing every
/// TCP packet to a pcap file in the temp dir (removed when dropped).
pub struct LinkCapture {
    dump: ChildGuard,
    file: PathBuf,
}

impl LinkCapture {
    /// Starts the capture in `node` and returns once tcpdump is attached.
    pub fn start(node: &Netns, name: &str) -> LinkCapture {
        let file = std::env::temp_dir().join(format!("{name}.pcap"));
        let dump = node
            .spawn(&[
                "tcpdump",
                "-i",
                "peer0",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-w",
                file.to_str().expect("utf-8 path"),
                "tcp",
            ])
            .expect("start tcpdump (is it installed? ./scripts/install-deps)");
        // tcpdump writes the pcap header once it is attached to the link.
        wait_until("tcpdump attached", || {
            std::fs::metadata(&file).is_ok_and(|m| m.len() >= 24)
        });
        std::thread::sleep(Duration::from_millis(100));
        LinkCapture { dump, file }
    }

    /// Lets the last packets arrive, stops tcpdump (SIGINT, so it flushes)
    /// and returns the pcap's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.dump.signal(nix::sys::signal::Signal::SIGINT);
        self.dump.wait_exit(Duration::from_secs(5));
        std::fs::read(&self.file).expect("read pcap")
    }
}

impl Drop for LinkCapture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Asserts that a link capture saw more than `min_len` bytes, never
/// `needle` (the payload) in cleartext, and HBONE traffic (port 15008).
pub fn assert_hbone_on_the_wire(captured: &[u8], min_len: usize, needle: &[u8]) {
    assert!(
        captured.len() > min_len,
        "capture too small ({} bytes): tcpdump saw no traffic",
        captured.len()
    );
    assert!(
        !captured.windows(needle.len()).any(|w| w == needle),
        "payload visible in cleartext on the node link"
    );
    assert!(
        captured
            .windows(2)
            .any(|w| w == hbone::HBONE_PORT.to_be_bytes()),
        "no HBONE (15008) traffic on the link"
    );
}
