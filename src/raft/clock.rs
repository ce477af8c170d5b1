//! Cluster time: the leader's monotonic clock turned into the `now_ms` stamps of
//! batches, so that a wall-clock step on any node moves no deadline.
//!
//! Every deadline in the state machine (acks, heartbeats, retention, queue
//! deadlines) is compared with the stamps the leader writes into its entries. If a
//! stamp were the leader's wall clock, a step of the clock by hours (NTP after a
//! suspend, an operator's mistake) would fire or freeze every deadline at once.
//! Instead, each stamp is the previous stamp plus the *monotonic* time elapsed
//! since it. The wall clock only steers: per stamp, the clock may move toward it by
//! at most [`STEER_RATIO`] of the elapsed time, so stamps stay close to real time
//! over hours without a step ever showing.
//!
//! A node that becomes leader of a new term anchors its clock at the applied
//! state's time (the previous leader's last stamp), or at the wall clock when the
//! state has never been stamped. Stamps never go backwards and never below the
//! state's time. The time an election takes is not counted (no monotonic clock
//! spans two leaders); the steering recovers it slowly. The same holds after the
//! whole cluster was down: cluster time resumes where it stopped, so every deadline
//! still gets its full running time, and it catches up with the wall clock at 1 %
//! (a day of downtime takes a hundred days to recover). Jumping to the wall clock
//! instead would let one node's wrong clock fire every deadline at once.
//!
//! Time is kept in microseconds inside, so that frequent stamps (a batch every few
//! milliseconds) can still be steered by their 1 %.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The largest share of the elapsed time by which a stamp moves toward the wall clock.
pub const STEER_RATIO: u64 = 100;

/// Where the clock reads time: a monotonic clock and the wall clock. Tests inject
/// their own to step the wall clock without sleeping.
pub trait TimeSource: Send + Sync {
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn monotonic(&self) -> Duration;
    /// Microseconds since the Unix epoch; may jump either way.
    fn wall_us(&self) -> u64;
}

/// The process's clocks.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl TimeSource for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall_us(&self) -> u64 {
        // The only wall-clock read of the write path: it steers, never sets, the time.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
}

/// The last stamp of this leader's term and when (monotonically) it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Anchor {
    term: u64,
    stamp_us: u64,
    at: Duration,
}

/// The leader's cluster clock. One per node, used only by its proposer.
#[derive(Debug)]
pub struct ClusterClock<S: TimeSource = SystemClock> {
    source: S,
    anchor: Option<Anchor>,
}

impl Default for ClusterClock<SystemClock> {
    fn default() -> Self {
        Self::new(SystemClock::default())
    }
}

impl<S: TimeSource> ClusterClock<S> {
    pub fn new(source: S) -> Self {
        ClusterClock {
            source,
            anchor: None,
        }
    }

    /// The stamp of a batch proposed now by the leader of `term`, whose applied state's
    /// time is `state_ms`. Later calls never return less.
    pub fn stamp(&mut self, term: u64, state_ms: u64) -> u64 {
        let next = self.next(term, state_ms);
        self.anchor = Some(next);
        next.stamp_us / 1000
    }

    /// What [`ClusterClock::stamp`] would return now, without moving the clock: for
    /// deciding whether a deadline has passed.
    pub fn peek(&self, term: u64, state_ms: u64) -> u64 {
        self.next(term, state_ms).stamp_us / 1000
    }

