//! The access log: one JSON object per connection, on its own line, with
//! the fields from DESIGN §7. Building the event is pure; writing it
//! happens on a thread of its own (see [`AccessLog`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnEvent {
    #[serde(rename = "src.addr")]
    pub src_addr: SocketAddr,
    #[serde(rename = "src.workload", skip_serializing_if = "Option::is_none")]
    pub src_workload: Option<String>,
    #[serde(rename = "src.identity", skip_serializing_if = "Option::is_none")]
    pub src_identity: Option<String>,
    #[serde(rename = "dst.addr")]
    pub dst_addr: SocketAddr,
    #[serde(rename = "dst.hbone_addr", skip_serializing_if = "Option::is_none")]
    pub dst_hbone_addr: Option<SocketAddr>,
    #[serde(rename = "dst.workload", skip_serializing_if = "Option::is_none")]
    pub dst_workload: Option<String>,
    #[serde(rename = "dst.identity", skip_serializing_if = "Option::is_none")]
    pub dst_identity: Option<String>,
    pub direction: Direction,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    /// Seconds, as a float.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// `-` on success, else a low-cardinality reason (`DENY`, `CONNECT`...).
    pub response_flags: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e6)
}

impl ConnEvent {
    pub fn to_json_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("event serializes");
        line.push('\n');
        line
    }
}

/// How many lines may wait for the writer thread. A line is ~400 bytes, so
/// a stalled disk costs at most ~2 MiB before lines are dropped (and
/// counted), never a blocked connection. At one look per [`TICK`] the
/// writer keeps up with ~200,000 lines per second.
pub const QUEUE_LINES: usize = 4096;
/// The writer gathers queued lines into one write of up to this many bytes.
const BATCH_BYTES: usize = 64 * 1024;
/// At most one warning per this interval for each kind of loss.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why an access-log line was lost (the `reason` label).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    pub reason: &'static str,
}

/// The writer was behind by [`QUEUE_LINES`] (a slow or stalled disk).
pub const LOST_QUEUE_FULL: &str = "queue_full";
/// The write failed (a full disk, a closed pipe).
pub const LOST_WRITE_FAILED: &str = "write_failed";
/// Logged after [`AccessLog::close`].
pub const LOST_CLOSED: &str = "closed";
/// The writer thread is gone (it panicked).
pub const LOST_WRITER_DIED: &str = "writer_died";
/// How long [`AccessLog::close`] waits for the writer (a hung disk must not
/// keep the process from exiting).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The access log's own counters, registered by [`crate::metrics::Metrics`].
#[derive(Clone, Debug, Default)]
pub struct AccessLogCounters {
    pub written: Counter,
    pub lost: Family<LostLabels, Counter>,
}

impl AccessLogCounters {
    fn lose(&self, reason: &'static str, lines: u64) {
        self.lost
            .get_or_create(&LostLabels { reason })
            .inc_by(lines);
    }

    pub fn lost(&self, reason: &'static str) -> u64 {
        self.lost.get_or_create(&LostLabels { reason }).get()
    }
}

enum Msg {
    Line(String),
    /// Write everything queued before this, then answer.
    Flush(mpsc::SyncSender<()>),
    /// Write everything queued before this, then stop.
    Close,
}

/// Where access-log lines go. The data path only serializes an event and
/// queues the line; a dedicated thread writes the lines in batches. A slow
/// or full disk therefore never blocks a connection: the queue is bounded,
/// and a line that does not fit, or whose write fails, is dropped, counted
/// in `ztunnel_access_log_lost_lines_total{reason}` and warned about at most
/// once per 10 s.
pub struct AccessLog {
    /// `None` for a sink.
    tx: Option<mpsc::SyncSender<Msg>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    counters: AccessLogCounters,
    next_warn: Mutex<Instant>,
}

impl AccessLog {
    pub fn stdout(counters: AccessLogCounters) -> Self {
        Self::spawn(Box::new(std::io::stdout()), counters)
    }

