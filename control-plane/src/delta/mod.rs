//! Delta-xDS bookkeeping for one client and one resource type: what it
//! subscribed to, what it holds, and what to push next. Pure: the gRPC shell
//! in [`crate::xds`] feeds it requests and resource sets, and sends the
//! [`Delta`]s it computes.
//!
//! - The first request of a stream may be a wildcard (`*`, or no names at
//!   all), and may carry `initial_resource_versions`: the client already
//!   holds those, so only what differs is sent.
//! - A name subscribed explicitly is always answered, changed or not (the
//!   client may have dropped it); one that does not exist is answered in
//!   `removed_resources`.
//! - A NACK changes nothing: the rejected versions count as held, so the
//!   same bytes are not pushed again; the next change to the resource is.
//! - Work per push is proportional to what changed: a subscription that is
//!   in sync with generation `g` of the published sets diffs only the names
//!   that changed after `g` ([`History`]), not every resource. Anything
//!   that could break that (the first request, a wildcard turned on or off,
//!   a generation older than the history) falls back to a full diff.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use proto::discovery::DeltaDiscoveryRequest;

use crate::resources::{Changes, Kind, Resources, Versioned};

/// The wildcard resource name.
pub const WILDCARD: &str = "*";

/// What a request said about an earlier response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Not an ACK or NACK (a first request or a subscription change).
    None,
    Ack {
        nonce: String,
    },
    Nack {
        nonce: String,
        message: String,
    },
}

/// What to send a client: changed or new resources, and removed names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub updated: Vec<Arc<Versioned>>,
    pub removed: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }

    /// Cuts the delta into pieces whose responses each carry at most
    /// `budget` bytes of resources and removed names (as encoded in a
    /// `DeltaDiscoveryResponse` of `kind`), in order. A resource larger than
    /// the budget goes alone. Always at least one piece (maybe empty).
    pub fn split(&self, kind: Kind, budget: usize) -> Vec<Delta> {
        let mut pieces = vec![Delta::default()];
        let mut used = 0;
        let mut room = |size: usize, pieces: &mut Vec<Delta>| {
            let last = pieces.last().expect("never empty");
            if used + size > budget && !last.is_empty() {
                pieces.push(Delta::default());
                used = 0;
            }
            used += size;
        };
        for r in &self.updated {
            room(resource_len(kind, r), &mut pieces);
            let last = pieces.last_mut().expect("never empty");
            last.updated.push(r.clone());
        }
        for name in &self.removed {
            room(field_len(name.len()), &mut pieces);
            let last = pieces.last_mut().expect("never empty");
            last.removed.push(name.clone());
        }
        pieces
    }
}

/// Bytes of a length-delimited field (tag, length, payload); prost leaves
/// out an empty string or bytes field.
fn field_len(payload: usize) -> usize {
    if payload == 0 {
        return 0;
    }
    1 + prost::encoding::encoded_len_varint(payload as u64) + payload
}

/// Bytes `r` adds to a response of `kind`: the `Resource` (name, version,
/// and the `Any` of type URL and body) as one repeated field.
pub fn resource_len(kind: Kind, r: &Versioned) -> usize {
    let any = field_len(kind.type_url().len()) + field_len(r.body.len());
    let resource = field_len(r.name.len())
        + field_len(r.version.len())
        + 1
        + prost::encoding::encoded_len_varint(any as u64)
        + any;
    1 + prost::encoding::encoded_len_varint(resource as u64) + resource
}

/// One client's subscription to one resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    started: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// name → version the client holds (sent by us, or declared on reconnect).
    held: BTreeMap<String, String>,
    /// Names to answer on the next push even if unchanged.
    forced: BTreeSet<String>,
    /// The generation `held` is in sync with (every interested name holds
    /// that generation's version), if known.
    synced: Option<u64>,
}

