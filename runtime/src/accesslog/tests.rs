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
        reason: None,
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
    log_in_background(log, n)
        .recv_timeout(Duration::from_secs(30))
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

/// An access log writing into a pipe, and the pipe's read end: a disk that
/// hangs until something reads it (the writer blocks once 64 KiB are in).
fn log_to_pipe() -> (std::os::fd::OwnedFd, Arc<AccessLog>, AccessLogCounters) {
    let (rd, wr) = nix::unistd::pipe().unwrap();
    let counters = AccessLogCounters::default();
    let log = Arc::new(AccessLog::spawn(
        Box::new(std::fs::File::from(wr)),
        counters.clone(),
    ));
    (rd, log, counters)
}

#[test]
fn a_stalled_disk_drops_lines_instead_of_blocking_connections() {
    // A pipe nobody reads yet: the writer thread blocks in write() once
    // the pipe's 64 KiB are full, as it would on a hung disk.
    let (rd, log, counters) = log_to_pipe();
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

/// Logs `n` events on another thread; the handle says when it is done.
fn log_in_background(log: &Arc<AccessLog>, n: u64) -> mpsc::Receiver<()> {
    let (done, wait) = mpsc::channel();
    let l = log.clone();
    std::thread::spawn(move || {
        for i in 0..n {
            l.log(&event(i));
        }
        let _ = done.send(());
    });
    wait
}

#[test]
fn at_exit_a_burst_larger_than_the_queue_waits_for_the_disk() {
    // The disk stalls (a pipe nobody reads yet) while the connections
    // cancelled at exit log three queues' worth of lines.
    let (rd, log, counters) = log_to_pipe();
    log.begin_exit(Duration::from_secs(30));
    let total = 3 * QUEUE_LINES as u64;
    let done = log_in_background(&log, total);
    assert!(
        done.recv_timeout(Duration::from_millis(300)).is_err(),
        "at exit, a full queue waits instead of dropping lines"
    );
    // The disk recovers: every line is written, none lost, in order.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::fs::File::from(rd).read_to_string(&mut text).unwrap();
        text
    });
    done.recv_timeout(Duration::from_secs(30))
        .expect("the burst finishes once the disk drains");
    log.close();
    let got: Vec<u64> = reader.join().unwrap().lines().map(sent).collect();
    assert_eq!(got, (0..total).collect::<Vec<_>>());
    assert_eq!(counters.lost(LOST_QUEUE_FULL), 0);
    assert_eq!(counters.written.get(), total);
}

#[test]
fn at_exit_a_hung_disk_holds_the_exit_only_for_the_budget() {
    let (_rd, log, counters) = log_to_pipe(); // never read
    let budget = Duration::from_millis(200);
    let started = Instant::now();
    log.begin_exit(budget);
    let total = 3 * QUEUE_LINES as u64;
    log_in_background(&log, total)
        .recv_timeout(Duration::from_secs(30))
        .expect("logging gives up once the budget is spent");
    log.close();
    let took = started.elapsed();
    assert!(
        took < budget + CLOSE_FLOOR + Duration::from_secs(2),
        "exit held for {took:?}"
    );
    assert!(counters.lost(LOST_QUEUE_FULL) > 0, "the excess is counted");
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
    let (rd, log, counters) = log_to_pipe();
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
                 // The flush can return while the thread still unwinds and its queue
                 // still takes lines: wait until it is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.writer.lock().unwrap().as_ref().unwrap().is_finished() {
        assert!(Instant::now() < deadline, "the writer thread never ended");
        std::thread::sleep(Duration::from_millis(1));
    }
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
        reason: None,
        error: None,
    };
    let v: serde_json::Value = serde_json::from_str(&ev.to_json_line()).unwrap();
    assert_eq!(v["src.addr"], "10.1.1.2:40000");
    assert_eq!(v["dst.hbone_addr"], "10.1.2.2:15008");
    assert_eq!(v["direction"], "outbound");
    assert_eq!(v["duration"], 1.5);
    assert_eq!(v["bytes_recv"], 7);
    assert!(v.get("error").is_none());
    assert!(v.get("reason").is_none(), "no reason unless one is given");
    let refused = ConnEvent {
        response_flags: "CONNECT",
        reason: Some("waypoint_missing"),
        error: Some("no route".into()),
        ..ev
    };
    let v: serde_json::Value = serde_json::from_str(&refused.to_json_line()).unwrap();
    assert_eq!(v["response_flags"], "CONNECT");
    assert_eq!(v["reason"], "waypoint_missing");
}

#[test]
fn the_access_log_flag_names_stdout_off_or_a_file() {
    for (flag, want) in [
        ("-", AccessLogTarget::Stdout),
        ("off", AccessLogTarget::Off),
        (
            "/var/log/a.json",
            AccessLogTarget::File("/var/log/a.json".into()),
        ),
    ] {
        assert_eq!(AccessLogTarget::from_flag(flag), want, "{flag}");
    }
}
