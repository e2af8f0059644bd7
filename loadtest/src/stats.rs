//! What one swarm member counts, and how members' counts are merged.

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The measuring window of a phase, in unix microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The publisher starts.
    pub start_us: u64,
    /// Warmup ends: deliveries and latencies count from here.
    pub steady_start_us: u64,
    /// The publisher stops.
    pub steady_end_us: u64,
    /// The phase ends whatever happens.
    pub deadline_us: u64,
}

/// How connecting went for one member (or, merged, for the swarm).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    pub requested: u64,
    pub ready: u64,
    pub failed: BTreeMap<String, u64>,
    pub seconds: f64,
    /// Subscribed connections on which the server agreed to
    /// permessage-deflate; `None` if the swarm did not offer it.
    #[serde(default)]
    pub deflate: Option<u64>,
    /// CPU the relay (`--server-pid`) spent while the swarm connected:
    /// handshakes, auth and subscribes. Set by the driver, not by members.
    #[serde(default)]
    pub server_cpu_s: Option<f64>,
}

impl ConnectReport {
    pub fn merge(&mut self, o: &ConnectReport) {
        self.requested += o.requested;
        self.ready += o.ready;
        self.deflate = match (self.deflate, o.deflate) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        add_map(&mut self.failed, &o.failed);
        self.seconds = self.seconds.max(o.seconds);
    }
}

/// The counts of one phase of one member. `hist` is the latency histogram
/// (µs) in HdrHistogram V2 format, hex encoded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseStats {
    /// Subscribed connections when the phase began.
    pub open_at_start: u64,
    pub open_at_end: u64,
    /// Events received in the phase.
    pub received: u64,
    /// Events received inside [steady_start, steady_end].
    pub received_steady: u64,
    /// Events without a publisher timestamp (not from this swarm).
    pub foreign: u64,
    /// Events missing between two that a connection did receive.
    pub seq_gaps: u64,
    pub out_of_order: u64,
    pub pings: u64,
    /// Connections lost since the previous report (so including any lost
    /// between phases), by close code or by `eof` / `reset` / `protocol_error`.
    pub closes: BTreeMap<String, u64>,
    /// CPU seconds of the member's swarm thread during the phase.
    pub cpu_s: f64,
    /// Latency to the kernel's receive timestamp (or to the read, where the
    /// kernel gives none).
    pub hist: String,
    /// Latency to the moment the swarm read the bytes: includes the swarm's
    /// own lag.
    pub hist_read: String,
    /// Deliveries that had a kernel receive timestamp.
    pub kernel_stamped: u64,
    /// Events that arrived compressed (permessage-deflate).
    #[serde(default)]
    pub deflated: u64,
    /// Bytes read from the sockets in the phase: WebSocket frames with their
    /// headers, what the server put on the wire.
    #[serde(default)]
    pub wire_bytes: u64,
}

impl PhaseStats {
    pub fn merge(&mut self, o: &PhaseStats) -> Result<(), String> {
        self.open_at_start += o.open_at_start;
        self.open_at_end += o.open_at_end;
        self.received += o.received;
        self.received_steady += o.received_steady;
        self.foreign += o.foreign;
        self.seq_gaps += o.seq_gaps;
        self.out_of_order += o.out_of_order;
        self.pings += o.pings;
        add_map(&mut self.closes, &o.closes);
        self.cpu_s += o.cpu_s;
        self.kernel_stamped += o.kernel_stamped;
        self.deflated += o.deflated;
        self.wire_bytes += o.wire_bytes;
        self.hist = merge_hex(&self.hist, &o.hist)?;
        self.hist_read = merge_hex(&self.hist_read, &o.hist_read)?;
        Ok(())
    }
}

fn merge_hex(a: &str, b: &str) -> Result<String, String> {
    let mut h = new_hist();
    for part in [a, b] {
        h.add(hist_from_hex(part)?)
            .map_err(|e| format!("histogram merge: {e:?}"))?;
    }
    Ok(hist_to_hex(&h))
}

pub fn add_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

