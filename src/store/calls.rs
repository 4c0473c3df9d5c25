//! Calls and their status transitions.
//!
//! Every transition is one conditional `UPDATE ... WHERE status IN (...)`, so
//! concurrent reporters (AMI events, the FastAGI flow) cannot move a call
//! backwards or re-open a final one: the first to arrive wins, the others
//! see `false`.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};
use crate::call::options::CallOptions;
use crate::call::{Call, CallId, CallStatus, FailReason, now_ms};

/// What the HTTP front end stores for a new call.
pub struct NewCall<'a> {
    /// The new call's id.
    pub id: &'a CallId,
    /// The requesting user.
    pub user_id: i64,
    /// Destination, E.164.
    pub number: &'a str,
    /// The code to read.
    pub code: &'a str,
    /// How it is read (resolved from request, user and config).
    pub options: &'a CallOptions,
}

/// What [`Store::number_calls_since`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberCalls {
    /// Calls since the long window's start.
    pub since: u32,
    /// Creation time (ms) of the oldest of those.
    pub oldest_since: Option<i64>,
    /// Calls since the short window's start.
    pub recent: u32,
    /// Creation time (ms) of the oldest of those.
    pub oldest_recent: Option<i64>,
}

/// How a call ended.
#[derive(Debug, Clone)]
pub struct CallEnd {
    /// `Completed` or `Failed`.
    pub status: CallStatus,
    /// For `Failed`.
    pub reason: Option<FailReason>,
    /// Operator-facing detail (never the code).
    pub detail: Option<String>,
    /// Full readings played, if the flow ran.
    pub readings: Option<u32>,
}

impl CallEnd {
    /// A failure with a reason and optional detail.
    pub fn failed(reason: FailReason, detail: Option<String>) -> CallEnd {
        CallEnd { status: CallStatus::Failed, reason: Some(reason), detail, readings: None }
    }
}

const CALL_COLUMNS: &str = "id, user_id, number, code, status, reason, detail, cause, cause_text, readings, \
                            created_at, updated_at, dialed_at, answered_at, ended_at, \
                            language, require_keypress, keys";

fn call_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Call, StoreError>> {
    let id: String = row.get(0)?;
    let status: String = row.get(4)?;
    let Some(id) = CallId::parse(&id) else {
        return Ok(Err(StoreError::Corrupt(format!("call id {id:?}"))));
    };
    let Some(status) = CallStatus::parse(&status) else {
        return Ok(Err(StoreError::Corrupt(format!("call status {status:?}"))));
    };
    Ok(Ok(Call {
        id,
        user_id: row.get(1)?,
        number: row.get(2)?,
        code: row.get(3)?,
        status,
        reason: row.get(5)?,
        detail: row.get(6)?,
        cause: row.get(7)?,
        cause_text: row.get(8)?,
        readings: row.get(9)?,
        created_at: row.get(10)?,
        updated_at: row.get(11)?,
        dialed_at: row.get(12)?,
        answered_at: row.get(13)?,
        ended_at: row.get(14)?,
        options: CallOptions { language: row.get(15)?, require_keypress: row.get(16)? },
        keys: row.get(17)?,
    }))
}

