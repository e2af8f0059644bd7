//! A hashed timing wheel: one entry per connection, no OS timer, no scan of
//! all connections. Entries are checked lazily: a connection keeps the time
//! it wants to be looked at, and an entry that no longer matches is dropped.

use std::time::Duration;

/// Milliseconds since the reactor started; the only clock the reactor's
/// logic sees.
pub type Millis = u64;

const SLOTS: usize = 4096;
const WORDS: usize = SLOTS / 64;

/// One scheduled look at a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: u32,
    /// The connection's id, so a reused slab slot is not mistaken for it.
    pub id: u32,
    pub at: Millis,
}

pub struct TimerWheel {
    tick: Millis,
    slots: Vec<Vec<Entry>>,
    /// One bit per non-empty slot, to find the next deadline without a scan.
    occupied: [u64; WORDS],
    /// The first tick not yet expired.
    next_tick: u64,
    len: usize,
}

impl TimerWheel {
    pub fn new(tick: Duration) -> Self {
        TimerWheel {
            tick: (tick.as_millis() as Millis).max(1),
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; WORDS],
            next_tick: 0,
            len: 0,
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `entry`. A deadline past the wheel's horizon lands on the
    /// horizon and is rescheduled when it comes up (the caller checks `at`).
    pub fn schedule(&mut self, entry: Entry) {
        let tick = (entry.at / self.tick)
            .max(self.next_tick)
            .min(self.next_tick + SLOTS as u64 - 1);
        let slot = (tick % SLOTS as u64) as usize;
        self.slots[slot].push(entry);
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
    }

    /// Moves every entry due by `now` into `due`.
    pub fn expire(&mut self, now: Millis, due: &mut Vec<Entry>) {
        let now_tick = now / self.tick;
        if now_tick < self.next_tick {
            return;
        }
        // After a long pause one lap visits every slot: all entries are due.
        let span = (now_tick - self.next_tick + 1).min(SLOTS as u64);
        for step in 0..span {
            if self.len == 0 {
                break;
            }
            let slot = ((self.next_tick + step) % SLOTS as u64) as usize;
            if self.occupied[slot / 64] & (1 << (slot % 64)) != 0 {
                // Taken, not drained: a slot that kept its buffer would hold
                // the largest burst it ever saw, and over the laps every
                // slot would, so the wheel would keep what storms left.
                let entries = std::mem::take(&mut self.slots[slot]);
                self.len -= entries.len();
                due.extend(entries);
                self.occupied[slot / 64] &= !(1 << (slot % 64));
            }
        }
        self.next_tick = now_tick + 1;
    }

    /// How long until the next occupied slot comes due, if any.
    pub fn next_timeout(&self, now: Millis) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let start = (self.next_tick % SLOTS as u64) as usize;
        let ahead = self.distance_to_occupied(start)?;
        let due_at = (self.next_tick + ahead as u64) * self.tick;
        Some(Duration::from_millis(due_at.saturating_sub(now)))
    }

    /// Slots from `start` (inclusive) to the next occupied one, wrapping.
    fn distance_to_occupied(&self, start: usize) -> Option<usize> {
        for step in 0..=WORDS {
            let word_index = (start / 64 + step) % WORDS;
            let mut word = self.occupied[word_index];
            if step == 0 {
                word &= !0u64 << (start % 64);
            }
            if word != 0 {
                let slot = word_index * 64 + word.trailing_zeros() as usize;
                return Some((slot + SLOTS - start) % SLOTS);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: u32, at: Millis) -> Entry {
        Entry { key, id: key, at }
    }

    fn expire(wheel: &mut TimerWheel, now: Millis) -> Vec<u32> {
        let mut due = Vec::new();
        wheel.expire(now, &mut due);
        due.into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn fires_in_order_of_ticks() {
        let mut wheel = TimerWheel::new(Duration::from_millis(10));
        wheel.schedule(entry(1, 25));
        wheel.schedule(entry(2, 5));
        wheel.schedule(entry(3, 1000));
        assert_eq!(wheel.next_timeout(0), Some(Duration::from_millis(0)));
        assert_eq!(expire(&mut wheel, 9), vec![2]);
        assert_eq!(wheel.next_timeout(9), Some(Duration::from_millis(11)));
        assert_eq!(expire(&mut wheel, 19), Vec::<u32>::new());
        assert_eq!(expire(&mut wheel, 30), vec![1]);
        assert_eq!(wheel.next_timeout(30), Some(Duration::from_millis(970)));
        assert_eq!(expire(&mut wheel, 1009), vec![3]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_timeout(1009), None);
    }

    #[test]
    fn past_deadlines_fire_at_once() {
        let mut wheel = TimerWheel::new(Duration::from_millis(10));
        assert!(expire(&mut wheel, 500).is_empty());
        // A deadline already past lands on the next tick, not on a slot
        // that has gone by.
        wheel.schedule(entry(7, 100));
        assert_eq!(wheel.next_timeout(505), Some(Duration::from_millis(5)));
        assert_eq!(expire(&mut wheel, 510), vec![7]);
    }

    #[test]
    fn beyond_the_horizon_lands_on_it() {
        let mut wheel = TimerWheel::new(Duration::from_millis(10));
        let far = 10 * SLOTS as Millis * 3;
        wheel.schedule(entry(9, far));
        let horizon = 10 * (SLOTS as Millis - 1);
        assert!(expire(&mut wheel, horizon - 10).is_empty());
        let mut due = Vec::new();
        wheel.expire(horizon, &mut due);
        assert_eq!(due, vec![entry(9, far)], "caller sees the real deadline");
    }

    #[test]
    fn an_expired_slot_keeps_no_buffer() {
        let mut wheel = TimerWheel::new(Duration::from_millis(10));
        for key in 0..1000 {
            wheel.schedule(entry(key, 25));
        }
        assert_eq!(expire(&mut wheel, 30).len(), 1000);
        assert!(wheel.slots.iter().all(|slot| slot.capacity() == 0));
    }

    #[test]
    fn wraps_around_the_ring() {
        let mut wheel = TimerWheel::new(Duration::from_millis(1));
        let mut now = 0;
        for round in 0..3u32 {
            let at = now + SLOTS as Millis - 5;
            wheel.schedule(entry(round, at));
            assert_eq!(
                wheel.next_timeout(now),
                Some(Duration::from_millis(at - now))
            );
            assert!(expire(&mut wheel, at - 1).is_empty());
            assert_eq!(expire(&mut wheel, at), vec![round]);
            now = at;
        }
    }
}