/// Largest latency tracked: one hour in microseconds (larger ones saturate).
pub const HIST_MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds with fixed bounds. (Fixed because
/// hdrhistogram 7.6 misplaces counts when `add` has to resize the target.)
pub fn new_hist() -> Histogram<u64> {
    // These bounds and 3 significant figures are valid, so this holds.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3)
        .unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}

pub fn hist_to_hex(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    if V2Serializer::new().serialize(h, &mut bytes).is_err() {
        return String::new();
    }
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The histogram encoded by `hist_to_hex`; an empty string is an empty one.
pub fn hist_from_hex(s: &str) -> Result<Histogram<u64>, String> {
    if s.is_empty() {
        return Ok(new_hist());
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(format!("bad hex digit {c}")),
    };
    if !s.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    let bytes = s
        .as_bytes()
        .chunks(2)
        .map(|p| Ok((digit(p[0])? << 4) | digit(p[1])?))
        .collect::<Result<Vec<u8>, String>>()?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram decode: {e:?}"))
}

/// Accumulates one phase on the hot path.
pub struct PhaseAcc {
    pub window: Window,
    pub stats: PhaseStats,
    pub hist: Histogram<u64>,
    /// Publish to the swarm's read, for one delivery in `READ_SAMPLE`: it
    /// only tells how far the swarm itself lags, and a second record per
    /// delivery was a tenth of the swarm's CPU at 8 M deliveries/s.
    pub hist_read: Histogram<u64>,
}

/// One delivery in this many (by a hash of the delivery count) goes into
/// `PhaseAcc::hist_read`.
/// A power of two.
pub const READ_SAMPLE: u64 = 8;

/// When an event's bytes arrived: the kernel's receive timestamp, if the
/// socket gave one, and the time the swarm read them (unix µs).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub kernel_us: Option<u64>,
    pub read_us: u64,
}

impl Arrival {
    #[cfg(test)]
    pub fn read_at(read_us: u64) -> Self {
        Arrival {
            kernel_us: None,
            read_us,
        }
    }
}

impl PhaseAcc {
    pub fn new(window: Window, open: u64) -> Self {
        PhaseAcc {
            window,
            stats: PhaseStats {
                open_at_start: open,
                ..PhaseStats::default()
            },
            hist: new_hist(),
            hist_read: new_hist(),
        }
    }

    /// One event arrived on a connection whose previous seq was `last_seq`
    /// (0: none yet).
    #[inline]
    pub fn event(&mut self, at: Arrival, last_seq: u64, seq: u64, t: Option<u64>) {
        let s = &mut self.stats;
        s.received += 1;
        if last_seq != 0 {
            if seq > last_seq + 1 {
                s.seq_gaps += seq - last_seq - 1;
            } else if seq <= last_seq {
                s.out_of_order += 1;
            }
        }
        let w = &self.window;
        let now_us = at.kernel_us.unwrap_or(at.read_us);
        if at.kernel_us.is_some() {
            s.kernel_stamped += 1;
        }
        if now_us >= w.steady_start_us && now_us <= w.steady_end_us {
            s.received_steady += 1;
        }
        match t {
            Some(t) if t >= w.steady_start_us => {
                self.hist.saturating_record(now_us.saturating_sub(t));
                // A multiplicative hash, not `received % 8`: deliveries come
                // in passes over the same sockets, and a plain modulus would
                // pick the same sockets every pass when their count is a
                // multiple of 8.
                if s.received.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    >> (64 - READ_SAMPLE.trailing_zeros())
                    == 0
                {
                    self.hist_read
                        .saturating_record(at.read_us.saturating_sub(t));
                }
            }
            Some(_) => {}
            None => s.foreign += 1,
        }
    }

    pub fn finish(mut self, open: u64, cpu_s: f64) -> PhaseStats {
        self.stats.open_at_end = open;
        self.stats.cpu_s = cpu_s;
        self.stats.hist = hist_to_hex(&self.hist);
        self.stats.hist_read = hist_to_hex(&self.hist_read);
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> Window {
        Window {
            start_us: 1_000,
            steady_start_us: 2_000,
            steady_end_us: 10_000,
            deadline_us: 20_000,
        }
    }

    #[test]
    fn counts_gaps_and_steady_window() {
        let mut a = PhaseAcc::new(window(), 3);
        a.event(Arrival::read_at(1_500), 0, 1, Some(1_400)); // warmup: not steady, no latency
        a.event(Arrival::read_at(2_500), 1, 2, Some(2_100));
        a.event(Arrival::read_at(3_000), 2, 5, Some(2_900)); // 3 and 4 missing
        a.event(Arrival::read_at(3_100), 5, 4, None); // late and foreign
        let s = a.finish(3, 0.5);
        assert_eq!(s.received, 4);
        assert_eq!(s.received_steady, 3);
        assert_eq!(s.seq_gaps, 2);
        assert_eq!(s.out_of_order, 1);
        assert_eq!(s.foreign, 1);
        let h = hist_from_hex(&s.hist).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.len(), 2);
        assert_eq!(h.max(), 400);
    }

    #[test]
    fn histograms_merge_exactly() {
        let mut a = PhaseAcc::new(window(), 1);
        let mut b = PhaseAcc::new(window(), 2);
        for i in 0..1000u64 {
            a.event(Arrival::read_at(5_000 + i), 0, i + 1, Some(4_000));
            b.event(Arrival::read_at(9_000), 0, i + 1, Some(3_000 + i));
        }
        let mut sa = a.finish(1, 1.0);
        let mut sb = b.finish(2, 2.0);
        sb.closes.insert("1008".into(), 1);
        (sa.deflated, sa.wire_bytes) = (10, 1000);
        (sb.deflated, sb.wire_bytes) = (5, 500);
        sa.merge(&sb).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sa.received, 2000);
        assert_eq!((sa.deflated, sa.wire_bytes), (15, 1500));
        assert_eq!(sa.open_at_start, 3);
        assert_eq!(sa.closes.get("1008"), Some(&1));
        assert!((sa.cpu_s - 3.0).abs() < 1e-9);
        let h = hist_from_hex(&sa.hist).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.len(), 2000);
        assert_eq!(h.min(), 1000);
        assert!(h.max() >= 6000 && h.max() <= 6010);
    }

    #[test]
    fn bad_hex_is_an_error_not_a_panic() {
        assert!(hist_from_hex("zz").is_err());
        assert!(hist_from_hex("abc").is_err());
        assert!(hist_from_hex("00112233").is_err());
        assert_eq!(hist_from_hex("").map(|h| h.len()).ok(), Some(0));
    }

    #[test]
    fn connect_reports_merge() {
        let mut a = ConnectReport {
            requested: 10,
            ready: 9,
            seconds: 1.0,
            ..Default::default()
        };
        a.failed.insert("timeout".into(), 1);
        a.deflate = Some(7);
        let b = a.clone();
        a.merge(&b);
        assert_eq!(
            (a.requested, a.ready, a.deflate, a.failed.get("timeout")),
            (20, 18, Some(14), Some(&2))
        );
    }
}
