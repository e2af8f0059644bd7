//! A token bucket for client messages. Time is passed in, in milliseconds.

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

#[cfg(test)]
mod tests {
    use super::*;

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
