//! A bounded channel -> subscribers cache in front of the trie walk.
//!
//! Publishers tend to hit the same few channels over and over, so a hit saves
//! the walk, the sort and the allocation. Entries are shared `Rc`s, so the
//! reactor can hold a result while the trie changes underneath it.

use std::collections::HashMap;
use std::rc::Rc;

use super::subject::{is_literal, pattern_matches};
use super::trie::SubscriberId;

pub(super) struct MatchCache {
    capacity: usize,
    entries: HashMap<Box<str>, Rc<[SubscriberId]>>,
}

impl MatchCache {
    /// A capacity of 0 disables the cache: nothing is ever stored.
    pub(super) fn new(capacity: usize) -> Self {
        MatchCache {
            capacity,
            entries: HashMap::new(),
        }
    }

    pub(super) fn get(&self, channel: &str) -> Option<Rc<[SubscriberId]>> {
        self.entries.get(channel).cloned()
    }

    pub(super) fn put(&mut self, channel: &str, subscribers: Rc<[SubscriberId]>) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            // Table order follows the randomly seeded hash, so the first key
            // is an arbitrary victim; cheaper than tracking recency and it
            // keeps the rest of the cache warm, unlike clearing it all.
            let victim = self.entries.keys().next().cloned();
            if let Some(victim) = victim {
                self.entries.remove(&victim);
            }
        }
        self.entries.insert(channel.into(), subscribers);
    }

    /// Drops every entry whose subscribers a change to `pattern` may alter.
    pub(super) fn invalidate(&mut self, pattern: &str) {
        if self.entries.is_empty() {
            return;
        }
        // A literal pattern matches one channel, so a mass unsubscribe from a
        // busy channel costs one lookup each instead of a scan of the cache.
        if is_literal(pattern) {
            self.entries.remove(pattern);
        } else {
            self.entries
                .retain(|channel, _| !pattern_matches(pattern, channel));
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[SubscriberId]) -> Rc<[SubscriberId]> {
        Rc::from(v)
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut cache = MatchCache::new(0);
        cache.put("a", ids(&[1]));
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn stays_within_capacity() {
        let mut cache = MatchCache::new(3);
        for (i, channel) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            cache.put(channel, ids(&[i as SubscriberId]));
            assert!(cache.len() <= 3);
        }
        // The newest entry always survives its own insertion.
        assert_eq!(cache.get("e").as_deref(), Some(&[4][..]));
    }

    #[test]
    fn invalidates_only_what_the_pattern_matches() {
        let mut cache = MatchCache::new(8);
        for channel in ["job.a", "job.b", "job.a.x", "alert.a"] {
            cache.put(channel, ids(&[]));
        }
        cache.invalidate("job.*");
        assert!(cache.get("job.a").is_none());
        assert!(cache.get("job.b").is_none());
        assert!(cache.get("job.a.x").is_some());
        assert!(cache.get("alert.a").is_some());

        cache.invalidate("alert.a");
        assert!(cache.get("alert.a").is_none());
        assert!(cache.get("job.a.x").is_some());

        cache.invalidate(">");
        assert_eq!(cache.len(), 0);
    }
}
