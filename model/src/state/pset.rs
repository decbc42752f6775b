//! A persistent ordered set: a B+-tree whose nodes are shared behind
//! `Arc`s. Cloning one is O(1); an insert or a removal copies only the
//! nodes on the path to the changed leaf (O(log n), at most [`MAX`]
//! entries each), so a snapshot patched from the previous one shares
//! everything that did not change.
//!
//! ```text
//!  root ─ Branch [(first₀, ●), (first₁, ●), …]      each child's smallest
//!                   │           │                    entry, for the search
//!          Leaf [e, e, …]   Leaf [e, e, …]           ≤ MAX entries, sorted
//! ```
//!
//! Entries say how they are ordered ([`Keyed::cmp_key`]); lookups take a
//! probe that compares an entry with what is looked for, so a composite
//! key (`namespace, name`) is found from borrowed parts without
//! allocating. Every leaf is at the same depth. A node that a removal
//! leaves small is merged with a neighbour when both fit in one.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// Entries per leaf and children per branch, at most.
const MAX: usize = 32;
/// A node smaller than this after a removal is merged with a neighbour
/// when both fit in one.
const MIN: usize = MAX / 4;

/// How a [`PSet`] entry is ordered: by a key it holds. Two entries with
/// equal keys are the same element (an insert replaces).
pub trait Keyed: Clone {
    fn cmp_key(&self, other: &Self) -> Ordering;
}

/// A persistent ordered set of `E`, by [`Keyed::cmp_key`].
pub struct PSet<E> {
    root: Option<Arc<Node<E>>>,
    len: usize,
}

#[derive(Clone)]
enum Node<E> {
    Leaf(Vec<E>),
    /// Children in order, each with its smallest entry.
    Branch(Vec<(E, Arc<Node<E>>)>),
}

impl<E> Clone for PSet<E> {
    fn clone(&self) -> Self {
        PSet {
            root: self.root.clone(),
            len: self.len,
        }
    }
}

impl<E> Default for PSet<E> {
    fn default() -> Self {
        PSet { root: None, len: 0 }
    }
}

impl<E: fmt::Debug> fmt::Debug for PSet<E> {
    /// The entries in order: equal sets print the same, whatever their
    /// tree's shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<E: PartialEq> PartialEq for PSet<E> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<E: Eq> Eq for PSet<E> {}

impl<E: Keyed> FromIterator<E> for PSet<E> {
    fn from_iter<I: IntoIterator<Item = E>>(iter: I) -> Self {
        let mut set = PSet::default();
        for e in iter {
            set.insert(e);
        }
        set
    }
}

impl<E> Node<E> {
    fn first(&self) -> &E {
        match self {
            Node::Leaf(es) => &es[0],
            Node::Branch(cs) => &cs[0].0,
        }
    }

