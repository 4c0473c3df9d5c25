//! The calls whose channel events the follower acts on, and what has been
//! seen of them so far.
//!
//! The dialler adds a call before it is marked `dialing` (and reconciliation
//! adds calls found alive after a restart), with the server it is placed
//! on; the follower updates it with each event of that server and drops
//! events of calls not here - or here but on another server: events of one
//! Asterisk never settle a call placed on another - without touching the
//! database. An entry goes once both closing events (`OriginateResponse`
//! and `Hangup`) were seen; entries whose events never came are swept out
//! now and then - not on every event: with thousands of calls in flight a
//! scan per event made event handling quadratic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::call::CallId;

/// How often entries whose closing events never came are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What has been seen of one call's channel.
pub(super) struct Tracked {
    since: Instant,
    /// The server (config index) its channel is on.
    server: usize,
    /// The Q.850 cause of its `Hangup`, once seen (and not 0).
    pub(super) cause: Option<u16>,
    /// Its `OriginateResponse` arrived (or never will: see the dialler).
    pub(super) responded: bool,
    /// Its `Hangup` arrived (or never will).
    pub(super) hung_up: bool,
}

/// The map of tracked calls, with its sweep.
pub(super) struct TrackedCalls {
    calls: HashMap<CallId, Tracked>,
    last_sweep: Option<Instant>,
    /// Older entries than this are taken to have lost their events.
    max_age: Duration,
}

impl TrackedCalls {
    /// An empty map whose entries last at most `max_age`.
    pub(super) fn new(max_age: Duration) -> TrackedCalls {
        TrackedCalls { calls: HashMap::new(), last_sweep: None, max_age }
    }

    /// Starts following `id` on `server` (no-op if already followed).
    pub(super) fn track(&mut self, id: &CallId, server: usize, now: Instant) {
        self.calls.entry(id.clone()).or_insert_with(|| Tracked {
            since: now,
            server,
            cause: None,
            responded: false,
            hung_up: false,
        });
    }

    /// Runs `f` on `id`'s entry for an event of `server`; `None` (and `f`
    /// not run) when `id` is not followed, or followed on another server.
    /// Forgets the entry once both closing events were seen, and
    /// at most once per [`SWEEP_EVERY`] sweeps out entries older than the
    /// map's `max_age`.
    pub(super) fn update<R>(
        &mut self,
        id: &CallId,
        server: usize,
        now: Instant,
        f: impl FnOnce(&mut Tracked) -> R,
    ) -> Option<R> {
        let entry = self.calls.get_mut(id).filter(|t| t.server == server)?;
        let r = f(entry);
        if entry.responded && entry.hung_up {
            self.calls.remove(id);
        }
        if self.last_sweep.is_none_or(|at| now - at >= SWEEP_EVERY) {
            let max_age = self.max_age;
            self.calls.retain(|_, t| now - t.since < max_age);
            self.last_sweep = Some(now);
        }
        Some(r)
    }

    /// The server `id` is followed on, if it is.
    pub(super) fn server_of(&self, id: &CallId) -> Option<usize> {
        self.calls.get(id).map(|t| t.server)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.calls.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untracked_calls_are_not_touched() {
        let mut tracked = TrackedCalls::new(Duration::from_secs(60));
        let mut ran = false;
        assert_eq!(tracked.update(&CallId::generate(), 0, Instant::now(), |_| ran = true), None);
        assert!(!ran);
    }

    #[test]
    fn events_of_another_server_are_not_this_calls() {
        let mut tracked = TrackedCalls::new(Duration::from_secs(60));
        let (id, now) = (CallId::generate(), Instant::now());
        tracked.track(&id, 1, now);
        let mut ran = false;
        assert_eq!(tracked.update(&id, 0, now, |_| ran = true), None);
        assert!(!ran, "server 0's event for a call on server 1");
        assert_eq!(tracked.update(&id, 1, now, |t| t.hung_up = true), Some(()));
    }

    #[test]
    fn forgotten_once_both_closing_events_were_seen() {
        let mut tracked = TrackedCalls::new(Duration::from_secs(60));
        let (id, now) = (CallId::generate(), Instant::now());
        tracked.track(&id, 0, now);
        tracked.update(&id, 0, now, |t| {
            t.hung_up = true;
            t.cause = Some(17);
        });
        assert_eq!(tracked.update(&id, 0, now, |t| t.cause), Some(Some(17)), "kept until its OriginateResponse");
        tracked.update(&id, 0, now, |t| t.responded = true);
        assert_eq!(tracked.len(), 0);
        assert_eq!(tracked.update(&id, 0, now, |_| ()), None);
    }

    #[test]
    fn old_entries_swept_once_a_minute_not_on_every_event() {
        let mut tracked = TrackedCalls::new(Duration::from_secs(30));
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let (old, fresh) = (CallId::generate(), CallId::generate());
        tracked.track(&old, 0, start);
        tracked.update(&old, 0, start, |_| ()); // the first sweep
        tracked.track(&fresh, 0, at(40));
        // `old` is past its age, but the last sweep was under a minute ago.
        tracked.update(&fresh, 0, at(50), |_| ());
        assert_eq!(tracked.len(), 2);
        tracked.update(&fresh, 0, at(61), |_| ());
        assert_eq!(tracked.len(), 1, "the old entry swept");
        assert_eq!(tracked.update(&old, 0, at(61), |_| ()), None);
        assert!(tracked.update(&fresh, 0, at(61), |_| ()).is_some());
    }
}
