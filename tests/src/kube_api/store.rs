//! The test API server's etcd: objects by (type, namespace, name), one
//! revision counter that every write bumps (the `resourceVersion`), and a
//! bounded log of recent events that watches replay from. A watch from a
//! revision the log no longer holds is answered `410 Gone`, as after an
//! etcd compaction; [`Store::compact`] drops the log on demand and
//! [`Store::expire_watches`] ends every open watch with a `410` error
//! event, as the real API server does when its watch cache cannot keep up.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::resources::{ResourceType, RESOURCES};

/// An index into [`RESOURCES`].
pub type ResourceId = usize;

/// Events kept for watches to resume from.
pub const DEFAULT_RETAINED_EVENTS: usize = 10_000;
/// Buffered events per open watch; a watch further behind is expired.
const WATCH_BUFFER: usize = 16_384;
/// Services without a `clusterIP` get one from here (10.96.0.0/16).
const SERVICE_RANGE: u32 = u32::from_be_bytes([10, 96, 0, 0]);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write, as the log holds it.
#[derive(Debug)]
pub struct Event {
    pub rev: u64,
    pub resource: ResourceId,
    pub namespace: String,
    pub kind: EventType,
    pub object: Value,
    /// The object before (a modification or deletion).
    pub old: Option<Value>,
    /// When it was committed (for tests that time its propagation).
    pub at: std::time::Instant,
}

/// What open watches receive.
#[derive(Debug, Clone)]
pub enum Broadcast {
    Event(Arc<Event>),
    /// End with `410 Gone` (the client must list again).
    Expire,
}

/// An API error, answered as a `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn not_found(r: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} {name:?} not found", r.plural))
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// A watch's beginning: the events it missed (or the objects, as
/// `ADDED`), then the live feed, from `revision` on.
pub struct WatchStart {
    pub replay: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Broadcast>,
    pub revision: u64,
}

type ObjKey = (ResourceId, String, String);

struct Inner {
    rev: u64,
    objects: BTreeMap<ObjKey, Value>,
    log: VecDeque<Arc<Event>>,
    /// Watches from a revision below this are too old.
    compacted: u64,
    retain: usize,
    next_service_ip: u32,
}

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Broadcast>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(DEFAULT_RETAINED_EVENTS)
    }
}

/// Now, as Kubernetes writes timestamps (RFC 3339, UTC, seconds).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

pub fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

impl Store {
    /// An empty store but for the namespaces every cluster has
    /// (`default`, `kube-system`); `retain` events are kept for watches.
    pub fn new(retain: usize) -> Self {
        let store = Store::empty(retain);
        for ns in ["default", "kube-system"] {
            store
                .create(namespace_resource(), "", json!({"metadata": {"name": ns}}))
                .expect("a fresh store takes its namespaces");
        }
        store
    }

    fn empty(retain: usize) -> Self {
        Store {
            inner: Mutex::new(Inner {
                rev: 1,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                compacted: 0,
                retain,
                next_service_ip: 1,
            }),
            tx: broadcast::channel(WATCH_BUFFER).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.lock().rev
    }

    /// Drops the event log: a watch must now resume from the current
    /// revision or later, or list again.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.log.clear();
        inner.compacted = inner.rev;
    }

    /// Every write from now on (and [`Broadcast::Expire`]s).
    pub fn subscribe(&self) -> broadcast::Receiver<Broadcast> {
        self.tx.subscribe()
    }

    /// Ends every open watch with a `410 Gone` error event.
    pub fn expire_watches(&self) {
        let _ = self.tx.send(Broadcast::Expire);
    }

    pub fn get(&self, r: ResourceId, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(&(r, ns.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&RESOURCES[r], name))
    }

    /// Up to `limit` objects of type `r` (in `ns`, or everywhere) that
    /// `keep` accepts, after `(namespace, name)` `after` in key order; the
    /// revision they are current at; whether more remain.
    pub fn list(
        &self,
        r: ResourceId,
        ns: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
        keep: impl Fn(&Value) -> bool,
    ) -> (Vec<Value>, u64, bool) {
        let inner = self.lock();
        let start = after.map_or((String::new(), String::new()), |(n, m)| {
            (n.to_owned(), m.to_owned())
        });
        let mut items = Vec::new();
        let mut more = false;
        for ((_, n, name), v) in inner
            .objects
            .range((r, start.0.clone(), start.1.clone())..)
            .take_while(|((rid, _, _), _)| *rid == r)
        {
            if after.is_some()
                && (n.as_str(), name.as_str()) <= (start.0.as_str(), start.1.as_str())
            {
                continue;
            }
            if ns.is_some_and(|ns| ns != n) || !keep(v) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(v.clone());
        }
        (items, inner.rev, more)
    }

