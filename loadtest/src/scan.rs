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
    while let Some(d) = hay.get(i).filter(|b| b.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    (i > start).then_some((v, i))
}

/// `seq` and the publisher timestamp `t` of an event payload (or prefix).
/// `t` is looked for after `seq` (the relay puts `data` last) and, failing
/// that, anywhere.
pub fn event_fields(payload: &[u8]) -> (Option<u64>, Option<u64>) {
    static FINDERS: OnceLock<(Finder<'static>, Finder<'static>)> = OnceLock::new();
    let (seq_key, t_key) =
        FINDERS.get_or_init(|| (Finder::new(b"\"seq\":"), Finder::new(b"\"t\":")));
    match uint_after_found(payload, seq_key) {
        Some((seq, end)) => {
            let t = uint_after_found(&payload[end..], t_key).or_else(|| uint_after_found(payload, t_key));
            (Some(seq), t.map(|(t, _)| t))
        }
        None => (None, uint_after_found(payload, t_key).map(|(t, _)| t)),
    }
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
    fn truncated_prefix_still_gives_seq() {
        let ev = br#"{"type":"a","timestamp":"2024","seq":123"#;
        assert_eq!(event_fields(ev), (Some(123), None));
    }
}
