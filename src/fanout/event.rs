//! Events and the one frame each becomes.
//!
//! A producer serializes everything but `seq` into an [`EncodedEvent`] on
//! its own thread; the sequencer then only splices in the number and the
//! frame header, once per event, for every reactor.

use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::value::RawValue;

use super::delivery::{Fate, Shaping};
use super::publisher::PublishError;
use crate::proto::deflate::{deflate_piece, stored_block_header, STORED_BLOCK_HEADER};
use crate::proto::frames::{header_len, put_compressed_header, put_header};
use crate::time::rfc3339_millis;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// An event as a producer hands it to the relay.
#[derive(Debug, Clone)]
pub struct Event {
    channel: String,
    event_type: Option<String>,
    data: Box<RawValue>,
}

impl Event {
    /// An event on `channel` whose `data` is `data` serialized to JSON.
    pub fn new(channel: impl Into<String>, data: &impl Serialize) -> Result<Event, PublishError> {
        let data =
            serde_json::value::to_raw_value(data).map_err(|e| PublishError::Json(e.to_string()))?;
        Ok(Event::from_raw(channel.into(), None, data))
    }

    /// An event whose `data` is already JSON text; it is checked, not re-encoded.
    pub fn from_json(channel: impl Into<String>, json: &str) -> Result<Event, PublishError> {
        let data = RawValue::from_string(json.to_string())
            .map_err(|e| PublishError::Json(e.to_string()))?;
        Ok(Event::from_raw(channel.into(), None, data))
    }

    pub(crate) fn from_raw(
        channel: String,
        event_type: Option<String>,
        data: Box<RawValue>,
    ) -> Event {
        Event {
            channel,
            event_type,
            data,
        }
    }

    /// Sets `type` to something other than the channel; the event then also
    /// carries `"channel"` so subscribers can still tell where it came from.
    pub fn with_type(mut self, event_type: impl Into<String>) -> Event {
        self.event_type = Some(event_type.into());
        self
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn event_type(&self) -> Option<&str> {
        self.event_type.as_deref()
    }

    /// Serializes the event stamped with `at`, leaving a slot for `seq`,
    /// with the default delivery rule and no deflated frame.
    pub fn encode(self, at: SystemTime) -> EncodedEvent {
        self.encode_as(&rfc3339_millis(at), Fate::All, None)
    }

    /// [`Event::encode`] with the relay's delivery rules and compression:
    /// the event's fate and, if it is to travel deflated, all the deflating,
    /// so that the sequencer only splices in the `seq`.
    pub fn encode_shaped(self, at: SystemTime, shaping: &Shaping) -> EncodedEvent {
        self.encode_stamped(&rfc3339_millis(at), shaping)
    }

    /// [`Event::encode_shaped`] with `timestamp` as it was stamped elsewhere
    /// (another relay of a fleet); `timestamp` must be JSON-safe text.
    pub(crate) fn encode_stamped(self, timestamp: &[u8], shaping: &Shaping) -> EncodedEvent {
        let fate = shaping.fate(&self.channel, &self.data);
        self.encode_as(timestamp, fate, Some(shaping))
    }

    /// With `shaping`, the part after `seq` is also deflated if the event
    /// is long enough.
    fn encode_as(self, timestamp: &[u8], fate: Fate, shaping: Option<&Shaping>) -> EncodedEvent {
        let mut body = Vec::with_capacity(64 + self.channel.len() * 2 + self.data.get().len());
        body.extend_from_slice(b"{\"type\":");
        match &self.event_type {
            Some(event_type) if *event_type != self.channel => {
                push_json_string(&mut body, event_type);
                body.extend_from_slice(b",\"channel\":");
                push_json_string(&mut body, &self.channel);
            }
            _ => push_json_string(&mut body, &self.channel),
        }
        body.extend_from_slice(b",\"timestamp\":\"");
        body.extend_from_slice(timestamp);
        body.extend_from_slice(b"\",\"seq\":");
        let seq_at = body.len();
        body.extend_from_slice(b",\"data\":");
        body.extend_from_slice(self.data.get().as_bytes());
        body.push(b'}');
        // The part before `seq` goes stored (uncompressed) with the digits:
        // it is the relay's short envelope, and deflating it separately
        // would save little. The rest, with the data, is deflated here.
        let deflated_tail = shaping
            .is_some_and(|s| s.deflates(body.len()))
            .then(|| deflate_piece(&body[seq_at..]));
        EncodedEvent {
            channel: self.channel.into_boxed_str(),
            body,
            seq_at,
            fate,
            deflated_tail,
        }
    }
}

fn push_json_string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *out, text).expect("bug: writing a string to a Vec cannot fail");
}

/// An event serialized but for its `seq`, on its way to the sequencer.
#[derive(Debug)]
pub struct EncodedEvent {
    pub channel: Box<str>,
    body: Vec<u8>,
    /// Where the decimal `seq` goes in `body`.
    seq_at: usize,
    /// What readers' queues do with it (`[[delivery]]`).
    pub fate: Fate,
    /// `body` after `seq_at`, deflated on its own (RFC 7692, no context
    /// takeover), when the event is to travel deflated too.
    deflated_tail: Option<Vec<u8>>,
}

