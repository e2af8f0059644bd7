//! `Transfer-Encoding: chunked` request bodies (RFC 9112 section 7.1),
//! decoded incrementally without sockets.
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! Lines must end in CRLF: a bare LF is refused rather than guessed at,
//! since two parsers that disagree on where a chunk ends are how requests
//! are smuggled past a proxy.

/// Bounds on one chunked body.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// Decoded bytes, all chunks together (`limits.max_request_body`).
    pub max_body: usize,
    /// A chunk-size line with its extensions, and the whole trailer section
    /// (`limits.max_request_head`).
    pub max_line: usize,
}

/// Why a chunked body is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// The decoded body would pass `max_body`: known as soon as a chunk's
    /// size is read, before its data arrives.
    TooLarge { at_least: u64, max: usize },
    /// Not chunked framing; the message says where it broke.
    Malformed(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A chunk-size line.
    Size,
    /// Chunk data, this many bytes more.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer field lines, until an empty line.
    Trailers,
    Done,
}

/// A chunked body being decoded: feed it bytes, it keeps the data.
#[derive(Debug)]
pub struct ChunkedBody {
    expect: Expect,
    body: Vec<u8>,
    /// Bytes of trailer fields read so far (they are read and ignored).
    trailer_bytes: usize,
}

impl Default for ChunkedBody {
    fn default() -> Self {
        ChunkedBody {
            expect: Expect::Size,
            body: Vec::new(),
            trailer_bytes: 0,
        }
    }
}

impl ChunkedBody {
    /// Decodes what it can from the start of `input`; returns how many bytes
    /// it consumed, which the caller drops. An incomplete line is not
    /// consumed: it comes again, longer, with the next call. Once
    /// [`ChunkedBody::is_done`], consumes nothing more: bytes after the body
    /// belong to the next request.
    pub fn decode(&mut self, input: &[u8], limits: ChunkLimits) -> Result<usize, ChunkError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.expect {
                Expect::Done => return Ok(at),
                Expect::Size => {
                    let Some(line) = line(rest, limits.max_line, "a chunk-size line")? else {
                        return Ok(at);
                    };
                    let size = chunk_size(&rest[..line])?;
                    let total = self.body.len() as u64 + size;
                    if total > limits.max_body as u64 {
                        return Err(ChunkError::TooLarge {
                            at_least: total,
                            max: limits.max_body,
                        });
                    }
                    at += line + 2;
                    self.expect = match size {
                        0 => Expect::Trailers,
                        // At most max_body, checked above.
                        n => Expect::Data(n as usize),
                    };
                }
                Expect::Data(left) => {
                    let take = left.min(rest.len());
                    if take == 0 {
                        return Ok(at);
                    }
                    self.body.extend_from_slice(&rest[..take]);
                    at += take;
                    self.expect = match left - take {
                        0 => Expect::DataEnd,
                        n => Expect::Data(n),
                    };
                }
                Expect::DataEnd => {
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|&b| b != b'\r') {
                            return Err(ChunkError::Malformed(
                                "chunk data is not followed by CRLF",
                            ));
                        }
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ChunkError::Malformed("chunk data is not followed by CRLF"));
                    }
                    at += 2;
                    self.expect = Expect::Size;
                }
                Expect::Trailers => {
                    let room = limits.max_line.saturating_sub(self.trailer_bytes);
                    let Some(line) = line(rest, room, "the trailer section")? else {
                        return Ok(at);
                    };
                    at += line + 2;
                    if line == 0 {
                        self.expect = Expect::Done;
                    } else {
                        // Trailers are not used: the relay reads only the body.
                        self.trailer_bytes += line + 2;
                    }
                }
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.expect == Expect::Done
    }

    /// The data decoded so far: the whole body once done.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// The length of the line at the start of `input`, without its CRLF;
