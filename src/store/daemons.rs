//! Several daemons on one database: each renews a lease (`daemons`), owns
//! the calls it dials (`calls.owner`) and takes over the calls in flight of
//! a daemon whose lease ran out - exactly one daemon takes each, as the
//! take-over is one conditional `UPDATE`.
//!
//! Queued calls need no owner: any daemon may dial any of them, and the
//! `queued` -> `dialing` transition is conditional, so one wins and no call
//! is originated twice. What an owner decides is who follows a call in
//! flight and asks Asterisk about it when its events may have been lost
//! (`Status`, the dialler's reconciliation): its own daemon while that
//! lives, another once it is gone.

use super::backend::args;
use super::{InFlight, Store, StoreError};
use crate::call::{CallId, now_ms};

/// Daemons not seen for this long are forgotten (their calls were taken
/// over long before).
const FORGET_MS: i64 = 24 * 3600 * 1000;

impl Store {
    /// Renews this daemon's lease (`first`: registers it, and forgets
    /// daemons gone for a day). Nothing without an owner.
    pub(crate) fn renew_lease(&self, first: bool) -> Result<(), StoreError> {
        let Some(owner) = &self.owner else { return Ok(()) };
        let now = now_ms();
        if first {
            self.execute("DELETE FROM daemons WHERE seen_at < ?1", args![now - FORGET_MS])?;
        }
        self.execute(
            "INSERT INTO daemons (id, started_at, seen_at) VALUES (?1, ?2, ?2)
             ON CONFLICT (id) DO UPDATE SET seen_at = ?2",
            args![owner.id.as_str(), now],
        )?;
        Ok(())
    }

    /// Makes this daemon the owner of every call in flight whose owner's
    /// lease has run out (or that has none); returns them. Two daemons
    /// taking over at once take each call once: the `UPDATE` of one waits
    /// for the other's and then finds the owner alive.
    pub(crate) fn take_over_orphans(&self) -> Result<Vec<CallId>, StoreError> {
        let Some(owner) = &self.owner else { return Ok(Vec::new()) };
        let ids: Vec<String> = self.query(
            "UPDATE calls SET owner = ?1
             WHERE status IN ('dialing', 'ringing', 'answered') AND (owner IS NULL OR owner <> ?1)
               AND NOT EXISTS (SELECT 1 FROM daemons d WHERE d.id = calls.owner AND d.seen_at > ?2)
             RETURNING id",
            args![owner.id.as_str(), now_ms() - owner.lease_ms],
            |r| r.get(0),
        )?;
        for id in &ids {
            tracing::warn!(call_id = %id, "call in flight taken over from a daemon whose lease ran out");
        }
        Ok(ids.iter().filter_map(|id| CallId::parse(id)).collect())
    }

    /// Calls between Originate and their end that this daemon follows:
    /// every one on a database of its own; on a shared one, its own, after
    /// taking over those of daemons whose lease ran out.
    pub fn in_flight(&self) -> Result<Vec<InFlight>, StoreError> {
        let rows: Vec<(String, String, Option<i64>)> = match &self.owner {
            None => self.query(
                "SELECT id, status, dialed_at FROM calls WHERE status IN ('dialing', 'ringing', 'answered')
                 ORDER BY created_at",
                &[],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?,
            Some(owner) => {
                self.take_over_orphans()?;
                self.query(
                    "SELECT id, status, dialed_at FROM calls
                     WHERE status IN ('dialing', 'ringing', 'answered') AND owner = ?1 ORDER BY created_at",
                    args![owner.id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
            }
        };
        InFlight::from_rows(rows)
    }

    /// This store's daemon id, if it shares the database.
    pub(crate) fn owner_id(&self) -> Option<&str> {
        self.owner.as_ref().map(|o| o.id.as_str())
    }

    /// The same store working for daemon `id` with a lease of `lease_ms`,
    /// for tests of several daemons on one database.
    #[cfg(test)]
    pub(crate) fn working_for(self, id: &str, lease_ms: i64) -> Store {
        Store { owner: Some(super::Owner { id: id.to_owned(), lease_ms }), ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::options::{CallMode, CallOptions};
    use crate::store::NewCall;
    use crate::store::testing::backends;

    fn dialled_by(s: &mut Store, user: i64) -> CallId {
        let id = CallId::generate();
        let options = CallOptions { language: "en".into(), require_keypress: false, mode: CallMode::Read };
        s.insert_call(&NewCall { id: &id, user_id: user, number: "+923001234567", code: "1234", options: &options })
            .unwrap();
        assert!(s.mark_dialing(&id).unwrap());
        id
    }

    backends! {
        /// Each daemon follows the calls it dialled while it lives; once its
        /// lease runs out, the first daemon to look takes them over, and the
        /// next finds nothing left to take.
        fn calls_in_flight_belong_to_their_daemon_until_its_lease_runs_out(b) {
            let mut s = b.open();
            let user = s.add_user("acme1", "h").unwrap().id;
            let ids = |s: &Store| s.in_flight().unwrap().into_iter().map(|c| c.id).collect::<Vec<_>>();
            // One connection playing three daemons in turn.
            let mut s = s.working_for("daemon-a", 60_000);
            s.renew_lease(true).unwrap();
            let mine = dialled_by(&mut s, user);
            let mut s = s.working_for("daemon-b", 60_000);
            s.renew_lease(true).unwrap();
            let theirs = dialled_by(&mut s, user);
            assert_eq!(ids(&s), vec![theirs.clone()], "b follows its own call only");
            let s = s.working_for("daemon-a", 60_000);
            assert_eq!(ids(&s), vec![mine.clone()], "a follows its own call only");
            // b stops renewing: 10 minutes later its lease has run out.
            s.execute_for_tests("UPDATE daemons SET seen_at = seen_at - 600000 WHERE id = 'daemon-b'", &[]);
            assert_eq!(s.take_over_orphans().unwrap(), vec![theirs.clone()]);
            assert_eq!(ids(&s), vec![mine.clone(), theirs.clone()]);
            // The dialler's per-server listing follows the same owners.
            let s = s.working_for("daemon-d", 60_000);
            s.renew_lease(true).unwrap();
            assert!(s.in_flight_on("default", true).unwrap().is_empty(), "a is alive: its calls stay its own");
            let s = s.working_for("daemon-a", 60_000);
            let on: Vec<CallId> = s.in_flight_on("default", true).unwrap().into_iter().map(|c| c.id).collect();
            assert_eq!(on, vec![mine.clone(), theirs.clone()]);
            let s = s.working_for("daemon-c", 60_000);
            assert!(s.take_over_orphans().unwrap().is_empty(), "a is alive: nothing to take");
            // Without an owner (SQLite, the CLI) every call in flight shows.
            let s = Store { owner: None, ..s };
            assert_eq!(s.in_flight().unwrap().len(), 2);
            assert_eq!(s.owner_id(), None);
        }
    }
}
