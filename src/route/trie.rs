//! The subscription trie: which subscribers want an event on a channel.
//!
//! Modelled on the NATS sublist: one node per pattern segment, literal
//! children in a map, and the two wildcards in dedicated fields so a lookup
//! costs at most three probes per segment. Nodes are pruned as soon as they
//! hold nothing, so memory follows the live subscriptions.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::iter::Peekable;
use std::rc::Rc;
use std::str::Split;

use super::cache::MatchCache;

/// Identifies one subscriber (a socket) to the caller; opaque to the trie.
pub type SubscriberId = u32;

/// Maps patterns to subscribers and channels to the subscribers they reach.
pub struct SubscriptionTrie {
    root: Node,
    count: usize,
    cache: MatchCache,
}

impl SubscriptionTrie {
    /// A `cache_capacity` of 0 disables the match cache.
    pub fn new(cache_capacity: usize) -> Self {
        SubscriptionTrie {
            root: Node::default(),
            count: 0,
            cache: MatchCache::new(cache_capacity),
        }
    }

    /// Adds `id` under `pattern`, which the caller has validated. Returns
    /// false if that exact pair was already present.
    pub fn insert(&mut self, pattern: &str, id: SubscriberId) -> bool {
        let added = self.root.subscribers_mut(pattern).insert(id);
        if added {
            self.count += 1;
            self.cache.invalidate(pattern);
        }
        added
    }

    /// Removes `id` from `pattern`. Returns false if the pair was absent.
    pub fn remove(&mut self, pattern: &str, id: SubscriberId) -> bool {
        let removed = self.root.remove(&mut pattern.split('.').peekable(), id);
        if removed {
            self.count -= 1;
            self.cache.invalidate(pattern);
        }
        removed
    }

    /// Every subscriber with at least one pattern matching `channel`, each
    /// once, in ascending order.
    pub fn matches(&mut self, channel: &str) -> Rc<[SubscriberId]> {
        if let Some(hit) = self.cache.get(channel) {
            return hit;
        }
        let mut runs = Runs::default();
        self.root.collect(Some(channel), &mut runs);
        let found: Rc<[SubscriberId]> = runs.merge().into();
        self.cache.put(channel, Rc::clone(&found));
        found
    }

    /// The number of (pattern, subscriber) pairs.
    pub fn subscription_count(&self) -> usize {
        self.count
    }

    /// True when no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.root.descendants()
    }
}

impl Default for SubscriptionTrie {
    fn default() -> Self {
        SubscriptionTrie::new(1024)
    }
}

impl fmt::Debug for SubscriptionTrie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("subscriptions", &self.count)
            .finish_non_exhaustive()
    }
}

/// Kept at 40 bytes: a busy server has one node per distinct channel, often
/// one per connection (`user.1234`), so every field is boxed or lazily made.
#[derive(Default)]
struct Node {
    // Boxed on purpose: 8 bytes in a leaf instead of an empty map's 48.
    #[allow(clippy::box_collection)]
    children: Option<Box<HashMap<Box<str>, Node>>>,
    /// The child for a `*` segment.
    star: Option<Box<Node>>,
    /// Subscribers of `<path to here>.>`; `>` is always last, so no children.
    full: Option<Box<IdSet>>,
    /// Subscribers of the pattern that ends at this node.
    subs: IdSet,
}

