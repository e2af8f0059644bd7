//! Validation and naive matching of channel names and patterns.
//!
//! The matcher here walks both strings segment by segment. It is the
//! reference the trie is tested against, so it stays deliberately simple.
//!
//! A `>` counts as the full wildcard only when it is the last segment; anywhere
//! else it is an ordinary literal. Validation rejects that case, but keeping
//! the rule in one place means the trie, the cache and this matcher agree even
//! on patterns that slipped past validation.

use std::fmt;

/// Bounds on a channel name or pattern, from `limits.max_channel_length` and
/// `limits.max_channel_segments`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectLimits {
    /// Maximum length in bytes of the whole name.
    pub max_length: usize,
    /// Maximum number of dot-separated segments.
    pub max_segments: usize,
}

impl Default for SubjectLimits {
    fn default() -> Self {
        SubjectLimits {
            max_length: 255,
            max_segments: 16,
        }
    }
}

/// Why a channel name or pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectError {
    /// The empty string.
    Empty,
    /// Longer than `SubjectLimits::max_length` bytes.
    TooLong { len: usize, max: usize },
    /// More than `SubjectLimits::max_segments` segments.
    TooManySegments { count: usize, max: usize },
    /// A leading, trailing or doubled `.`.
    EmptySegment,
    /// Whitespace, a control character, or `*` / `>` inside a longer segment.
    InvalidCharacter { segment: String },
    /// `>` somewhere other than the last segment.
    MisplacedFullWildcard,
    /// `*` or `>` in a concrete channel name (e.g. the target of a publish).
    WildcardInChannel,
}

impl fmt::Display for SubjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectError::Empty => f.write_str("channel is empty"),
            SubjectError::TooLong { len, max } => {
                write!(f, "channel is {len} bytes long, at most {max} allowed")
            }
            SubjectError::TooManySegments { count, max } => {
                write!(f, "channel has {count} segments, at most {max} allowed")
            }
            SubjectError::EmptySegment => {
                f.write_str("channel has an empty segment (leading, trailing or doubled '.')")
            }
            // `{:?}` escapes control characters so the message stays printable.
            SubjectError::InvalidCharacter { segment } => write!(
                f,
                "segment {segment:?} contains whitespace, a control character \
                 or a wildcard that is not the whole segment"
            ),
            SubjectError::MisplacedFullWildcard => {
                f.write_str("'>' is only allowed as the last segment")
            }
            SubjectError::WildcardInChannel => {
                f.write_str("wildcards '*' and '>' are only allowed in patterns, not in channels")
            }
        }
    }
}

impl std::error::Error for SubjectError {}

/// Checks a concrete channel name: no wildcards allowed.
pub fn validate_channel(name: &str, limits: &SubjectLimits) -> Result<(), SubjectError> {
    validate(name, limits, false)
}

/// Checks a subscription pattern: `*` as any whole segment, `>` as the whole
/// last segment.
pub fn validate_pattern(pattern: &str, limits: &SubjectLimits) -> Result<(), SubjectError> {
    validate(pattern, limits, true)
}

