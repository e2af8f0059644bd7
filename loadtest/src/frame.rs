//! WebSocket frames as the swarm sees them: a boundary finder for server
//! frames (unmasked) and an encoder for client frames (masked).
//!
//! The finder does the minimum on the hot path: it reads the header, hands
//! back the payload (or, for a text frame larger than what is buffered, a
//! prefix long enough to find `seq` and `t`) and says how many payload bytes
//! the caller must skip in later reads.
//!
//! RSV1 marks a message compressed with permessage-deflate (RFC 7692); the
//! finder reports it, and the connection decides whether it was agreed.

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// How much of a large text frame must be buffered before it is scanned.
pub const TEXT_PREFIX: usize = 512;
/// The most a connection ever keeps between reads in frame mode.
pub const MAX_FRAME_LEFTOVER: usize = 14 + TEXT_PREFIX;

/// Close code reported when a close frame carries no code (RFC 6455 7.1.5).
pub const CLOSE_NO_CODE: u16 = 1005;

#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A text frame's payload, or its first bytes when the frame is larger
    /// than what is buffered (the rest is reported as `skip`).
    Text(&'a [u8]),
    /// The same for a text frame with RSV1 set: deflated data. `whole` says
    /// whether this is the complete payload of an unfragmented message (then
    /// it must inflate to its end) or only its first bytes.
    Deflated {
        payload: &'a [u8],
        whole: bool,
    },
    Ping(&'a [u8]),
    Pong,
    /// A close frame: its code, and its reason (UTF-8 text, possibly empty).
    Close {
        code: u16,
        reason: &'a [u8],
    },
    /// Binary or continuation data: not inspected.
    Data,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    Frame {
        item: Item<'a>,
        /// Bytes of `buf` used by this frame.
        consumed: usize,
        /// Payload bytes of this frame that are not in `buf` yet.
        skip: u64,
    },
    /// Not enough bytes buffered to go on.
    NeedMore,
    /// The server broke the protocol; the connection should be dropped.
    Error(&'static str),
}

/// Finds the next server frame at the start of `buf`.
pub fn next_frame(buf: &[u8]) -> Step<'_> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Step::NeedMore,
    };
    // RSV2 and RSV3 belong to no extension the swarm offers.
    if b0 & 0x30 != 0 {
        return Step::Error("reserved bits set");
    }
    if b1 & 0x80 != 0 {
        return Step::Error("masked server frame");
    }
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    let op = b0 & 0x0F;
    let (len, hdr) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Step::NeedMore,
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
            None => return Step::NeedMore,
        },
        n => (u64::from(n), 2),
    };
    let avail = buf.len() - hdr;
    if op >= 0x8 {
        // RFC 7692 6.1: control frames never carry the compressed bit.
        if !fin || len > 125 || rsv1 {
            return Step::Error("bad control frame");
        }
        let len = len as usize;
        let Some(payload) = buf.get(hdr..hdr + len) else {
            return Step::NeedMore;
        };
        let item = match op {
            OP_CLOSE => match payload {
                [] => Item::Close {
                    code: CLOSE_NO_CODE,
                    reason: &[],
                },
                [_] => return Step::Error("one-byte close payload"),
                [a, b, reason @ ..] => Item::Close {
                    code: u16::from_be_bytes([*a, *b]),
                    reason,
                },
            },
            OP_PING => Item::Ping(payload),
            OP_PONG => Item::Pong,
            _ => return Step::Error("reserved opcode"),
        };
        return Step::Frame {
            item,
            consumed: hdr + len,
            skip: 0,
        };
    }
    if op != OP_TEXT && op != OP_BINARY && op != OP_CONT {
        return Step::Error("reserved opcode");
    }
    // RFC 7692 6.1: the bit is set on the first frame of a message only.
    if rsv1 && op == OP_CONT {
        return Step::Error("compressed bit on a continuation frame");
    }
    let text = |payload, whole| {
        if rsv1 {
            Item::Deflated { payload, whole }
        } else {
            Item::Text(payload)
        }
    };
    if avail as u64 >= len {
        let len = len as usize;
        let item = if op == OP_TEXT {
            text(&buf[hdr..hdr + len], fin)
        } else {
            Item::Data
        };
        return Step::Frame {
            item,
            consumed: hdr + len,
            skip: 0,
        };
    }
    // The frame continues past what is buffered.
    if op == OP_TEXT {
        if avail < TEXT_PREFIX {
            return Step::NeedMore;
        }
        return Step::Frame {
            item: text(&buf[hdr..], false),
            consumed: buf.len(),
            skip: len - avail as u64,
        };
    }
    Step::Frame {
        item: Item::Data,
        consumed: buf.len(),
        skip: len - avail as u64,
    }
}

