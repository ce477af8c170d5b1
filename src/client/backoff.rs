//! Exponential backoff with jitter, for clients that retry: each failure doubles the
//! wait (from `base`, up to `cap`), a success resets it, and every wait is drawn
//! between half and all of its nominal length, so many clients refused at once do not
//! come back in step.
//!
//! The first attempt never waits: a client on the happy path pays nothing for it.

use std::time::Duration;

use rand::Rng;

/// The retry schedule of one thing a client retries (a task, a poll, a heartbeat).
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// Waits `base`, then twice as long after each further failure, at most `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// The nominal wait after the failures so far (before jitter).
    pub fn nominal(&self) -> Duration {
        let factor = 1u32 << self.failures.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Records one more failure; returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        let nominal = self.nominal();
        self.failures = self.failures.saturating_add(1);
        let half = nominal / 2;
        let spread = nominal.saturating_sub(half).as_micros() as u64;
        half + Duration::from_micros(rand::rng().random_range(0..=spread))
    }

    /// A success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The longest wait this schedule ever asks for.
    pub fn cap(&self) -> Duration {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_up_to_the_cap_within_their_jitter() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        for nominal in [100, 200, 400, 800, 1000, 1000] {
            let wait = b.fail();
            assert!(
                wait >= nominal * MS / 2 && wait <= nominal * MS,
                "{wait:?} outside [{}, {nominal}] ms",
                nominal / 2
            );
        }
        assert_eq!(b.failures(), 6);
    }

    #[test]
    fn a_success_starts_over() {
        let mut b = Backoff::new(100 * MS, 10_000 * MS);
        for _ in 0..5 {
            b.fail();
        }
        assert_eq!(b.nominal(), 3200 * MS);
        b.reset();
        assert_eq!(b.nominal(), 100 * MS);
        assert!(b.fail() <= 100 * MS);
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let mut waits = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(1000 * MS, 1000 * MS);
            waits.insert(b.fail());
        }
        assert!(
            waits.len() > 10,
            "50 clients should not wait in step: {waits:?}"
        );
    }

    #[test]
    fn many_failures_neither_overflow_nor_pass_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            assert!(b.fail() <= Duration::from_secs(30));
        }
    }
}
