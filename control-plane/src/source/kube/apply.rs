//! Applying the index's changes to the mesh input. The input refuses a
//! batch whose result is inconsistent (two pods on one IP while an IP is
//! reused and the old pod's deletion has not arrived yet); one bad change
//! must not hold back the rest of a batch, nor the cluster's later events.
//! So a refused batch is split in halves until every refused change stands
//! alone; the others are applied, in order. A refused key is retried with
//! every later batch (its current wanted form, from the index), and at once
//! while retries make progress, until the input takes it.

use std::collections::BTreeSet;

use mesh_model::input::{Change, Key, MeshInput, Touched};
use mesh_model::state::StateError;

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct Applied {
    /// What the applied changes touched.
    pub touched: Touched,
    /// The changes the input refused, each with its reason.
    pub rejected: Vec<(Change, StateError)>,
}

fn key_of(c: &Change) -> Key {
    match c {
        Change::Upsert(o) => o.key(),
        Change::Delete(k) => k.clone(),
    }
}

/// Applies `changes` in order, isolating the ones `input` refuses.
pub fn apply_isolating(input: &mut MeshInput, changes: Vec<Change>) -> Applied {
    let mut out = Applied::default();
    split(input, changes, &mut out);
    out
}

fn split(input: &mut MeshInput, mut changes: Vec<Change>, out: &mut Applied) {
    if changes.is_empty() {
        return;
    }
    // The clone is the price of a refusal's split; a batch is mostly
    // small, and a big one (a resync) is rare.
    match input.apply(changes.clone()) {
        Ok(update) => out.touched.extend(update.touched),
        Err(e) if changes.len() == 1 => out.rejected.push((changes.remove(0), e)),
        Err(_) => {
            let right = changes.split_off(changes.len() / 2);
            split(input, changes, out);
            split(input, right, out);
        }
    }
}

/// Keys refused so far, retried with each batch.
#[derive(Debug, Default)]
pub struct Retry {
    keys: BTreeSet<Key>,
}

impl Retry {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Applies `batch` and the keys refused before (as `wanted` says they
    /// should now be), then retries what is refused while that makes
    /// progress. Returns everything touched, and the refusals of this call
    /// (each key once, the last reason).
    pub fn apply(
        &mut self,
        input: &mut MeshInput,
        mut batch: Vec<Change>,
        wanted: impl Fn(&Key) -> Change,
    ) -> Applied {
        let in_batch: BTreeSet<Key> = batch.iter().map(key_of).collect();
        let retries: Vec<Change> = std::mem::take(&mut self.keys)
            .into_iter()
            .filter(|k| !in_batch.contains(k))
            .map(|k| wanted(&k))
            .collect();
        batch.extend(retries);
        let mut total = apply_isolating(input, batch);
        loop {
            let refused = total.rejected.len();
            if refused == 0 {
                break;
            }
            let again: Vec<Change> = total
                .rejected
                .iter()
                .map(|(c, _)| wanted(&key_of(c)))
                .collect();
            let next = apply_isolating(input, again);
            total.touched.extend(next.touched);
            total.rejected = next.rejected;
            if total.rejected.len() == refused {
                break;
            }
        }
        self.keys = total.rejected.iter().map(|(c, _)| key_of(c)).collect();
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_model::input::Object;
    use mesh_model::state::{Tunnel, Workload};
    use std::collections::HashMap;

    fn pod(name: &str, ip: &str) -> Object {
        Object::Workload(Workload {
            uid: format!("Kubernetes//Pod/ns/{name}"),
            name: name.into(),
            namespace: "ns".into(),
            service_account: "default".into(),
            trust_domain: "cluster.local".into(),
            ips: vec![ip.parse().unwrap()],
            node: "n1".into(),
            tunnel: Tunnel::Hbone,
            native_tunnel: false,
            labels: Default::default(),
            waypoint: None,
            authorization_policies: vec![],
        })
    }

    fn key(name: &str) -> Key {
        Key::Workload(format!("Kubernetes//Pod/ns/{name}"))
    }

    fn held(input: &MeshInput) -> Vec<String> {
        input
            .snapshot()
            .workloads()
            .map(|w| w.name.clone())
            .collect()
    }

    #[test]
    fn a_refused_change_is_isolated_and_the_rest_applied() {
        let mut input = MeshInput::new("cluster.local");
        input
            .apply(vec![Change::Upsert(pod("old", "10.0.0.1"))])
            .unwrap();
        let batch = vec![
            Change::Upsert(pod("a", "10.0.0.2")),
            // The old pod's IP, reused before its deletion arrived.
            Change::Upsert(pod("new", "10.0.0.1")),
            Change::Upsert(pod("b", "10.0.0.3")),
            Change::Upsert(pod("c", "10.0.0.4")),
        ];
        let applied = apply_isolating(&mut input, batch);
        assert_eq!(applied.rejected.len(), 1);
        assert_eq!(key_of(&applied.rejected[0].0), key("new"));
        assert_eq!(held(&input), ["a", "b", "c", "old"]);
        assert!(applied.touched.workloads.len() == 3);
    }

    #[test]
    fn a_refused_key_is_retried_once_the_conflict_is_gone() {
        let mut input = MeshInput::new("cluster.local");
        input
            .apply(vec![Change::Upsert(pod("old", "10.0.0.1"))])
            .unwrap();
        let mut wanted: HashMap<Key, Object> = HashMap::new();
        wanted.insert(pod("new", "10.0.0.1").key(), pod("new", "10.0.0.1"));
        let want = |wanted: &HashMap<Key, Object>| {
            let w = wanted.clone();
            move |k: &Key| match w.get(k) {
                Some(o) => Change::Upsert(o.clone()),
                None => Change::Delete(k.clone()),
            }
        };
        let mut retry = Retry::default();
        let first = retry.apply(
            &mut input,
            vec![Change::Upsert(pod("new", "10.0.0.1"))],
            want(&wanted),
        );
        assert_eq!(first.rejected.len(), 1);
        assert_eq!(retry.len(), 1);
        // The old pod's deletion comes in a later batch: the new pod is
        // retried with it, and taken.
        let second = retry.apply(&mut input, vec![Change::Delete(key("old"))], want(&wanted));
        assert!(second.rejected.is_empty(), "{:?}", second.rejected);
        assert_eq!(retry.len(), 0);
        assert_eq!(held(&input), ["new"]);
    }

    #[test]
    fn a_deletion_later_in_the_same_batch_lets_the_refused_change_in() {
        let mut input = MeshInput::new("cluster.local");
        input
            .apply(vec![Change::Upsert(pod("old", "10.0.0.1"))])
            .unwrap();
        let mut wanted: HashMap<Key, Object> = HashMap::new();
        wanted.insert(pod("new", "10.0.0.1").key(), pod("new", "10.0.0.1"));
        let mut retry = Retry::default();
        let w = wanted.clone();
        let applied = retry.apply(
            &mut input,
            vec![
                Change::Upsert(pod("new", "10.0.0.1")),
                Change::Delete(key("old")),
            ],
            move |k| match w.get(k) {
                Some(o) => Change::Upsert(o.clone()),
                None => Change::Delete(k.clone()),
            },
        );
        assert!(applied.rejected.is_empty());
        assert_eq!(held(&input), ["new"]);
    }
}
