//! One swarm connection: its state and what it does with the bytes it reads.
//! No sockets here; the swarm loop moves bytes in and out.

use crate::frame::{self, Item, Step};
use crate::handshake::{self, Head};
use crate::inflate::{self, Inflater};
use crate::resume::{self, Replies, Track};
use crate::scan::{self, Reply};
use crate::stats::{Arrival, PhaseAcc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    /// The upgrade request is out; waiting for `101`.
    Handshake,
    /// The subscribe message is out; waiting for `subscribed`.
    Subscribing,
    Ready,
    Closed,
}

/// What the connection wants after a feed.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    Keep,
    /// Drop the socket; the reason is a close code or a short word.
    Close(String),
}

pub struct Conn {
    pub state: State,
    /// Unprocessed bytes kept between reads: a partial frame (at most
    /// `frame::MAX_FRAME_LEFTOVER`) or a partial handshake response.
    pub leftover: Vec<u8>,
    /// Bytes waiting to be written.
    pub out: Vec<u8>,
    /// Payload bytes of a large frame still to be skipped.
    pub skip: u64,
    /// Highest seq received on this connection (0: none).
    pub last_seq: u64,
    /// The client's place in the event stream across its connections
    /// (storm mode): kept when the connection is replaced.
    pub track: Track,
    /// The `since` seq this connection's subscribe carried, if it had one.
    pub asked: Option<u64>,
    /// A close frame was received or sent: drop once `out` is written.
    pub closing: Option<String>,
    /// The `retry_after_ms` of the server's close reason, if it gave one
    /// (a relay that is stopping spreads its clients' returns with it).
    pub retry_after_ms: Option<u64>,
    pub started_ms: u64,
    /// The server agreed to permessage-deflate on this connection.
    pub deflate: bool,
}

/// Everything a feed may touch besides the connection.
pub struct Ctx<'a> {
    pub at: Arrival,
    pub acc: Option<&'a mut PhaseAcc>,
    pub subscribe: &'a [u8],
    pub mask: [u8; 4],
    pub pings: &'a mut u64,
    pub fields: &'a mut scan::FieldScanner,
    /// Keep `Conn::track` (storm mode); off, events cost nothing more.
    pub track: bool,
    /// Subscribe with `since` when the track has a position to resume from.
    pub resume: bool,
    pub replies: &'a mut Replies,
    /// The thread's inflater when the swarm offers permessage-deflate
    /// (`--deflate`); `None`, it offers nothing and accepts nothing.
    pub inflater: Option<&'a mut Inflater>,
}

impl Conn {
    pub fn new(request: Vec<u8>, started_ms: u64) -> Self {
        Conn {
            state: State::Connecting,
            leftover: Vec::new(),
            out: request,
            skip: 0,
            last_seq: 0,
            track: Track::default(),
            asked: None,
            closing: None,
            retry_after_ms: None,
            started_ms,
            deflate: false,
        }
    }

    /// Handles `data` (the previous leftover followed by newly read bytes).
    /// Keeps what it cannot use yet in `leftover`.
    pub fn feed(&mut self, data: &[u8], cx: &mut Ctx<'_>) -> Fate {
        if self.state == State::Handshake {
            match handshake::parse_head(data) {
                Head::Partial => {
                    self.leftover.clear();
                    self.leftover.extend_from_slice(data);
                    return Fate::Keep;
                }
                Head::Invalid => return Fate::Close("bad_http_response".into()),
                Head::Status { code: 101, len } => {
                    let answer = handshake::header_values(&data[..len], "Sec-WebSocket-Extensions");
                    // RFC 6455 4.1: an extension the client did not offer
                    // fails the connection.
                    match inflate::agreed(&answer) {
                        Ok(agreed) if agreed && cx.inflater.is_none() => {
                            return Fate::Close("unoffered_extension".into())
                        }
                        Ok(agreed) => self.deflate = agreed,
                        Err(_) => return Fate::Close("bad_extension_answer".into()),
                    }
                    self.state = State::Subscribing;
                    let since = cx.resume.then(|| self.track.since()).flatten();
                    match since {
                        Some((epoch, seq)) => {
                            let msg = resume::with_since(cx.subscribe, epoch, seq);
                            frame::encode_masked(&mut self.out, frame::OP_TEXT, &msg, cx.mask);
                            self.asked = Some(seq);
                        }
                        None => frame::encode_masked(
                            &mut self.out,
                            frame::OP_TEXT,
                            cx.subscribe,
                            cx.mask,
                        ),
                    }
                    return self.feed_frames(&data[len..], cx);
                }
                Head::Status { code, .. } => return Fate::Close(format!("http_{code}")),
            }
        }
        self.feed_frames(data, cx)
    }

