//! WebSocket frames (RFC 6455 section 5), without sockets.
//!
//! Inbound: [`MessageReader`] turns client bytes into whole messages, enforcing
//! every "MUST" a server has to check. Outbound: frames the relay writes are
//! built once into [`Bytes`] so that fan-out shares them.

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::error::CloseReason;

/// Longest frame header: 2 bytes, 8 bytes of extended length, 4 of mask.
pub const MAX_HEADER_LEN: usize = 14;
/// "All control frames MUST have a payload length of 125 bytes or less" (5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A complete message from the client. Owned: client messages are rare and
/// small, so an allocation each keeps the reader simple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    /// Only from a reader made with `accepting_binary`.
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The code, if the frame had one. The reason text is checked to be
    /// UTF-8 (RFC 6455 5.5.1) and then dropped: the relay only echoes the code.
    Close(Option<u16>),
}

/// Reassembles fragmented messages. Holds nothing while no message is split.
#[derive(Debug, Default)]
pub struct MessageReader {
    /// The payload received so far of a fragmented message, if one is open.
    fragments: Option<Vec<u8>>,
    /// Whether the open fragmented message is binary.
    fragments_binary: bool,
    /// Whether the open fragmented message is compressed (RSV1 on its first
    /// frame).
    fragments_compressed: bool,
    /// The relay speaks JSON text and closes on binary (1003); the
    /// conformance echo server takes binary too.
    accept_binary: bool,
    /// permessage-deflate was agreed: RSV1 marks a compressed message.
    inflate: bool,
}

impl MessageReader {
    pub fn new(accept_binary: bool, inflate: bool) -> Self {
        MessageReader {
            accept_binary,
            inflate,
            ..MessageReader::default()
        }
    }

    pub fn accepting_binary() -> Self {
        MessageReader::new(true, false)
    }

    /// Whether a fragmented message is open, so the reader holds state.
    pub fn in_message(&self) -> bool {
        self.fragments.is_some()
    }

    /// Decodes the next message from `input`, unmasking it in place.
    ///
    /// Returns `Ok(None)` when `input` holds no complete frame (nothing is
    /// consumed), or `Ok(Some((message, consumed)))`. A frame that completes no
    /// message (a non-final fragment) yields `Ok(Some((None, consumed)))`.
    pub fn read(
        &mut self,
        input: &mut [u8],
        max_message: usize,
    ) -> Result<Option<(Option<Message>, usize)>, CloseReason> {
        let Some((header, len, header_len)) = parse_header(input)? else {
            return Ok(None);
        };
        check_header(&header, len, self.inflate)?;
        // A 64-bit length is the peer's to choose: saturate, never wrap (a
        // wrapped sum once passed this check and then broke the slicing below).
        let buffered = self.fragments.as_ref().map_or(0, Vec::len) as u64;
        let size = buffered.saturating_add(len);
        if matches!(header.opcode, OpCode::Data(_)) && size > max_message as u64 {
            return Err(CloseReason::MessageTooBig {
                size,
                max: max_message,
            });
        }
        // Control payloads are at most 125 bytes and data at most
        // `max_message`, so this neither truncates nor overflows.
        let end = header_len + len as usize;
        if input.len() < end {
            return Ok(None);
        }
        let payload = &mut input[header_len..end];
        if let Some(mask) = header.mask {
            unmask(payload, mask);
        }
        let message = self.on_frame(&header, payload, max_message)?;
        Ok(Some((message, end)))
    }