    /// Starts a watch of type `r` after revision `from` (`None`: now, with
    /// the current objects first as `ADDED`, as for `resourceVersion=0`):
    /// the events to replay, then the live feed.
    pub fn watch(&self, r: ResourceId, from: Option<u64>) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let replay = match from {
            Some(rev) if rev > inner.rev => {
                return Err(ApiError::gone(format!(
                    "too large resource version: {rev}, current: {}",
                    inner.rev
                )));
            }
            Some(rev) if rev < inner.compacted => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rev} ({})",
                    inner.compacted
                )));
            }
            Some(rev) => inner
                .log
                .iter()
                .filter(|e| e.rev > rev && e.resource == r)
                .cloned()
                .collect(),
            None => inner
                .objects
                .iter()
                .filter(|((rid, _, _), _)| *rid == r)
                .map(|((_, ns, _), v)| {
                    Arc::new(Event {
                        rev: inner.rev,
                        resource: r,
                        namespace: ns.clone(),
                        kind: EventType::Added,
                        object: v.clone(),
                        old: None,
                        at: std::time::Instant::now(),
                    })
                })
                .collect(),
        };
        Ok(WatchStart {
            replay,
            live: rx,
            revision: inner.rev,
        })
    }

    /// Records a write: bumps the revision, stamps the object, logs and
    /// broadcasts the event.
    fn commit(
        &self,
        inner: &mut Inner,
        r: ResourceId,
        ns: &str,
        kind: EventType,
        mut object: Value,
        old: Option<Value>,
    ) -> Value {
        inner.rev += 1;
        let rev = inner.rev;
        object["metadata"]["resourceVersion"] = json!(rev.to_string());
        let key = (r, ns.to_owned(), name_of(&object).to_owned());
        match kind {
            EventType::Deleted => {
                inner.objects.remove(&key);
            }
            _ => {
                inner.objects.insert(key, object.clone());
            }
        }
        let event = Arc::new(Event {
            rev,
            resource: r,
            namespace: ns.to_owned(),
            kind,
            object: object.clone(),
            old,
            at: std::time::Instant::now(),
        });
        inner.log.push_back(event.clone());
        while inner.log.len() > inner.retain {
            if let Some(e) = inner.log.pop_front() {
                inner.compacted = e.rev;
            }
        }
        let _ = self.tx.send(Broadcast::Event(event));
        object
    }

    pub fn create(&self, r: ResourceId, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        let rt = &RESOURCES[r];
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        if name_of(&obj).is_empty() {
            match obj["metadata"]["generateName"].as_str() {
                Some(prefix) => {
                    let suffix: String = uuid()
                        .chars()
                        .filter(char::is_ascii_alphanumeric)
                        .take(5)
                        .collect();
                    obj["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
                }
                None => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        "metadata.name: Required value",
                    ))
                }
            }
        }
        let mut inner = self.lock();
        if rt.namespaced {
            if !inner
                .objects
                .contains_key(&(namespace_resource(), String::new(), ns.to_owned()))
            {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("namespaces {ns:?} not found"),
                ));
            }
            obj["metadata"]["namespace"] = json!(ns);
        }
        let key = (r, ns.to_owned(), name_of(&obj).to_owned());
        if inner.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} {:?} already exists", rt.plural, key.2),
            ));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uuid());
        meta["creationTimestamp"] = json!(now_rfc3339());
        meta["generation"] = json!(1);
        if rt.kind == "Service" {
            allocate_cluster_ip(&mut inner, &mut obj);
        }
        Ok(self.commit(&mut inner, r, ns, EventType::Added, obj, None))
    }

    /// Replaces an object (a PUT, or the result of a PATCH): `update`
    /// turns the stored object into the new one, or fails.
    pub fn update(
        &self,
        r: ResourceId,
        ns: &str,
        name: &str,
        update: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let rt = &RESOURCES[r];
        let mut inner = self.lock();
        let key = (r, ns.to_owned(), name.to_owned());
        let old = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let mut new = update(&old)?;
        let sent_rv = new["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !sent_rv.is_empty() && sent_rv != old["metadata"]["resourceVersion"] {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                    rt.plural
                ),
            ));
        }
        // What the server owns stays the server's.
        for field in ["uid", "creationTimestamp", "name", "namespace"] {
            new["metadata"][field] = old["metadata"][field].clone();
        }
        if !rt.namespaced {
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove("namespace");
            }
        }
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        if new["spec"] != old["spec"] {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(generation);
        } else {
            new["metadata"]["generation"] = old["metadata"]["generation"].clone();
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == old {
            // A no-op write bumps nothing, as in Kubernetes.
            return Ok(old);
        }
        Ok(self.commit(&mut inner, r, ns, EventType::Modified, new, Some(old)))
    }

    pub fn delete(&self, r: ResourceId, ns: &str, name: &str) -> Result<Value, ApiError> {
        let rt = &RESOURCES[r];
        let mut inner = self.lock();
        let key = (r, ns.to_owned(), name.to_owned());
        let old = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if r == namespace_resource() {
            // The namespace's objects go with it (at once: no finalizers).
            let inside: Vec<ObjKey> = inner
                .objects
                .keys()
                .filter(|(rid, n, _)| RESOURCES[*rid].namespaced && n == name)
                .cloned()
                .collect();
            for k in inside {
                let obj = inner.objects[&k].clone();
                self.commit(
                    &mut inner,
                    k.0,
                    &k.1,
                    EventType::Deleted,
                    obj.clone(),
                    Some(obj),
                );
            }
        }
        Ok(self.commit(
            &mut inner,
            r,
            ns,
            EventType::Deleted,
            old.clone(),
            Some(old),
        ))
    }
}

