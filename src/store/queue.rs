//! The call queue as the dispatcher sees it: the next call to dial, the
//! calls in flight, and putting back a call whose Originate was never sent.
//!
//! The queue is the `calls` table itself (status `queued`, oldest first), so
//! an accepted call survives a crash or a restart and is dialled by the next
//! daemon - exactly once, because only `queued` calls are ever originated and
//! a call leaves `queued` before its Originate is written.

use super::backend::args;
use super::{Store, StoreError};
use crate::call::{CallId, CallStatus, now_ms};

/// A call Asterisk may still have a channel for.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// The call (= channel Uniqueid).
    pub id: CallId,
    /// `dialing`, `ringing` or `answered`.
    pub status: CallStatus,
    /// When its Originate was sent (unix ms).
    pub dialed_at: Option<i64>,
}

impl InFlight {
    /// Calls in flight from their stored `(id, status, dialed_at)` rows;
    /// a row the store cannot have written is an error.
    pub(super) fn from_rows(rows: Vec<(String, String, Option<i64>)>) -> Result<Vec<InFlight>, StoreError> {
        rows.into_iter()
            .map(|(id, status, dialed_at)| match (CallId::parse(&id), CallStatus::parse(&status)) {
                (Some(id), Some(status)) => Ok(InFlight { id, status, dialed_at }),
                _ => Err(StoreError::Corrupt(format!("in-flight call {id:?} with status {status:?}"))),
            })
            .collect()
    }
}

/// The dialler's query on every turn: the oldest queued call within its
/// deadline (`?1` = now). A constant so the plan test reads what runs.
pub(super) const NEXT_QUEUED: &str =
    "SELECT id FROM calls WHERE status = 'queued' AND (deadline_at IS NULL OR deadline_at > ?1)
     ORDER BY created_at, rowid LIMIT 1";

/// [`NEXT_QUEUED`] on PostgreSQL, where `seq` keeps the order of storing.
const NEXT_QUEUED_PG: &str =
    "SELECT id FROM calls WHERE status = 'queued' AND (deadline_at IS NULL OR deadline_at > ?1)
     ORDER BY created_at, seq LIMIT 1";

/// The calls occupying the trunk, counted on every dialler turn.
pub(super) const IN_FLIGHT_COUNT: &str =
    "SELECT COUNT(*) FROM calls WHERE status IN ('dialing', 'ringing', 'answered')";

impl Store {
    /// The oldest queued call still within its deadline at `now`. Calls
    /// stored in the same millisecond go in the order they were stored
    /// (`rowid`), so the queue is first in, first out.
    pub fn next_queued(&self, now: i64) -> Result<Option<CallId>, StoreError> {
        let id: Option<String> = self.query_opt(self.pick(NEXT_QUEUED, NEXT_QUEUED_PG), args![now], |r| r.get(0))?;
        Ok(id.and_then(|id| CallId::parse(&id)))
    }

    /// How many calls wait to be dialled: one row kept by triggers
    /// (migration 7), so it costs the same however long the queue.
    pub fn queued_count(&self) -> Result<u64, StoreError> {
        self.query_one("SELECT queued FROM queue_size WHERE id = 1", &[], |r| r.get(0))
    }

    /// How many calls are in flight.
    pub fn in_flight_count(&self) -> Result<u64, StoreError> {
        self.query_one(IN_FLIGHT_COUNT, &[], |r| r.get(0))
    }

