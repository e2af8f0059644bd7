//! Sequences of subscribe / unsubscribe / publish / close against the trie,
//! checked after every publish against a naive model.
#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tidings::route::{pattern_matches, validate_channel, validate_pattern, SubjectLimits, SubscriptionTrie};

const SEGMENTS: [&str; 6] = ["a", "b", "c", "*", ">", "job"];

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe { id: u8, pattern: Vec<u8> },
    Unsubscribe { id: u8, pattern: Vec<u8> },
    Publish { channel: Vec<u8> },
    Close { id: u8 },
}

fn subject(picks: &[u8]) -> String {
    let parts: Vec<&str> = picks
        .iter()
        .take(5)
        .map(|p| SEGMENTS[usize::from(*p) % SEGMENTS.len()])
        .collect();
    parts.join(".")
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (cached, ops) = input;
    let limits = SubjectLimits { max_length: 255, max_segments: 16 };
    let mut trie = SubscriptionTrie::new(if cached { 4 } else { 0 });
    let mut model: BTreeSet<(String, u32)> = BTreeSet::new();
    for op in ops.into_iter().take(200) {
        match op {
            Op::Subscribe { id, pattern } => {
                let pattern = subject(&pattern);
                if validate_pattern(&pattern, &limits).is_ok() {
                    let added = trie.insert(&pattern, u32::from(id));
                    assert_eq!(added, model.insert((pattern, u32::from(id))));
                }
            }
            Op::Unsubscribe { id, pattern } => {
                let pattern = subject(&pattern);
                if validate_pattern(&pattern, &limits).is_ok() {
                    let removed = trie.remove(&pattern, u32::from(id));
                    assert_eq!(removed, model.remove(&(pattern, u32::from(id))));
                }
            }
            Op::Close { id } => {
                let held: Vec<String> = model
                    .iter()
                    .filter(|(_, i)| *i == u32::from(id))
                    .map(|(p, _)| p.clone())
                    .collect();
                for pattern in held {
                    assert!(trie.remove(&pattern, u32::from(id)));
                    model.remove(&(pattern, u32::from(id)));
                }
            }
            Op::Publish { channel } => {
                let channel = subject(&channel);
                if validate_channel(&channel, &limits).is_ok() {
                    let expected: BTreeSet<u32> = model
                        .iter()
                        .filter(|(p, _)| pattern_matches(p, &channel))
                        .map(|(_, id)| *id)
                        .collect();
                    let got: Vec<u32> = trie.matches(&channel).to_vec();
                    let got_set: BTreeSet<u32> = got.iter().copied().collect();
                    assert_eq!(got.len(), got_set.len(), "each subscriber once");
                    assert_eq!(got_set, expected, "channel {channel}");
                }
            }
        }
        assert_eq!(trie.subscription_count(), model.len());
    }
});