impl Subscription {
    /// Applies a request's subscription changes; says whether it (N)ACKs.
    pub fn on_request(&mut self, req: &DeltaDiscoveryRequest) -> Reply {
        let wildcard = self.wildcard;
        if !self.started {
            self.started = true;
            self.synced = None;
            self.held = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            // Legacy wildcard: a first request naming nothing wants everything.
            if req.resource_names_subscribe.is_empty() {
                self.wildcard = true;
            }
        }
        for name in &req.resource_names_subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
                self.forced.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(name);
                self.forced.remove(name);
            }
        }
        // Newly interested in everything: what it holds is unknown.
        if self.wildcard != wildcard {
            self.synced = None;
        }
        // The client forgets what it is no longer interested in.
        if !req.resource_names_unsubscribe.is_empty() {
            let (wildcard, names) = (self.wildcard, &self.names);
            self.held.retain(|n, _| wildcard || names.contains(n));
        }
        if req.response_nonce.is_empty() {
            return Reply::None;
        }
        let nonce = req.response_nonce.clone();
        match &req.error_detail {
            Some(status) => Reply::Nack {
                nonce,
                message: status.message.clone(),
            },
            None => Reply::Ack { nonce },
        }
    }

    /// Whether a request for this type has been seen.
    pub fn started(&self) -> bool {
        self.started
    }

    fn interested(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// What differs between `resources` and what the client holds.
    pub fn diff(&self, resources: &Resources) -> Delta {
        let mut delta = Delta::default();
        for (name, r) in resources {
            if !self.interested(name) {
                continue;
            }
            let stale = self.held.get(name) != Some(&r.version);
            if stale || self.forced.contains(name) {
                delta.updated.push(r.clone());
            }
        }
        let gone = self
            .held
            .keys()
            .chain(self.forced.iter())
            .filter(|n| !resources.contains_key(*n))
            .cloned()
            .collect::<BTreeSet<_>>();
        delta.removed = gone.into_iter().collect();
        delta
    }

    /// What differs from generation `generation` of the published sets
    /// (`resources`, with `history` holding the recent changes of `kind`):
    /// only the names changed since the generation this subscription is in
    /// sync with, or a full [`Subscription::diff`] when that is unknown.
    pub fn diff_published(
        &self,
        resources: &Resources,
        generation: u64,
        history: &History,
        kind: Kind,
    ) -> Delta {
        let changed = self
            .synced
            .and_then(|since| history.changed(since, generation, kind));
        match changed {
            Some(names) => self.diff_names(resources, names),
            None => self.diff(resources),
        }
    }

    /// [`Subscription::diff`] restricted to `names` (and the forced ones):
    /// the same answer when every other name is known to be unchanged.
    fn diff_names(&self, resources: &Resources, names: BTreeSet<&str>) -> Delta {
        let mut names = names;
        names.extend(self.forced.iter().map(String::as_str));
        let mut delta = Delta::default();
        for name in names {
            match resources.get(name) {
                Some(r) if self.interested(name) => {
                    let stale = self.held.get(name) != Some(&r.version);
                    if stale || self.forced.contains(name) {
                        delta.updated.push(r.clone());
                    }
                }
                Some(_) => {}
                None => {
                    if self.held.contains_key(name) || self.forced.contains(name) {
                        delta.removed.push(name.to_owned());
                    }
                }
            }
        }
        delta
    }

    /// Records that `delta`, computed against generation `generation`, was
    /// sent: the subscription is now in sync with it.
    pub fn commit_at(&mut self, delta: &Delta, generation: u64) {
        self.commit(delta);
        self.synced = Some(generation);
    }

    /// Records that `delta` was sent.
    pub fn commit(&mut self, delta: &Delta) {
        for r in &delta.updated {
            self.held.insert(r.name.clone(), r.version.clone());
        }
        for name in &delta.removed {
            self.held.remove(name);
        }
        self.forced.clear();
    }

    /// What the client holds, name → version.
    pub fn held(&self) -> &BTreeMap<String, String> {
        &self.held
    }
}

/// What changed in each of the last [`History::KEPT`] published
/// generations, so a client a few generations behind diffs only those
/// names.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// (generation, what it changed from the one before), oldest first.
    entries: VecDeque<(u64, Arc<Changes>)>,
}

impl History {
    /// Generations remembered; a client further behind gets a full diff.
    pub const KEPT: usize = 64;

    /// How many names the newest generation changed.
    pub fn last_len(&self) -> usize {
        self.entries.back().map_or(0, |(_, c)| c.len())
    }

    /// Records what `generation` changed from `generation - 1`.
    pub fn push(&mut self, generation: u64, changes: Arc<Changes>) {
        if self
            .entries
            .back()
            .is_some_and(|(g, _)| *g + 1 != generation)
        {
            // A gap: the older entries no longer chain up to this one.
            self.entries.clear();
        }
        self.entries.push_back((generation, changes));
        while self.entries.len() > Self::KEPT {
            self.entries.pop_front();
        }
    }

    /// The names of `kind` changed after generation `since` up to and
    /// including `current`; `None` when not all of those are remembered.
    pub fn changed(&self, since: u64, current: u64, kind: Kind) -> Option<BTreeSet<&str>> {
        if since > current {
            return None;
        }
        let mut names = BTreeSet::new();
        let mut next = since + 1;
        for (g, changes) in &self.entries {
            if *g <= since || *g > current {
                continue;
            }
            if *g != next {
                return None;
            }
            names.extend(changes.of(kind).iter().map(String::as_str));
            next += 1;
        }
        (next == current + 1).then_some(names)
    }
}
