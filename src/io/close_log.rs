//! One log line per WebSocket close, at most `limits.close_log_per_second`
//! of them per reactor each second. When thousands of sockets close at once
//! (a restart, a network blip) the rest are counted instead, and one line
//! at the end of the second says how many went unlogged, so the log stays
//! readable and the reactor does not spend its turn formatting lines.

use tracing::info;

use super::timer::Millis;

pub(super) struct CloseLog {
    reactor: usize,
    per_second: u32,
    window_start: Millis,
    logged: u32,
    suppressed: u64,
}

impl CloseLog {
    pub fn new(reactor: usize, per_second: u32) -> CloseLog {
        CloseLog {
            reactor,
            per_second,
            window_start: 0,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether a close at `now` gets its own line; if not, it is counted.
    pub fn admit(&mut self, now: Millis) -> bool {
        self.roll(now);
        if self.logged < self.per_second {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Called once per turn: once the second is over, says how many closes
    /// it did not log. Cheap when there are none (one comparison).
    pub fn report(&mut self, now: Millis) {
        if self.suppressed > 0 && now >= self.window_start + 1000 {
            self.roll(now);
        }
    }

    fn roll(&mut self, now: Millis) {
        if now < self.window_start + 1000 {
            return;
        }
        if self.suppressed > 0 {
            info!(
                reactor = self.reactor,
                suppressed = self.suppressed,
                "{} more connection closes in the last second were not logged \
                 (limits.close_log_per_second = {})",
                self.suppressed,
                self.per_second
            );
        }
        self.window_start = now;
        self.logged = 0;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_each_second() {
        let mut log = CloseLog::new(0, 3);
        let admitted: Vec<bool> = (0..5).map(|_| log.admit(10)).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
        assert_eq!(log.suppressed, 2);
        log.report(500);
        assert_eq!(log.suppressed, 2, "the second is not over");
        log.report(1010);
        assert_eq!(log.suppressed, 0, "reported and reset");
        assert!(log.admit(1020));
    }

    #[test]
    fn zero_logs_no_single_close() {
        let mut log = CloseLog::new(0, 0);
        assert!(!log.admit(0));
        assert_eq!(log.suppressed, 1);
    }
}