/// `None` while it is incomplete and shorter than `max`.
fn line(input: &[u8], max: usize, what: &'static str) -> Result<Option<usize>, ChunkError> {
    let window = &input[..input.len().min(max.saturating_add(2))];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(ChunkError::Malformed("a line ends in a bare LF")),
        Some(lf) if window[lf - 1] != b'\r' => {
            Err(ChunkError::Malformed("a line ends in a bare LF"))
        }
        Some(lf) => Ok(Some(lf - 1)),
        None if window.len() >= max.saturating_add(2) => Err(ChunkError::Malformed(match what {
            "the trailer section" => "the trailer section is over limits.max_request_head",
            _ => "a chunk-size line is over limits.max_request_head",
        })),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits, then nothing or `;` extensions
/// (after optional whitespace), which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ChunkError::Malformed("a chunk size is not hexadecimal"));
    }
    let rest = &line[digits..];
    let ext = rest.iter().position(|&b| b != b' ' && b != b'\t');
    if let Some(at) = ext {
        if rest[at] != b';' {
            return Err(ChunkError::Malformed("a chunk size is not hexadecimal"));
        }
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let digit = (b as char).to_digit(16).expect("bug: checked hex digit");
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(digit)))
            // Over 2^64: larger than any max_body, whatever the rest says.
            .unwrap_or(u64::MAX);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ChunkLimits = ChunkLimits {
        max_body: 64,
        max_line: 32,
    };

    /// Decodes `input` fed in the given pieces, as a session would: unconsumed
    /// bytes stay and the next piece is appended. Returns the body and the
    /// bytes left after it.
    fn decode_in_pieces(
        pieces: &[&[u8]],
        limits: ChunkLimits,
    ) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut body = ChunkedBody::default();
        let mut held = Vec::new();
        for piece in pieces {
            held.extend_from_slice(piece);
            let used = body.decode(&held, limits)?;
            held.drain(..used);
        }
        assert!(body.is_done(), "not done after all pieces");
        Ok((body.body().to_vec(), held))
    }

    /// Every split of `input` into two pieces, and byte by byte, decodes the same.
    fn decode_every_split(
        input: &[u8],
        limits: ChunkLimits,
    ) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let whole = decode_in_pieces(&[input], limits);
        for at in 0..=input.len() {
            let split = decode_in_pieces(&[&input[..at], &input[at..]], limits);
            assert_eq!(split, whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode_in_pieces(&bytes, limits), whole, "byte by byte");
        whole
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers_split_anywhere() {
        let table: [(&[u8], &[u8], &[u8]); 6] = [
            (b"0\r\n\r\n", b"", b""),
            (b"5\r\nhello\r\n0\r\n\r\nNEXT", b"hello", b"NEXT"),
            (
                b"3\r\n{\"a\r\nA\r\n\":[1,2,3]}\r\n0\r\n\r\n",
                b"{\"a\":[1,2,3]}",
                b"",
            ),
            (b"0005;name=value;x\r\nhello\r\n00\r\n\r\n", b"hello", b""),
            (
                b"5 ; ext\r\nhello\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\nGET",
                b"hello",
                b"GET",
            ),
            (
                b"a\r\n0123456789\r\nF\r\n0123456789abcde\r\n0\r\n\r\n",
                b"01234567890123456789abcde",
                b"",
            ),
        ];
        for (input, body, left) in table {
            let (got, rest) = decode_every_split(input, LIMITS).expect("valid");
            assert_eq!(
                (got.as_slice(), rest.as_slice()),
                (body, left),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn refuses_malformed_framing() {
        let table: [&[u8]; 9] = [
            b"x\r\n",
            b"-1\r\n",
            b"5x\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXY0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nX-Trailer: 1\n\r\n",
        ];
        for input in table {
            for at in 0..=input.len() {
                let result = decode_in_pieces_lenient(&[&input[..at], &input[at..]]);
                assert!(
                    matches!(result, Err(ChunkError::Malformed(_))),
                    "{:?} split at {at}: {result:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    /// Like `decode_in_pieces`, without requiring the body to be complete.
    fn decode_in_pieces_lenient(pieces: &[&[u8]]) -> Result<(), ChunkError> {
        let mut body = ChunkedBody::default();
        let mut held = Vec::new();
        for piece in pieces {
            held.extend_from_slice(piece);
            let used = body.decode(&held, LIMITS)?;
            held.drain(..used);
        }
        Ok(())
    }

    #[test]
    fn body_over_the_limit_is_refused_as_soon_as_a_size_says_so() {
        // 40 + 40 > 64: refused at the second size line, before its data.
        let mut body = ChunkedBody::default();
        let mut input = b"28\r\n".to_vec();
        input.extend_from_slice(&[b'a'; 40]);
        input.extend_from_slice(b"\r\n28\r\n");
        assert_eq!(
            body.decode(&input, LIMITS),
            Err(ChunkError::TooLarge {
                at_least: 80,
                max: 64
            })
        );
        // A size past 2^64 is too large, not an overflow.
        let mut body = ChunkedBody::default();
        let huge = b"fffffffffffffffffffff\r\n";
        assert!(matches!(
            body.decode(huge, LIMITS),
            Err(ChunkError::TooLarge { .. })
        ));
        // Exactly the limit passes.
        let mut input = b"40\r\n".to_vec();
        input.extend_from_slice(&[b'b'; 64]);
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        let (got, _) = decode_in_pieces(&[&input], LIMITS).expect("at the limit");
        assert_eq!(got.len(), 64);
    }

    #[test]
    fn long_lines_and_trailers_are_bounded() {
        // A size line whose extension never ends.
        let mut body = ChunkedBody::default();
        let mut input = b"5;".to_vec();
        input.extend_from_slice(&[b'e'; 40]);
        assert!(matches!(
            body.decode(&input, LIMITS),
            Err(ChunkError::Malformed(_))
        ));
        // Trailers count together against the same bound.
        let mut body = ChunkedBody::default();
        let input = b"0\r\nA: 0123456789\r\nB: 0123456789\r\nC: 0123456789\r\n\r\n";
        assert!(matches!(
            body.decode(input, LIMITS),
            Err(ChunkError::Malformed(_))
        ));
        // Incomplete and short: wait.
        let mut body = ChunkedBody::default();
        assert_eq!(body.decode(b"5;ab", LIMITS), Ok(0));
        assert!(!body.is_done());
    }
}