    /// `dialing` -> `queued`, for a call whose Originate was provably never
    /// written to Asterisk (the AMI link went down first); it forgets the
    /// server too. False if the call is not `dialing`.
    pub fn requeue(&mut self, id: &CallId) -> Result<bool, StoreError> {
        let n = self.execute(
            "UPDATE calls SET status = 'queued', dialed_at = NULL, agi_token_hash = NULL, asterisk = NULL, owner = NULL,
                              updated_at = ?2
             WHERE id = ?1 AND status = 'dialing'",
            args![id.as_str(), now_ms()],
        )?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::FailReason;
    use crate::store::CallEnd;
    use crate::store::testing::{Backend, backends};

    fn store(b: Backend) -> (Store, i64) {
        let mut s = b.open();
        let u = s.add_user("acme1", "h").unwrap();
        (s, u.id)
    }

    fn add(s: &mut Store, user: i64, created: i64, deadline: Option<i64>) -> CallId {
        // Raw SQL: only the columns the queue reads matter here.
        let id = CallId::generate();
        s.execute_for_tests(
            "INSERT INTO calls (id, user_id, number, code, status, created_at, updated_at, deadline_at)
             VALUES (?1, ?2, '+923001234567', '1234', 'queued', ?3, ?3, ?4)",
            args![id.as_str(), user, created, deadline],
        );
        id
    }

    backends! {
        fn oldest_queued_within_deadline_first(b) {
            let (mut s, u) = store(b);
            let late = add(&mut s, u, 100, Some(1_000));
            let first = add(&mut s, u, 200, None);
            let second = add(&mut s, u, 300, Some(10_000));
            assert_eq!(s.next_queued(500).unwrap(), Some(late.clone()));
            assert_eq!(s.next_queued(2_000).unwrap(), Some(first.clone()));
            s.mark_dialing(&first).unwrap();
            assert_eq!(s.next_queued(2_000).unwrap(), Some(second.clone()));
            assert_eq!(s.queued_count().unwrap(), 2);
            assert_eq!(s.in_flight_count().unwrap(), 1);
            assert_eq!(s.in_flight().unwrap()[0].id, first);
        }

        fn queue_size_follows_every_way_in_and_out(b) {
            let (mut s, u) = store(b);
            let counted = |s: &Store| -> u64 {
                s.count_for_tests("SELECT COUNT(*) FROM calls WHERE status = 'queued'", &[]) as u64
            };
            let ids: Vec<CallId> = (0..6).map(|i| add(&mut s, u, 100 + i, Some(1_000))).collect();
            assert_eq!((s.queued_count().unwrap(), counted(&s)), (6, 6));
            s.mark_dialing(&ids[0]).unwrap();
            s.mark_dialing(&ids[1]).unwrap();
            s.mark_ringing(&ids[1]).unwrap();
            assert_eq!(s.queued_count().unwrap(), 4);
            s.requeue(&ids[0]).unwrap();
            assert_eq!(s.queued_count().unwrap(), 5);
            s.cancel_call(&ids[2]).unwrap();
            s.cancel_call(&ids[1]).unwrap(); // ringing: not counted either way
            s.finish_call(&ids[3], &CallEnd::failed(FailReason::Busy, None)).unwrap();
            assert_eq!(s.queued_count().unwrap(), 3);
            assert_eq!(s.expire_overdue(2_000).unwrap().len(), 3);
            assert_eq!(s.queued_count().unwrap(), 0);
            add(&mut s, u, 500, None);
            let doomed = add(&mut s, u, 600, None);
            s.execute_for_tests("DELETE FROM calls WHERE id = ?1", args![doomed.as_str()]);
            assert_eq!((s.queued_count().unwrap(), counted(&s)), (1, 1));
            // A failed write leaves the count as it was.
            let undone = s.tx(crate::store::backend::TxKind::Deferred, |s| {
                s.execute("UPDATE calls SET status = 'dialing' WHERE status = 'queued'", &[])?;
                Err::<(), _>(StoreError::Corrupt("undo".into()))
            });
            assert!(undone.is_err());
            assert_eq!((s.queued_count().unwrap(), counted(&s)), (1, 1));
        }

        fn same_millisecond_calls_leave_in_arrival_order(b) {
            let (mut s, u) = store(b);
            let ids: Vec<CallId> = (0..20).map(|_| add(&mut s, u, 100, None)).collect();
            for id in &ids {
                assert_eq!(s.next_queued(0).unwrap().as_ref(), Some(id));
                s.mark_dialing(id).unwrap();
            }
        }

        fn requeue_only_from_dialing(b) {
            let (mut s, u) = store(b);
            let id = add(&mut s, u, 100, None);
            assert!(!s.requeue(&id).unwrap(), "queued is not dialing");
            s.mark_dialing(&id).unwrap();
            assert!(s.requeue(&id).unwrap());
            let call = s.call(&id).unwrap().unwrap();
            assert_eq!(call.status, CallStatus::Queued);
            assert_eq!(call.dialed_at, None);
            s.finish_call(&id, &CallEnd::failed(FailReason::Busy, None)).unwrap();
            assert!(!s.requeue(&id).unwrap(), "final calls stay final");
            assert_eq!(s.next_queued(0).unwrap(), None);
        }
    }
}

#[cfg(test)]
mod plan {
    use super::*;
    use crate::store::query_plan;
    use crate::store::testing::Backend;

    /// PostgreSQL's plan for the dialler's per-turn queries, with sequential
    /// scans priced out (a test's tables are tiny, so the planner would
    /// rightly scan them): the next call comes from the queue index in its
    /// order, the count from an index too (the in-flight one).
    #[test]
    fn the_dialler_turn_uses_the_queue_index_on_postgres() {
        if crate::store::testing::postgres_url().is_none() {
            return;
        }
        let s = Backend::Postgres.open();
        s.batch("SET enable_seqscan = off").unwrap();
        let now = [crate::store::Value::from(0)];
        for (sql, params) in [(NEXT_QUEUED_PG, &now[..]), (IN_FLIGHT_COUNT, &[][..])] {
            let plan: Vec<String> = s.query(&format!("EXPLAIN {sql}"), params, |r| r.get(0)).unwrap();
            let plan = plan.join("\n");
            assert!(plan.contains("Index") && !plan.contains("Seq Scan"), "{sql}: {plan}");
            assert!(!plan.contains("Sort"), "{sql}: the index gives the order: {plan}");
            if sql == NEXT_QUEUED_PG {
                assert!(plan.contains("calls_queue"), "{plan}");
            }
        }
    }

    /// The dialler's per-turn queries walk the queue index, not the table.
    #[test]
    fn the_dialler_turn_uses_the_queue_index() {
        let s = Store::open_in_memory().unwrap();
        let plan = query_plan(&s, NEXT_QUEUED, [0]);
        assert!(plan.iter().any(|p| p.contains("USING INDEX calls_queue")), "{plan:?}");
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "the index gives the order: {plan:?}");
        let plan = query_plan(&s, IN_FLIGHT_COUNT, []);
        assert!(plan.iter().all(|p| p.contains("USING COVERING INDEX calls_queue")), "{plan:?}");
    }
}
