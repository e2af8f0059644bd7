//! Byte scans for the two numbers the swarm needs from an event, without
//! parsing JSON: the relay's `"seq":N` and the publisher's `"t":<unix µs>`.
//! This runs once per delivery, millions of times a second, so the searches
//! are SIMD (`memchr::memmem`) with finders built once.

use memchr::memmem::Finder;
use std::sync::OnceLock;

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(hay, needle)
}

/// The unsigned integer that follows `key` (after optional spaces), and the
/// index just past it.
pub fn uint_after(hay: &[u8], key: &[u8]) -> Option<(u64, usize)> {
    digits_at(hay, find(hay, key)? + key.len())
}

/// `uint_after` with a prebuilt finder.
fn uint_after_found(hay: &[u8], key: &Finder<'static>) -> Option<(u64, usize)> {
    digits_at(hay, key.find(hay)? + key.needle().len())
}

/// The unsigned integer at `at` (after optional spaces), and the index just
/// past it.
fn digits_at(hay: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut i = at;
    while hay.get(i) == Some(&b' ') {
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    // Eight digits per step while they last (timestamps have sixteen), then
    // one at a time.
    while let Some(word) = hay.get(i..i + 8).and_then(|c| c.try_into().ok()) {
        let word = u64::from_le_bytes(word);
        if !eight_digits(word) {
            break;
        }
        v = v.checked_mul(100_000_000)?.checked_add(parse_eight(word))?;
        i += 8;
    }
    while let Some(d) = hay.get(i).filter(|b| b.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    (i > start).then_some((v, i))
}

/// Whether all eight bytes (little-endian) are ASCII digits: every high
/// nibble is 3, and adding 6 to the low one does not carry into it.
fn eight_digits(word: u64) -> bool {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    (word & HIGH) | ((word.wrapping_add(0x0606_0606_0606_0606) & HIGH) >> 4)
        == 0x3333_3333_3333_3333
}

/// The value of eight ASCII digits read little-endian (first digit in the
/// lowest byte): pairs, then quads, then the whole, by multiplication.
fn parse_eight(word: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let mut v = word.wrapping_sub(0x3030_3030_3030_3030);
    v = v.wrapping_mul(10).wrapping_add(v >> 8);
    (((v & MASK).wrapping_mul(MUL1)).wrapping_add(((v >> 16) & MASK).wrapping_mul(MUL2))) >> 32
}

const SEQ: &[u8] = b"\"seq\":";
const T: &[u8] = b"\"t\":";

/// `seq` and the publisher timestamp `t` of an event payload (or prefix).
/// `t` is looked for after `seq` (the relay puts `data` last) and, failing
/// that, anywhere.
#[cfg(test)]
pub fn event_fields(payload: &[u8]) -> (Option<u64>, Option<u64>) {
    FieldScanner::default().fields(payload)
}

/// `event_fields` that remembers where the keys were. Frames from one server
/// on one channel share a layout, so each frame is first checked at the
/// previous frame's offsets (two short compares) and searched only when
/// that misses.
#[derive(Debug, Default)]
pub struct FieldScanner {
    /// Where `"seq":` started.
    seq_at: usize,
    /// Where `"t":` started, counted from the end of the seq digits.
    t_after_seq: usize,
}

impl FieldScanner {
    pub fn fields(&mut self, payload: &[u8]) -> (Option<u64>, Option<u64>) {
        static FINDERS: OnceLock<(Finder<'static>, Finder<'static>)> = OnceLock::new();
        let (seq_key, t_key) = FINDERS.get_or_init(|| (Finder::new(SEQ), Finder::new(T)));
        let t_anywhere = || uint_after_found(payload, t_key).map(|(t, _)| t);
        let seq_at = if key_at(payload, self.seq_at, SEQ) {
            self.seq_at
        } else {
            match seq_key.find(payload) {
                Some(i) => {
                    self.seq_at = i;
                    i
                }
                None => return (None, t_anywhere()),
            }
        };
        let Some((seq, end)) = digits_at(payload, seq_at + SEQ.len()) else {
            return (None, t_anywhere());
        };
        let guess = end + self.t_after_seq;
        let t = if key_at(payload, guess, T) {
            digits_at(payload, guess + T.len()).map(|(t, _)| t)
        } else {
            match t_key.find(&payload[end..]) {
                Some(i) => {
                    self.t_after_seq = i;
                    digits_at(payload, end + i + T.len()).map(|(t, _)| t)
                }
                None => t_anywhere(),
            }
        };
        (Some(seq), t)
    }
}

/// A relay message that is not an event. Replies can carry a `"seq":` of
/// their own (`subscribed`, and `resync` inside its `data`), so an event is
/// told from them by its `type` before its `seq` is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Subscribed,
    Unsubscribed,
    Resync,
    Error,
    Pong,
    Authenticated,
}

const TYPE_PREFIX: &[u8] = b"{\"type\":\"";

/// Which reply `payload` is, or `None` for an event. The relay writes
/// `{"type":"` first, so an event costs one 9-byte compare and one byte
/// match (a channel that starts with another letter than the replies' is
/// rejected there); other layouts fall back to a search. An event whose
/// `type` is a reply's name (a channel called `resync`) is taken for the
/// reply: the swarm's channels must not be named so.
pub fn reply_kind(payload: &[u8]) -> Option<Reply> {
    let name = match payload.strip_prefix(TYPE_PREFIX) {
        Some(rest) => rest,
        None => {
            let key = &TYPE_PREFIX[1..];
            &payload[find(payload, key)? + key.len()..]
        }
    };
    let (kind, word): (Reply, &[u8]) = match name.first()? {
        b's' => (Reply::Subscribed, b"subscribed\""),
        b'u' => (Reply::Unsubscribed, b"unsubscribed\""),
        b'r' => (Reply::Resync, b"resync\""),
        b'e' => (Reply::Error, b"error\""),
        b'p' => (Reply::Pong, b"pong\""),
        b'a' => (Reply::Authenticated, b"authenticated\""),
        _ => return None,
    };
    name.starts_with(word).then_some(kind)
}

/// The seqs of a publish answer: `{"seq":42}` or `{"seqs":[42,43]}`, in
/// the order given; empty if there are none.
pub fn seq_list(body: &[u8]) -> Vec<u64> {
    const LIST: &[u8] = b"\"seqs\":";
    let Some(i) = find(body, LIST) else {
        return uint_after(body, SEQ)
            .map(|(s, _)| vec![s])
            .unwrap_or_default();
    };
    let mut out = Vec::new();
    let mut at = i + LIST.len();
    while body.get(at) == Some(&b' ') {
        at += 1;
    }
    if body.get(at) != Some(&b'[') {
        return out;
    }
    at += 1;
    // Each turn consumes a number and a comma, or ends.
    while let Some((v, end)) = digits_at(body, at) {
        out.push(v);
        at = end;
        while body.get(at) == Some(&b' ') {
            at += 1;
        }
        if body.get(at) != Some(&b',') {
            break;
        }
        at += 1;
    }
    out
}

/// Whether `key` starts at `at` in `hay`.
fn key_at(hay: &[u8], at: usize, key: &[u8]) -> bool {
    hay.get(at..at + key.len()) == Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_needles() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"", b"a"), None);
        assert_eq!(find(b"aaa", b""), None);
        assert_eq!(find(b"xx\"seq\":", b"\"seq\":"), Some(2));
    }

    #[test]
    fn extracts_seq_and_t() {
        let ev = br#"{"type":"metrics.system","timestamp":"2024-12-22T10:30:01.456Z","seq":42,"data":{"t":1732545600123456,"p":"xxxx"}}"#;
        assert_eq!(event_fields(ev), (Some(42), Some(1_732_545_600_123_456)));
    }

    #[test]
    fn timestamp_key_is_not_t() {
        let ev = br#"{"type":"a","timestamp":"2024","seq":7,"data":{"x":1}}"#;
        assert_eq!(event_fields(ev), (Some(7), None));
    }

    #[test]
    fn spaces_and_missing_fields() {
        assert_eq!(
            event_fields(br#"{"seq": 9, "data":{"t": 5}}"#),
            (Some(9), Some(5))
        );
        assert_eq!(event_fields(br#"{"type":"subscribed"}"#), (None, None));
        assert_eq!(event_fields(br#"{"seq":"x"}"#), (None, None));
        // Overflow is rejected, not wrapped.
        assert_eq!(
            event_fields(br#"{"seq":99999999999999999999999}"#),
            (None, None)
        );
    }

    #[test]
    fn numbers_of_every_length_parse_as_the_slow_way_would() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 1..=20usize {
            for _ in 0..200 {
                // xorshift: digits of every kind, leading zeros included.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let digits: String = (0..len)
                    .map(|k| char::from(b'0' + ((x >> (k * 3 % 61)) % 10) as u8))
                    .collect();
                let text = format!("\"seq\":{digits},");
                let want = digits.parse::<u64>().ok().map(|v| (v, 6 + len));
                assert_eq!(uint_after(text.as_bytes(), b"\"seq\":"), want, "{digits}");
            }
        }
    }

    #[test]
    fn eight_digit_check_rejects_neighbours_of_digits() {
        assert!(eight_digits(u64::from_le_bytes(*b"01234567")));
        assert!(eight_digits(u64::from_le_bytes(*b"99999999")));
        for bad in [b'/', b':', b' ', b'a', 0xFF, 0x00, 0xF9] {
            for pos in 0..8 {
                let mut w = *b"12345678";
                w[pos] = bad;
                assert!(!eight_digits(u64::from_le_bytes(w)), "{bad:#x} at {pos}");
            }
        }
        assert_eq!(parse_eight(u64::from_le_bytes(*b"12345678")), 12_345_678);
        assert_eq!(parse_eight(u64::from_le_bytes(*b"00000009")), 9);
    }

    #[test]
    fn remembered_offsets_agree_with_a_fresh_search() {
        let frames: [&[u8]; 6] = [
            br#"{"type":"m.s","timestamp":"2024","seq":7,"data":{"t":11,"p":"x"}}"#,
            br#"{"type":"m.s","timestamp":"2024","seq":8,"data":{"t":12,"p":"x"}}"#,
            // More seq digits: t moves, its distance from the digits does not.
            br#"{"type":"m.s","timestamp":"2024","seq":1000,"data":{"t":13,"p":"x"}}"#,
            // Another channel: both offsets move.
            br#"{"type":"job.progress","timestamp":"2024","seq":1001,"data":{"p":"x","t":14}}"#,
            br#"{"type":"subscribed","channels":["m.s"]}"#,
            br#"{"type":"m.s","seq":1002,"data":{}}"#,
        ];
        let mut scanner = FieldScanner::default();
        for round in 0..2 {
            for f in frames {
                assert_eq!(scanner.fields(f), event_fields(f), "round {round}: {f:?}");
            }
        }
        assert_eq!(scanner.fields(frames[2]), (Some(1000), Some(13)));
    }

    #[test]
    fn replies_are_told_from_events() {
        let table: [(&[u8], Option<Reply>); 10] = [
            (
                br#"{"type":"subscribed","channels":["a"],"epoch":"e1","seq":7}"#,
                Some(Reply::Subscribed),
            ),
            (
                br#"{"type":"resync","data":{"reason":"overflow","epoch":"e","seq":9}}"#,
                Some(Reply::Resync),
            ),
            (
                br#"{"type":"error","data":{"code":"x","message":"y"}}"#,
                Some(Reply::Error),
            ),
            (
                br#"{"type":"unsubscribed","channels":["a"]}"#,
                Some(Reply::Unsubscribed),
            ),
            (br#"{"type":"pong","timestamp":"2024"}"#, Some(Reply::Pong)),
            (br#"{"seq":3,"type":"subscribed"}"#, Some(Reply::Subscribed)),
            (
                br#"{"type":"metrics.system","timestamp":"2024","seq":42,"data":{}}"#,
                None,
            ),
            // Channels that share a reply's first letter, or its whole name as a prefix.
            (br#"{"type":"subscribed.x","seq":1,"data":{}}"#, None),
            (br#"{"type":"stats","seq":1,"data":{}}"#, None),
            (br#"{"type":"#, None),
        ];
        for (payload, want) in table {
            assert_eq!(
                reply_kind(payload),
                want,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn publish_answers_give_their_seqs() {
        assert_eq!(seq_list(br#"{"seq":42}"#), [42]);
        assert_eq!(seq_list(br#"{"seqs":[42,43,44]}"#), [42, 43, 44]);
        assert_eq!(seq_list(br#"{"seqs": [ 5, 6 ]}"#), [5, 6]);
        assert_eq!(seq_list(br#"{"seqs":[]}"#), Vec::<u64>::new());
        assert_eq!(seq_list(br#"{"error":{"code":"x"}}"#), Vec::<u64>::new());
        // A cut-off answer keeps what it has.
        assert_eq!(seq_list(br#"{"seqs":[1,2,3"#), [1, 2, 3]);
    }

    #[test]
    fn truncated_prefix_still_gives_seq() {
        let ev = br#"{"type":"a","timestamp":"2024","seq":123"#;
        assert_eq!(event_fields(ev), (Some(123), None));
    }
}