    pub fn file(path: &Path, counters: AccessLogCounters) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::spawn(Box::new(f), counters))
    }

    /// Discards every event (tests, or `--access-log off`).
    pub fn sink() -> Self {
        AccessLog {
            tx: None,
            writer: Mutex::new(None),
            closed: AtomicBool::new(false),
            counters: AccessLogCounters::default(),
            next_warn: Mutex::new(Instant::now()),
        }
    }

    /// Starts the writer thread over `out`.
    pub fn spawn(out: Box<dyn Write + Send>, counters: AccessLogCounters) -> Self {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let c = counters.clone();
        let writer = std::thread::Builder::new()
            .name("ztunnel-accesslog".into())
            .spawn(move || Writer::new(out, c).run(rx))
            .expect("spawn the access-log writer");
        AccessLog {
            tx: Some(tx),
            writer: Mutex::new(Some(writer)),
            closed: AtomicBool::new(false),
            counters,
            next_warn: Mutex::new(Instant::now()),
        }
    }

    /// Queues one line for `event`; never blocks on the disk.
    pub fn log(&self, event: &ConnEvent) {
        let Some(tx) = &self.tx else {
            return;
        };
        if self.closed.load(Ordering::Relaxed) {
            return self.counters.lose(LOST_CLOSED, 1);
        }
        match tx.try_send(Msg::Line(event.to_json_line())) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => self.lose(LOST_QUEUE_FULL),
            Err(mpsc::TrySendError::Disconnected(_)) if self.closed.load(Ordering::Relaxed) => {
                self.counters.lose(LOST_CLOSED, 1)
            }
            Err(mpsc::TrySendError::Disconnected(_)) => self.lose(LOST_WRITER_DIED),
        }
    }

    /// Blocks until every line queued so far is written (or lost), for as
    /// long as the disk takes: for tests and tools, never the data path.
    pub fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done, wait) = mpsc::sync_channel(1);
            if tx.send(Msg::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }

    /// Writes what is queued and stops the writer, waiting at most
    /// [`CLOSE_TIMEOUT`]. Lines logged afterwards are counted as lost
    /// (`closed`).
    pub fn close(&self) {
        self.close_within(CLOSE_TIMEOUT);
    }

    /// [`AccessLog::close`], waiting at most `timeout` for the writer: on a
    /// hung disk it gives up, says so, and leaves the writer behind.
    pub fn close_within(&self, timeout: Duration) {
        let Some(writer) = self.writer.lock().expect("access log poisoned").take() else {
            return;
        };
        self.closed.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        let stuck = || {
            tracing::warn!(
                ?timeout,
                "access log writer is stuck (a hung disk?); exiting without its queued lines"
            );
        };
        if let Some(tx) = &self.tx {
            loop {
                match tx.try_send(Msg::Close) {
                    Ok(()) | Err(mpsc::TrySendError::Disconnected(_)) => break,
                    Err(mpsc::TrySendError::Full(_)) if Instant::now() < deadline => {
                        std::thread::sleep(CLOSE_POLL);
                    }
                    Err(mpsc::TrySendError::Full(_)) => return stuck(),
                }
            }
        }
        while !writer.is_finished() {
            if Instant::now() >= deadline {
                return stuck();
            }
            std::thread::sleep(CLOSE_POLL);
        }
        if writer.join().is_err() {
            tracing::warn!("the access log writer had panicked; lines were lost");
        }
    }

    pub fn counters(&self) -> &AccessLogCounters {
        &self.counters
    }

    /// Counts one line lost for `reason` and warns at most once per
    /// [`WARN_EVERY`].
    fn lose(&self, reason: &'static str) {
        self.counters.lose(reason, 1);
        let mut next = self.next_warn.lock().expect("access log poisoned");
        let now = Instant::now();
        if now >= *next {
            *next = now + WARN_EVERY;
            let why = if reason == LOST_QUEUE_FULL {
                "access log writer is behind; dropping lines"
            } else {
                "access log writer is gone; dropping lines"
            };
            tracing::warn!(reason, lost = self.counters.lost(reason), "{why}");
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.close();
    }
}

const CLOSE_POLL: Duration = Duration::from_millis(5);
/// How often a busy writer looks at its queue: the most a line waits.
const TICK: Duration = Duration::from_millis(20);