    fn feed_frames(&mut self, data: &[u8], cx: &mut Ctx<'_>) -> Fate {
        let mut pos = 0;
        // Every turn consumes at least one byte or leaves the loop.
        while pos < data.len() {
            if self.skip > 0 {
                let n = self.skip.min((data.len() - pos) as u64);
                pos += n as usize;
                self.skip -= n;
                continue;
            }
            match frame::next_frame(&data[pos..]) {
                Step::NeedMore => break,
                Step::Error(_) => return Fate::Close("protocol_error".into()),
                Step::Frame {
                    item,
                    consumed,
                    skip,
                } => {
                    pos += consumed.max(1);
                    self.skip = skip;
                    if let Fate::Close(why) = self.on_item(item, cx) {
                        return Fate::Close(why);
                    }
                }
            }
        }
        self.leftover.clear();
        self.leftover
            .extend_from_slice(&data[pos.min(data.len())..]);
        Fate::Keep
    }

    fn on_item(&mut self, item: Item<'_>, cx: &mut Ctx<'_>) -> Fate {
        match item {
            Item::Text(p) => return self.on_text(p, false, cx),
            Item::Deflated { payload, whole } => {
                // RFC 7692 6: RSV1 means something only once agreed (and
                // it is agreed only when the swarm has an inflater).
                let inflater = match cx.inflater.take() {
                    Some(inflater) if self.deflate => inflater,
                    other => {
                        cx.inflater = other;
                        return Fate::Close("protocol_error".into());
                    }
                };
                let fate = match inflater.inflate(payload, whole) {
                    Ok(text) => self.on_text(text, true, cx),
                    Err(_) => Fate::Close("inflate_error".into()),
                };
                cx.inflater = Some(inflater);
                return fate;
            }
            Item::Ping(p) => {
                *cx.pings += 1;
                if self.closing.is_none() {
                    frame::encode_masked(&mut self.out, frame::OP_PONG, p, cx.mask);
                }
            }
            Item::Close { code, reason } => {
                self.retry_after_ms = crate::storm::retry_after_ms(reason);
                if self.closing.is_none() {
                    frame::encode_close(&mut self.out, code_to_echo(code), cx.mask);
                }
                self.closing = Some(code.to_string());
                return Fate::Close(code.to_string());
            }
            Item::Pong | Item::Data => {}
        }
        Fate::Keep
    }
}

impl Conn {
    /// A text message (or its beginning), inflated if it came compressed.
    fn on_text(&mut self, p: &[u8], deflated: bool, cx: &mut Ctx<'_>) -> Fate {
        if let Some(kind) = scan::reply_kind(p) {
            return self.on_reply(kind, p, cx);
        }
        let (seq, t) = cx.fields.fields(p);
        if let Some(seq) = seq {
            if let Some(acc) = cx.acc.as_deref_mut() {
                acc.event(cx.at, self.last_seq, seq, t);
                acc.stats.deflated += u64::from(deflated);
            }
            self.last_seq = self.last_seq.max(seq);
            if cx.track {
                self.track.event(seq, cx.at.read_us);
            }
        }
        Fate::Keep
    }

