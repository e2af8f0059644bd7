//! When a WebSocket is pinged or closed for silence, without a clock: the
//! reactor passes `now` in, so the rules are tested in virtual time.
//!
//! A half-open peer (gone without a FIN) is found by silence: the relay pings
//! every `ping_interval`, any byte from the peer counts as life, and after
//! `pong_wait` without one the socket is closed.

use crate::error::CloseReason;

/// The timeouts that apply to an open WebSocket, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveTimeouts {
    pub ping_interval: u64,
    pub pong_wait: u64,
    pub write_deadline: u64,
}

/// One socket's clocks, in milliseconds on the reactor's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketClocks {
    /// When any byte last arrived.
    pub last_rx: u64,
    /// When the next ping is due.
    pub next_ping: u64,
    /// With auth on and none given yet: when the client runs out of time.
    pub auth_deadline: Option<u64>,
    /// Since when output has waited without a byte leaving.
    pub stalled_since: Option<u64>,
}

/// What to do at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Close(CloseReason),
    /// Keep the socket; send a ping first if `ping` and look again at `wake_at`.
    Keep {
        ping: bool,
        next_ping: u64,
        wake_at: u64,
    },
}

pub fn check(now: u64, clocks: &SocketClocks, timeouts: &KeepaliveTimeouts) -> Verdict {
    let idle_deadline = clocks.last_rx + timeouts.pong_wait;
    let stall_deadline = clocks.stalled_since.map(|t| t + timeouts.write_deadline);
    if now >= idle_deadline {
        return Verdict::Close(CloseReason::IdleTimeout);
    }
    if clocks.auth_deadline.is_some_and(|d| now >= d) {
        return Verdict::Close(CloseReason::AuthTimeout);
    }
    if stall_deadline.is_some_and(|d| now >= d) {
        return Verdict::Close(CloseReason::WriteStalled);
    }
    let ping = now >= clocks.next_ping;
    let next_ping = if ping {
        now + timeouts.ping_interval
    } else {
        clocks.next_ping
    };
    let wake_at = [
        Some(idle_deadline),
        Some(next_ping),
        clocks.auth_deadline,
        stall_deadline,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(idle_deadline);
    Verdict::Keep {
        ping,
        next_ping,
        wake_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEDS: KeepaliveTimeouts = KeepaliveTimeouts {
        ping_interval: 54_000,
        pong_wait: 60_000,
        write_deadline: 10_000,
    };

    fn fresh(now: u64) -> SocketClocks {
        SocketClocks {
            last_rx: now,
            next_ping: now + SEEDS.ping_interval,
            auth_deadline: None,
            stalled_since: None,
        }
    }

    /// Drives one socket in virtual time the way the reactor does: wake at
    /// `wake_at`, apply the verdict, and let `peer` answer pings (or not).
    /// Returns the close time and reason, and how many pings went out.
    fn simulate(
        mut clocks: SocketClocks,
        answers_pings: bool,
        until: u64,
    ) -> (Option<(u64, CloseReason)>, usize) {
        let mut now = clocks.last_rx;
        let mut pings = 0;
        for _ in 0..10_000 {
            match check(now, &clocks, &SEEDS) {
                Verdict::Close(reason) => return (Some((now, reason)), pings),
                Verdict::Keep {
                    ping,
                    next_ping,
                    wake_at,
                } => {
                    if ping {
                        pings += 1;
                        if answers_pings {
                            // The pong arrives 20 ms later.
                            clocks.last_rx = now + 20;
                        }
                    }
                    clocks.next_ping = next_ping;
                    assert!(wake_at > now, "the timer must move forward");
                    now = wake_at;
                }
            }
            if now > until {
                break;
            }
        }
        (None, pings)
    }

    #[test]
    fn half_open_peer_is_closed_after_pong_wait() {
        let (closed, pings) = simulate(fresh(1_000), false, 3_600_000);
        assert_eq!(closed, Some((61_000, CloseReason::IdleTimeout)));
        assert_eq!(pings, 1, "one ping at 54 s, then silence until 60 s");
    }

    #[test]
    fn live_peer_stays_open_for_an_hour() {
        let (closed, pings) = simulate(fresh(0), true, 3_600_000);
        assert_eq!(closed, None);
        assert_eq!(pings, 3_600_000 / 54_000, "a ping every 54 s");
    }

    #[test]
    fn auth_deadline_comes_first() {
        let clocks = SocketClocks {
            auth_deadline: Some(10_000),
            ..fresh(0)
        };
        assert_eq!(
            check(5_000, &clocks, &SEEDS),
            Verdict::Keep {
                ping: false,
                next_ping: 54_000,
                wake_at: 10_000
            }
        );
        assert_eq!(
            check(10_000, &clocks, &SEEDS),
            Verdict::Close(CloseReason::AuthTimeout)
        );
    }

    #[test]
    fn stalled_writer_is_cut_at_the_write_deadline() {
        let clocks = SocketClocks {
            stalled_since: Some(2_000),
            ..fresh(0)
        };
        let Verdict::Keep { wake_at, .. } = check(3_000, &clocks, &SEEDS) else {
            panic!("not yet");
        };
        assert_eq!(wake_at, 12_000);
        assert_eq!(
            check(12_000, &clocks, &SEEDS),
            Verdict::Close(CloseReason::WriteStalled)
        );
    }

    #[test]
    fn activity_pushes_the_idle_deadline() {
        let mut clocks = fresh(0);
        clocks.last_rx = 50_000;
        // At 60 s the peer spoke 10 s ago: keep it, ping due at 54 s already sent.
        clocks.next_ping = 108_000;
        assert_eq!(
            check(60_000, &clocks, &SEEDS),
            Verdict::Keep {
                ping: false,
                next_ping: 108_000,
                wake_at: 108_000
            }
        );
    }
}