fn validate(name: &str, limits: &SubjectLimits, wildcards: bool) -> Result<(), SubjectError> {
    if name.is_empty() {
        return Err(SubjectError::Empty);
    }
    if name.len() > limits.max_length {
        return Err(SubjectError::TooLong {
            len: name.len(),
            max: limits.max_length,
        });
    }
    // Counted up front so an over-long name gets the same error whatever its
    // individual segments look like.
    let count = name.split('.').count();
    if count > limits.max_segments {
        return Err(SubjectError::TooManySegments {
            count,
            max: limits.max_segments,
        });
    }
    for (index, segment) in name.split('.').enumerate() {
        let last = index + 1 == count;
        match segment {
            "" => return Err(SubjectError::EmptySegment),
            "*" | ">" if !wildcards => return Err(SubjectError::WildcardInChannel),
            ">" if !last => return Err(SubjectError::MisplacedFullWildcard),
            "*" | ">" => {}
            _ if segment.chars().any(is_forbidden) => {
                return Err(SubjectError::InvalidCharacter {
                    segment: segment.to_owned(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// The protocol says segments contain "no whitespace, `*` or `>`"; control
/// characters are excluded too because they would corrupt logs and messages.
fn is_forbidden(c: char) -> bool {
    c == '*' || c == '>' || c.is_whitespace() || c.is_control()
}

/// True if `channel` is matched by `pattern`.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    let mut pat = pattern.split('.').peekable();
    let mut chan = channel.split('.');
    loop {
        match (pat.next(), chan.next()) {
            (None, None) => return true,
            // `chan` just yielded a segment, so `>` has its "one or more".
            (Some(">"), Some(_)) if pat.peek().is_none() => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(c)) if p == c => {}
            _ => return false,
        }
    }
}

/// True if every channel matched by `requested` is also matched by `allowed`.
///
/// Used to check a subscription against the patterns a token allows, so it
/// must never say yes wrongly: `job.*` does not cover `job.>`.
pub fn pattern_covers(allowed: &str, requested: &str) -> bool {
    let mut allow = allowed.split('.').peekable();
    let mut req = requested.split('.').peekable();
    loop {
        let (a, r) = (allow.next(), req.next());
        let allow_full = a == Some(">") && allow.peek().is_none();
        let req_full = r == Some(">") && req.peek().is_none();
        match (a, r) {
            (None, None) => return true,
            // Both sides have at least one segment left; `>` takes them all.
            (Some(_), Some(_)) if allow_full => return true,
            // `requested` reaches arbitrarily deep; only a `>` could follow.
            (Some(_), Some(_)) if req_full => return false,
            // Whatever `requested` has here, literal or `*`, is one segment.
            (Some("*"), Some(_)) => {}
            // A literal covers only itself; this also rejects `*` under a literal.
            (Some(a), Some(r)) if a == r => {}
            _ => return false,
        }
    }
}

/// True if the pattern matches exactly one channel: itself.
pub fn is_literal(pattern: &str) -> bool {
    let mut last = "";
    for segment in pattern.split('.') {
        if segment == "*" {
            return false;
        }
        last = segment;
    }
    last != ">"
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> SubjectLimits {
        SubjectLimits {
            max_length: 10,
            max_segments: 3,
        }
    }

    fn invalid(segment: &str) -> Result<(), SubjectError> {
        Err(SubjectError::InvalidCharacter {
            segment: segment.to_owned(),
        })
    }

    #[test]
    fn default_limits_follow_the_protocol() {
        let limits = SubjectLimits::default();
        assert_eq!((limits.max_length, limits.max_segments), (255, 16));
    }

    #[test]
    fn channels() {
        use SubjectError::*;
        let d = SubjectLimits::default();
        let cases: &[(&str, SubjectLimits, Result<(), SubjectError>)] = &[
            ("job.progress", d, Ok(())),
            ("index.production-vectors.shard_transition", d, Ok(())),
            ("a", d, Ok(())),
            ("ünïcødé.ok", d, Ok(())),
            ("", d, Err(Empty)),
            ("a..b", d, Err(EmptySegment)),
            (".a", d, Err(EmptySegment)),
            ("a.", d, Err(EmptySegment)),
            (".", d, Err(EmptySegment)),
            ("job.*", d, Err(WildcardInChannel)),
            ("job.>", d, Err(WildcardInChannel)),
            (">", d, Err(WildcardInChannel)),
            ("a*", d, invalid("a*")),
            ("a.b>c", d, invalid("b>c")),
            ("a b", d, invalid("a b")),
            ("a.\tb", d, invalid("\tb")),
            ("a.b\n", d, invalid("b\n")),
            ("a.\u{0}", d, invalid("\u{0}")),
            ("a.\u{a0}b", d, invalid("\u{a0}b")),
            ("abcdefghij", small(), Ok(())),
            ("abcdefghijk", small(), Err(TooLong { len: 11, max: 10 })),
            ("a.b.c", small(), Ok(())),
            (
                "a.b.c.d",
                small(),
                Err(TooManySegments { count: 4, max: 3 }),
            ),
            // Segment count wins over what the segments contain.
            ("a...", small(), Err(TooManySegments { count: 4, max: 3 })),
        ];
        for (name, limits, expected) in cases {
            assert_eq!(
                &validate_channel(name, limits),
                expected,
                "channel {name:?}"
            );
        }
    }

    #[test]
    fn patterns() {
        use SubjectError::*;
        let d = SubjectLimits::default();
        let cases: &[(&str, SubjectLimits, Result<(), SubjectError>)] = &[
            ("job.progress", d, Ok(())),
            ("job.*", d, Ok(())),
            ("index.>", d, Ok(())),
            (">", d, Ok(())),
            ("*", d, Ok(())),
            ("*.*", d, Ok(())),
            ("*.b.>", d, Ok(())),
            ("", d, Err(Empty)),
            ("a..b", d, Err(EmptySegment)),
            (".>", d, Err(EmptySegment)),
            ("a.*.", d, Err(EmptySegment)),
            ("a.>.b", d, Err(MisplacedFullWildcard)),
            (">.a", d, Err(MisplacedFullWildcard)),
            ("a*", d, invalid("a*")),
            ("a.*b", d, invalid("*b")),
            ("a.>>", d, invalid(">>")),
            ("a.**", d, invalid("**")),
            ("a. ", d, invalid(" ")),
            ("*.*.*", small(), Ok(())),
            (
                "*.*.*.*",
                small(),
                Err(TooManySegments { count: 4, max: 3 }),
            ),
            ("a.b.cdefgh.>", small(), Err(TooLong { len: 12, max: 10 })),
        ];
        for (pattern, limits, expected) in cases {
            assert_eq!(
                &validate_pattern(pattern, limits),
                expected,
                "pattern {pattern:?}"
            );
        }
    }

    #[test]
    fn matching() {
        let cases = [
            ("job.*", "job.progress", true),
            ("job.*", "job.a.b", false),
            ("job.*", "job", false),
            ("index.>", "index.production-vectors.shard_transition", true),
            ("index.>", "index.a", true),
            ("index.>", "index", false),
            ("index.>", "indexes.a", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("*.*", "a.b", true),
            ("*.*", "a", false),
            ("*.*", "a.b.c", false),
            ("*", "a", true),
            ("a.b", "a.b", true),
            ("a.b", "a.b.c", false),
            ("a.b.c", "a.b", false),
            ("a.b", "a.c", false),
            ("*.b.>", "x.b.y.z", true),
            ("*.b.>", "x.c.y", false),
            // Not the last segment, so a plain literal (never valid anyway).
            ("a.>.b", "a.x.b", false),
            ("a.>.b", "a.>.b", true),
        ];
        for (pattern, channel, expected) in cases {
            assert_eq!(
                pattern_matches(pattern, channel),
                expected,
                "{pattern} ~ {channel}"
            );
        }
    }

    #[test]
    fn covering() {
        let cases = [
            ("job.*", "job.progress", true),
            ("job.>", "job.*.x", true),
            ("job.>", "job.>", true),
            ("job.>", "job.a.>", true),
            ("job.>", "job", false),
            ("job.*", "job.>", false),
            ("job.*", "job.*", true),
            (">", "anything.at.all", true),
            (">", ">", true),
            (">", "*.>", true),
            ("*.>", ">", false),
            ("job.progress", "job.*", false),
            ("job.progress", "job.progress", true),
            ("job.progress", "job.other", false),
            ("*.*", "job.*", true),
            ("*.*", "job.*.x", false),
            ("a.b.c", "a.b", false),
            ("a.b", "a.b.c", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
        ];
        for (allowed, requested, expected) in cases {
            assert_eq!(
                pattern_covers(allowed, requested),
                expected,
                "{allowed} ⊇ {requested}"
            );
        }
    }

    #[test]
    fn literals() {
        assert!(is_literal("a.b"));
        assert!(is_literal("a.>.b"));
        assert!(!is_literal("a.*"));
        assert!(!is_literal("*.b"));
        assert!(!is_literal("a.>"));
        assert!(!is_literal(">"));
    }

    #[test]
    fn messages_carry_the_numbers() {
        let e = SubjectError::TooManySegments { count: 20, max: 16 };
        assert_eq!(e.to_string(), "channel has 20 segments, at most 16 allowed");
        let e = SubjectError::TooLong { len: 300, max: 255 };
        assert_eq!(
            e.to_string(),
            "channel is 300 bytes long, at most 255 allowed"
        );
        let e = SubjectError::InvalidCharacter {
            segment: "a\nb".into(),
        };
        assert!(e.to_string().contains(r#""a\nb""#), "{e}");
    }

    /// Valid patterns of up to four segments over a tiny alphabet, so that
    /// random pairs overlap often.
    pub fn pattern() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*"]), 0..4),
            any::<bool>(),
        )
            .prop_filter_map("empty pattern", |(mut segments, full)| {
                if full {
                    segments.push(">");
                }
                (!segments.is_empty()).then(|| segments.join("."))
            })
    }

    pub fn channel() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..6)
            .prop_map(|segments| segments.join("."))
    }

    proptest! {
        #[test]
        fn covers_is_sound(allowed in pattern(), requested in pattern(), chan in channel()) {
            if pattern_covers(&allowed, &requested) && pattern_matches(&requested, &chan) {
                prop_assert!(pattern_matches(&allowed, &chan));
            }
        }

        /// If `allowed` does not cover `requested`, some channel proves it: put
        /// a segment `allowed` never names ("z") in each wildcard of `requested`.
        #[test]
        fn covers_is_complete(allowed in pattern(), requested in pattern()) {
            let depth = allowed.split('.').count() + 1;
            let witnesses: Vec<String> = (1..=depth)
                .map(|n| {
                    requested
                        .split('.')
                        .map(|s| match s {
                            "*" => "z".to_owned(),
                            ">" => vec!["z"; n].join("."),
                            s => s.to_owned(),
                        })
                        .collect::<Vec<_>>()
                        .join(".")
                })
                .collect();
            let escapes = witnesses.iter().any(|c| !pattern_matches(&allowed, c));
            prop_assert_eq!(pattern_covers(&allowed, &requested), !escapes, "{:?}", witnesses);
        }

        #[test]
        fn generated_patterns_are_valid(p in pattern(), c in channel()) {
            prop_assert_eq!(validate_pattern(&p, &SubjectLimits::default()), Ok(()));
            prop_assert_eq!(validate_channel(&c, &SubjectLimits::default()), Ok(()));
        }
    }
}
