//! The access log: one JSON object per connection, on its own line, with
//! the fields from DESIGN §7. Building the event is pure; writing it
//! happens on a thread of its own (see [`AccessLog`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
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
    /// `-` on success, else Istio's flag (`DENY`, `CONNECT`...).
    pub response_flags: &'static str,
    /// Why, more finely than `response_flags` says (a bounded set per
    /// proxy, e.g. `unknown_source`, `waypoint_missing`); absent when the
    /// flag says it all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
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
    /// Set once the process exits: until then a full queue waits for room.
    exit_deadline: OnceLock<Instant>,
    counters: AccessLogCounters,
    next_warn: Mutex<Instant>,
}

/// Where access-log lines go: `--access-log -` (stdout), `off`, or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
    Off,
}

impl AccessLogTarget {
    /// The `--access-log` flag's value: `-`, `off`, or a path.
    pub fn from_flag(value: &str) -> Self {
        match value {
            "-" => Self::Stdout,
            "off" => Self::Off,
            path => Self::File(path.into()),
        }
    }

    /// Opens the log this target names (a file is created or appended to).
    pub fn open(&self, counters: AccessLogCounters) -> std::io::Result<AccessLog> {
        Ok(match self {
            Self::Stdout => AccessLog::stdout(counters),
            Self::Off => AccessLog::sink(),
            Self::File(path) => AccessLog::file(path, counters)?,
        })
    }
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
            exit_deadline: OnceLock::new(),
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
            exit_deadline: OnceLock::new(),
            counters,
            next_warn: Mutex::new(Instant::now()),
        }
    }

    /// Queues one line for `event`; never blocks on the disk, except after
    /// [`AccessLog::begin_exit`].
    pub fn log(&self, event: &ConnEvent) {
        self.log_event(event);
    }

    /// Queues any serializable event as one JSON line, like
    /// [`AccessLog::log`] (the waypoint logs one per HTTP request).
    pub fn log_event<E: Serialize>(&self, event: &E) {
        let Some(tx) = &self.tx else {
            return;
        };
        if self.closed.load(Ordering::Relaxed) {
            return self.counters.lose(LOST_CLOSED, 1);
        }
        let mut text = serde_json::to_string(event).expect("event serializes");
        text.push('\n');
        let mut line = Msg::Line(text);
        loop {
            match tx.try_send(line) {
                Ok(()) => return,
                Err(mpsc::TrySendError::Full(back)) => match self.exit_deadline.get() {
                    Some(deadline) if Instant::now() < *deadline => {
                        line = back;
                        std::thread::sleep(EXIT_POLL);
                    }
                    _ => return self.lose(LOST_QUEUE_FULL),
                },
                Err(mpsc::TrySendError::Disconnected(_)) if self.closed.load(Ordering::Relaxed) => {
                    return self.counters.lose(LOST_CLOSED, 1)
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return self.lose(LOST_WRITER_DIED),
            }
        }
    }

    /// The process is exiting: the connections cancelled at exit log their
    /// lines in one burst, larger than the queue when thousands were open,
    /// and nothing is left on the data path to keep fast. From now on a full
    /// queue makes [`AccessLog::log`] wait for room, and [`AccessLog::close`]
    /// waits for the writer, together for at most `timeout` (a hung disk
    /// still cannot hold the exit for longer).
    pub fn begin_exit(&self, timeout: Duration) {
        let _ = self.exit_deadline.set(Instant::now() + timeout);
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
    /// [`CLOSE_TIMEOUT`], or what is left of [`AccessLog::begin_exit`]'s.
    /// Lines logged afterwards are counted as lost (`closed`).
    pub fn close(&self) {
        // A healthy disk writes the last batch in far less than the floor.
        let timeout = match self.exit_deadline.get() {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .max(CLOSE_FLOOR),
            None => CLOSE_TIMEOUT,
        };
        self.close_within(timeout);
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
/// The least [`AccessLog::close`] waits after [`AccessLog::begin_exit`]'s
/// budget is spent.
const CLOSE_FLOOR: Duration = Duration::from_millis(500);
/// How often a line waiting for room at exit looks again.
const EXIT_POLL: Duration = Duration::from_millis(1);
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
mod tests;
