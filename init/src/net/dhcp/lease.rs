//! Lease timers and retry pacing: when to renew (T1), rebind (T2) and give the address up, and
//! how long to wait between retransmissions (RFC 2131 §4.1, §4.4.5).
//!
//! Owns: the arithmetic only — T1 defaults to half the lease, T2 to 7/8 of it, both clamped so
//! that T1 ≤ T2 ≤ lease; an infinite lease (`0xffffffff`) never renews; retransmissions back off
//! exponentially from 1 s to a 64 s cap with jitter; a renewing/rebinding client retries at half
//! the time left, at least `MIN_RETRY` apart.
//! Must not: read clocks or sleep; callers pass instants and durations.

use std::time::Duration;

/// Smallest gap between two REQUESTs while renewing or rebinding. RFC 2131 suggests 60 s; a
/// short floor keeps short leases (tests, captive labs) renewable.
pub const MIN_RETRY: Duration = Duration::from_secs(4);

/// Largest retransmission timeout while looking for a server.
pub const MAX_BACKOFF: Duration = Duration::from_secs(64);

/// When, counted from the moment the lease was acknowledged, each state change is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// T1: start renewing with the server that gave the lease.
    pub renew: Duration,
    /// T2: start rebinding with any server.
    pub rebind: Duration,
    /// The lease ends; `None` for an infinite lease.
    pub expire: Option<Duration>,
}

impl Timers {
    /// The timers of a lease of `lease_s` seconds with the server's T1/T2, if it sent them.
    pub fn new(lease_s: u32, t1_s: Option<u32>, t2_s: Option<u32>) -> Timers {
        if lease_s == u32::MAX {
            let never = Duration::MAX;
            return Timers {
                renew: never,
                rebind: never,
                expire: None,
            };
        }
        let lease = Duration::from_secs(u64::from(lease_s));
        let t2_default = lease.mul_f64(0.875);
        let rebind = t2_s
            .map(|t| Duration::from_secs(u64::from(t)))
            .filter(|t| *t <= lease)
            .unwrap_or(t2_default);
        let renew = t1_s
            .map(|t| Duration::from_secs(u64::from(t)))
            .filter(|t| *t <= rebind)
            .unwrap_or_else(|| (lease / 2).min(rebind));
        Timers {
            renew,
            rebind,
            expire: Some(lease),
        }
    }
}

/// The retransmission timeout for attempt `n` (0-based) of DISCOVER or REQUEST: 1, 2, 4, …,
/// 64 s, plus `jitter_ms` (the caller's random 0‥999 ms).
pub fn backoff(n: u32, jitter_ms: u64) -> Duration {
    let base = Duration::from_secs(1u64 << n.min(6)).min(MAX_BACKOFF);
    base + Duration::from_millis(jitter_ms % 1000)
}

/// While renewing (until T2) or rebinding (until expiry): how long to wait for an answer before
/// the next REQUEST, given `left` until that deadline. Half of what is left, never less than
/// `MIN_RETRY`, never past the deadline.
pub fn retry_in(left: Duration) -> Duration {
    (left / 2).max(MIN_RETRY).min(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn test_defaults_are_half_and_seven_eighths() {
        let t = Timers::new(3600, None, None);
        assert_eq!(t.renew, s(1800));
        assert_eq!(t.rebind, s(3150));
        assert_eq!(t.expire, Some(s(3600)));
    }

    #[test]
    fn test_server_t1_is_used() {
        // dnsmasq with --dhcp-option=58,10 and a 2 minute lease.
        let t = Timers::new(120, Some(10), None);
        assert_eq!(t.renew, s(10));
        assert_eq!(t.rebind, s(105));
        assert_eq!(t.expire, Some(s(120)));
    }

    #[test]
    fn test_nonsense_timers_are_clamped() {
        // T2 past the lease, T1 past T2: both fall back to defaults within the lease.
        let t = Timers::new(100, Some(200), Some(150));
        assert_eq!(t.rebind, s(87) + Duration::from_millis(500));
        assert_eq!(t.renew, s(50));
        // A T1 after a (valid) T2 falls back to min(lease/2, T2).
        let t = Timers::new(100, Some(90), Some(40));
        assert_eq!((t.renew, t.rebind), (s(40), s(40)));
    }

    #[test]
    fn test_infinite_lease_never_renews() {
        let t = Timers::new(u32::MAX, Some(10), Some(20));
        assert_eq!(t.expire, None);
        assert_eq!(t.renew, Duration::MAX);
    }

    #[test]
    fn test_backoff_doubles_to_a_cap() {
        let seq: Vec<u64> = (0..9).map(|n| backoff(n, 0).as_secs()).collect();
        assert_eq!(seq, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        assert_eq!(backoff(0, 1250), Duration::from_millis(1250));
    }

    #[test]
    fn test_retry_is_half_the_time_left_with_a_floor() {
        assert_eq!(retry_in(s(95)), Duration::from_millis(47_500));
        assert_eq!(retry_in(s(6)), MIN_RETRY);
        assert_eq!(retry_in(s(3)), s(3));
        assert_eq!(retry_in(Duration::ZERO), Duration::ZERO);
    }
}