    fn next(&self, term: u64, state_ms: u64) -> Anchor {
        let at = self.source.monotonic();
        let state_us = state_ms.saturating_mul(1000);
        let (last_us, elapsed_us) = match self.anchor {
            Some(a) if a.term == term => (
                a.stamp_us,
                at.saturating_sub(a.at).as_micros().min(u64::MAX as u128) as u64,
            ),
            // A new term: start from the state's time, or from the wall clock on a
            // state never stamped.
            _ if state_ms == 0 => (self.source.wall_us(), 0),
            _ => (state_us, 0),
        };
        let mut stamp_us = last_us.saturating_add(elapsed_us);
        let wall_us = self.source.wall_us();
        let steer = elapsed_us / STEER_RATIO;
        if wall_us > stamp_us {
            stamp_us += (wall_us - stamp_us).min(steer);
        } else {
            stamp_us -= (stamp_us - wall_us).min(steer);
        }
        Anchor {
            term,
            stamp_us: stamp_us.max(last_us).max(state_us),
            at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    use std::sync::Arc;

    /// A hand-moved clock: monotonic time and a wall clock that can be stepped.
    #[derive(Clone, Default)]
    struct FakeTime {
        mono_us: Arc<AtomicU64>,
        wall_offset_us: Arc<AtomicI64>,
    }

    const EPOCH_US: u64 = 1_700_000_000_000_000;
    const HOUR_US: i64 = 3_600_000_000;

    impl FakeTime {
        fn advance_ms(&self, ms: u64) {
            self.mono_us.fetch_add(ms * 1000, Ordering::SeqCst);
        }
        fn step_wall_us(&self, by: i64) {
            self.wall_offset_us.fetch_add(by, Ordering::SeqCst);
        }
    }

    impl TimeSource for FakeTime {
        fn monotonic(&self) -> Duration {
            Duration::from_micros(self.mono_us.load(Ordering::SeqCst))
        }
        fn wall_us(&self) -> u64 {
            ((EPOCH_US + self.mono_us.load(Ordering::SeqCst)) as i64
                + self.wall_offset_us.load(Ordering::SeqCst)) as u64
        }
    }

    fn wall_ms(t: &FakeTime) -> u64 {
        t.wall_us() / 1000
    }

    #[test]
    fn an_unstamped_state_starts_at_the_wall_clock_then_follows_the_monotonic_one() {
        let t = FakeTime::default();
        let mut clock = ClusterClock::new(t.clone());
        let first = clock.stamp(1, 0);
        assert_eq!(first, EPOCH_US / 1000);
        t.advance_ms(250);
        assert_eq!(clock.stamp(1, first), first + 250);
        t.advance_ms(1);
        assert_eq!(clock.peek(1, first), first + 251);
        assert_eq!(
            clock.peek(1, first),
            first + 251,
            "peek does not move the clock"
        );
    }

    #[test]
    fn wall_clock_steps_of_two_hours_move_stamps_by_at_most_one_percent_of_elapsed() {
        for step in [2 * HOUR_US, -2 * HOUR_US] {
            let t = FakeTime::default();
            let mut clock = ClusterClock::new(t.clone());
            let mut last = clock.stamp(3, 0);
            t.step_wall_us(step);
            // Stamps every 7 ms for ten minutes of monotonic time.
            let mut elapsed_ms = 0;
            for _ in 0..(600_000 / 7) {
                t.advance_ms(7);
                elapsed_ms += 7;
                let stamp = clock.stamp(3, last);
                let moved = stamp - last;
                assert!(
                    (6..=8).contains(&moved),
                    "a 7 ms step moved the stamp by {moved} ms (wall step {step} us)"
                );
                last = stamp;
            }
            let start = EPOCH_US / 1000;
            let drift = last as i64 - (start + elapsed_ms) as i64;
            assert!(
                drift.unsigned_abs() <= elapsed_ms / 100 + 1,
                "steered {drift} ms in {elapsed_ms} ms"
            );
            // Steering went toward the wall clock.
            assert_eq!(drift.signum(), step.signum());
        }
    }

    #[test]
    fn steering_closes_a_small_gap_and_then_tracks_the_wall_clock() {
        let t = FakeTime::default();
        let mut clock = ClusterClock::new(t.clone());
        let mut last = clock.stamp(1, 0);
        t.step_wall_us(500_000); // the wall clock is 500 ms ahead
        for _ in 0..1000 {
            t.advance_ms(100);
            last = clock.stamp(1, last);
        }
        // 100 s elapsed: up to 1 s of steering available, 500 ms needed.
        assert_eq!(last, wall_ms(&t));
    }

    #[test]
    fn stamps_never_go_backwards_nor_below_the_state() {
        let t = FakeTime::default();
        let mut clock = ClusterClock::new(t.clone());
        let first = clock.stamp(1, 0);
        // No monotonic time passed and the wall clock went back: same stamp.
        t.step_wall_us(-HOUR_US);
        assert_eq!(clock.stamp(1, first), first);
        // A state ahead of the clock (stamped by a faster earlier leader) wins.
        assert_eq!(clock.stamp(1, first + 5_000), first + 5_000);
        t.advance_ms(10);
        let later = clock.stamp(1, first + 5_000);
        assert!((first + 5_009..=first + 5_010).contains(&later), "{later}");
    }

    #[test]
    fn a_new_term_anchors_at_the_state_time() {
        let t = FakeTime::default();
        let mut clock = ClusterClock::new(t.clone());
        let a = clock.stamp(1, 0);
        t.advance_ms(1_000);
        let b = clock.stamp(1, a);
        assert_eq!(b, a + 1_000);
        // This node lost the lead; another leader stamped up to b + 300; we lead again
        // in term 3, two seconds of monotonic time later.
        t.advance_ms(2_000);
        let state = b + 300;
        assert_eq!(clock.stamp(3, state), state);
        t.advance_ms(40);
        assert_eq!(clock.stamp(3, state), state + 40);
        // A wall clock hours ahead at the time of the new term changes nothing.
        t.step_wall_us(2 * HOUR_US);
        t.advance_ms(5_000);
        let state = state + 40;
        assert_eq!(clock.stamp(4, state), state);
    }
}
