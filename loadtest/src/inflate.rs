//! permessage-deflate (RFC 7692) on the swarm's side: the offer, the check
//! of the server's answer, and inflating compressed messages.
//!
//! The swarm offers no context takeover in both directions, so no message
//! depends on the one before it: one inflater per swarm thread, reset for
//! each message, serves all of the thread's connections, and the swarm's
//! own CPU and memory stay those of one inflater, not one per socket.

use flate2::{Decompress, FlushDecompress, Status};

/// What `--deflate` puts in `Sec-WebSocket-Extensions`.
pub const OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// "the receiver appends 4 octets of 0x00 0x00 0xff 0xff to the tail end of
/// the payload of the message" before inflating (RFC 7692 7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The most of one message that is inflated. The scanner only needs the
/// beginning (the reply type, `seq` and the publisher's `t`), as for plain
/// frames larger than the read buffer.
pub const MAX_INFLATED: usize = 64 * 1024;

/// Whether the server agreed to the offer: `Ok(true)` if its answer (the
/// values of its `Sec-WebSocket-Extensions` headers) accepts
/// permessage-deflate, `Ok(false)` if it names no extension, and an error if
/// it answers with something the swarm did not offer or cannot inflate.
pub fn agreed(answers: &[&str]) -> Result<bool, String> {
    let mut agreed = false;
    for ext in answers
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let mut parts = ext.split(';').map(str::trim);
        if parts.next() != Some("permessage-deflate") || agreed {
            // RFC 6455 9.1: the server may only answer with what was offered,
            // once.
            return Err(format!("unexpected extension in the answer: {ext:?}"));
        }
        let mut server_no_context = false;
        for param in parts {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (param, None),
            };
            match (name, value) {
                ("server_no_context_takeover", None) => server_no_context = true,
                // What the swarm sends: it sends its few messages plain.
                ("client_no_context_takeover", None) => {}
                ("client_max_window_bits" | "server_max_window_bits", Some(v))
                    if v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b)) =>
                {
                    // A 15-bit inflater reads data made with any smaller window.
                }
                _ => return Err(format!("bad permessage-deflate parameter {param:?}")),
            }
        }
        // RFC 7692 7.1.1.1: a server that accepts an offer with
        // server_no_context_takeover must include it. One inflater per
        // thread relies on it.
        if !server_no_context {
            return Err("permessage-deflate answer without server_no_context_takeover".into());
        }
        agreed = true;
    }
    Ok(agreed)
}

/// One thread's inflater and the buffer it inflates into.
pub struct Inflater {
    inner: Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            // Raw deflate with a 15-bit window: RFC 7692 payloads have no
            // zlib header.
            inner: Decompress::new(false),
            out: Vec::with_capacity(MAX_INFLATED),
        }
    }
}

impl Inflater {
    /// The text of one compressed message: `payload` is the whole payload
    /// of an unfragmented message (`whole`) or only its first bytes. At
    /// most `MAX_INFLATED` bytes come back; that a prefix stops mid-block
    /// is not an error.
    pub fn inflate(&mut self, payload: &[u8], whole: bool) -> Result<&[u8], &'static str> {
        // No context takeover: every message starts from an empty window.
        self.inner.reset(false);
        self.out.clear();
        let tail: &[u8] = if whole { &SYNC_TAIL } else { &[] };
        for piece in [payload, tail] {
            let mut pos = 0;
            // Each turn consumes input or produces output, or the loop ends.
            while pos < piece.len() && self.out.len() < self.out.capacity() {
                let (in0, out0) = (self.inner.total_in(), self.out.len());
                let status = self
                    .inner
                    .decompress_vec(&piece[pos..], &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| "invalid deflate data")?;
                let used = (self.inner.total_in() - in0) as usize;
                pos += used;
                // A final block ends the message (RFC 7692 7.2.3.3 allows
                // one); whatever follows, the appended tail included, is not data.
                if status == Status::StreamEnd {
                    return Ok(&self.out);
                }
                if used == 0 && self.out.len() == out0 {
                    break;
                }
            }
        }
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// `text` deflated on its own as a permessage-deflate payload: a sync
    /// flush, then the 00 00 ff ff tail removed (RFC 7692 7.2.1).
    fn compressed(text: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(text.len() + 64);
        let status = c.compress_vec(text, &mut out, FlushCompress::Sync);
        assert_eq!(status.ok(), Some(Status::Ok));
        assert_eq!(c.total_in() as usize, text.len(), "room for all of it");
        assert!(out.ends_with(&SYNC_TAIL));
        out.truncate(out.len() - SYNC_TAIL.len());
        out
    }