    fn size(&self) -> usize {
        match self {
            Node::Leaf(es) => es.len(),
            Node::Branch(cs) => cs.len(),
        }
    }
}

/// The child of a branch whose range holds what `probe` looks for: the
/// last one whose first entry is not greater; `None` before the first.
fn child_at<E>(cs: &[(E, Arc<Node<E>>)], probe: &impl Fn(&E) -> Ordering) -> Option<usize> {
    cs.partition_point(|(first, _)| probe(first) != Ordering::Greater)
        .checked_sub(1)
}

impl<E> PSet<E> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries in order.
    pub fn iter(&self) -> Iter<'_, E> {
        let mut it = Iter {
            stack: Vec::new(),
            leaf: [].iter(),
            left: self.len,
        };
        if let Some(root) = &self.root {
            it.descend(root);
        }
        it
    }

    /// The last entry for which `probe` is not `Greater`, where `probe`
    /// compares an entry with what is looked for (and so is monotonic in
    /// the set's order). With a probe that is `Equal` on a range of
    /// entries, the last of them.
    pub fn last_at_or_before(&self, probe: impl Fn(&E) -> Ordering) -> Option<&E> {
        let mut node = self.root.as_deref()?;
        loop {
            match node {
                Node::Leaf(es) => {
                    let i = es.partition_point(|e| probe(e) != Ordering::Greater);
                    return i.checked_sub(1).map(|i| &es[i]);
                }
                Node::Branch(cs) => node = &cs[child_at(cs, &probe)?].1,
            }
        }
    }

    /// The entry for which `probe` is `Equal` (the last, if several are).
    pub fn find(&self, probe: impl Fn(&E) -> Ordering) -> Option<&E> {
        self.last_at_or_before(&probe)
            .filter(|e| probe(e) == Ordering::Equal)
    }

    /// The entries for which `probe` is `Equal`, in order (a range: the
    /// probe is monotonic).
    pub fn range<'a>(&'a self, probe: impl Fn(&E) -> Ordering + 'a) -> impl Iterator<Item = &'a E> {
        let mut it = Iter {
            stack: Vec::new(),
            leaf: [].iter(),
            left: self.len,
        };
        if let Some(root) = &self.root {
            it.seek(root, &probe);
        }
        let probe = Arc::new(probe);
        let after = probe.clone();
        it.skip_while(move |e| probe(e) == Ordering::Less)
            .take_while(move |e| after(e) == Ordering::Equal)
    }
}

impl<E: Keyed> PSet<E> {
    /// Inserts `e`, replacing (and returning) the entry with its key.
    pub fn insert(&mut self, e: E) -> Option<E> {
        let Some(root) = &mut self.root else {
            self.root = Some(Arc::new(Node::Leaf(vec![e])));
            self.len = 1;
            return None;
        };
        let (old, split) = insert_in(root, e);
        if let Some(right) = split {
            let left = root.clone();
            *root = Arc::new(Node::Branch(vec![
                (left.first().clone(), left),
                (right.first().clone(), right),
            ]));
        }
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes (and returns) the entry for which `probe` is `Equal` (the
    /// last, if several are). Nothing is copied when there is none.
    pub fn remove_by(&mut self, probe: impl Fn(&E) -> Ordering) -> Option<E> {
        self.find(&probe)?;
        let root = self.root.as_mut()?;
        let old = remove_in(root, &probe)?;
        self.len -= 1;
        loop {
            match &**root {
                Node::Leaf(es) if es.is_empty() => {
                    self.root = None;
                    break;
                }
                Node::Branch(cs) if cs.len() == 1 => {
                    let only = cs[0].1.clone();
                    *root = only;
                }
                _ => break,
            }
        }
        Some(old)
    }

    /// Removes the entry with `e`'s key.
    pub fn remove_like(&mut self, e: &E) -> Option<E> {
        self.remove_by(|x| x.cmp_key(e))
    }
}

fn insert_in<E: Keyed>(node: &mut Arc<Node<E>>, e: E) -> (Option<E>, Option<Arc<Node<E>>>) {
    match Arc::make_mut(node) {
        Node::Leaf(es) => match es.binary_search_by(|x| x.cmp_key(&e)) {
            Ok(i) => (Some(std::mem::replace(&mut es[i], e)), None),
            Err(i) => {
                es.insert(i, e);
                if es.len() > MAX {
                    let right = es.split_off(es.len() / 2);
                    (None, Some(Arc::new(Node::Leaf(right))))
                } else {
                    (None, None)
                }
            }
        },
        Node::Branch(cs) => {
            let i = child_at(cs, &|x: &E| x.cmp_key(&e)).unwrap_or(0);
            let (old, split) = insert_in(&mut cs[i].1, e);
            cs[i].0 = cs[i].1.first().clone();
            if let Some(right) = split {
                cs.insert(i + 1, (right.first().clone(), right));
                if cs.len() > MAX {
                    let r = cs.split_off(cs.len() / 2);
                    return (old, Some(Arc::new(Node::Branch(r))));
                }
            }
            (old, None)
        }
    }
}

fn remove_in<E: Keyed>(node: &mut Arc<Node<E>>, probe: &impl Fn(&E) -> Ordering) -> Option<E> {
    match Arc::make_mut(node) {
        Node::Leaf(es) => {
            let i = es.partition_point(|e| probe(e) != Ordering::Greater);
            let i = i
                .checked_sub(1)
                .filter(|i| probe(&es[*i]) == Ordering::Equal)?;
            Some(es.remove(i))
        }
        Node::Branch(cs) => {
            let i = child_at(cs, probe)?;
            let old = remove_in(&mut cs[i].1, probe)?;
            match cs[i].1.size() {
                0 => {
                    cs.remove(i);
                }
                n if n < MIN => {
                    cs[i].0 = cs[i].1.first().clone();
                    merge_small(cs, i);
                }
                _ => cs[i].0 = cs[i].1.first().clone(),
            }
            Some(old)
        }
    }
}

/// Merges child `i` (small) into a neighbour when the two fit in one node.
fn merge_small<E: Clone>(cs: &mut Vec<(E, Arc<Node<E>>)>, i: usize) {
    let j = if i + 1 < cs.len() {
        i + 1
    } else if i > 0 {
        i - 1
    } else {
        return;
    };
    let (l, r) = (i.min(j), i.max(j));
    if cs[l].1.size() + cs[r].1.size() > MAX {
        return;
    }
    let (_, right) = cs.remove(r);
    let right = Arc::unwrap_or_clone(right);
    match (Arc::make_mut(&mut cs[l].1), right) {
        (Node::Leaf(a), Node::Leaf(b)) => a.extend(b),
        (Node::Branch(a), Node::Branch(b)) => a.extend(b),
        // Every leaf is at the same depth, so siblings are of one kind.
        _ => unreachable!("siblings of different depths"),
    }
}

/// The entries of a [`PSet`] in order.
pub struct Iter<'a, E> {
    stack: Vec<std::slice::Iter<'a, (E, Arc<Node<E>>)>>,
    leaf: std::slice::Iter<'a, E>,
    left: usize,
}

impl<'a, E> Iter<'a, E> {
    /// Walks down the leftmost path of `node`.
    fn descend(&mut self, mut node: &'a Node<E>) {
        loop {
            match node {
                Node::Leaf(es) => {
                    self.leaf = es.iter();
                    return;
                }
                Node::Branch(cs) => {
                    let mut it = cs.iter();
                    let Some((_, child)) = it.next() else {
                        return;
                    };
                    self.stack.push(it);
                    node = child;
                }
            }
        }
    }