    fn on_frame(
        &mut self,
        header: &FrameHeader,
        payload: &[u8],
        max_message: usize,
    ) -> Result<Option<Message>, CloseReason> {
        match header.opcode {
            OpCode::Control(Control::Ping) => Ok(Some(Message::Ping(payload.to_vec()))),
            OpCode::Control(Control::Pong) => Ok(Some(Message::Pong)),
            OpCode::Control(Control::Close) => parse_close(payload).map(Some),
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                unreachable!("bug: FrameHeader::parse refuses reserved opcodes (parse_header)")
            }
            OpCode::Data(Data::Continue) => {
                let Some(buffer) = self.fragments.as_mut() else {
                    return Err(CloseReason::Protocol(
                        "continuation frame without a message",
                    ));
                };
                buffer.extend_from_slice(payload);
                if !header.is_final {
                    return Ok(None);
                }
                let whole = self.fragments.take().unwrap_or_default();
                let whole = self.inflated(whole, self.fragments_compressed, max_message)?;
                whole_message(whole, self.fragments_binary).map(Some)
            }
            // Reject binary at its first frame rather than buffering it.
            OpCode::Data(Data::Binary) if !self.accept_binary => Err(CloseReason::BinaryMessage),
            OpCode::Data(data) => {
                if self.fragments.is_some() {
                    return Err(CloseReason::Protocol(
                        "new message started inside a fragmented message",
                    ));
                }
                let binary = data == Data::Binary;
                if header.is_final {
                    let whole = self.inflated(payload.to_vec(), header.rsv1, max_message)?;
                    return whole_message(whole, binary).map(Some);
                }
                self.fragments = Some(payload.to_vec());
                self.fragments_binary = binary;
                self.fragments_compressed = header.rsv1;
                Ok(None)
            }
        }
    }

    /// A whole message's payload, inflated if it was sent compressed;
    /// within `max_message` bytes either way (`proto::deflate::inflate`).
    fn inflated(
        &self,
        payload: Vec<u8>,
        compressed: bool,
        max_message: usize,
    ) -> Result<Vec<u8>, CloseReason> {
        if compressed {
            crate::proto::deflate::inflate(&payload, max_message)
        } else {
            Ok(payload)
        }
    }
}

/// Parses a frame header; `Ok(None)` while it is incomplete.
fn parse_header(input: &[u8]) -> Result<Option<(FrameHeader, u64, usize)>, CloseReason> {
    let mut cursor = Cursor::new(input);
    match FrameHeader::parse(&mut cursor) {
        Ok(Some((header, len))) => Ok(Some((header, len, cursor.position() as usize))),
        Ok(None) => Ok(None),
        // The one error tungstenite's header parser returns on a byte slice:
        // an opcode of 3-7 or 0xB-0xF, refused once the whole header is in.
        // "If an unknown opcode is received, the receiving endpoint MUST
        // _Fail the WebSocket Connection_" (5.2). So `on_frame` never sees one.
        Err(_) => Err(CloseReason::Protocol("reserved opcode")),
    }
}

fn check_header(header: &FrameHeader, len: u64, inflate: bool) -> Result<(), CloseReason> {
    // "MUST be 0 unless an extension is negotiated" (5.2); permessage-deflate
    // defines RSV1 only, and only on "the first frame of a message"
    // (RFC 7692 6): never on a continuation or a control frame.
    let compressed_first_frame =
        inflate && matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
    if (header.rsv1 && !compressed_first_frame) || header.rsv2 || header.rsv3 {
        return Err(CloseReason::Protocol("reserved bits set"));
    }
    // "The server MUST close the connection upon receiving a frame that is not masked" (5.1).
    if header.mask.is_none() {
        return Err(CloseReason::Protocol("client frame not masked"));
    }
    if let OpCode::Control(_) = header.opcode {
        // "Control frames ... MUST NOT be fragmented" (5.5).
        if !header.is_final {
            return Err(CloseReason::Protocol("fragmented control frame"));
        }
        if len > MAX_CONTROL_PAYLOAD {
            return Err(CloseReason::Protocol("control frame over 125 bytes"));
        }
    }
    Ok(())
}

fn whole_message(bytes: Vec<u8>, binary: bool) -> Result<Message, CloseReason> {
    if binary {
        return Ok(Message::Binary(bytes));
    }
    String::from_utf8(bytes)
        .map(Message::Text)
        .map_err(|_| CloseReason::InvalidUtf8)
}

/// A close payload is empty, or a 2-byte code and UTF-8 reason (5.5.1).
fn parse_close(payload: &[u8]) -> Result<Message, CloseReason> {
    match payload {
        [] => Ok(Message::Close(None)),
        [_] => Err(CloseReason::Protocol("close frame with a 1-byte payload")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !is_valid_close_code(code) {
                return Err(CloseReason::Protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(CloseReason::InvalidUtf8);
            }
            Ok(Message::Close(Some(code)))
        }
    }
}

/// Codes a peer may send (RFC 6455 7.4.1 and the IANA registry): 1004-1006 and
/// 1015 are reserved or only for local use; 3000-4999 belong to applications.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // Whole 4-byte words first: four times fewer steps than byte by byte.
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i];
    }
}

/// Writes the header of an unmasked final frame of `opcode` carrying `len` bytes.
pub fn put_header(out: &mut BytesMut, opcode: OpCode, len: usize) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut bytes = [0u8; MAX_HEADER_LEN];
    let mut cursor = Cursor::new(&mut bytes[..]);
    header
        .format(len as u64, &mut cursor)
        .expect("bug: a 14-byte buffer holds any unmasked header");
    let written = cursor.position() as usize;
    out.put_slice(&bytes[..written]);
}

