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

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proto::discovery::DeltaDiscoveryRequest;

use crate::resources::{Resources, Versioned};

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
}

impl Subscription {
    /// Applies a request's subscription changes; says whether it (N)ACKs.
    pub fn on_request(&mut self, req: &DeltaDiscoveryRequest) -> Reply {
        if !self.started {
            self.started = true;
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
        // The client forgets what it is no longer interested in.
        let (wildcard, names) = (self.wildcard, &self.names);
        self.held.retain(|n, _| wildcard || names.contains(n));
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