type Segments<'a> = Peekable<Split<'a, char>>;

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_none()
            && self.star.is_none()
            && self.full.is_none()
            && self.subs.is_empty()
    }

    /// The subscriber set for `pattern`, creating the path to it.
    fn subscribers_mut(&mut self, pattern: &str) -> &mut IdSet {
        let mut node = self;
        let mut segments = pattern.split('.').peekable();
        while let Some(segment) = segments.next() {
            if segment == ">" && segments.peek().is_none() {
                return node.full.get_or_insert_with(Default::default);
            }
            node = node.child_mut(segment);
        }
        &mut node.subs
    }

    fn child_mut(&mut self, segment: &str) -> &mut Node {
        if segment == "*" {
            return self.star.get_or_insert_with(Default::default);
        }
        let children = self.children.get_or_insert_with(Default::default);
        // Look up before inserting so an existing path allocates no key.
        if !children.contains_key(segment) {
            return children.entry(segment.into()).or_default();
        }
        children
            .get_mut(segment)
            .expect("bug: child vanished between two lookups")
    }

    /// Removes `id` at the end of `segments`, pruning nodes left empty.
    fn remove(&mut self, segments: &mut Segments<'_>, id: SubscriberId) -> bool {
        let Some(segment) = segments.next() else {
            return self.subs.remove(id);
        };
        if segment == ">" && segments.peek().is_none() {
            let Some(full) = self.full.as_mut() else {
                return false;
            };
            let removed = full.remove(id);
            if full.is_empty() {
                self.full = None;
            }
            return removed;
        }
        if segment == "*" {
            let Some(star) = self.star.as_mut() else {
                return false;
            };
            let removed = star.remove(segments, id);
            if star.is_empty() {
                self.star = None;
            }
            return removed;
        }
        let Some(children) = self.children.as_mut() else {
            return false;
        };
        let Some(child) = children.get_mut(segment) else {
            return false;
        };
        let removed = child.remove(segments, id);
        if child.is_empty() {
            children.remove(segment);
            if children.is_empty() {
                self.children = None;
            }
        }
        removed
    }

    /// Appends the subscribers matching `rest`, the unmatched tail of the
    /// channel (`None` once every segment is consumed). Splits lazily so a
    /// lookup allocates nothing but `out`.
    fn collect(&self, rest: Option<&str>, out: &mut Runs) {
        let Some(rest) = rest else {
            out.push(&self.subs);
            return;
        };
        // At least one segment remains, which is all `>` asks for.
        if let Some(full) = &self.full {
            out.push(full);
        }
        let (segment, tail) = match rest.split_once('.') {
            Some((segment, tail)) => (segment, Some(tail)),
            None => (rest, None),
        };
        if let Some(child) = self.children.as_ref().and_then(|c| c.get(segment)) {
            child.collect(tail, out);
        }
        if let Some(star) = &self.star {
            star.collect(tail, out);
        }
    }

    #[cfg(test)]
    fn descendants(&self) -> usize {
        let children = self.children.iter().flat_map(|c| c.values());
        children
            .chain(self.star.as_deref())
            .map(|child| 1 + child.descendants())
            .sum()
    }
}

/// Up to this many ids a sorted vector is the smallest set, at 4 bytes an id.
const SMALL_MAX: usize = 16;
/// Below this a large set goes back to a vector; the gap to `SMALL_MAX` stops
/// a set hovering at the boundary from converting on every change.
const SMALL_RETURN: usize = 8;

/// The subscribers of one node, always iterated in ascending order so a
/// lookup that hits a single node needs no sort.
///
/// A hot channel can hold 100k subscribers and a mass disconnect removes them
/// one by one, so large sets are a bitmap paged by a `BTreeMap`: O(log n)
/// insert and remove, emptied pages freed at once, and under half a byte an id
/// while ids are dense (socket slab keys are). Scattered ids cost ~16 bytes.
enum IdSet {
    /// Sorted and exactly sized; reallocating 64 bytes at most per change is
    /// cheaper than carrying a capacity word in every node.
    Small(Box<[SubscriberId]>),
    Large(Box<Pages>),
}

#[derive(Default)]
struct Pages {
    len: usize,
    /// Page `p` holds ids `64 * p .. 64 * p + 64`, one bit each; never zero.
    words: BTreeMap<u32, u64>,
}

impl Default for IdSet {
    fn default() -> Self {
        IdSet::Small(Box::default())
    }
}

impl IdSet {
    fn is_empty(&self) -> bool {
        match self {
            IdSet::Small(ids) => ids.is_empty(),
            IdSet::Large(pages) => pages.len == 0,
        }
    }

    fn insert(&mut self, id: SubscriberId) -> bool {
        match self {
            IdSet::Small(ids) => match ids.binary_search(&id) {
                Ok(_) => false,
                Err(at) if ids.len() < SMALL_MAX => {
                    *ids = ids[..at]
                        .iter()
                        .chain([&id])
                        .chain(&ids[at..])
                        .copied()
                        .collect();
                    true
                }
                Err(_) => {
                    let mut pages = Pages::default();
                    for &old in ids.iter().chain([&id]) {
                        pages.insert(old);
                    }
                    *self = IdSet::Large(Box::new(pages));
                    true
                }
            },
            IdSet::Large(pages) => pages.insert(id),
        }
    }

