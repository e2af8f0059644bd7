//! How long the reactor holds writes back so that several events share one.
//!
//! A loopback or LAN `writev` costs microseconds of kernel time whatever it
//! carries, while each extra frame in it costs tens of nanoseconds (see
//! BENCHMARKS.md, "kernel floor"). So under load the cheapest way to deliver
//! more is to write each socket less often with more frames per write, which
//! costs latency. This controller makes that trade only when the reactor is
//! close to saturation: it watches the share of wall time the reactor spends
//! working rather than waiting in `poll`, lengthens the write interval by a
//! quarter while that share stays above 90%, and shortens it by a fifth once
//! it is under 60%. So the interval settles at the shortest one the reactor
//! can keep up with: at light and moderate load it stays at its floor
//! (`timeouts.coalesce`) and latency is untouched, and towards saturation it
//! climbs only as far as needed, up to `timeouts.coalesce_max`.
//!
//! (It used to double above 75% busy. Measured with one event per request,
//! that took the interval to 20 ms at a quarter of the relay's capacity, and
//! the p99 with it, above Bun's: BENCHMARKS.md, "One event per request".)
//!
//! A longer interval also means deeper per-socket queues (rate × interval
//! frames), and a full queue closes its socket as a slow consumer. So the
//! interval grows only while the deepest queue seen at flush time is under a
//! fifth of its limits: coalescing never eats the headroom meant for a slow
//! reader. A queue deeper than that among sockets that keep up means the
//! relay itself is behind (stalled readers are not counted); the interval
//! then holds, and the intake pause bounds those queues. It used to halve
//! past half the limits, and measured at 1,000 × 8,000 events/s that turned
//! one burst from a publisher into a spiral: a shorter interval, more writes
//! for the same deliveries, a relay further behind, and queues that never
//! got shallow enough for the interval to grow back (BENCHMARKS.md,
//! "Saturation").
//!
//! Sans-I/O: the reactor reports idle time and its clock (milliseconds
//! since start); this decides.

/// Above this busy share, in `GROW_AFTER` periods in a row, the interval
/// grows by a quarter (at least 1 ms): only this close to saturation is
/// latency worth trading for fewer writes.
pub const GROW_ABOVE: f64 = 0.9;
/// Busy periods in a row before the interval grows (and keeps growing).
pub const GROW_AFTER: u32 = 2;
/// ...and only while writes already carry two frames or more on average.
/// Below that, events are sparse next to the passes (a few events a second
/// to very many sockets, where one pass of one-frame writes takes about as
/// long as the gap between events): a longer interval adds latency and
/// batches little. At 1.1, 19,000 sockets at 10 events/s (1.3-1.9 frames
/// per write) grew it to its ceiling, and p99 from 149 to 181-191 ms with
/// it (BENCHMARKS.md, "Scale").
pub const GROW_FROM_FRAMES_PER_WRITE: f64 = 2.0;
/// Below this busy share the interval shrinks by a fifth (at least 1 ms);
/// between the two it holds.
pub const SHRINK_BELOW: f64 = 0.6;
/// The interval may grow only while the deepest queue is under this share
/// of `limits.max_queue_messages` / `max_queue_bytes`.
pub const GROW_BELOW_FILL: f64 = 0.2;
/// Shortest stretch of time the busy share is measured over. It is also at
/// least two intervals, so that each measurement sees several passes.
pub const MIN_PERIOD: u64 = 100;

use super::queue::QueueLimits;

#[derive(Debug, Clone)]
pub struct Coalescer {
    limits: QueueLimits,
    deepest_messages: usize,
    deepest_bytes: usize,
    floor: u64,
    ceiling: u64,
    interval: u64,
    period_start: u64,
    idle_us: u64,
    busy_streak: u32,
    /// Delivery and write counters at the start of the period.
    deliveries_at_start: u64,
    writes_at_start: u64,
    /// Frames per write over the last closed period.
    frames_per_write: f64,
}

impl Coalescer {
    /// `floor` is the interval at light load (0: never hold writes back),
    /// `ceiling` the most it may grow to under load (raised to `floor` if
    /// lower); `limits` are the per-socket queue limits.
    pub fn new(floor: u64, ceiling: u64, limits: QueueLimits, now: u64) -> Coalescer {
        Coalescer {
            limits,
            deepest_messages: 0,
            deepest_bytes: 0,
            floor,
            ceiling: ceiling.max(floor),
            interval: floor,
            period_start: now,
            idle_us: 0,
            busy_streak: 0,
            deliveries_at_start: 0,
            writes_at_start: 0,
            frames_per_write: 0.0,
        }
    }

    /// How many frames writes carried on average over the last measuring
    /// period (0 before the first one closes).
    pub fn frames_per_write(&self) -> f64 {
        self.frames_per_write
    }

