//! Any bytes as client frames, fed in arbitrary chunks: the reader must never
//! panic, never consume more than it was given, and never hand out a text
//! message over the limit or one that is not UTF-8.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::proto::frames::{Message, MessageReader};

const MAX: usize = 512;

fuzz_target!(|input: (u8, Vec<u8>)| {
    let (chunk, bytes) = input;
    let chunk = usize::from(chunk).max(1);
    let mut reader = MessageReader::default();
    let mut pending: Vec<u8> = Vec::new();
    for piece in bytes.chunks(chunk) {
        pending.extend_from_slice(piece);
        loop {
            match reader.read(&mut pending, MAX) {
                Ok(None) => break,
                Ok(Some((message, used))) => {
                    assert!(used > 0 && used <= pending.len());
                    if let Some(Message::Text(text)) = &message {
                        assert!(text.len() <= MAX);
                    }
                    pending.drain(..used);
                }
                Err(reason) => {
                    assert!(matches!(reason.code(), 1002 | 1003 | 1007 | 1009));
                    return;
                }
            }
        }
        // An incomplete frame is bounded by the limit plus a header.
        assert!(pending.len() <= MAX + 14 + chunk);
    }
});