/// Appends a masked client frame (FIN set) to `out`.
pub fn encode_masked(out: &mut Vec<u8>, op: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | (op & 0x0F));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Appends a masked close frame carrying `code`.
pub fn encode_close(out: &mut Vec<u8>, code: u16, mask: [u8; 4]) {
    encode_masked(out, OP_CLOSE, &code.to_be_bytes(), mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80 | op];
        let len = payload.len();
        if len < 126 {
            v.push(len as u8);
        } else if len <= 65535 {
            v.push(126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(len as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn whole_text_frame() {
        let f = server_frame(OP_TEXT, b"hello");
        assert_eq!(
            next_frame(&f),
            Step::Frame {
                item: Item::Text(b"hello"),
                consumed: 7,
                skip: 0
            }
        );
    }

    #[test]
    fn partial_frames_need_more() {
        let f = server_frame(OP_TEXT, &[b'a'; 300]);
        for cut in 0..f.len() {
            assert_eq!(next_frame(&f[..cut]), Step::NeedMore, "cut {cut}");
        }
        assert!(matches!(next_frame(&f), Step::Frame { consumed, .. } if consumed == f.len()));
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut buf = server_frame(OP_TEXT, b"one");
        buf.extend(server_frame(OP_PING, b"pp"));
        buf.extend(server_frame(OP_TEXT, &[b'x'; 200]));
        buf.extend(server_frame(OP_CLOSE, &1001u16.to_be_bytes()));
        let mut pos = 0;
        let mut items = Vec::new();
        for _ in 0..10 {
            match next_frame(&buf[pos..]) {
                Step::Frame { item, consumed, .. } => {
                    items.push(format!("{item:?}").chars().take(20).collect::<String>());
                    pos += consumed;
                }
                Step::NeedMore => break,
                Step::Error(e) => panic!("{e}"),
            }
        }
        assert_eq!(pos, buf.len());
        assert_eq!(items.len(), 4);
        assert!(items[1].starts_with("Ping"));
        assert!(items[3].starts_with("Close { code: 1001"));
    }

    #[test]
    fn large_text_frame_gives_prefix_and_skip() {
        let payload = vec![b'z'; 100_000];
        let f = server_frame(OP_TEXT, &payload);
        // 10-byte header, then only part of the payload is buffered.
        assert_eq!(next_frame(&f[..10 + 100]), Step::NeedMore);
        match next_frame(&f[..10 + 1000]) {
            Step::Frame {
                item: Item::Text(p),
                consumed,
                skip,
            } => {
                assert_eq!(p.len(), 1000);
                assert_eq!(consumed, 1010);
                assert_eq!(skip, 99_000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn binary_is_skipped_without_buffering() {
        let f = server_frame(OP_BINARY, &[1u8; 1000]);
        assert_eq!(
            next_frame(&f[..20]),
            Step::Frame {
                item: Item::Data,
                consumed: 20,
                skip: 984
            }
        );
    }

    #[test]
    fn close_codes() {
        let f = server_frame(OP_CLOSE, &[0x03, 0xF0, b'b', b'y', b'e']);
        assert!(matches!(
            next_frame(&f),
            Step::Frame {
                item: Item::Close {
                    code: 1008,
                    reason: b"bye"
                },
                ..
            }
        ));
        let f = server_frame(OP_CLOSE, b"");
        assert!(matches!(
            next_frame(&f),
            Step::Frame {
                item: Item::Close {
                    code: 1005,
                    reason: b""
                },
                ..
            }
        ));
        let f = server_frame(OP_CLOSE, b"x");
        assert!(matches!(next_frame(&f), Step::Error(_)));
    }

    #[test]
    fn ping_payload_and_bad_control_frames() {
        let f = server_frame(OP_PING, b"abc");
        assert!(matches!(
            next_frame(&f),
            Step::Frame {
                item: Item::Ping(b"abc"),
                ..
            }
        ));
        let mut long_ping = server_frame(OP_PING, &[0u8; 126]);
        assert!(matches!(next_frame(&long_ping), Step::Error(_)));
        long_ping[0] = OP_PING; // not FIN
        assert!(matches!(next_frame(&long_ping), Step::Error(_)));
    }

    #[test]
    fn protocol_errors() {
        assert!(matches!(next_frame(&[0xA1, 0x00]), Step::Error(_)));
        assert!(matches!(next_frame(&[0x91, 0x00]), Step::Error(_)));
        assert!(matches!(
            next_frame(&[0x81, 0x80, 0, 0, 0, 0]),
            Step::Error(_)
        ));
        assert!(matches!(next_frame(&[0x83, 0x00]), Step::Error(_)));
        assert!(matches!(next_frame(&[0x8B, 0x00]), Step::Error(_)));
    }

    /// A server frame with RSV1 set: the first frame of a compressed message.
    fn deflated_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = server_frame(op, payload);
        f[0] = if fin { 0xC0 } else { 0x40 } | op;
        f
    }

    #[test]
    fn compressed_bit_on_text_frames() {
        let f = deflated_frame(true, OP_TEXT, b"\x4a\x4c\x4a\x06\x00");
        assert_eq!(
            next_frame(&f),
            Step::Frame {
                item: Item::Deflated {
                    payload: b"\x4a\x4c\x4a\x06\x00",
                    whole: true
                },
                consumed: 7,
                skip: 0
            }
        );
        // The first fragment of a message: not the whole payload.
        let f = deflated_frame(false, OP_TEXT, b"abc");
        assert!(matches!(
            next_frame(&f),
            Step::Frame {
                item: Item::Deflated { whole: false, .. },
                ..
            }
        ));
        // Larger than what is buffered: a prefix, the rest skipped.
        let f = deflated_frame(true, OP_TEXT, &[7u8; 5000]);
        assert_eq!(next_frame(&f[..4 + 100]), Step::NeedMore);
        match next_frame(&f[..4 + 600]) {
            Step::Frame {
                item: Item::Deflated { payload, whole },
                consumed,
                skip,
            } => assert_eq!(
                (payload.len(), whole, consumed, skip),
                (600, false, 604, 4400)
            ),
            other => panic!("{other:?}"),
        }
        // Binary data is skipped compressed or not.
        let f = deflated_frame(true, OP_BINARY, b"xy");
        assert!(matches!(
            next_frame(&f),
            Step::Frame {
                item: Item::Data,
                ..
            }
        ));
    }

    #[test]
    fn compressed_bit_where_rfc7692_forbids_it() {
        let ping = deflated_frame(true, OP_PING, b"p");
        assert_eq!(next_frame(&ping), Step::Error("bad control frame"));
        let close = deflated_frame(true, OP_CLOSE, &1000u16.to_be_bytes());
        assert_eq!(next_frame(&close), Step::Error("bad control frame"));
        let cont = deflated_frame(true, OP_CONT, b"abc");
        assert_eq!(
            next_frame(&cont),
            Step::Error("compressed bit on a continuation frame")
        );
    }

    #[test]
    fn masked_encoding_round_trips() {
        let mask = [1, 2, 3, 4];
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            encode_masked(&mut out, OP_TEXT, &payload, mask);
            assert_eq!(out[0], 0x81);
            assert_eq!(out[1] & 0x80, 0x80);
            let hdr = match out[1] & 0x7F {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            assert_eq!(&out[hdr..hdr + 4], &mask);
            let un: Vec<u8> = out[hdr + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3])
                .collect();
            assert_eq!(un, payload);
        }
        let mut out = Vec::new();
        encode_close(&mut out, 1000, [0; 4]);
        assert_eq!(out, vec![0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]);
    }
}
