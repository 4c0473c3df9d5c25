//! Which Asterisk server holds which call: the dial that records the
//! server, and the calls in flight counted and listed per server, for the
//! dialler's capacity, its reconciliation and the per-server metrics.
//!
//! A call's server is the `asterisk` column (migration 15): set with the
//! `dialing` mark, in the same statement, so no call is ever in flight
//! without the server its channel lives on; cleared when an Originate that
//! was never written puts the call back in the queue. On a database several
//! daemons share, the same statement makes the dialling daemon the call's
//! owner, and a daemon reconciles only the calls it owns (`daemons.rs`).

use super::backend::args;
use super::queue::InFlight;
use super::{Store, StoreError};
use crate::call::token::TokenHash;
use crate::call::{CallId, now_ms};

/// One server's calls in flight (`?1` = its name), through the partial
/// index of migration 15. A constant so the plan test reads what runs.
pub(super) const IN_FLIGHT_ON: &str = "SELECT COUNT(*) FROM calls
     WHERE asterisk = ?1 AND status IN ('dialing', 'ringing', 'answered')";

impl Store {
    /// `queued` -> `dialing` on `server`, keeping the hash of the FastAGI
    /// token sent with this dial's Originate, by this store's daemon (the
    /// call's owner from now on). False if the call had moved on already -
    /// another daemon's dialler, say, took it first.
    pub fn mark_dialing_on(&mut self, id: &CallId, token: &TokenHash, server: &str) -> Result<bool, StoreError> {
        self.transition(
            id,
            "UPDATE calls SET status = 'dialing', dialed_at = ?2, updated_at = ?2, agi_token_hash = ?3, asterisk = ?4,
                              owner = ?5
             WHERE id = ?1 AND status = 'queued'",
            args![id.as_str(), now_ms(), &token.0[..], server, self.owner_id()],
        )
    }

    /// How many calls are in flight on `server`: its busy trunk slots,
    /// whichever daemon dialled them.
    pub fn in_flight_count_on(&self, server: &str) -> Result<u64, StoreError> {
        self.query_one(IN_FLIGHT_ON, args![server], |r| r.get(0))
    }

    /// The calls in flight on `server` that this daemon follows, oldest
    /// first; with `unassigned`, also those that name no server (dialled
    /// before there were several: they are on the one server there was).
    /// On a database of its own, every such call; on a shared one, this
    /// daemon's own, after taking over those of daemons whose lease ran out
    /// ([`Store::in_flight`]).
    pub fn in_flight_on(&self, server: &str, unassigned: bool) -> Result<Vec<InFlight>, StoreError> {
        self.take_over_orphans()?;
        let rows: Vec<(String, String, Option<i64>)> = self.query(
            "SELECT id, status, dialed_at FROM calls
             WHERE status IN ('dialing', 'ringing', 'answered') AND (asterisk = ?1 OR (?2 AND asterisk IS NULL))
               AND (CAST(?3 AS TEXT) IS NULL OR owner = ?3)
             ORDER BY created_at",
            args![server, unassigned, self.owner_id()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        InFlight::from_rows(rows)
    }

    /// Calls in flight per server name (`None`: calls naming none), for
    /// the metrics. Reads only the calls in flight.
    pub fn in_flight_by_server(&self) -> Result<Vec<(Option<String>, u64)>, StoreError> {
        self.query(
            "SELECT asterisk, COUNT(*) FROM calls WHERE status IN ('dialing', 'ringing', 'answered') GROUP BY asterisk",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::FailReason;
    use crate::store::CallEnd;
    use crate::store::testing::backends;

    fn queued(s: &mut Store, user: i64, created: i64) -> CallId {
        let id = CallId::generate();
        s.execute_for_tests(
            "INSERT INTO calls (id, user_id, number, code, status, created_at, updated_at)
             VALUES (?1, ?2, '+923001234567', '1234', 'queued', ?3, ?3)",
            args![id.as_str(), user, created],
        );
        id
    }

    #[test]
    fn a_servers_slots_are_counted_through_the_in_flight_index() {
        let s = Store::open_in_memory().unwrap();
        let plan = crate::store::query_plan(&s, IN_FLIGHT_ON, ["a"]);
        assert!(plan.iter().any(|p| p.contains("calls_in_flight_by_asterisk")), "{plan:?}");
    }

    backends! {
        fn the_server_is_recorded_with_the_dial_and_counted_per_server(b) {
            let mut s = b.open();
            let u = s.add_user("acme1", "h").unwrap().id;
            let token = TokenHash::of("t");
            let ids: Vec<CallId> = (0..5).map(|i| queued(&mut s, u, 100 + i)).collect();
            assert!(s.mark_dialing_on(&ids[0], &token, "a").unwrap());
            assert!(s.mark_dialing_on(&ids[1], &token, "a").unwrap());
            assert!(s.mark_dialing_on(&ids[2], &token, "b").unwrap());
            assert!(!s.mark_dialing_on(&ids[2], &token, "a").unwrap(), "dialled once only, on its first server");
            assert_eq!(s.call(&ids[2]).unwrap().unwrap().asterisk.as_deref(), Some("b"));
            assert_eq!(s.call(&ids[3]).unwrap().unwrap().asterisk, None, "queued: no server yet");
            assert_eq!((s.in_flight_count_on("a").unwrap(), s.in_flight_count_on("b").unwrap()), (2, 1));
            s.mark_ringing(&ids[0]).unwrap();
            s.finish_call(&ids[1], &CallEnd::failed(FailReason::Busy, None)).unwrap();
            assert_eq!(s.in_flight_count_on("a").unwrap(), 1, "a final call frees its slot");
            assert_eq!(s.call(&ids[1]).unwrap().unwrap().asterisk.as_deref(), Some("a"), "and keeps its server");
            let on_a: Vec<CallId> = s.in_flight_on("a", false).unwrap().into_iter().map(|c| c.id).collect();
            assert_eq!(on_a, [ids[0].clone()]);
            // Requeued (the Originate never written): no server any more.
            assert!(s.requeue(&ids[2]).unwrap());
            assert_eq!(s.call(&ids[2]).unwrap().unwrap().asterisk, None);
            assert_eq!(s.in_flight_count_on("b").unwrap(), 0);
            let mut by_server = s.in_flight_by_server().unwrap();
            by_server.sort();
            assert_eq!(by_server, [(Some("a".to_owned()), 1)]);
        }

        fn calls_dialled_before_there_were_several_belong_to_the_first(b) {
            let mut s = b.open();
            let u = s.add_user("acme1", "h").unwrap().id;
            let old = queued(&mut s, u, 100);
            s.mark_dialing(&old).unwrap(); // no server recorded
            let new = queued(&mut s, u, 200);
            s.mark_dialing_on(&new, &TokenHash::of("t"), "b").unwrap();
            let ids = |calls: Vec<InFlight>| calls.into_iter().map(|c| c.id).collect::<Vec<_>>();
            assert_eq!(ids(s.in_flight_on("a", true).unwrap()), std::slice::from_ref(&old));
            assert_eq!(ids(s.in_flight_on("a", false).unwrap()), Vec::<CallId>::new());
            assert_eq!(ids(s.in_flight_on("b", false).unwrap()), [new]);
            assert_eq!(s.in_flight_by_server().unwrap().iter().find(|(n, _)| n.is_none()).map(|r| r.1), Some(1));
        }
    }
}
