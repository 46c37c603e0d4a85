//! Restart policy of supervised containers and daemons: whether an exit is restarted, and after
//! how long (DESIGN.md: backoff 1 s doubling to 60 s, reset after 60 s up).
//!
//! Pure decisions on durations and exit statuses; it owns no timers and starts nothing.

use crate::config::schema::Restart;
use std::time::Duration;

/// First delay, cap, and the uptime after which a process counts as healthy again.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(60);
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// How a supervised process ended, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Exit status 0.
    Success,
    /// Non-zero status or killed by a signal.
    Failure,
}

/// Whether `restart` asks for a new run after `ended`. A one-shot that succeeded is done.
pub fn wants_restart(restart: Restart, oneshot: bool, ended: Ended) -> bool {
    match (restart, ended) {
        (_, Ended::Success) if oneshot => false,
        (Restart::Always, _) => true,
        (Restart::OnFailure, Ended::Failure) => true,
        (Restart::OnFailure, Ended::Success) | (Restart::No, _) => false,
    }
}

/// Exponential backoff between restarts of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    /// How many restarts so far (what `ros ps` shows).
    pub restarts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST_DELAY,
            restarts: 0,
        }
    }
}

impl Backoff {
    /// The delay before the next start, given how long the last run lasted.
    pub fn delay_after(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= HEALTHY_AFTER {
            self.next = FIRST_DELAY;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        self.restarts = self.restarts.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loop_delays_double_to_the_cap() {
        let mut b = Backoff::default();
        let d: Vec<u64> = (0..9)
            .map(|_| b.delay_after(Duration::from_millis(10)).as_secs())
            .collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.restarts, 9);
    }

    #[test]
    fn a_minute_up_resets_the_backoff() {
        let mut b = Backoff::default();
        for _ in 0..4 {
            b.delay_after(Duration::ZERO);
        }
        assert_eq!(b.delay_after(Duration::from_secs(61)), FIRST_DELAY);
        assert_eq!(b.delay_after(Duration::ZERO), Duration::from_secs(2));
    }

    #[test]
    fn restart_policies() {
        use Ended::*;
        use Restart::*;
        assert!(wants_restart(Always, false, Success));
        assert!(wants_restart(Always, false, Failure));
        assert!(
            !wants_restart(Always, true, Success),
            "a finished one-shot stays finished"
        );
        assert!(wants_restart(Always, true, Failure));
        assert!(wants_restart(OnFailure, false, Failure));
        assert!(!wants_restart(OnFailure, false, Success));
        assert!(!wants_restart(No, false, Failure));
    }
}