    /// A message that is not an event (rare: parsed with serde).
    fn on_reply(&mut self, kind: Reply, p: &[u8], cx: &mut Ctx<'_>) -> Fate {
        let now = cx.at.read_us;
        match kind {
            Reply::Subscribed if self.state == State::Subscribing => {
                self.state = State::Ready;
                if cx.track {
                    match resume::parse_subscribed(p) {
                        Ok(r) => {
                            let outcome = self.track.subscribed(&r, self.asked, now);
                            cx.replies.count(&outcome);
                        }
                        Err(_) => cx.replies.unparsed += 1,
                    }
                }
            }
            Reply::Error if self.state == State::Subscribing => {
                return Fate::Close("subscribe_error".into());
            }
            Reply::Resync if cx.track => match resume::parse_resync(p) {
                Ok(r) => {
                    *cx.replies.resync.entry(r.reason.clone()).or_insert(0) += 1;
                    self.track.resync(&r, now);
                }
                Err(_) => cx.replies.unparsed += 1,
            },
            _ => {}
        }
        Fate::Keep
    }
}

/// The code to echo in the answering close frame (1005 may not be sent).
fn code_to_echo(code: u16) -> u16 {
    if code == frame::CLOSE_NO_CODE {
        1000
    } else {
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Window;

    fn text(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x81];
        if payload.len() < 126 {
            v.push(payload.len() as u8);
        } else {
            v.push(126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn event(seq: u64, t: u64) -> Vec<u8> {
        text(
            format!(r#"{{"type":"m.s","timestamp":"x","seq":{seq},"data":{{"t":{t},"p":"xx"}}}}"#)
                .as_bytes(),
        )
    }

    fn acc() -> PhaseAcc {
        PhaseAcc::new(
            Window {
                start_us: 0,
                steady_start_us: 0,
                steady_end_us: u64::MAX,
                deadline_us: u64::MAX,
            },
            1,
        )
    }

    fn feed(c: &mut Conn, acc: &mut PhaseAcc, pings: &mut u64, data: &[u8]) -> Fate {
        feed_deflating(c, acc, pings, data, None)
    }

    /// `feed` for a swarm that offers permessage-deflate when `inflater` is
    /// given.
    fn feed_deflating(
        c: &mut Conn,
        acc: &mut PhaseAcc,
        pings: &mut u64,
        data: &[u8],
        inflater: Option<&mut Inflater>,
    ) -> Fate {
        let mut all = std::mem::take(&mut c.leftover);
        all.extend_from_slice(data);
        let mut cx = Ctx {
            at: Arrival::read_at(1_000_000),
            acc: Some(acc),
            subscribe: br#"{"type":"subscribe","channels":["m.s"]}"#,
            mask: [9, 8, 7, 6],
            pings,
            fields: &mut scan::FieldScanner::default(),
            track: true,
            resume: true,
            replies: &mut Replies::default(),
            inflater,
        };
        c.feed(&all, &mut cx)
    }

    #[test]
    fn handshake_subscribe_then_events_split_anywhere() {
        let mut stream = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        stream.extend(text(br#"{"type":"subscribed","channels":["m.s"]}"#));
        for s in 1..=50 {
            stream.extend(event(s, 999_000));
        }
        stream.extend([0x89, 0x02, b'h', b'i']);
        for chunk in [1usize, 3, 7, 64, 1000] {
            let mut c = Conn::new(Vec::new(), 0);
            c.state = State::Handshake;
            let mut a = acc();
            let mut pings = 0;
            for piece in stream.chunks(chunk) {
                assert_eq!(feed(&mut c, &mut a, &mut pings, piece), Fate::Keep);
            }
            assert_eq!(c.state, State::Ready);
            assert!(c.leftover.is_empty());
            assert_eq!(a.stats.received, 50, "chunk {chunk}");
            assert_eq!(a.stats.seq_gaps, 0);
            assert_eq!(pings, 1);
            assert_eq!(a.hist.max(), 1000);
            // subscribe frame then a masked pong "hi"
            assert_eq!(c.out[0], 0x81);
            let pong = &c.out[c.out.len() - 8..];
            assert_eq!(&pong[..2], &[0x8A, 0x82]);
            assert_eq!(pong[6] ^ pong[2], b'h');
        }
    }

    #[test]
    fn reconnect_resumes_with_since_and_counts_the_replay() {
        let plain = br#"{"type":"subscribe","channels":["m.s"]}"#;
        let mut replies = Replies::default();
        let go = |c: &mut Conn, data: &[u8], resume: bool, replies: &mut Replies| {
            let mut all = std::mem::take(&mut c.leftover);
            all.extend_from_slice(data);
            let mut cx = Ctx {
                at: Arrival::read_at(5_000),
                acc: None,
                subscribe: plain,
                mask: [0; 4],
                pings: &mut 0,
                fields: &mut scan::FieldScanner::default(),
                track: true,
                resume,
                replies,
                inflater: None,
            };
            c.feed(&all, &mut cx)
        };
        let upgrade = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        // First connection: a plain subscribe, the reply's seq is where it starts.
        let mut c = Conn::new(Vec::new(), 0);
        c.state = State::Handshake;
        let mut stream = upgrade.to_vec();
        stream.extend(text(
            br#"{"type":"subscribed","channels":["m.s"],"epoch":"ep","seq":10}"#,
        ));
        for s in 11..=12 {
            stream.extend(event(s, 1));
        }
        assert_eq!(go(&mut c, &stream, true, &mut replies), Fate::Keep);
        assert_eq!(c.state, State::Ready, "a reply with a seq is not an event");
        assert_eq!((c.track.last, c.asked), (12, None));
        let first = String::from_utf8_lossy(&c.out[6..]).to_string();
        assert_eq!(first, String::from_utf8_lossy(plain));
        // The drop, then a new connection carrying the track over.
        c.track.dropped(12);
        let track = std::mem::take(&mut c.track);
        let mut c = Conn::new(Vec::new(), 0);
        c.track = track;
        c.state = State::Handshake;
        assert_eq!(go(&mut c, upgrade, true, &mut replies), Fate::Keep);
        let sent: serde_json::Value = serde_json::from_slice(&c.out[6..]).unwrap_or_default();
        assert_eq!(
            sent["since"],
            serde_json::json!({"epoch":"ep","seq":12}),
            "{sent}"
        );
        assert_eq!(c.asked, Some(12));
        let mut stream = text(
            br#"{"type":"subscribed","channels":["m.s"],"epoch":"ep","seq":15,"recovered":true}"#,
        );
        for s in 13..=16 {
            stream.extend(event(s, 1));
        }
        stream.extend(text(
            br#"{"type":"resync","data":{"reason":"overflow","epoch":"ep","seq":20}}"#,
        ));
        assert_eq!(go(&mut c, &stream, true, &mut replies), Fate::Keep);
        assert_eq!(
            (c.track.replayed, c.track.last, c.track.caught_up_us),
            (3, 20, Some(5_000))
        );
        assert!(c.track.holes == [(16, 21)], "{:?}", c.track.holes);
        assert_eq!(replies.recovered, 1);
        assert_eq!(replies.resync.get("overflow"), Some(&1));
        // With resume off the same track subscribes plainly.
        let mut c2 = Conn::new(Vec::new(), 0);
        c2.track = c.track.clone();
        c2.state = State::Handshake;
        assert_eq!(go(&mut c2, upgrade, false, &mut replies), Fate::Keep);
        assert_eq!((&c2.out[6..], c2.asked), (&plain[..], None));
    }

    #[test]
    fn rejected_upgrade_and_subscribe_error() {
        let mut c = Conn::new(Vec::new(), 0);
        c.state = State::Handshake;
        let (mut a, mut p) = (acc(), 0);
        assert_eq!(
            feed(
                &mut c,
                &mut a,
                &mut p,
                b"HTTP/1.1 503 Service Unavailable\r\n\r\n"
            ),
            Fate::Close("http_503".into())
        );
        let mut c = Conn::new(Vec::new(), 0);
        c.state = State::Subscribing;
        let err = text(br#"{"type":"error","data":{"code":"invalid_channel","message":"x"}}"#);
        assert_eq!(
            feed(&mut c, &mut a, &mut p, &err),
            Fate::Close("subscribe_error".into())
        );
    }

    #[test]
    fn close_frame_is_recorded_and_echoed() {
        let mut c = Conn::new(Vec::new(), 0);
        c.state = State::Ready;
        let (mut a, mut p) = (acc(), 0);
        let mut data = event(1, 5);
        data.extend([0x88, 0x02, 0x03, 0xF0]);
        data.extend(event(2, 5)); // after close: ignored
        assert_eq!(
            feed(&mut c, &mut a, &mut p, &data),
            Fate::Close("1008".into())
        );
        assert_eq!(a.stats.received, 1);
        assert_eq!(c.closing.as_deref(), Some("1008"));
        assert_eq!(&c.out[..2], &[0x88, 0x82]);
        assert_eq!(c.retry_after_ms, None, "no reason, no hint");
    }

    #[test]
    fn a_stopping_relays_retry_hint_is_kept() {
        let mut c = Conn::new(Vec::new(), 0);
        c.state = State::Ready;
        let (mut a, mut p) = (acc(), 0);
        let reason = br#"{"reason":"server shutting down","retry_after_ms":4321}"#;
        let mut data = vec![0x88, (2 + reason.len()) as u8, 0x03, 0xE9];
        data.extend_from_slice(reason);
        assert_eq!(
            feed(&mut c, &mut a, &mut p, &data),
            Fate::Close("1001".into())
        );
        assert_eq!(c.retry_after_ms, Some(4321));
        assert_eq!(&c.out[..2], &[0x88, 0x82]);
        assert_eq!([c.out[6] ^ 9, c.out[7] ^ 8], [0x03, 0xE9], "1001 echoed");
    }

    #[test]
    fn large_event_is_scanned_by_prefix_and_skipped() {
        let mut c = Conn::new(Vec::new(), 0);
        c.state = State::Ready;
        let (mut a, mut p) = (acc(), 0);
        let pad = "x".repeat(50_000);
        let big = text(format!(r#"{{"seq":7,"data":{{"t":10,"p":"{pad}"}}}}"#).as_bytes());
        let mut data = big.clone();
        data.extend(event(8, 10));
        for piece in data.chunks(4096) {
            assert_eq!(feed(&mut c, &mut a, &mut p, piece), Fate::Keep);
            assert!(c.leftover.len() <= frame::MAX_FRAME_LEFTOVER);
        }
        assert_eq!(a.stats.received, 2);
        assert_eq!(c.last_seq, 8);
    }

    #[test]
    fn garbage_closes_without_panic() {
        let mut c = Conn::new(Vec::new(), 0);
        c.state = State::Ready;
        let (mut a, mut p) = (acc(), 0);
        assert_eq!(
            feed(&mut c, &mut a, &mut p, &[0xFF; 32]),
            Fate::Close("protocol_error".into())
        );
    }

    /// `text` as a compressed permessage-deflate frame from the server:
    /// deflated by flate2 with a sync flush, the 00 00 ff ff tail removed
    /// (RFC 7692 7.2.1), RSV1 set.
    fn deflated(text: &[u8]) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut z = Compress::new(Compression::default(), false);
        let mut body = Vec::with_capacity(text.len() + 64);
        let status = z.compress_vec(text, &mut body, FlushCompress::Sync);
        assert!(status.is_ok() && z.total_in() as usize == text.len());
        assert_eq!(body.split_off(body.len() - 4), [0, 0, 0xff, 0xff]);
        let mut f = vec![0xC1];
        if body.len() < 126 {
            f.push(body.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(body.len() as u16).to_be_bytes());
        }
        f.extend(body);
        f
    }

    const AGREED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
        client_no_context_takeover\r\n\r\n";

    #[test]
    fn compressed_events_are_inflated_and_counted() {
        let mut stream = AGREED.to_vec();
        // A compressed reply is read as a reply.
        stream.extend(deflated(br#"{"type":"subscribed","channels":["m.s"]}"#));
        for s in 1..=40u64 {
            let pad = "p".repeat(100 + s as usize);
            let ev = format!(r#"{{"type":"m.s","seq":{s},"data":{{"t":999000,"p":"{pad}"}}}}"#);
            // Events alternate: compressed and plain, as the relay sends
            // events under and over compression_min_size.
            if s % 2 == 0 {
                stream.extend(deflated(ev.as_bytes()));
            } else {
                stream.extend(text(ev.as_bytes()));
            }
        }
        let mut inflater = Inflater::default();
        for chunk in [1usize, 5, 200, 100_000] {
            let mut c = Conn::new(Vec::new(), 0);
            c.state = State::Handshake;
            let (mut a, mut p) = (acc(), 0);
            for piece in stream.chunks(chunk) {
                let fate = feed_deflating(&mut c, &mut a, &mut p, piece, Some(&mut inflater));
                assert_eq!(fate, Fate::Keep, "chunk {chunk}");
            }
            assert!(c.deflate);
            assert_eq!(c.state, State::Ready);
            assert_eq!(
                (a.stats.received, a.stats.deflated, a.stats.seq_gaps),
                (40, 20, 0),
                "chunk {chunk}"
            );
            assert_eq!(c.last_seq, 40);
        }
    }

    #[test]
    fn a_large_compressed_event_is_read_from_its_first_bytes() {
        let mut x = 7u32;
        let noise: String = (0..20_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                char::from(b'a' + (x >> 27) as u8 % 26)
            })
            .collect();
        let big = format!(r#"{{"type":"m.s","seq":9,"data":{{"t":10,"p":"{noise}"}}}}"#);
        let mut stream = deflated(big.as_bytes());
        assert!(stream.len() > frame::MAX_FRAME_LEFTOVER + 1000);
        stream.extend(deflated(&event(10, 10)[2..]));
        let mut c = Conn::new(Vec::new(), 0);
        c.state = State::Ready;
        c.deflate = true;
        let (mut a, mut p) = (acc(), 0);
        let mut inflater = Inflater::default();
        for piece in stream.chunks(1500) {
            let fate = feed_deflating(&mut c, &mut a, &mut p, piece, Some(&mut inflater));
            assert_eq!(fate, Fate::Keep);
            assert!(c.leftover.len() <= frame::MAX_FRAME_LEFTOVER);
        }
        assert_eq!((a.stats.received, a.stats.deflated, c.last_seq), (2, 2, 10));
    }

    #[test]
    fn extension_answers_that_fail_the_connection() {
        let head = |ext: &str| {
            format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: {ext}\r\n\r\n")
                .into_bytes()
        };
        let cases: [(&[u8], bool, &str); 4] = [
            // Compression the swarm did not offer.
            (AGREED, false, "unoffered_extension"),
            // Offered, but the server keeps its context between messages:
            // one inflater per thread could not read that.
            (&head("permessage-deflate"), true, "bad_extension_answer"),
            (
                &head("permessage-deflate; server_no_context_takeover; x=1"),
                true,
                "bad_extension_answer",
            ),
            (
                &head("x-webkit-deflate-frame"),
                true,
                "bad_extension_answer",
            ),
        ];
        let mut inflater = Inflater::default();
        for (answer, offered, why) in cases {
            let mut c = Conn::new(Vec::new(), 0);
            c.state = State::Handshake;
            let (mut a, mut p) = (acc(), 0);
            let inf = offered.then_some(&mut inflater);
            assert_eq!(
                feed_deflating(&mut c, &mut a, &mut p, answer, inf),
                Fate::Close(why.into()),
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
        // Offered and declined: the socket runs plain.
        let mut c = Conn::new(Vec::new(), 0);
        c.state = State::Handshake;
        let (mut a, mut p) = (acc(), 0);
        let plain = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        let fate = feed_deflating(&mut c, &mut a, &mut p, plain, Some(&mut inflater));
        assert_eq!(
            (fate, c.deflate, c.state),
            (Fate::Keep, false, State::Subscribing)
        );
    }

    #[test]
    fn compressed_frames_without_agreement_or_valid_data_close() {
        let (mut a, mut p) = (acc(), 0);
        let mut inflater = Inflater::default();
        // RSV1 on a socket that did not agree.
        let mut c = Conn::new(Vec::new(), 0);
        c.state = State::Ready;
        let f = deflated(&event(1, 1)[2..]);
        let fate = feed_deflating(&mut c, &mut a, &mut p, &f, Some(&mut inflater));
        assert_eq!(fate, Fate::Close("protocol_error".into()));
        // Agreed, but the payload is not deflate data (BTYPE 11).
        let mut c = Conn::new(Vec::new(), 0);
        c.state = State::Ready;
        c.deflate = true;
        let fate = feed_deflating(
            &mut c,
            &mut a,
            &mut p,
            &[0xC1, 0x02, 0xff, 0xff],
            Some(&mut inflater),
        );
        assert_eq!(fate, Fate::Close("inflate_error".into()));
        assert_eq!(a.stats.received, 0);
    }

    /// Deterministic pseudo-random bytes for the stress tests below.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_chunking_gives_the_same_counts_as_one_read() {
        let mut stream = Vec::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for s in 1..=300u64 {
            match xorshift(&mut rng) % 10 {
                0 => stream.extend([0x89, 0x01, b'p']),
                1 => stream.extend([0x8A, 0x00]),
                2 => stream.extend([0x82, 0x03, 1, 2, 3]),
                _ => {}
            }
            stream.extend(event(s, 999_000));
        }
        let mut expected = None;
        for round in 0..20 {
            let mut c = Conn::new(Vec::new(), 0);
            c.state = State::Ready;
            let (mut a, mut p) = (acc(), 0);
            let mut pos = 0;
            while pos < stream.len() {
                let n = if round == 0 {
                    stream.len()
                } else {
                    1 + (xorshift(&mut rng) % 300) as usize
                };
                let end = (pos + n).min(stream.len());
                assert_eq!(feed(&mut c, &mut a, &mut p, &stream[pos..end]), Fate::Keep);
                assert!(c.leftover.len() <= frame::MAX_FRAME_LEFTOVER);
                pos = end;
            }
            let got = (a.stats.received, a.stats.seq_gaps, p, c.out.len());
            assert_eq!(got.0, 300);
            assert_eq!(*expected.get_or_insert(got), got, "round {round}");
        }
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded() {
        let mut rng = 42u64;
        for _ in 0..2000 {
            let mut c = Conn::new(Vec::new(), 0);
            c.state = if xorshift(&mut rng).is_multiple_of(2) {
                State::Handshake
            } else {
                State::Subscribing
            };
            let (mut a, mut p) = (acc(), 0);
            for _ in 0..8 {
                let len = (xorshift(&mut rng) % 700) as usize;
                let mut data: Vec<u8> = (0..len).map(|_| xorshift(&mut rng) as u8).collect();
                if let Some(b) = data.first_mut() {
                    // Often a plausible frame start, to get past the first byte.
                    if xorshift(&mut rng).is_multiple_of(2) {
                        *b = 0x81;
                    }
                }
                if let Fate::Close(_) = feed(&mut c, &mut a, &mut p, &data) {
                    break;
                }
                assert!(c.leftover.len() <= handshake::MAX_HEAD.max(frame::MAX_FRAME_LEFTOVER));
            }
        }
    }
}
