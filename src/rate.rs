//! Token buckets: one per client for its messages, one per reactor for
//! accepting connections. Time is passed in, in milliseconds.

/// What the bucket says about one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The first message over the rate: drop it and tell the client.
    Warn,
    /// Still over the rate after the warning: close the connection.
    Exceeded,
}

#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// Tokens in thousandths, so refill needs no floating point.
    milli_tokens: u32,
    last_refill: u64,
    warned: bool,
}

impl TokenBucket {
    pub fn full(burst: u32, now: u64) -> Self {
        TokenBucket {
            milli_tokens: burst.saturating_mul(1000),
            last_refill: now,
            warned: false,
        }
    }

    /// Takes one token for a message arriving at `now`.
    pub fn take(&mut self, now: u64, per_second: u32, burst: u32) -> Verdict {
        let elapsed = now.saturating_sub(self.last_refill);
        // per_second tokens a second is per_second milli-tokens a millisecond.
        let refill = elapsed.saturating_mul(u64::from(per_second));
        let cap = u64::from(burst.saturating_mul(1000));
        self.milli_tokens = (u64::from(self.milli_tokens) + refill).min(cap) as u32;
        self.last_refill = now;
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            self.warned = false;
            return Verdict::Allow;
        }
        if self.warned {
            Verdict::Exceeded
        } else {
            self.warned = true;
            Verdict::Warn
        }
    }
}

/// Paces an action to `per_second` on average with bursts of a tenth of a
/// second's worth (at least one): `limits.accept_rate`, per reactor.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    per_second: u64,
    /// Tokens in thousandths, as in [`TokenBucket`].
    milli_tokens: u64,
    cap: u64,
    last_refill: u64,
}

impl Pace {
    pub fn new(per_second: u32, now: u64) -> Pace {
        let per_second = u64::from(per_second.max(1));
        let cap = (per_second * 100).max(1000);
        Pace {
            per_second,
            milli_tokens: cap,
            cap,
            last_refill: now,
        }
    }

    /// Takes a token if there is one at `now`.
    pub fn try_take(&mut self, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.last_refill);
        self.milli_tokens = (self.milli_tokens + elapsed * self.per_second).min(self.cap);
        self.last_refill = now;
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// When the next token will be there (now, if one is).
    pub fn next_token_at(&self, now: u64) -> u64 {
        let elapsed = now.saturating_sub(self.last_refill);
        let have = (self.milli_tokens + elapsed * self.per_second).min(self.cap);
        let missing = 1000u64.saturating_sub(have);
        now + missing.div_ceil(self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_allows_a_tenth_of_a_second_then_the_rate() {
        let mut pace = Pace::new(1000, 0);
        let burst = (0..1000).take_while(|_| pace.try_take(0)).count();
        assert_eq!(burst, 100);
        assert_eq!(pace.next_token_at(0), 1);
        assert!(!pace.try_take(0));
        // 1000 a second: one a millisecond.
        assert!(pace.try_take(1));
        assert!(!pace.try_take(1));
        let in_a_second = (0..5000).filter(|_| pace.try_take(1001)).count();
        assert_eq!(in_a_second, 100, "refills up to the burst only");
    }

    #[test]
    fn slow_pace_keeps_a_burst_of_one() {
        let mut pace = Pace::new(2, 0);
        assert!(pace.try_take(0));
        assert!(!pace.try_take(0));
        assert_eq!(pace.next_token_at(0), 500);
        assert!(!pace.try_take(499));
        assert!(pace.try_take(500));
    }

    #[test]
    fn burst_then_warn_then_exceeded() {
        let mut bucket = TokenBucket::full(3, 0);
        for _ in 0..3 {
            assert_eq!(bucket.take(0, 10, 3), Verdict::Allow);
        }
        assert_eq!(bucket.take(0, 10, 3), Verdict::Warn);
        assert_eq!(bucket.take(50, 10, 3), Verdict::Exceeded);
    }

    #[test]
    fn refills_at_the_rate_and_forgives_the_warning() {
        let mut bucket = TokenBucket::full(1, 0);
        assert_eq!(bucket.take(0, 10, 1), Verdict::Allow);
        assert_eq!(bucket.take(0, 10, 1), Verdict::Warn);
        // 10 per second: one token after 100 ms.
        assert_eq!(bucket.take(99, 10, 1), Verdict::Exceeded);
        assert_eq!(bucket.take(200, 10, 1), Verdict::Allow);
        assert_eq!(
            bucket.take(200, 10, 1),
            Verdict::Warn,
            "a new episode warns again"
        );
    }

    #[test]
    fn never_exceeds_the_burst() {
        let mut bucket = TokenBucket::full(2, 0);
        let later = 3_600_000;
        assert_eq!(bucket.take(later, 100, 2), Verdict::Allow);
        assert_eq!(bucket.take(later, 100, 2), Verdict::Allow);
        assert_eq!(bucket.take(later, 100, 2), Verdict::Warn);
    }
}
