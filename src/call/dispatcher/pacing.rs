//! Pacing of Originates to one server: a token bucket that holds one token
//! and refills at `max_calls_per_second`.
//!
//! Carriers count call setups per second and refuse the ones over their
//! rate; Asterisk has nothing of its own for it. A bucket of one token
//! means the gap between two Originates to the server is never shorter
//! than `1 / max_calls_per_second`, so no window of any length sees more
//! than the rate - a larger bucket would let a burst through at once after
//! a quiet spell, which is exactly what a carrier counts. Taking a token is
//! one comparison: pacing never costs the dialler more per dial.

use std::time::{Duration, Instant};

/// One server's bucket.
#[derive(Debug, Clone)]
pub(super) struct Pacer {
    /// Time between two Originates; `None`: unpaced.
    interval: Option<Duration>,
    /// When the token is back (`None`: it is there).
    next: Option<Instant>,
}

impl Pacer {
    /// A full bucket for `per_second` Originates a second (0: unpaced).
    pub(super) fn new(per_second: u32) -> Pacer {
        let interval = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
        Pacer { interval, next: None }
    }

    /// Whether an Originate may go now.
    pub(super) fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|at| now >= at)
    }

    /// When the token is back, if it is not there now.
    pub(super) fn ready_at(&self, now: Instant) -> Option<Instant> {
        self.next.filter(|&at| at > now)
    }

    /// Takes the token for an Originate sent `now` (call only when
    /// [`Pacer::ready`]).
    pub(super) fn take(&mut self, now: Instant) {
        self.next = self.interval.map(|interval| now + interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_a_second_means_half_a_second_between_originates() {
        let mut p = Pacer::new(2);
        let t0 = Instant::now();
        assert!(p.ready(t0));
        p.take(t0);
        assert!(!p.ready(t0 + Duration::from_millis(499)));
        assert_eq!(p.ready_at(t0 + Duration::from_millis(100)), Some(t0 + Duration::from_millis(500)));
        assert!(p.ready(t0 + Duration::from_millis(500)));
        assert_eq!(p.ready_at(t0 + Duration::from_millis(500)), None);
    }

    #[test]
    fn a_quiet_spell_saves_up_no_burst() {
        let mut p = Pacer::new(5);
        let t0 = Instant::now();
        p.take(t0);
        let later = t0 + Duration::from_secs(60);
        assert!(p.ready(later));
        p.take(later);
        assert!(!p.ready(later + Duration::from_millis(199)), "one token only, however long the wait");
    }

    #[test]
    fn zero_is_unpaced() {
        let mut p = Pacer::new(0);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(p.ready(t0));
            p.take(t0);
        }
        assert_eq!(p.ready_at(t0), None);
    }
}
