//! permessage-deflate (RFC 7692), without sockets: the negotiation, the
//! deflated body of an event, and the bounded inflate of client messages.
//!
//! The relay only agrees to `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is compressed on its own, so
//! one deflated frame per event serves every compressing subscriber, and a
//! client message inflates with no state kept between messages.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::CloseReason;

/// The response to an accepted offer.
pub const AGREED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// "the receiver appends 4 octets of 0x00 0x00 0xff 0xff to the tail end of
/// the payload of the message" before inflating (7.2.2); a sender removes
/// them after a sync flush (7.2.1).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether one of the `Sec-WebSocket-Extensions` offers (header values, each
/// a comma-separated list) is a permessage-deflate offer the relay accepts.
///
/// Accepted: any valid offer whose parameters allow a 15-bit server window
/// (no `server_max_window_bits`, or 15). A smaller server window would need
/// a frame per window size, so those offers are declined, as 7.1.2.1 allows
/// ("the server MAY decline"). Invalid offers (unknown or repeated
/// parameters, bad values) are declined too (7.1: "MUST decline").
pub fn accepts(offers: &[String]) -> bool {
    offers
        .iter()
        .flat_map(|value| value.split(','))
        .any(|offer| acceptable_offer(offer.trim()))
}

fn acceptable_offer(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if parts.next() != Some("permessage-deflate") {
        return false;
    }
    let mut seen: Vec<&str> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return false;
        }
        seen.push(name);
        let window_bits = |v: Option<&str>| {
            v.and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
        };
        let ok = match name {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            "server_max_window_bits" => window_bits(value) == Some(15),
            // A client that lists it without a value accepts any window the
            // server names; the relay names none (its inflater takes 15 bits).
            "client_max_window_bits" => value.is_none() || window_bits(value).is_some(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

thread_local! {
    /// One compressor per producer thread: making one allocates a few
    /// hundred KiB, so it is kept; a full flush after each body resets it.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
}

/// `input` deflated on its own (no history before or after it), ending
/// byte-aligned, with the sync-flush tail removed (7.2.1): what may follow
/// other deflate blocks in a message payload.
pub fn deflate_piece(input: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|cell| {
        let mut compressor = cell.borrow_mut();
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let start_in = compressor.total_in();
        loop {
            let consumed = (compressor.total_in() - start_in) as usize;
            // A full flush forgets the history, so the next piece starts
            // clean without a (costlier) reset.
            let status = compressor
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Full)
                .expect("bug: deflate refuses no input");
            let done = (compressor.total_in() - start_in) as usize == input.len();
            // Room left means the flush completed.
            if done && out.len() < out.capacity() && status != Status::BufError {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        out
    })
}

/// Bytes of a stored block's header: see [`stored_block_header`].
pub const STORED_BLOCK_HEADER: usize = 5;

/// The header of a stored (uncompressed) deflate block of `len` bytes, not
/// final (RFC 1951 3.2.4): for the part of an event only the sequencer
/// knows, its `seq`. Stored blocks hold at most 65,535 bytes; an event's
/// envelope (type, channel and timestamp) is far shorter.
pub fn stored_block_header(len: usize) -> [u8; STORED_BLOCK_HEADER] {
    let len = u16::try_from(len).expect("bug: a stored block holds at most 65,535 bytes");
    let [lo, hi] = len.to_le_bytes();
    let [nlo, nhi] = (!len).to_le_bytes();
    // BFINAL 0 and BTYPE 00, then padding to the byte boundary: one zero byte.
    [0x00, lo, hi, nlo, nhi]
}

/// Inflates a compressed client message, refusing (1009) as soon as it
/// would exceed `max` bytes: the output never grows past `max + 1`,
/// whatever the ratio (a deflate bomb costs its sender the connection and
/// the relay at most that buffer).
pub fn inflate(payload: &[u8], max: usize) -> Result<Vec<u8>, CloseReason> {
    let mut inflater = Decompress::new(false);
    let cap = max.saturating_add(1);
    let mut out = Vec::with_capacity(payload.len().saturating_mul(4).max(64).min(cap));
    let too_big = |size: usize| CloseReason::MessageTooBig {
        size: size as u64,
        max,
    };
    for piece in [payload, &SYNC_TAIL[..]] {
        let start = inflater.total_in();
        loop {
            let consumed = (inflater.total_in() - start) as usize;
            let before = out.len();
            let status = inflater
                .decompress_vec(&piece[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| CloseReason::Protocol("invalid permessage-deflate data"))?;
            if out.len() > max {
                return Err(too_big(out.len()));
            }
            if status == Status::StreamEnd {
                // A final block ended the stream (7.2.3.3 allows it): what
                // follows, our appended tail included, is not data.
                return Ok(out);
            }
            let all_in = (inflater.total_in() - start) as usize == piece.len();
            if out.len() < out.capacity() {
                if all_in {
                    break;
                }
                if out.len() == before && (inflater.total_in() - start) as usize == consumed {
                    return Err(CloseReason::Protocol("invalid permessage-deflate data"));
                }
                continue;
            }
            if out.capacity() >= cap {
                return Err(too_big(out.len() + 1));
            }
            let grow = out.capacity().min(cap - out.capacity());
            out.reserve_exact(grow);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(text: &str) -> bool {
        accepts(&[text.to_string()])
    }

    #[test]
    fn which_offers_are_accepted() {
        assert!(offers("permessage-deflate"));
        assert!(offers("permessage-deflate; client_max_window_bits"));
        assert!(offers(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ));
        assert!(offers("permessage-deflate; server_max_window_bits=15"));
        assert!(offers(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ));
        assert!(!offers("permessage-deflate; server_max_window_bits=10"));
        assert!(!offers("permessage-deflate; client_max_window_bits=7"));
        assert!(!offers("permessage-deflate; x-custom"));
        assert!(!offers(
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        ));
        assert!(!offers("x-webkit-deflate-frame"));
        assert!(!accepts(&[]));
    }

    #[test]
    fn a_stored_head_and_a_deflated_tail_inflate_as_one_message() {
        let mut payload = Vec::new();
        for stored in [&b"{\"seq\":"[..], b"42"] {
            payload.extend(stored_block_header(stored.len()));
            payload.extend_from_slice(stored);
        }
        payload.extend(deflate_piece(
            b",\"data\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
        ));
        let text = inflate(&payload, 1000).expect("valid");
        assert_eq!(
            text,
            b"{\"seq\":42,\"data\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}"
        );
        // The compressor is reused: the next piece is independent.
        let again = deflate_piece(b"hello hello hello");
        assert_eq!(inflate(&again, 100).expect("valid"), b"hello hello hello");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = deflate_piece(&vec![b'a'; 10 << 20]);
        assert!(bomb.len() < 20_000, "10 MiB of 'a' deflate small");
        match inflate(&bomb, 64 * 1024) {
            Err(CloseReason::MessageTooBig { size, max }) => {
                assert_eq!(max, 64 * 1024);
                assert!(size > max as u64);
            }
            other => panic!("expected 1009, got {other:?}"),
        }
        assert_eq!(inflate(&bomb[..0], 10).expect("empty"), b"");
        let exact = deflate_piece(&[b'b'; 100]);
        assert_eq!(inflate(&exact, 100).expect("at the limit").len(), 100);
        assert!(inflate(&exact, 99).is_err());
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert!(matches!(
            inflate(&[0xff, 0xff, 0xff, 0x00], 100),
            Err(CloseReason::Protocol(_))
        ));
    }
}