impl Store {
    /// Stores a new `queued` call. Committed when this returns.
    pub fn insert_call(&mut self, new: &NewCall<'_>) -> Result<(), StoreError> {
        let now = now_ms();
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO calls (id, user_id, number, code, status, created_at, updated_at, language, require_keypress)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?5, ?6, ?7)",
        )?;
        stmt.execute(params![
            new.id.as_str(),
            new.user_id,
            new.number,
            new.code,
            now,
            new.options.language,
            new.options.require_keypress
        ])?;
        Ok(())
    }

    /// Reads a call.
    pub fn call(&self, id: &CallId) -> Result<Option<Call>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = ?1"))?;
        stmt.query_row([id.as_str()], call_from_row).optional()?.transpose()
    }

    /// Calls to `number` (E.164) created after `since_ms`, and of those
    /// after `recent_ms` (`recent_ms >= since_ms`), each with the
    /// creation time of its oldest call: one pass over the
    /// `calls_by_number` index, for the per-number quotas.
    pub fn number_calls_since(
        &self,
        number: &str,
        since_ms: i64,
        recent_ms: i64,
    ) -> Result<NumberCalls, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT COUNT(*), MIN(created_at),
                    COUNT(CASE WHEN created_at > ?3 THEN 1 END), MIN(CASE WHEN created_at > ?3 THEN created_at END)
             FROM calls WHERE number = ?1 AND created_at > ?2",
        )?;
        let counts = stmt.query_row(params![number, since_ms, recent_ms], |r| {
            Ok(NumberCalls { since: r.get(0)?, oldest_since: r.get(1)?, recent: r.get(2)?, oldest_recent: r.get(3)? })
        })?;
        Ok(counts)
    }

    /// Newest calls first, at most `limit`.
    pub fn recent_calls(&self, limit: u32) -> Result<Vec<Call>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {CALL_COLUMNS} FROM calls ORDER BY created_at DESC, id LIMIT ?1"))?;
        let rows = stmt.query_map([limit], call_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// `queued` -> `dialing`. False if the call had moved on already.
    pub fn mark_dialing(&mut self, id: &CallId) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = self.conn.prepare_cached(
            "UPDATE calls SET status = 'dialing', dialed_at = ?2, updated_at = ?2
             WHERE id = ?1 AND status = 'queued'",
        )?
        .execute(params![id.as_str(), now])?;
        Ok(n == 1)
    }

    /// `queued`/`dialing` -> `answered`. False if already answered or final.
    pub fn mark_answered(&mut self, id: &CallId) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = self.conn.prepare_cached(
            "UPDATE calls SET status = 'answered', answered_at = ?2, updated_at = ?2
             WHERE id = ?1 AND status IN ('queued', 'dialing')",
        )?
        .execute(params![id.as_str(), now])?;
        Ok(n == 1)
    }

    /// Any non-final status -> final; erases the code in the same write.
    /// False if the call was final already.
    pub fn finish_call(&mut self, id: &CallId, end: &CallEnd) -> Result<bool, StoreError> {
        debug_assert!(end.status.is_final());
        let now = now_ms();
        let n = self.conn.prepare_cached(
            "UPDATE calls SET status = ?2, reason = ?3, detail = ?4, readings = COALESCE(?5, readings),
                              code = NULL, ended_at = ?6, updated_at = ?6
             WHERE id = ?1 AND status IN ('queued', 'dialing', 'answered')",
        )?
        .execute(params![
            id.as_str(),
            end.status.as_str(),
            end.reason.map(FailReason::as_str),
            end.detail,
            end.readings,
            now
        ])?;
        Ok(n == 1)
    }

    /// Stores the keys the callee pressed (`0-9*#`, in order), as the call
    /// flow reports them.
    pub fn record_keys(&mut self, id: &CallId, keys: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE calls SET keys = ?2, updated_at = ?3 WHERE id = ?1")?
            .execute(params![id.as_str(), keys, now_ms()])?;
        Ok(())
    }

    /// Records the hangup cause Asterisk reported. A call that failed for a
    /// reason only known as `system_error` (OriginateResponse Reason 0 came
    /// first) gets the precise reason the cause stands for.
    pub fn record_cause(&mut self, id: &CallId, cause: u16, cause_text: &str) -> Result<(), StoreError> {
        let now = now_ms();
        self.conn
            .prepare_cached(
                "UPDATE calls SET cause = ?2, cause_text = ?3, updated_at = ?4 WHERE id = ?1 AND cause IS NULL",
            )?
            .execute(params![id.as_str(), cause, cause_text, now])?;
        let refined = FailReason::from_cause(cause);
        if refined != FailReason::SystemError {
            self.conn
                .prepare_cached(
                    "UPDATE calls SET reason = ?2, updated_at = ?3
                     WHERE id = ?1 AND status = 'failed' AND reason = 'system_error' AND answered_at IS NULL
                       AND detail IS NULL",
                )?
                .execute(params![id.as_str(), refined.as_str(), now])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_call() -> (Store, CallId) {
        let mut s = Store::open_in_memory().unwrap();
        let u = s.add_user("acme1", "h").unwrap();
        let id = CallId::generate();
        let options = CallOptions { language: "ur".into(), require_keypress: true };
        s.insert_call(&NewCall { id: &id, user_id: u.id, number: "+923001234567", code: "482915", options: &options })
            .unwrap();
        (s, id)
    }

    #[test]
    fn options_and_keys_are_kept() {
        let (mut s, id) = store_with_call();
        let c = s.call(&id).unwrap().unwrap();
        assert_eq!(c.options, CallOptions { language: "ur".into(), require_keypress: true });
        assert_eq!(c.keys, "");
        s.record_keys(&id, "51").unwrap();
        assert_eq!(s.call(&id).unwrap().unwrap().keys, "51");
    }

    #[test]
    fn happy_path_erases_code_at_the_end() {
        let (mut s, id) = store_with_call();
        let c = s.call(&id).unwrap().unwrap();
        assert_eq!(c.status, CallStatus::Queued);
        assert_eq!(c.code.as_deref(), Some("482915"));
        assert!(s.mark_dialing(&id).unwrap());
        assert!(!s.mark_dialing(&id).unwrap());
        assert!(s.mark_answered(&id).unwrap());
        let end = CallEnd { status: CallStatus::Completed, reason: None, detail: None, readings: Some(2) };
        assert!(s.finish_call(&id, &end).unwrap());
        let c = s.call(&id).unwrap().unwrap();
        assert_eq!(c.status, CallStatus::Completed);
        assert_eq!(c.code, None);
        assert_eq!(c.readings, 2);
        assert!(c.ended_at.is_some() && c.answered_at.is_some() && c.dialed_at.is_some());
    }

    #[test]
    fn final_calls_do_not_move() {
        let (mut s, id) = store_with_call();
        assert!(s.finish_call(&id, &CallEnd::failed(FailReason::Busy, None)).unwrap());
        assert!(!s.mark_answered(&id).unwrap());
        let end = CallEnd { status: CallStatus::Completed, reason: None, detail: None, readings: Some(2) };
        assert!(!s.finish_call(&id, &end).unwrap());
        assert_eq!(s.call(&id).unwrap().unwrap().status, CallStatus::Failed);
    }

    #[test]
    fn a_late_cause_refines_a_generic_failure() {
        let (mut s, id) = store_with_call();
        s.mark_dialing(&id).unwrap();
        s.finish_call(&id, &CallEnd::failed(FailReason::SystemError, None)).unwrap();
        s.record_cause(&id, 17, "User busy").unwrap();
        let c = s.call(&id).unwrap().unwrap();
        assert_eq!(c.reason.as_deref(), Some("busy"));
        assert_eq!(c.cause, Some(17));
        assert_eq!(c.cause_text.as_deref(), Some("User busy"));
        // The first cause sticks.
        s.record_cause(&id, 16, "Normal Clearing").unwrap();
        assert_eq!(s.call(&id).unwrap().unwrap().cause, Some(17));
    }

    #[test]
    fn number_counts_use_the_number_index() {
        let (s, _) = store_with_call();
        let plan: String = s
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM calls WHERE number = ?1 AND created_at > ?2",
                params!["+923001234567", 0],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("calls_by_number"), "{plan}");
        let counts = s.number_calls_since("+923001234567", 0, 0).unwrap();
        assert_eq!((counts.since, counts.recent), (1, 1));
        assert_eq!(s.number_calls_since("+923001234568", 0, 0).unwrap().since, 0);
    }

    #[test]
    fn unknown_call_is_none() {
        let (s, _) = store_with_call();
        assert!(s.call(&CallId::generate()).unwrap().is_none());
        assert_eq!(s.recent_calls(10).unwrap().len(), 1);
    }
}