impl EncodedEvent {
    /// The event's JSON without `seq` (`{"type",["channel",]"timestamp","data"}`):
    /// what a fleet relay sends to NATS, since each relay numbers events itself.
    pub fn envelope(&self) -> Vec<u8> {
        const SEQ_KEY: &[u8] = b",\"seq\":";
        let key_at = self.seq_at - SEQ_KEY.len();
        let mut out = Vec::with_capacity(self.body.len() - SEQ_KEY.len());
        out.extend_from_slice(&self.body[..key_at]);
        out.extend_from_slice(&self.body[self.seq_at..]);
        out
    }

    /// The complete WebSocket text frame, shared by every subscriber.
    pub fn frame(&self, seq: u64) -> Bytes {
        let mut digits = [0u8; 20];
        let digits = format_u64(seq, &mut digits);
        let len = self.body.len() + digits.len();
        let mut out = BytesMut::with_capacity(header_len(len) + len);
        put_header(&mut out, OpCode::Data(Data::Text), len);
        out.put_slice(&self.body[..self.seq_at]);
        out.put_slice(digits);
        out.put_slice(&self.body[self.seq_at..]);
        out.freeze()
    }

    /// The same message as a compressed frame (RSV1 set), for subscribers
    /// that negotiated permessage-deflate; `None` unless the event was
    /// encoded to travel deflated. Its payload: one stored block with
    /// everything up to the `seq` digits, then the deflated rest.
    pub fn deflated_frame(&self, seq: u64) -> Option<Bytes> {
        let tail = self.deflated_tail.as_ref()?;
        let mut digits = [0u8; 20];
        let digits = format_u64(seq, &mut digits);
        let stored = self.seq_at + digits.len();
        let len = STORED_BLOCK_HEADER + stored + tail.len();
        let mut out = BytesMut::with_capacity(header_len(len) + len);
        put_compressed_header(&mut out, OpCode::Data(Data::Text), len);
        out.put_slice(&stored_block_header(stored));
        out.put_slice(&self.body[..self.seq_at]);
        out.put_slice(digits);
        out.put_slice(tail);
        Some(out.freeze())
    }
}

/// The `seq` of an event frame built by [`EncodedEvent::frame`]: the digits
/// after the first `,"seq":`. Unambiguous, since `type` and `channel` come
/// before it as JSON strings, in which a quote is always escaped.
pub fn seq_of_frame(frame: &[u8]) -> Option<u64> {
    const NEEDLE: &[u8] = b",\"seq\":";
    let at = frame.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut value: u64 = 0;
    let mut any = false;
    for &d in digits {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// The payload of a frame built by [`EncodedEvent::frame`]: the event's
/// JSON as the WebSocket carries it.
pub fn payload_of_frame(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or_default()
}

/// Decimal digits of `value`, without allocating.
fn format_u64(mut value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn payload(frame: &Bytes) -> serde_json::Value {
        let skip = header_len(frame.len() - 2);
        serde_json::from_slice(&frame[skip..]).expect("valid JSON")
    }

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_734_863_401_456)
    }

    #[test]
    fn event_frame_shape() {
        let event = Event::new(
            "job.progress",
            &serde_json::json!({"jobId": "import-abc123"}),
        )
        .expect("serializable");
        let frame = event.encode(at()).frame(42);
        assert_eq!(frame[0], 0x81, "final text frame");
        assert_eq!(frame[1] as usize, frame.len() - 2, "7-bit length");
        assert_eq!(
            &frame[2..],
            br#"{"type":"job.progress","timestamp":"2024-12-22T10:30:01.456Z","seq":42,"data":{"jobId":"import-abc123"}}"#
        );
    }

    #[test]
    fn custom_type_carries_channel_and_escapes() {
        let event = Event::from_json("alert.\"x\"", "[1, 2]")
            .expect("json")
            .with_type("alert.warning");
        let value = payload(&event.encode(at()).frame(7));
        assert_eq!(
            value,
            serde_json::json!({"type":"alert.warning","channel":"alert.\"x\"","timestamp":"2024-12-22T10:30:01.456Z","seq":7,"data":[1,2]})
        );
    }

    #[test]
    fn seq_digits_and_long_frames() {
        let big = "x".repeat(1000);
        let encoded = Event::new("a", &big).expect("ok").encode(at());
        for seq in [0, 9, 10, 12345, u64::MAX] {
            let frame = encoded.frame(seq);
            assert_eq!(frame[1], 126, "16-bit length for a 1 KB event");
            let value = payload(&frame);
            assert_eq!(value["seq"], seq);
        }
    }

    #[test]
    fn seq_is_found_in_a_frame_whatever_the_names() {
        let tricky = Event::from_json("a", "{\"seq\":1}")
            .expect("json")
            .with_type(",\"seq\":9");
        let frame = tricky.encode(at()).frame(12345);
        assert_eq!(seq_of_frame(&frame), Some(12345));
        assert_eq!(seq_of_frame(b"{\"type\":\"pong\"}"), None);
    }

    #[test]
    fn invalid_json_is_refused() {
        assert!(matches!(
            Event::from_json("a", "{nope"),
            Err(PublishError::Json(_))
        ));
    }
}