/// The index of `namespaces` in [`RESOURCES`].
pub fn namespace_resource() -> ResourceId {
    RESOURCES
        .iter()
        .position(|r| r.plural == "namespaces" && r.group.is_empty())
        .expect("namespaces are served")
}

/// A Service without a `clusterIP` gets the next free one (not for
/// `ExternalName`, nor `clusterIP: None`).
fn allocate_cluster_ip(inner: &mut Inner, svc: &mut Value) {
    let spec = &mut svc["spec"];
    if spec["type"] == "ExternalName" || spec["clusterIP"].is_string() {
        if let Some(ip) = spec["clusterIP"].as_str().map(str::to_owned) {
            if !spec["clusterIPs"].is_array() {
                spec["clusterIPs"] = json!([ip]);
            }
        }
        return;
    }
    let ip = Ipv4Addr::from(SERVICE_RANGE + inner.next_service_ip);
    inner.next_service_ip += 1;
    spec["clusterIP"] = json!(ip.to_string());
    spec["clusterIPs"] = json!([ip.to_string()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> ResourceId {
        RESOURCES.iter().position(|r| r.plural == "pods").unwrap()
    }

    #[test]
    fn lists_page_in_key_order_and_watches_resume_or_expire() {
        let store = Store::default();
        for n in ["a", "b", "c"] {
            store
                .create(pods(), "default", json!({"metadata": {"name": n}}))
                .unwrap();
        }
        let (page, rev, more) = store.list(pods(), None, None, 2, |_| true);
        assert_eq!(page.iter().map(name_of).collect::<Vec<_>>(), ["a", "b"]);
        assert!(more);
        let (rest, _, more) = store.list(pods(), None, Some(("default", "b")), 2, |_| true);
        assert_eq!(rest.iter().map(name_of).collect::<Vec<_>>(), ["c"]);
        assert!(!more);

        store.delete(pods(), "default", "a").unwrap();
        let w = store.watch(pods(), Some(rev)).unwrap();
        assert_eq!(w.replay.len(), 1);
        assert_eq!(w.replay[0].kind, EventType::Deleted);
        store.compact();
        let gone = store.watch(pods(), Some(rev)).err().unwrap();
        assert_eq!(gone.code, 410);
        assert!(store.watch(pods(), Some(store.revision())).is_ok());
    }
}
