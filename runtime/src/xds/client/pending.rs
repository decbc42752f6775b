//! A push cut into several responses, put back together.
//!
//! A control plane keeps each response under the client's message limit
//! ([`super::MAX_MESSAGE_BYTES`]) by cutting a large push into pieces, all
//! but the last marked [`MORE_FOLLOWS`] in `system_version_info` (our
//! control plane does; a server that never cuts, like istiod, never marks).
//! Applying a piece alone could leave a half-updated state, or reject it as
//! inconsistent (a workload that moved to the IP another piece frees): so
//! marked pieces are held, each ACKed as it arrives, and the push is
//! applied, and ACKed or NACKed, with its last piece. Pieces are held per
//! type and only for the stream they arrived on.

use std::collections::HashMap;

use proto::discovery::{DeltaDiscoveryResponse, Resource};

/// `system_version_info` of every piece of a push but the last.
pub const MORE_FOLLOWS: &str = "ambient-mesh/more-follows";
/// Held bytes past which a push is applied without waiting for its end
/// (bounds the memory a server that never ends a push can make us hold).
pub const MAX_HELD_BYTES: usize = 256 * 1024 * 1024;

#[derive(Default)]
struct Held {
    resources: Vec<Resource>,
    removed: Vec<String>,
    bytes: usize,
}

/// Pieces held per type URL.
#[derive(Default)]
pub struct Pending {
    by_type: HashMap<String, Held>,
}

impl Pending {
    /// `None`: `resp` is a piece, held (ACK it). `Some`: the push to apply,
    /// the held pieces of its type first, under `resp`'s nonce.
    pub fn offer(&mut self, mut resp: DeltaDiscoveryResponse) -> Option<DeltaDiscoveryResponse> {
        let more = resp.system_version_info == MORE_FOLLOWS;
        let bytes = super::resource_bytes(&resp);
        let held = self.by_type.remove(&resp.type_url);
        if more && held.as_ref().map_or(0, |h| h.bytes) + bytes <= MAX_HELD_BYTES {
            let mut h = held.unwrap_or_default();
            h.bytes += bytes;
            h.resources.append(&mut resp.resources);
            h.removed.append(&mut resp.removed_resources);
            self.by_type.insert(resp.type_url, h);
            return None;
        }
        if let Some(mut h) = held {
            h.resources.append(&mut resp.resources);
            h.removed.append(&mut resp.removed_resources);
            resp.resources = h.resources;
            resp.removed_resources = h.removed;
        }
        resp.system_version_info.clear();
        Some(resp)
    }

    /// Types with pieces held.
    pub fn holding(&self) -> usize {
        self.by_type.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

    fn piece(
        type_url: &str,
        nonce: &str,
        names: &[&str],
        removed: &[&str],
        more: bool,
    ) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: nonce.into(),
            system_version_info: if more {
                MORE_FOLLOWS.into()
            } else {
                String::new()
            },
            resources: names
                .iter()
                .map(|n| Resource {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn pieces_are_held_per_type_until_the_last() {
        let mut p = Pending::default();
        assert!(p
            .offer(piece(ADDRESS_TYPE_URL, "1", &["a", "b"], &["x"], true))
            .is_none());
        // Another type in between is applied alone, at once.
        let auth = p
            .offer(piece(AUTHORIZATION_TYPE_URL, "2", &["p"], &[], false))
            .unwrap();
        assert_eq!(names(&auth), ["p"]);
        assert!(p
            .offer(piece(ADDRESS_TYPE_URL, "3", &["c"], &[], true))
            .is_none());
        assert_eq!(p.holding(), 1);
        let whole = p
            .offer(piece(ADDRESS_TYPE_URL, "4", &["d"], &["y"], false))
            .unwrap();
        assert_eq!(names(&whole), ["a", "b", "c", "d"]);
        assert_eq!(whole.removed_resources, ["x", "y"]);
        assert_eq!(whole.nonce, "4", "answered under the last piece's nonce");
        assert_eq!(p.holding(), 0);
        // An unmarked response with nothing held passes through.
        let alone = p
            .offer(piece(ADDRESS_TYPE_URL, "5", &["e"], &[], false))
            .unwrap();
        assert_eq!(names(&alone), ["e"]);
    }

    #[test]
    fn a_push_that_never_ends_is_applied_past_the_bound() {
        let mut p = Pending::default();
        let mut big = piece(ADDRESS_TYPE_URL, "1", &["a"], &[], true);
        big.resources[0].resource = Some(prost_types::Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: vec![0; MAX_HELD_BYTES / 2 + 1],
        });
        assert!(p.offer(big.clone()).is_none());
        let applied = p.offer(big).expect("over the bound: applied now");
        assert_eq!(applied.resources.len(), 2);
        assert_eq!(p.holding(), 0);
    }
}