    fn event(seq: u64) -> Vec<u8> {
        let pad = "x".repeat(150);
        format!(r#"{{"type":"metrics.system","seq":{seq},"data":{{"t":5,"p":"{pad}"}}}}"#)
            .into_bytes()
    }

    #[test]
    fn one_inflater_serves_message_after_message() {
        let mut inf = Inflater::default();
        for seq in [1u64, 22, 333, 4444] {
            let text = event(seq);
            let payload = compressed(&text);
            assert!(payload.len() < text.len() / 2, "the padding compresses");
            assert_eq!(inf.inflate(&payload, true), Ok(&text[..]));
        }
    }

    #[test]
    fn known_bytes_from_rfc7692() {
        // 7.2.3.1: "Hello" compressed, and 7.2.3.3: the same in a final block.
        let mut inf = Inflater::default();
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inf.inflate(&hello, true), Ok(&b"Hello"[..]));
        let final_block = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inf.inflate(&final_block, true), Ok(&b"Hello"[..]));
        // 7.2.3.4: "Hello" in a stored (uncompressed) block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inf.inflate(&stored, true), Ok(&b"Hello"[..]));
    }

    #[test]
    fn a_prefix_gives_the_beginning() {
        let mut text = event(77);
        // Incompressible-ish tail so the payload is long enough to cut.
        let mut x = 1u32;
        text.extend((0..4000).map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            b'a' + (x >> 27) as u8 % 26
        }));
        let payload = compressed(&text);
        let mut inf = Inflater::default();
        let got = inf.inflate(&payload[..600], false).map(<[u8]>::to_vec);
        let got = got.unwrap_or_else(|e| panic!("{e}"));
        assert!(got.len() >= 200, "{} bytes", got.len());
        assert_eq!(&got[..], &text[..got.len()]);
        // The same inflater then reads a whole message from the start.
        let next = event(78);
        assert_eq!(inf.inflate(&compressed(&next), true), Ok(&next[..]));
    }

    #[test]
    fn output_stops_at_the_cap() {
        let text = vec![b'a'; MAX_INFLATED * 4];
        let payload = compressed(&text);
        let mut inf = Inflater::default();
        let got = inf.inflate(&payload, true).map(<[u8]>::len);
        assert_eq!(got, Ok(MAX_INFLATED));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut inf = Inflater::default();
        // BTYPE 11 is reserved (RFC 1951 3.2.3).
        assert_eq!(
            inf.inflate(&[0xff, 0xff, 0xff], true),
            Err("invalid deflate data")
        );
        // And the inflater is usable afterwards.
        assert_eq!(inf.inflate(&compressed(b"ok"), true), Ok(&b"ok"[..]));
    }

    #[test]
    fn answers() {
        assert_eq!(agreed(&[]), Ok(false));
        assert_eq!(agreed(&[OFFER]), Ok(true));
        assert_eq!(
            agreed(&["permessage-deflate; server_no_context_takeover"]),
            Ok(true)
        );
        assert_eq!(
            agreed(&["permessage-deflate;server_no_context_takeover; server_max_window_bits=10"]),
            Ok(true)
        );
        assert!(agreed(&["permessage-deflate"]).is_err(), "context takeover");
        assert!(agreed(&["x-webkit-deflate-frame"]).is_err());
        assert!(agreed(&[OFFER, OFFER]).is_err(), "twice");
        assert!(agreed(&["permessage-deflate; server_no_context_takeover; foo"]).is_err());
        assert!(agreed(&[
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=7"
        ])
        .is_err());
    }
}