    fn remove(&mut self, id: SubscriberId) -> bool {
        match self {
            IdSet::Small(ids) => match ids.binary_search(&id) {
                Ok(at) => {
                    *ids = ids[..at].iter().chain(&ids[at + 1..]).copied().collect();
                    true
                }
                Err(_) => false,
            },
            IdSet::Large(pages) => {
                let removed = pages.remove(id);
                if pages.len < SMALL_RETURN {
                    let mut ids = Vec::with_capacity(pages.len);
                    pages.extend_into(&mut ids);
                    *self = IdSet::Small(ids.into_boxed_slice());
                }
                removed
            }
        }
    }

    fn extend_into(&self, out: &mut Vec<SubscriberId>) {
        match self {
            IdSet::Small(ids) => out.extend_from_slice(ids),
            IdSet::Large(pages) => pages.extend_into(out),
        }
    }
}

impl Pages {
    fn insert(&mut self, id: SubscriberId) -> bool {
        let word = self.words.entry(id / 64).or_default();
        let bit = 1 << (id % 64);
        let added = *word & bit == 0;
        *word |= bit;
        self.len += usize::from(added);
        added
    }

    fn remove(&mut self, id: SubscriberId) -> bool {
        let Some(word) = self.words.get_mut(&(id / 64)) else {
            return false;
        };
        let bit = 1 << (id % 64);
        if *word & bit == 0 {
            return false;
        }
        *word &= !bit;
        if *word == 0 {
            self.words.remove(&(id / 64));
        }
        self.len -= 1;
        true
    }

    fn extend_into(&self, out: &mut Vec<SubscriberId>) {
        out.reserve(self.len);
        for (&page, &word) in &self.words {
            let mut rest = word;
            while rest != 0 {
                out.push(page * 64 + rest.trailing_zeros());
                rest &= rest - 1;
            }
        }
    }
}

/// The ids a lookup gathered: one ascending, duplicate-free run per matching
/// node, laid end to end.
#[derive(Default)]
struct Runs {
    ids: Vec<SubscriberId>,
    ends: Vec<usize>,
}

/// Past this many runs a sort beats merging them one by one.
const MAX_MERGED_RUNS: usize = 8;

impl Runs {
    fn push(&mut self, set: &IdSet) {
        if !set.is_empty() {
            set.extend_into(&mut self.ids);
            self.ends.push(self.ids.len());
        }
    }

    /// Every id once, ascending. Overlapping patterns put one subscriber in
    /// several runs, and the protocol promises one delivery per event.
    fn merge(mut self) -> Vec<SubscriberId> {
        if self.ends.len() <= 1 {
            return self.ids;
        }
        if self.ends.len() > MAX_MERGED_RUNS {
            self.ids.sort_unstable();
            self.ids.dedup();
            return self.ids;
        }
        let mut start = 0;
        let mut runs: Vec<&[SubscriberId]> = Vec::with_capacity(self.ends.len());
        for &end in &self.ends {
            runs.push(&self.ids[start..end]);
            start = end;
        }
        // Shortest first, so the big run of a hot channel is copied once.
        runs.sort_unstable_by_key(|run| run.len());
        runs.iter()
            .fold(Vec::new(), |merged, run| merge_two(&merged, run))
    }
}