    /// Walks down to the leaf where `probe` first stops being `Less`
    /// (the iterator may still yield a few entries before it).
    fn seek(&mut self, mut node: &'a Node<E>, probe: &impl Fn(&E) -> Ordering) {
        loop {
            match node {
                Node::Leaf(es) => {
                    let i = es.partition_point(|e| probe(e) == Ordering::Less);
                    self.leaf = es[i..].iter();
                    return;
                }
                Node::Branch(cs) => {
                    let i = cs
                        .partition_point(|(f, _)| probe(f) == Ordering::Less)
                        .saturating_sub(1);
                    let mut it = cs[i..].iter();
                    let Some((_, child)) = it.next() else {
                        return;
                    };
                    self.stack.push(it);
                    node = child;
                }
            }
        }
    }
}

impl<'a, E> Iterator for Iter<'a, E> {
    type Item = &'a E;

    fn next(&mut self) -> Option<&'a E> {
        loop {
            if let Some(e) = self.leaf.next() {
                self.left = self.left.saturating_sub(1);
                return Some(e);
            }
            let (_, child) = loop {
                let top = self.stack.last_mut()?;
                match top.next() {
                    Some(c) => break c,
                    None => {
                        self.stack.pop();
                    }
                }
            };
            self.descend(child);
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// `(key, value)`, ordered by key.
    #[derive(Debug, Clone, PartialEq)]
    struct Kv(u16, u32);

    impl Keyed for Kv {
        fn cmp_key(&self, other: &Self) -> Ordering {
            self.0.cmp(&other.0)
        }
    }

    /// Every leaf at one depth, nodes within bounds, separators right.
    fn check<E: Keyed + fmt::Debug>(node: &Node<E>, depth: usize, leaves: &mut Vec<usize>) {
        assert!(node.size() <= MAX);
        match node {
            Node::Leaf(es) => {
                assert!(!es.is_empty());
                assert!(es.windows(2).all(|w| w[0].cmp_key(&w[1]).is_lt()));
                leaves.push(depth);
            }
            Node::Branch(cs) => {
                assert!(!cs.is_empty());
                for (first, child) in cs {
                    assert!(first.cmp_key(child.first()).is_eq());
                    check(child, depth + 1, leaves);
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..600, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => (0u16..600).prop_map(Op::Remove),
            1 => Just(Op::Snapshot),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The set behaves as a `BTreeMap`, and a clone taken at any
        /// point keeps what it held while the original changes.
        #[test]
        fn behaves_as_a_btreemap_and_clones_stay_as_they_were(ops in prop::collection::vec(op(), 1..1500)) {
            let mut set = PSet::default();
            let mut model = BTreeMap::new();
            let mut kept: Vec<(PSet<Kv>, BTreeMap<u16, u32>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let old = set.insert(Kv(k, v)).map(|kv| kv.1);
                        prop_assert_eq!(old, model.insert(k, v));
                    }
                    Op::Remove(k) => {
                        let old = set.remove_by(|e: &Kv| e.0.cmp(&k)).map(|kv| kv.1);
                        prop_assert_eq!(old, model.remove(&k));
                    }
                    Op::Snapshot => kept.push((set.clone(), model.clone())),
                }
                prop_assert_eq!(set.len(), model.len());
            }
            kept.push((set, model));
            for (set, model) in kept {
                let got: Vec<(u16, u32)> = set.iter().map(|kv| (kv.0, kv.1)).collect();
                let want: Vec<(u16, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(got, want);
                let mut leaves = Vec::new();
                if let Some(root) = &set.root {
                    check(root, 0, &mut leaves);
                }
                prop_assert!(leaves.windows(2).all(|w| w[0] == w[1]), "leaves at depths {:?}", leaves);
                for k in (0..600).step_by(7) {
                    prop_assert_eq!(set.find(|e| e.0.cmp(&k)).map(|e| e.1), model.get(&k).copied());
                    let lo = k.saturating_sub(20);
                    let hi = k;
                    let got: Vec<u16> = set
                        .range(move |e: &Kv| if e.0 < lo { Ordering::Less } else if e.0 > hi { Ordering::Greater } else { Ordering::Equal })
                        .map(|e| e.0)
                        .collect();
                    let want: Vec<u16> = model.range(lo..=hi).map(|(k, _)| *k).collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }

    #[test]
    fn a_change_copies_only_its_path() {
        let set: PSet<Kv> = (0..10_000).map(|k| Kv(k, 0)).collect();
        let mut next = set.clone();
        next.insert(Kv(5_000, 1));
        // Every leaf but the changed one is shared.
        let leaves = |s: &PSet<Kv>| {
            let mut out = Vec::new();
            let mut todo = vec![s.root.clone().unwrap()];
            while let Some(n) = todo.pop() {
                match &*n {
                    Node::Leaf(_) => out.push(Arc::as_ptr(&n)),
                    Node::Branch(cs) => todo.extend(cs.iter().map(|c| c.1.clone())),
                }
            }
            out
        };
        let (a, b) = (leaves(&set), leaves(&next));
        assert_eq!(a.len(), b.len());
        let shared = a.iter().filter(|p| b.contains(p)).count();
        assert_eq!(shared, a.len() - 1);
        assert_eq!(set.find(|e| e.0.cmp(&5_000)).unwrap().1, 0);
        assert_eq!(next.find(|e| e.0.cmp(&5_000)).unwrap().1, 1);
    }
}