/// Writes the header of an unmasked final frame whose payload is
/// compressed: RSV1 set, "the "Per-Message Compressed" bit" (RFC 7692 6).
pub fn put_compressed_header(out: &mut BytesMut, opcode: OpCode, len: usize) {
    let start = out.len();
    put_header(out, opcode, len);
    out[start] |= 0x40;
}

/// Length of the header for an unmasked frame of `len` payload bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A final text frame, as the server sends it (unmasked).
pub fn encode_text(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Text), payload)
}

pub fn encode_binary(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Binary), payload)
}

pub fn encode_ping() -> Bytes {
    encode(OpCode::Control(Control::Ping), &[])
}

/// "A Pong frame sent in response to a Ping frame must have identical
/// Application data" (5.5.3).
pub fn encode_pong(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Pong), payload)
}

pub fn encode_close(reason: &CloseReason) -> Bytes {
    let text = reason.to_string();
    // The close payload is a control payload: 125 bytes at most, 2 for the code.
    let mut cut = text.len().min(123);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&reason.code().to_be_bytes());
    payload.extend_from_slice(&text.as_bytes()[..cut]);
    encode(OpCode::Control(Control::Close), &payload)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame with the given first byte and payload.
    pub(crate) fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=65_535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    fn read_all(bytes: &[u8], max: usize) -> Result<Vec<Message>, CloseReason> {
        let mut reader = MessageReader::default();
        let mut buf = bytes.to_vec();
        let mut at = 0;
        let mut out = Vec::new();
        while let Some((message, used)) = reader.read(&mut buf[at..], max)? {
            out.extend(message);
            at += used;
        }
        assert_eq!(at, buf.len(), "trailing bytes left undecoded");
        Ok(out)
    }

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 5.7: "A single-frame masked text message".
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            read_all(&frame, 512),
            Ok(vec![Message::Text("Hello".into())])
        );
    }

    #[test]
    fn partial_input_consumes_nothing() {
        let frame = client_frame(0x81, b"{\"type\":\"ping\"}");
        let mut reader = MessageReader::default();
        for cut in 0..frame.len() {
            let mut part = frame[..cut].to_vec();
            assert_eq!(reader.read(&mut part, 512), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn fragments_reassemble_with_interleaved_ping() {
        let mut bytes = client_frame(0x01, b"Hel");
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x80, b"lo"));
        assert_eq!(
            read_all(&bytes, 512),
            Ok(vec![
                Message::Ping(b"p".to_vec()),
                Message::Text("Hello".into())
            ])
        );
    }

    #[test]
    fn extended_lengths() {
        let long = "x".repeat(70_000);
        let mid = "y".repeat(300);
        let mut bytes = client_frame(0x81, long.as_bytes());
        bytes.extend(client_frame(0x81, mid.as_bytes()));
        assert_eq!(
            read_all(&bytes, 100_000),
            Ok(vec![Message::Text(long), Message::Text(mid)])
        );
    }

    #[test]
    fn violations_map_to_close_codes() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        let bad_close = client_frame(0x88, &1005u16.to_be_bytes());
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("unmasked", unmasked, 1002),
            ("rsv1", client_frame(0xC1, b"hi"), 1002),
            ("reserved data opcode", client_frame(0x83, b""), 1002),
            ("reserved control opcode", client_frame(0x8B, b""), 1002),
            ("long ping", client_frame(0x89, &[0; 126]), 1002),
            ("fragmented ping", client_frame(0x09, b""), 1002),
            ("close 1005", bad_close, 1002),
            ("close 999", client_frame(0x88, &999u16.to_be_bytes()), 1002),
            ("close 1-byte", client_frame(0x88, &[3]), 1002),
            ("stray continuation", client_frame(0x80, b"x"), 1002),
            ("binary", client_frame(0x82, b"x"), 1003),
            ("bad utf-8", client_frame(0x81, &[0xff, 0xfe]), 1007),
            ("too big", client_frame(0x81, &[b'a'; 600]), 1009),
        ];
        for (name, bytes, code) in cases {
            let err = read_all(&bytes, 512).expect_err(name);
            assert_eq!(err.code(), code, "{name}: {err:?}");
        }
    }

    #[test]
    fn every_reserved_opcode_is_refused_by_the_header_parser() {
        // `on_frame` has no reserved-opcode case of its own: it relies on
        // tungstenite's FrameHeader::parse refusing them. If that changed,
        // this fails (by the `unreachable!` in `on_frame`, or by a result
        // other than 1002) before any client could find out.
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            let frame = client_frame(0x80 | opcode, b"payload");
            let err = read_all(&frame, 512).expect_err("reserved opcode accepted");
            assert_eq!(
                err,
                CloseReason::Protocol("reserved opcode"),
                "opcode {opcode:#x}"
            );
            // Refused once the header (with its mask) is in, before the payload.
            let mut header_only = frame[..6].to_vec();
            let err = MessageReader::default()
                .read(&mut header_only, 512)
                .expect_err("refused from the header");
            assert_eq!(err.code(), 1002, "opcode {opcode:#x}");
            // A partial header is incomplete, not yet an error.
            assert_eq!(
                MessageReader::default().read(&mut frame[..1].to_vec(), 512),
                Ok(None)
            );
        }
    }

    #[test]
    fn fragmented_total_over_limit_is_1009() {
        let mut bytes = client_frame(0x01, &[b'a'; 300]);
        bytes.extend(client_frame(0x80, &[b'a'; 300]));
        let err = read_all(&bytes, 512).expect_err("over the limit");
        assert_eq!(err.code(), 1009);
    }

    #[test]
    fn oversized_frame_rejected_from_its_header_alone() {
        // A 2^40-byte length must fail before any payload arrives.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&MASK);
        let err = MessageReader::default()
            .read(&mut header, 512)
            .expect_err("too big");
        assert_eq!(err.code(), 1009);
    }

    #[test]
    fn huge_continuation_length_does_not_wrap() {
        // Found by the `frames` fuzz target: a buffered fragment plus a
        // continuation claiming 2^64 - 1 bytes overflowed the size check.
        let mut bytes = client_frame(0x01, b"x");
        let mut huge = vec![0x80, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&MASK);
        bytes.extend(huge);
        let err = read_all(&bytes, 512).expect_err("too big");
        assert_eq!(err.code(), 1009);
    }

    #[test]
    fn close_frames() {
        let mut normal = 1000u16.to_be_bytes().to_vec();
        normal.extend_from_slice(b"bye");
        assert_eq!(
            read_all(&client_frame(0x88, &normal), 512),
            Ok(vec![Message::Close(Some(1000))])
        );
        assert_eq!(
            read_all(&client_frame(0x88, &[]), 512),
            Ok(vec![Message::Close(None)])
        );
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        let err = read_all(&client_frame(0x88, &bad_reason), 512).expect_err("bad utf-8");
        assert_eq!(err.code(), 1007);
    }

    #[test]
    fn binary_when_accepted() {
        let mut bytes = client_frame(0x02, b"ab");
        bytes.extend(client_frame(0x80, &[0xff]));
        bytes.extend(client_frame(0x82, b""));
        let mut reader = MessageReader::accepting_binary();
        let mut at = 0;
        let mut out = Vec::new();
        while let Some((message, used)) = reader.read(&mut bytes[at..], 512).expect("valid") {
            out.extend(message);
            at += used;
        }
        assert_eq!(
            out,
            vec![
                Message::Binary(vec![b'a', b'b', 0xff]),
                Message::Binary(vec![])
            ]
        );
    }

    #[test]
    fn server_frames() {
        assert_eq!(&encode_text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(&encode_ping()[..], &[0x89, 0]);
        assert_eq!(&encode_pong(b"x")[..], &[0x8A, 1, b'x']);
        let big = encode_text(&[b'z'; 300]);
        assert_eq!(&big[..4], &[0x81, 126, 1, 44]);
        assert_eq!(big.len(), 304);
        let huge = encode_text(&vec![b'z'; 70_000]);
        assert_eq!(huge[1], 127);
        assert_eq!(huge.len(), 70_010);
        let close = encode_close(&CloseReason::QueueOverflow);
        assert_eq!(&close[..4], &[0x88, close.len() as u8 - 2, 0x03, 0xF0]);
        assert!(close.len() - 2 <= 125);
    }

    #[test]
    fn unmask_matches_bytewise() {
        for len in 0..20 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut fast = original.clone();
            unmask(&mut fast, MASK);
            let slow: Vec<u8> = original
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i % 4])
                .collect();
            assert_eq!(fast, slow, "len {len}");
        }
    }
}