fn merge_two(a: &[SubscriberId], b: &[SubscriberId]) -> Vec<SubscriberId> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
        out.push(x.min(y));
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use super::super::subject::pattern_matches;
    use super::super::subject::tests::{channel, pattern};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn ids(trie: &mut SubscriptionTrie, channel: &str) -> Vec<SubscriberId> {
        trie.matches(channel).to_vec()
    }

    #[test]
    fn protocol_examples() {
        for cache in [0, 16] {
            let mut trie = SubscriptionTrie::new(cache);
            trie.insert("job.*", 1);
            trie.insert("index.>", 2);
            trie.insert(">", 3);
            trie.insert("*.*", 4);
            assert_eq!(ids(&mut trie, "job.progress"), [1, 3, 4]);
            assert_eq!(ids(&mut trie, "job.a.b"), [3]);
            assert_eq!(
                ids(&mut trie, "index.production-vectors.shard_transition"),
                [2, 3]
            );
            assert_eq!(ids(&mut trie, "index"), [3]);
            assert_eq!(ids(&mut trie, "index.a"), [2, 3, 4]);
        }
    }

    #[test]
    fn duplicates_and_absent_pairs_are_reported() {
        let mut trie = SubscriptionTrie::default();
        assert!(trie.is_empty());
        assert!(trie.insert("a.b", 7));
        assert!(!trie.insert("a.b", 7));
        assert!(trie.insert("a.b", 8));
        assert!(trie.insert("a.>", 7));
        assert_eq!(trie.subscription_count(), 3);
        assert!(!trie.remove("a.b", 9));
        assert!(!trie.remove("a.c", 7));
        assert!(!trie.remove("a.*", 7));
        assert!(trie.remove("a.b", 7));
        assert!(!trie.remove("a.b", 7));
        assert_eq!(trie.subscription_count(), 2);
        assert_eq!(ids(&mut trie, "a.b"), [7, 8]);
        assert!(!trie.is_empty());
    }

    #[test]
    fn overlapping_patterns_deliver_once_in_order() {
        let mut trie = SubscriptionTrie::new(0);
        for pattern in ["job.progress", "job.*", "job.>", ">", "*.progress"] {
            trie.insert(pattern, 5);
            trie.insert(pattern, 2);
        }
        trie.insert("job.other", 1);
        assert_eq!(ids(&mut trie, "job.progress"), [2, 5]);
        assert_eq!(ids(&mut trie, "job.other"), [1, 2, 5]);
    }

    #[test]
    fn removing_everything_prunes_every_node() {
        let patterns = [
            "a", "a.b", "a.b.c", "a.*.c", "*.>", ">", "a.>", "*", "x.y.z.w",
        ];
        let mut trie = SubscriptionTrie::new(4);
        for (id, pattern) in patterns.iter().enumerate() {
            trie.insert(pattern, id as SubscriberId);
        }
        assert!(trie.node_count() > 0);
        for (id, pattern) in patterns.iter().enumerate().rev() {
            assert!(trie.remove(pattern, id as SubscriberId), "{pattern}");
        }
        assert_eq!(trie.node_count(), 0);
        assert!(trie.is_empty());
        assert!(trie.root.is_empty());
    }

    #[test]
    fn partial_removal_keeps_shared_prefixes() {
        let mut trie = SubscriptionTrie::new(0);
        trie.insert("a.b.c", 1);
        trie.insert("a.b", 2);
        assert_eq!(trie.node_count(), 3);
        trie.remove("a.b.c", 1);
        assert_eq!(trie.node_count(), 2);
        assert_eq!(ids(&mut trie, "a.b"), [2]);
    }

    #[test]
    fn cached_results_follow_changes() {
        let mut trie = SubscriptionTrie::new(8);
        trie.insert("job.a", 1);
        assert_eq!(ids(&mut trie, "job.a"), [1]);
        assert_eq!(ids(&mut trie, "job.b"), Vec::<SubscriberId>::new());
        trie.insert("job.*", 2);
        assert_eq!(ids(&mut trie, "job.a"), [1, 2]);
        assert_eq!(ids(&mut trie, "job.b"), [2]);
        trie.remove("job.a", 1);
        assert_eq!(ids(&mut trie, "job.a"), [2]);
        trie.remove("job.*", 2);
        assert_eq!(ids(&mut trie, "job.a"), Vec::<SubscriberId>::new());
        assert_eq!(ids(&mut trie, "job.b"), Vec::<SubscriberId>::new());
    }

    #[test]
    fn a_hot_channel_grows_and_drains() {
        let mut trie = SubscriptionTrie::new(4);
        let n: SubscriberId = 100_000;
        for id in (0..n).rev() {
            assert!(trie.insert("hot", id));
        }
        assert!(!trie.insert("hot", 500));
        let all = trie.matches("hot");
        assert_eq!(all.len(), n as usize);
        assert!(all.iter().copied().eq(0..n));
        // Drain to just below the small-set threshold and check what is left.
        for id in SMALL_RETURN as SubscriberId - 1..n {
            assert!(trie.remove("hot", id));
        }
        assert!(matches!(
            trie.root.children.as_ref().unwrap()["hot"].subs,
            IdSet::Small(_)
        ));
        assert_eq!(
            ids(&mut trie, "hot"),
            (0..SMALL_RETURN as SubscriberId - 1).collect::<Vec<_>>()
        );
        for id in 0..SMALL_RETURN as SubscriberId - 1 {
            assert!(trie.remove("hot", id));
        }
        assert_eq!(trie.node_count(), 0);
    }

    /// Validation rejects `a.>.b`, but if one slips through, the trie must
    /// still agree with `pattern_matches` (and so with cache invalidation).
    #[test]
    fn an_inner_full_wildcard_is_a_literal() {
        let mut trie = SubscriptionTrie::new(4);
        trie.insert("a.>.b", 1);
        assert_eq!(ids(&mut trie, "a.x.b"), Vec::<SubscriberId>::new());
        assert_eq!(ids(&mut trie, "a.>.b"), [1]);
        assert!(!pattern_matches("a.>.b", "a.x.b"));
        assert!(trie.remove("a.>.b", 1));
        assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn nodes_stay_small() {
        assert!(std::mem::size_of::<Node>() <= 40);
        assert!(std::mem::size_of::<IdSet>() <= 16);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, SubscriberId),
        Remove(String, SubscriberId),
        Match(String),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (pattern(), 0..4 as SubscriberId).prop_map(|(p, id)| Op::Insert(p, id)),
            (pattern(), 0..4 as SubscriberId).prop_map(|(p, id)| Op::Remove(p, id)),
            channel().prop_map(Op::Match),
        ]
    }

    /// Replays `ops` on a trie and on a plain set checked with the naive matcher.
    fn check_against_model(ops: &[Op], cache: usize) -> Result<(), TestCaseError> {
        let mut trie = SubscriptionTrie::new(cache);
        let mut model: BTreeSet<(String, SubscriberId)> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Insert(p, id) => {
                    prop_assert_eq!(trie.insert(p, *id), model.insert((p.clone(), *id)));
                }
                Op::Remove(p, id) => {
                    prop_assert_eq!(trie.remove(p, *id), model.remove(&(p.clone(), *id)));
                }
                Op::Match(c) => {
                    let expected: BTreeSet<SubscriberId> = model
                        .iter()
                        .filter(|(p, _)| pattern_matches(p, c))
                        .map(|&(_, id)| id)
                        .collect();
                    let got = trie.matches(c);
                    prop_assert!(
                        got.iter().eq(expected.iter()),
                        "{c}: {got:?} vs {expected:?}"
                    );
                }
            }
            prop_assert_eq!(trie.subscription_count(), model.len());
        }
        for (p, id) in &model {
            prop_assert!(trie.remove(p, *id));
        }
        prop_assert_eq!(trie.node_count(), 0);
        prop_assert!(trie.is_empty());
        Ok(())
    }

    proptest! {
        #[test]
        fn trie_agrees_with_naive_model(ops in prop::collection::vec(op(), 0..80)) {
            check_against_model(&ops, 0)?;
            check_against_model(&ops, 4)?;
        }

        /// Crosses the small/large boundary in both directions many times,
        /// over ids spanning several bitmap pages.
        #[test]
        fn id_set_agrees_with_model(ops in prop::collection::vec((any::<bool>(), 0..200 as SubscriberId), 0..400)) {
            let mut set = IdSet::default();
            let mut model = BTreeSet::new();
            for (insert, id) in ops {
                if insert {
                    prop_assert_eq!(set.insert(id), model.insert(id));
                } else {
                    prop_assert_eq!(set.remove(id), model.remove(&id));
                }
                // No sort here: sets must already yield ascending ids.
                let mut got = Vec::new();
                set.extend_into(&mut got);
                prop_assert!(got.iter().eq(model.iter()), "{:?} vs {:?}", got, model);
                prop_assert_eq!(set.is_empty(), model.is_empty());
            }
        }

        #[test]
        fn merged_runs_are_the_sorted_union(
            sets in prop::collection::vec(prop::collection::btree_set(0..100 as SubscriberId, 0..40), 0..12)
        ) {
            let mut runs = Runs::default();
            for ids in &sets {
                runs.ids.extend(ids);
                runs.ends.push(runs.ids.len());
            }
            let union: BTreeSet<SubscriberId> = sets.iter().flatten().copied().collect();
            let merged = runs.merge();
            prop_assert!(merged.iter().eq(union.iter()), "{:?}", merged);
        }
    }
}
