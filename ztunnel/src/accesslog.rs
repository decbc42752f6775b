//! The access log: one JSON object per connection, on its own line, with
//! the fields from DESIGN §7. Building the event is pure; writing it is a
//! single `write_all` of one line under a short lock.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

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

/// Where access-log lines go.
pub struct AccessLog {
    out: Mutex<Box<dyn Write + Send>>,
}

impl AccessLog {
    pub fn stdout() -> Self {
        AccessLog {
            out: Mutex::new(Box::new(std::io::stdout())),
        }
    }

    pub fn file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AccessLog {
            out: Mutex::new(Box::new(f)),
        })
    }

    /// Discards every event (tests, or `--access-log none`).
    pub fn sink() -> Self {
        AccessLog {
            out: Mutex::new(Box::new(std::io::sink())),
        }
    }

    pub fn log(&self, event: &ConnEvent) {
        let line = event.to_json_line();
        let mut out = self.out.lock().expect("access log poisoned");
        if let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            // A full disk must not take the data path down with it.
            tracing::warn!(error = %e, "writing access log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