/// The writer thread's state.
struct Writer {
    out: Box<dyn Write + Send>,
    counters: AccessLogCounters,
    /// The last write stopped inside a line: the next write ends it first,
    /// so one torn line does not swallow the next.
    torn: bool,
    failing: bool,
    last_warn: Option<Instant>,
}

impl Writer {
    fn new(out: Box<dyn Write + Send>, counters: AccessLogCounters) -> Self {
        Writer {
            out,
            counters,
            torn: false,
            failing: false,
            last_warn: None,
        }
    }

    /// Takes what is queued (up to [`BATCH_BYTES`] a write), writes it,
    /// and answers flushes; until `Close`. While lines keep coming it looks
    /// at the queue every [`TICK`] instead of waiting on it, so a connection
    /// that logs a line never has to wake this thread; only the first line
    /// after an idle tick does. (Waking it per line cost the two ztunnels
    /// ~7.4 context switches per proxied connection instead of ~4.4, and
    /// ~15% of the connection rate, in netns-bench.)
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::with_capacity(BATCH_BYTES);
        let mut lines = 0u64;
        let mut waiting: Vec<mpsc::SyncSender<()>> = Vec::new();
        let mut closing = false;
        let mut idle = true;
        loop {
            let first = if idle {
                match rx.recv() {
                    Ok(msg) => msg,
                    Err(mpsc::RecvError) => return,
                }
            } else {
                std::thread::sleep(TICK);
                match rx.try_recv() {
                    Ok(msg) => msg,
                    Err(mpsc::TryRecvError::Empty) => {
                        idle = true;
                        continue;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            };
            idle = false;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Line(line) => {
                        batch.extend_from_slice(line.as_bytes());
                        lines += 1;
                    }
                    Msg::Flush(done) => waiting.push(done),
                    Msg::Close => closing = true,
                }
                if batch.len() < BATCH_BYTES && !closing {
                    next = rx.try_recv().ok();
                }
            }
            if lines > 0 {
                self.write_batch(&batch, lines);
                batch.clear();
                if batch.capacity() > 4 * BATCH_BYTES {
                    batch.shrink_to(BATCH_BYTES);
                }
                lines = 0;
            }
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            if closing {
                // Lines that raced with close: counted, not silently dropped.
                for msg in rx.try_iter() {
                    match msg {
                        Msg::Line(_) => self.counters.lose(LOST_CLOSED, 1),
                        Msg::Flush(done) => {
                            let _ = done.send(());
                        }
                        Msg::Close => {}
                    }
                }
                return;
            }
        }
    }

    /// Writes `batch` (`lines` whole lines). Lines that reached the file
    /// count as written, the rest as lost; a line cut by the failure is
    /// ended before the next batch.
    fn write_batch(&mut self, batch: &[u8], lines: u64) {
        let mut result = Ok(());
        if self.torn {
            result = self.out.write_all(b"\n");
            self.torn = result.is_err();
        }
        let mut done = 0;
        while result.is_ok() && done < batch.len() {
            match self.out.write(&batch[done..]) {
                Ok(0) => result = Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => result = Err(e),
            }
        }
        let result = result.and_then(|()| self.out.flush());
        let written = batch[..done].iter().filter(|&&b| b == b'\n').count() as u64;
        self.counters.written.inc_by(written);
        if done > 0 && batch[done - 1] != b'\n' {
            self.torn = true;
        }
        match result {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("access log writable again");
                }
            }
            Err(e) => {
                self.failing = true;
                self.counters.lose(LOST_WRITE_FAILED, lines - written);
                let now = Instant::now();
                if self
                    .last_warn
                    .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
                {
                    self.last_warn = Some(now);
                    tracing::warn!(
                        error = %e,
                        lost = self.counters.lost(LOST_WRITE_FAILED),
                        "writing the access log failed; dropping lines (lost so far)"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    fn event(n: u64) -> ConnEvent {
        ConnEvent {
            src_addr: "10.1.1.2:40000".parse().unwrap(),
            src_workload: Some("client".into()),
            src_identity: Some("spiffe://cluster.local/ns/shop/sa/client".into()),
            dst_addr: "10.1.2.2:8080".parse().unwrap(),
            dst_hbone_addr: None,
            dst_workload: Some("server".into()),
            dst_identity: None,
            direction: Direction::Inbound,
            bytes_sent: n,
            bytes_recv: 0,
            duration: Duration::from_millis(3),
            response_flags: "-",
            error: None,
        }
    }

    fn sent(line: &str) -> u64 {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        v["bytes_sent"].as_u64().expect("bytes_sent")
    }

    /// Logs `n` events on another thread; panics if that blocks for 30 s
    /// (the data path must never wait for the disk).
    fn log_without_blocking(log: &Arc<AccessLog>, n: u64) {
        let (done, wait) = mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                l.log(&event(i));
            }
            done.send(()).unwrap();
        });
        wait.recv_timeout(Duration::from_secs(30))
            .expect("AccessLog::log blocked");
    }

    #[test]
    fn lines_arrive_in_order_and_close_writes_the_rest() {
        let path = std::env::temp_dir().join(format!("accesslog-order-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let counters = AccessLogCounters::default();
        let log = AccessLog::file(&path, counters.clone()).unwrap();
        let n = (QUEUE_LINES / 2) as u64; // fits the queue: nothing may be lost
        for i in 0..n {
            log.log(&event(i));
        }
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let got: Vec<u64> = text.lines().map(sent).collect();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
        assert_eq!(counters.written.get(), n);
        assert_eq!(
            counters.lost(LOST_QUEUE_FULL) + counters.lost(LOST_WRITE_FAILED),
            0
        );
        // After close a line has nowhere to go: counted, not written.
        log.log(&event(n));
        assert_eq!(counters.lost(LOST_CLOSED), 1);
    }

    #[test]
    fn a_full_disk_loses_lines_and_counts_them() {
        let counters = AccessLogCounters::default();
        let log = Arc::new(AccessLog::file(Path::new("/dev/full"), counters.clone()).unwrap());
        log_without_blocking(&log, 100);
        log.flush();
        assert_eq!(counters.written.get(), 0);
        assert_eq!(counters.lost(LOST_WRITE_FAILED), 100);
    }

    #[test]
    fn a_stalled_disk_drops_lines_instead_of_blocking_connections() {
        // A pipe nobody reads yet: the writer thread blocks in write() once
        // the pipe's 64 KiB are full, as it would on a hung disk.
        let (rd, wr) = nix::unistd::pipe().unwrap();
        let counters = AccessLogCounters::default();
        let log = Arc::new(AccessLog::spawn(
            Box::new(std::fs::File::from(wr)),
            counters.clone(),
        ));
        let total = 3 * QUEUE_LINES as u64;
        log_without_blocking(&log, total);
        let dropped = counters.lost(LOST_QUEUE_FULL);
        assert!(
            dropped > 0,
            "a stalled writer must drop lines, not queue them all"
        );

        // The disk recovers: everything queued is written, nothing else lost.
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            std::fs::File::from(rd).read_to_string(&mut text).unwrap();
            text
        });
        log.close();
        let text = reader.join().unwrap();
        let got: Vec<u64> = text.lines().map(sent).collect();
        assert_eq!(
            got.len() as u64 + dropped,
            total,
            "every line written or counted"
        );
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "written lines keep their order"
        );
        assert_eq!(counters.written.get(), got.len() as u64);
        assert_eq!(counters.lost(LOST_WRITE_FAILED), 0);
    }

    /// A disk with `room` bytes left: writes what fits, then ENOSPC.
    #[derive(Clone, Default)]
    struct Disk {
        data: Arc<Mutex<Vec<u8>>>,
        room: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let room = self.room.load(Ordering::SeqCst);
            if room == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(room);
            self.room.fetch_sub(n, Ordering::SeqCst);
            self.data.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_disk_filling_mid_line_tears_one_line_and_counts_the_rest() {
        let disk = Disk::default();
        let line = event(0).to_json_line().len();
        disk.room.store(line + line / 2, Ordering::SeqCst);
        let counters = AccessLogCounters::default();
        let log = AccessLog::spawn(Box::new(disk.clone()), counters.clone());
        // One batch: the first line fits, the second is cut, three are lost.
        let (done, wait) = mpsc::sync_channel(1);
        let tx = log.tx.as_ref().unwrap();
        for i in 0..5 {
            tx.send(Msg::Line(event(i).to_json_line())).unwrap();
        }
        tx.send(Msg::Flush(done)).unwrap();
        wait.recv().unwrap();
        assert_eq!(counters.written.get(), 1);
        assert_eq!(counters.lost(LOST_WRITE_FAILED), 4);
        // Space again: the cut line is ended, the next lines are whole.
        disk.room.store(usize::MAX / 2, Ordering::SeqCst);
        log.log(&event(5));
        log.log(&event(6));
        log.close();
        assert_eq!(counters.written.get(), 3);
        let text = String::from_utf8(disk.data.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(serde_json::from_str::<serde_json::Value>(lines[1]).is_err());
        let whole: Vec<u64> = [lines[0], lines[2], lines[3]]
            .into_iter()
            .map(sent)
            .collect();
        assert_eq!(whole, [0, 5, 6]);
    }

    #[test]
    fn close_gives_up_on_a_hung_disk() {
        let (rd, wr) = nix::unistd::pipe().unwrap();
        let counters = AccessLogCounters::default();
        let log = Arc::new(AccessLog::spawn(
            Box::new(std::fs::File::from(wr)),
            counters.clone(),
        ));
        log_without_blocking(&log, 2 * QUEUE_LINES as u64);
        let (done, wait) = mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            l.close_within(Duration::from_millis(200));
            done.send(()).unwrap();
        });
        wait.recv_timeout(Duration::from_secs(30))
            .expect("close waited forever on a hung disk");
        // Later lines are counted, not queued for a writer that will not
        // come back.
        log.log(&event(0));
        assert_eq!(counters.lost(LOST_CLOSED), 1);
        // Let the stuck writer go (its pipe drains) so the thread ends.
        let reader = std::thread::spawn(move || {
            let mut sink = Vec::new();
            std::fs::File::from(rd).read_to_end(&mut sink).unwrap();
        });
        drop(log);
        reader.join().unwrap();
    }

    #[test]
    fn a_dead_writer_is_counted_not_waited_for() {
        struct Panics;
        impl Write for Panics {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                panic!("the disk driver exploded (test)");
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let counters = AccessLogCounters::default();
        let log = AccessLog::spawn(Box::new(Panics), counters.clone());
        log.log(&event(0));
        log.flush(); // returns: the writer's panic drops the flush's sender
        log.log(&event(1));
        assert_eq!(counters.lost(LOST_WRITER_DIED), 1);
        log.close();
    }

    #[test]
    fn a_sink_writes_nothing() {
        let log = AccessLog::sink();
        log.log(&event(1));
        log.flush();
        log.close();
        assert_eq!(log.counters().written.get(), 0);
    }

    #[test]
    fn event_has_design_field_names() {
        let ev = ConnEvent {
            src_addr: "10.1.1.2:40000".parse().unwrap(),
            src_workload: Some("client".into()),
            src_identity: Some("spiffe://cluster.local/ns/shop/sa/client".into()),
            dst_addr: "10.1.2.2:8080".parse().unwrap(),
            dst_hbone_addr: Some("10.1.2.2:15008".parse().unwrap()),
            dst_workload: Some("server".into()),
            dst_identity: Some("spiffe://cluster.local/ns/shop/sa/server".into()),
            direction: Direction::Outbound,
            bytes_sent: 5,
            bytes_recv: 7,
            duration: Duration::from_millis(1500),
            response_flags: "-",
            error: None,
        };
        let v: serde_json::Value = serde_json::from_str(&ev.to_json_line()).unwrap();
        assert_eq!(v["src.addr"], "10.1.1.2:40000");
        assert_eq!(v["dst.hbone_addr"], "10.1.2.2:15008");
        assert_eq!(v["direction"], "outbound");
        assert_eq!(v["duration"], 1.5);
        assert_eq!(v["bytes_recv"], 7);
        assert!(v.get("error").is_none());
    }
}