    /// The current interval: a socket is written at most once per this.
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// Records time the reactor spent waiting for readiness.
    pub fn idle(&mut self, micros: u64) {
        self.idle_us = self.idle_us.saturating_add(micros);
    }

    /// Records a socket's queue depth as a flush finds it.
    pub fn queue_depth(&mut self, messages: usize, bytes: usize) {
        self.deepest_messages = self.deepest_messages.max(messages);
        self.deepest_bytes = self.deepest_bytes.max(bytes);
    }

    /// The deepest queue of the period as a share of its limits.
    fn fill(&self) -> f64 {
        let share = |n: usize, max: usize| n as f64 / max.max(1) as f64;
        share(self.deepest_messages, self.limits.max_messages)
            .max(share(self.deepest_bytes, self.limits.max_bytes))
    }

    /// Closes the measuring period once it is long enough and adapts the
    /// interval to how busy it was and how many frames writes carried
    /// (`deliveries` and `writes` are running totals). Returns the busy share
    /// when it did.
    pub fn tick(&mut self, now: u64, deliveries: u64, writes: u64) -> Option<f64> {
        let elapsed = now.saturating_sub(self.period_start);
        if elapsed < MIN_PERIOD.max(2 * self.interval) {
            return None;
        }
        let elapsed_us = elapsed * 1000;
        let busy = 1.0 - (self.idle_us.min(elapsed_us) as f64 / elapsed_us as f64);
        let fill = self.fill();
        let frames = deliveries.saturating_sub(self.deliveries_at_start);
        let written = writes.saturating_sub(self.writes_at_start);
        let frames_per_write = frames as f64 / written.max(1) as f64;
        self.busy_streak = if busy > GROW_ABOVE {
            self.busy_streak.saturating_add(1)
        } else {
            0
        };
        if self.floor > 0 {
            if busy < SHRINK_BELOW {
                let shorter = (self.interval * 4 / 5).min(self.interval.saturating_sub(1));
                self.interval = shorter.max(self.floor);
            } else if self.busy_streak >= GROW_AFTER
                && fill < GROW_BELOW_FILL
                && frames_per_write >= GROW_FROM_FRAMES_PER_WRITE
            {
                let longer = (self.interval * 5 / 4).max(self.interval + 1);
                self.interval = longer.min(self.ceiling);
            }
        }
        self.period_start = now;
        self.idle_us = 0;
        self.deepest_messages = 0;
        self.deepest_bytes = 0;
        self.deliveries_at_start = deliveries;
        self.writes_at_start = writes;
        self.frames_per_write = frames_per_write;
        Some(busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QueueLimits = QueueLimits {
        max_messages: 1000,
        max_bytes: 1_000_000,
    };

    fn coalescer(floor: u64, ceiling: u64) -> Coalescer {
        Coalescer::new(floor, ceiling, LIMITS, 0)
    }

    /// Runs `periods` measuring periods in virtual time at a fixed busy share,
    /// with writes carrying ten frames each.
    fn run(c: &mut Coalescer, now: &mut u64, busy: f64, periods: usize) {
        run_writing(c, now, busy, 10.0, periods);
    }

    fn run_writing(c: &mut Coalescer, now: &mut u64, busy: f64, frames: f64, periods: usize) {
        for _ in 0..periods {
            let len = MIN_PERIOD.max(2 * c.interval());
            c.idle(((1.0 - busy) * (len * 1000) as f64) as u64);
            *now += len;
            // Ten writes per millisecond, `frames` frames each.
            let written = len * 10;
            let writes = c.writes_at_start + written;
            let deliveries = c.deliveries_at_start + (written as f64 * frames) as u64;
            assert!(c.tick(*now, deliveries, writes).is_some());
        }
    }

    #[test]
    fn reports_the_frames_per_write_of_the_last_period() {
        let (mut now, mut c) = (0, coalescer(5, 100));
        assert_eq!(c.frames_per_write(), 0.0);
        run_writing(&mut c, &mut now, 0.5, 3.0, 1);
        assert_eq!(c.frames_per_write(), 3.0);
        run_writing(&mut c, &mut now, 0.5, 40.0, 1);
        assert_eq!(c.frames_per_write(), 40.0);
    }

    #[test]
    fn busy_but_one_frame_per_write_keeps_the_floor() {
        // Very many sockets, few events: every pass writes each socket once
        // whatever the interval, so growing it would only add latency.
        let (mut now, mut c) = (0, coalescer(5, 100));
        run_writing(&mut c, &mut now, 0.95, 1.0, 10);
        assert_eq!(c.interval(), 5);
        // Passes a little longer than the gap between events: still no.
        run_writing(&mut c, &mut now, 0.95, 1.9, 10);
        assert_eq!(c.interval(), 5);
        // Once writes batch, the same load grows it.
        run_writing(&mut c, &mut now, 0.95, 3.0, 1);
        assert_eq!(c.interval(), 6);
    }

    #[test]
    fn light_load_keeps_the_floor() {
        let (mut now, mut c) = (0, coalescer(5, 100));
        run(&mut c, &mut now, 0.45, 50);
        assert_eq!(c.interval(), 5);
        // Moderate load, up to 90% busy, is not worth latency either.
        run(&mut c, &mut now, 0.85, 50);
        assert_eq!(c.interval(), 5);
        // Lone busy periods between ordinary ones: noise, not load.
        for _ in 0..20 {
            run(&mut c, &mut now, 0.95, 1);
            run(&mut c, &mut now, 0.45, 1);
        }
        assert_eq!(c.interval(), 5);
    }

    #[test]
    fn saturation_grows_it_by_quarters_up_to_the_ceiling() {
        let (mut now, mut c) = (0, coalescer(5, 100));
        run(&mut c, &mut now, 0.99, 1);
        assert_eq!(c.interval(), 5, "one busy period is not yet a trend");
        run(&mut c, &mut now, 0.99, 1);
        assert_eq!(c.interval(), 6);
        run(&mut c, &mut now, 0.99, 1);
        assert_eq!(c.interval(), 7);
        run(&mut c, &mut now, 0.99, 4);
        assert_eq!(c.interval(), 15, "7, then 8, 10, 12, 15");
        run(&mut c, &mut now, 0.99, 20);
        assert_eq!(c.interval(), 100);
    }

    #[test]
    fn a_busy_share_in_the_band_holds_the_interval() {
        let (mut now, mut c) = (0, coalescer(5, 100));
        run(&mut c, &mut now, 0.95, 3);
        assert_eq!(c.interval(), 7);
        run(&mut c, &mut now, 0.7, 20);
        assert_eq!(c.interval(), 7);
    }

    #[test]
    fn load_going_away_brings_it_back_to_the_floor() {
        let (mut now, mut c) = (0, coalescer(5, 100));
        run(&mut c, &mut now, 0.99, 30);
        assert_eq!(c.interval(), 100);
        run(&mut c, &mut now, 0.05, 3);
        assert_eq!(c.interval(), 51, "100 * 4/5 three times");
        run(&mut c, &mut now, 0.05, 30);
        assert_eq!(c.interval(), 5);
    }

    #[test]
    fn a_zero_floor_turns_coalescing_off() {
        let (mut now, mut c) = (0, coalescer(0, 100));
        run(&mut c, &mut now, 1.0, 5);
        assert_eq!(c.interval(), 0);
    }

    #[test]
    fn a_ceiling_below_the_floor_fixes_the_interval() {
        let (mut now, mut c) = (0, coalescer(5, 1));
        run(&mut c, &mut now, 1.0, 5);
        assert_eq!(c.interval(), 5);
    }

    #[test]
    fn deep_queues_stop_the_growth_but_do_not_shorten_it() {
        let (mut now, mut c) = (0, coalescer(5, 100));
        run(&mut c, &mut now, 0.99, 3);
        assert_eq!(c.interval(), 7);
        // A fifth of the message limit: busy or not, no further growth.
        c.queue_depth(200, 1000);
        run(&mut c, &mut now, 0.99, 1);
        assert_eq!(c.interval(), 7);
        // Depth is per period: the next one grows again.
        run(&mut c, &mut now, 0.99, 1);
        assert_eq!(c.interval(), 8);
        // Over half the byte limit: the relay is behind; a shorter interval
        // would only cost it more writes. It holds.
        c.queue_depth(10, 600_000);
        run(&mut c, &mut now, 0.99, 1);
        assert_eq!(c.interval(), 8);
        // Deep queues do not keep it up once the load goes.
        c.queue_depth(10, 600_000);
        run(&mut c, &mut now, 0.3, 1);
        assert_eq!(c.interval(), 6);
    }

    #[test]
    fn periods_are_long_enough_to_see_several_passes() {
        let mut c = coalescer(5, 100);
        assert_eq!(c.tick(MIN_PERIOD - 1, 0, 0), None);
        c.idle(10_000);
        // 10 ms idle of 100: busy 0.9.
        let busy = c.tick(MIN_PERIOD, 0, 0).unwrap_or(f64::NAN);
        assert!((busy - 0.9).abs() < 1e-9, "{busy}");
        assert_eq!(c.interval(), 5, "a first busy period only starts a streak");
        // Idle time beyond the period (a clock step) cannot go negative.
        c.idle(u64::MAX);
        assert_eq!(c.tick(2 * MIN_PERIOD, 0, 0), Some(0.0));
    }
}
