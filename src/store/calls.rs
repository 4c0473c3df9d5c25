//! Calls and their status transitions.
//!
//! Every transition is one conditional `UPDATE ... WHERE status IN (...)`, so
//! concurrent reporters (AMI events, the FastAGI flow) cannot move a call
//! backwards or re-open a final one: the first to arrive wins, the others
//! see `false`.

use super::backend::{Row, TxKind, args};
use super::{Store, StoreError};
use crate::call::options::{CallMode, CallOptions};
use crate::call::token::TokenHash;
use crate::call::{Call, CallId, CallStatus, FailReason, now_ms};
use crate::secret::Secret;

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

/// The lifecycle settings of a new call beyond [`NewCall`].
#[derive(Debug, Clone, Default)]
pub struct NewCallLifecycle {
    /// Unix ms after which a still-queued call expires instead of being dialled.
    pub deadline_at: Option<i64>,
    /// This call's webhook URL (already checked); `None`: the user's default.
    pub callback_url: Option<String>,
    /// The verification this call reads the code of, if any.
    pub verification_id: Option<String>,
}

/// What [`Store::check_agi_token`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// The token is this dial's; the call is in flight with this status.
    Valid(CallStatus),
    /// No call has this id.
    UnknownCall,
    /// The call is not in flight: never dialled (`queued`) or final.
    NotInFlight(CallStatus),
    /// The call is in flight but the token is missing or not its own.
    WrongToken,
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

/// Where to continue a newest-first listing: the last call of the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallCursor {
    /// That call's `created_at`.
    pub created_at: i64,
    /// That call's id (ties on `created_at` are ordered by id).
    pub id: CallId,
}

impl CallCursor {
    /// `<created_at>-<id>`, opaque to clients.
    pub fn encode(&self) -> String {
        format!("{}-{}", self.created_at, self.id)
    }

    /// Reads [`CallCursor::encode`]'s output; `None` for anything else.
    pub fn decode(s: &str) -> Option<CallCursor> {
        let (at, id) = s.split_once('-')?;
        Some(CallCursor { created_at: at.parse().ok().filter(|&t: &i64| t >= 0)?, id: CallId::parse(id)? })
    }
}

/// Statuses a call can still leave, as SQL.
const LIVE: &str = "('queued', 'dialing', 'ringing', 'answered')";

pub(super) const CALL_COLUMNS: &str = "id, user_id, number, code, status, reason, detail, cause, cause_text, readings, \
                            created_at, updated_at, dialed_at, answered_at, ended_at, ringing_at, deadline_at, keys, \
                            callback_url, language, require_keypress, mode, verified, attempts, asterisk";

/// The per-number quota count, in the same step as every insert: calls to
/// `?1` after `?2`, and of those after `?3`, with the oldest of each. From
/// `number_calls`, the last day's calls per number (migration 17).
pub(super) const NUMBER_CALLS: &str = "SELECT COUNT(*), MIN(created_at),
        COUNT(CASE WHEN created_at > ?3 THEN 1 END), MIN(CASE WHEN created_at > ?3 THEN created_at END)
     FROM number_calls WHERE number = ?1 AND created_at > ?2";

/// The retention purge: the `?2` final calls that ended first before `?1`,
/// found by `calls_by_end`. SQLite's `+status` keeps the status test off
/// `calls_queue`: without it SQLite (no statistics) searched that index,
/// which holds every final call on record, and tested `ended_at` on each,
/// so purging a day from a month of history cost 4 times more per call
/// than purging that day alone (`history_purge_slowdown` 3.9-4.6).
/// PostgreSQL has no `rowid` nor unary `+` on text, and plans by its
/// statistics.
pub(super) const PURGE_SQLITE: &str = "DELETE FROM calls WHERE rowid IN (
       SELECT rowid FROM calls WHERE ended_at IS NOT NULL AND ended_at < ?1
          AND +status IN ('completed', 'failed', 'expired', 'canceled')
       ORDER BY ended_at LIMIT ?2)";

/// [`PURGE_SQLITE`] on PostgreSQL.
pub(super) const PURGE_POSTGRES: &str = "DELETE FROM calls WHERE id IN (
       SELECT id FROM calls WHERE ended_at IS NOT NULL AND ended_at < ?1
          AND status IN ('completed', 'failed', 'expired', 'canceled')
       ORDER BY ended_at LIMIT ?2)";

/// Calls one retention purge statement deletes at most. A day's calls in
/// one statement (33,000 from a month of 1,000,000) held the database
/// thread for 0.4-1.6 s, and every request and call waited behind it; a
/// batch of this many takes a few tens of ms.
pub const PURGE_BATCH: usize = 1_000;

/// Queued calls past their deadline (`?1` = now), looked for on every
/// dialler turn.
pub(super) const OVERDUE: &str =
    "SELECT id FROM calls WHERE status = 'queued' AND deadline_at IS NOT NULL AND deadline_at <= ?1";

/// One page of a user's calls (`?1`), newest first, of status `?2` if
/// `with_status` (else `?2` is unused), after the cursor `?3`/`?4` (NULL:
/// from the newest), `?5` rows. Two statements, not one with
/// `(?2 IS NULL OR status = ?2)`: SQLite cannot use `calls_by_user_status`
/// for such an OR, and would walk all the user's calls to find one status.
pub(super) fn user_calls_sql(with_status: bool) -> String {
    // The CAST gives PostgreSQL a type for a parameter used nowhere else.
    let status = if with_status { "status = ?2" } else { "CAST(?2 AS TEXT) IS NULL" };
    format!(
        "SELECT {CALL_COLUMNS} FROM calls
         WHERE user_id = ?1 AND {status}
           AND (CAST(?3 AS BIGINT) IS NULL OR created_at < ?3 OR (created_at = ?3 AND id < ?4))
         ORDER BY created_at DESC, id DESC LIMIT ?5"
    )
}

pub(super) fn call_from_row(row: &Row<'_>) -> Result<Call, StoreError> {
    let id: String = row.get(0)?;
    let status: String = row.get(4)?;
    let Some(id) = CallId::parse(&id) else {
        return Err(StoreError::Corrupt(format!("call id {id:?}")));
    };
    let Some(status) = CallStatus::parse(&status) else {
        return Err(StoreError::Corrupt(format!("call status {status:?}")));
    };
    let mode: String = row.get(21)?;
    let Some(mode) = CallMode::parse(&mode) else {
        return Err(StoreError::Corrupt(format!("call mode {mode:?}")));
    };
    Ok(Call {
        id,
        user_id: row.get(1)?,
        number: row.get(2)?,
        code: row.get::<Option<String>>(3)?.map(Secret::new),
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
        ringing_at: row.get(15)?,
        deadline_at: row.get(16)?,
        keys: row.get(17)?,
        callback_url: row.get(18)?,
        options: CallOptions { mode, language: row.get(19)?, require_keypress: row.get(20)? },
        verified: row.get(22)?,
        attempts: row.get(23)?,
        asterisk: row.get(24)?,
    })
}

/// Runs one conditional status `UPDATE` in the caller's transaction and,
/// when it moved the call, queues the webhook for the new state in the
/// same transaction: a status change is never committed without its
/// notification.
fn transition_in(s: &Store, id: &CallId, sql: &str, args: &[super::Value<'_>]) -> Result<bool, StoreError> {
    let n = s.execute(sql, args)?;
    if n == 1 {
        super::webhooks::enqueue_call_change(s, id)?;
    }
    Ok(n == 1)
}

/// Any non-final status -> `end`'s, erasing the code, in the caller's
/// transaction.
fn finish_in(s: &Store, id: &CallId, end: &CallEnd) -> Result<bool, StoreError> {
    debug_assert!(end.status.is_final());
    transition_in(
        s,
        id,
        &format!(
            "UPDATE calls SET status = ?2, reason = ?3, detail = ?4, readings = COALESCE(?5, readings),
                              code = NULL, agi_token_hash = NULL, ended_at = ?6, updated_at = ?6
             WHERE id = ?1 AND status IN {LIVE}"
        ),
        args![
            id.as_str(),
            end.status.as_str(),
            end.reason.map(FailReason::as_str),
            &end.detail,
            end.readings,
            now_ms()
        ],
    )
}

pub(super) fn read_call(s: &Store, id: &CallId) -> Result<Option<Call>, StoreError> {
    s.query_opt(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = ?1"), args![id.as_str()], call_from_row)
}

impl Store {
    /// Stores a new `queued` call. Committed when this returns.
    pub fn insert_call(&mut self, new: &NewCall<'_>) -> Result<(), StoreError> {
        self.insert_call_with(new, &NewCallLifecycle::default())
    }

    /// Stores a new `queued` call with its deadline and webhook URL.
    pub fn insert_call_with(&mut self, new: &NewCall<'_>, life: &NewCallLifecycle) -> Result<(), StoreError> {
        let now = now_ms();
        self.execute(
            "INSERT INTO calls (id, user_id, number, code, status, created_at, updated_at, deadline_at, callback_url,
                                language, require_keypress, mode, verification_id)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            args![
                new.id.as_str(),
                new.user_id,
                new.number,
                new.code,
                now,
                life.deadline_at,
                &life.callback_url,
                &new.options.language,
                new.options.require_keypress,
                new.options.mode.as_str(),
                &life.verification_id
            ],
        )?;
        Ok(())
    }

    /// Reads a call.
    pub fn call(&self, id: &CallId) -> Result<Option<Call>, StoreError> {
        read_call(self, id)
    }

    /// Calls to `number` (E.164) created after `since_ms`, and of those
    /// after `recent_ms` (`recent_ms >= since_ms`), each with the
    /// creation time of its oldest call, for the per-number quotas: one
    /// pass over that number's rows of the last day's calls. `since_ms`
    /// must be at most a day before the newest call stored: older calls
    /// are no longer counted.
    pub fn number_calls_since(&self, number: &str, since_ms: i64, recent_ms: i64) -> Result<NumberCalls, StoreError> {
        self.query_one(NUMBER_CALLS, args![number, since_ms, recent_ms], |r| {
            Ok(NumberCalls { since: r.get(0)?, oldest_since: r.get(1)?, recent: r.get(2)?, oldest_recent: r.get(3)? })
        })
    }

    /// Newest calls first, at most `limit`.
    pub fn recent_calls(&self, limit: u32) -> Result<Vec<Call>, StoreError> {
        self.query(
            &format!("SELECT {CALL_COLUMNS} FROM calls ORDER BY created_at DESC, id LIMIT ?1"),
            args![limit],
            call_from_row,
        )
    }

    /// One user's calls, newest first (ties by id, descending), optionally of
    /// one status, starting after `after`.
    pub fn user_calls(
        &self,
        user_id: i64,
        status: Option<CallStatus>,
        after: Option<&CallCursor>,
        limit: u32,
    ) -> Result<Vec<Call>, StoreError> {
        self.query(
            &user_calls_sql(status.is_some()),
            args![
                user_id,
                status.map(CallStatus::as_str),
                after.map(|c| c.created_at),
                after.map(|c| c.id.as_str()),
                limit
            ],
            call_from_row,
        )
    }

    /// [`transition_in`] in a transaction of its own.
    pub(super) fn transition(&self, id: &CallId, sql: &str, args: &[super::Value<'_>]) -> Result<bool, StoreError> {
        self.tx(TxKind::Deferred, |s| transition_in(s, id, sql, args))
    }

    /// `queued` -> `dialing`, keeping the hash of the FastAGI token sent
    /// with this dial's Originate, by this store's daemon (its owner from
    /// now on). False if the call had moved on already - another daemon's
    /// dialler, say, took it first.
    pub fn mark_dialing_with(&mut self, id: &CallId, token: &TokenHash) -> Result<bool, StoreError> {
        self.transition(
            id,
            "UPDATE calls SET status = 'dialing', dialed_at = ?2, updated_at = ?2, agi_token_hash = ?3, owner = ?4
             WHERE id = ?1 AND status = 'queued'",
            args![id.as_str(), now_ms(), &token.0[..], self.owner_id()],
        )
    }

    /// [`Store::mark_dialing_with`] with the hash of the token `"test-token"`, for tests.
    #[cfg(test)]
    pub(crate) fn mark_dialing(&mut self, id: &CallId) -> Result<bool, StoreError> {
        self.mark_dialing_with(id, &TokenHash::of("test-token"))
    }

    /// Whether a FastAGI session presenting a token with hash `presented`
    /// may serve call `id`: it must be in flight (dialled, not final) and
    /// the token must be the one its Originate carried. Reads only.
    pub fn check_agi_token(&self, id: &CallId, presented: &TokenHash) -> Result<TokenCheck, StoreError> {
        let row: Option<(String, Option<Vec<u8>>)> =
            self.query_opt("SELECT status, agi_token_hash FROM calls WHERE id = ?1", args![id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let Some((status, stored)) = row else { return Ok(TokenCheck::UnknownCall) };
        let status =
            CallStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("call status {status:?}")))?;
        if !matches!(status, CallStatus::Dialing | CallStatus::Ringing | CallStatus::Answered) {
            return Ok(TokenCheck::NotInFlight(status));
        }
        Ok(match stored {
            Some(stored) if presented.matches(&stored) => TokenCheck::Valid(status),
            _ => TokenCheck::WrongToken,
        })
    }

    /// `dialing` -> `ringing`. False if not dialing (already answered, ...).
    pub fn mark_ringing(&mut self, id: &CallId) -> Result<bool, StoreError> {
        self.transition(
            id,
            "UPDATE calls SET status = 'ringing', ringing_at = ?2, updated_at = ?2
             WHERE id = ?1 AND status = 'dialing'",
            args![id.as_str(), now_ms()],
        )
    }

    /// `dialing`/`ringing` -> `answered`. False if not in one of those
    /// (never dialled, already answered, or final).
    pub fn mark_answered(&mut self, id: &CallId) -> Result<bool, StoreError> {
        self.transition(
            id,
            "UPDATE calls SET status = 'answered', answered_at = ?2, updated_at = ?2
             WHERE id = ?1 AND status IN ('dialing', 'ringing')",
            args![id.as_str(), now_ms()],
        )
    }

    /// Any non-final status -> final; erases the code in the same write.
    /// False if the call was final already.
    pub fn finish_call(&mut self, id: &CallId, end: &CallEnd) -> Result<bool, StoreError> {
        self.tx(TxKind::Deferred, |s| finish_in(s, id, end))
    }

    /// [`Store::finish_call`] for an enter-mode call, with how the entry
    /// went: the codes typed (`attempts`) and whether one was right. One
    /// transaction, so the final status's webhook carries them. Nothing
    /// changes if the call was final already.
    pub fn finish_entry(
        &mut self,
        id: &CallId,
        end: &CallEnd,
        attempts: u32,
        verified: bool,
    ) -> Result<bool, StoreError> {
        self.tx(TxKind::Deferred, |s| {
            // Before the status moves, so the webhook's body has them; a
            // final call keeps the entry it ended with.
            s.execute(
                &format!("UPDATE calls SET attempts = ?2, verified = ?3 WHERE id = ?1 AND status IN {LIVE}"),
                args![id.as_str(), attempts, verified],
            )?;
            finish_in(s, id, end)
        })
    }

    /// `queued` -> `expired` when its deadline has passed at `now`; erases
    /// the code. False if the call is not queued or not yet due.
    pub fn expire_call(&mut self, id: &CallId, now: i64) -> Result<bool, StoreError> {
        self.transition(
            id,
            "UPDATE calls SET status = 'expired', code = NULL, agi_token_hash = NULL, ended_at = ?2, updated_at = ?2
             WHERE id = ?1 AND status = 'queued' AND deadline_at IS NOT NULL AND deadline_at <= ?2",
            args![id.as_str(), now],
        )
    }

    /// Expires every queued call whose deadline passed at `now` (calls left
    /// queued by a stalled dialler or a restart). Returns their ids.
    pub fn expire_overdue(&mut self, now: i64) -> Result<Vec<CallId>, StoreError> {
        let ids: Vec<String> = self.query(OVERDUE, args![now], |r| r.get(0))?;
        let mut expired = Vec::new();
        for id in ids.iter().filter_map(|s| CallId::parse(s)) {
            if self.expire_call(&id, now)? {
                expired.push(id);
            }
        }
        Ok(expired)
    }

    /// `queued`/`dialing`/`ringing` -> `canceled`; erases the code. False
    /// if the call was answered or final already.
    pub fn cancel_call(&mut self, id: &CallId) -> Result<bool, StoreError> {
        self.transition(
            id,
            "UPDATE calls SET status = 'canceled', code = NULL, agi_token_hash = NULL, ended_at = ?2, updated_at = ?2
             WHERE id = ?1 AND status IN ('queued', 'dialing', 'ringing')",
            args![id.as_str(), now_ms()],
        )
    }

    /// The calls of verification `verification` (of user `user_id`) that a
    /// cancel can still stop: queued, dialing or ringing. Read through the
    /// user's calls of those statuses (`calls_by_user_status`), a handful.
    pub fn cancelable_calls_of(&self, user_id: i64, verification: &str) -> Result<Vec<CallId>, StoreError> {
        let ids: Vec<String> = self.query(
            "SELECT id FROM calls WHERE user_id = ?1 AND status IN ('queued', 'dialing', 'ringing')
             AND verification_id = ?2",
            args![user_id, verification],
            |r| r.get(0),
        )?;
        Ok(ids.iter().filter_map(|id| CallId::parse(id)).collect())
    }

    /// Stores the keys the callee pressed (`0-9*#`, in order), as the call
    /// flow reports them. A final call keeps the keys it ended with.
    pub fn record_keys(&mut self, id: &CallId, keys: &str) -> Result<(), StoreError> {
        self.execute(
            &format!("UPDATE calls SET keys = ?2, updated_at = ?3 WHERE id = ?1 AND status IN {LIVE}"),
            args![id.as_str(), keys, now_ms()],
        )?;
        Ok(())
    }

    /// Records the hangup cause Asterisk reported. A call that failed for a
    /// reason only known as `system_error` (OriginateResponse Reason 0 came
    /// first and its Hangup was late) gets the precise reason the cause
    /// stands for, and a webhook saying so.
    pub fn record_cause(&mut self, id: &CallId, cause: u16, cause_text: &str) -> Result<(), StoreError> {
        let now = now_ms();
        self.execute(
            "UPDATE calls SET cause = ?2, cause_text = ?3, updated_at = ?4 WHERE id = ?1 AND cause IS NULL",
            args![id.as_str(), cause, cause_text, now],
        )?;
        let refined = FailReason::from_cause(cause);
        if refined != FailReason::SystemError {
            self.transition(
                id,
                "UPDATE calls SET reason = ?2, updated_at = ?3
                 WHERE id = ?1 AND status = 'failed' AND reason = 'system_error' AND answered_at IS NULL
                   AND detail IS NULL",
                args![id.as_str(), refined.as_str(), now],
            )?;
        }
        Ok(())
    }

    /// Deletes at most `max` of the final calls that ended before `cutoff`
    /// (Unix ms), those that ended first, with their webhook deliveries.
    /// Returns how many calls went: fewer than `max` means none are left
    /// (or another daemon on the same database took them meanwhile). The
    /// retention purge runs it until then, one batch per trip to the
    /// database thread, so other work gets the database between batches
    /// ([`PURGE_BATCH`]).
    pub fn purge_calls(&mut self, cutoff: i64, max: usize) -> Result<usize, StoreError> {
        self.execute(self.pick(PURGE_SQLITE, PURGE_POSTGRES), args![cutoff, max])
    }

    /// Stored calls per (status, reason), for metrics.
    pub fn call_counts(&self) -> Result<Vec<(String, Option<String>, u64)>, StoreError> {
        self.query("SELECT status, reason, COUNT(*) FROM calls GROUP BY status, reason", &[], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    }

    /// Proves the database takes writes: one tiny committed write.
    pub fn probe_write(&mut self) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO health_probe (id, at) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET at = ?1",
            args![now_ms()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::query_plan;
    use crate::store::testing::{Backend, backends};

    fn english() -> CallOptions {
        CallOptions { mode: CallMode::Read, language: "en".into(), require_keypress: false }
    }

    fn store_with_call(b: Backend) -> (Store, CallId) {
        let mut s = b.open();
        let u = s.add_user("acme1", "h").unwrap();
        let id = CallId::generate();
        let options = CallOptions { mode: CallMode::Read, language: "ur".into(), require_keypress: true };
        s.insert_call(&NewCall { id: &id, user_id: u.id, number: "+923001234567", code: "482915", options: &options })
            .unwrap();
        (s, id)
    }

    #[test]
    fn number_counts_use_the_number_index() {
        let (s, _) = store_with_call(Backend::Sqlite);
        let plan = query_plan(&s, NUMBER_CALLS, rusqlite::params!["+923001234567", 0, 0]);
        assert!(plan.iter().all(|p| p.contains("USING COVERING INDEX number_calls_by_number")), "{plan:?}");
        let counts = s.number_calls_since("+923001234567", 0, 0).unwrap();
        assert_eq!((counts.since, counts.recent), (1, 1));
        assert_eq!(s.number_calls_since("+923001234568", 0, 0).unwrap().since, 0);
    }

    /// A database migrated with history gets the last day of it in
    /// `number_calls` (migration 17), and the quota check reads only that.
    #[test]
    fn the_migration_counts_the_last_days_calls() {
        let now = now_ms();
        let hour = 3_600_000;
        let dir = std::env::temp_dir().join(format!("voice-otp-numbers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("old.db");
        {
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            let before = super::super::migrations::version_of("CREATE TABLE number_calls") - 1;
            super::super::migrations::migrate_to(&mut conn, before).unwrap();
            for (number, created) in [("+923004444444", now - 30 * hour), ("+923004444444", now - hour)] {
                conn.execute(
                    "INSERT INTO calls (id, number, status, created_at, updated_at) VALUES (?1, ?2, 'failed', ?3, ?3)",
                    rusqlite::params![CallId::generate().as_str(), number, created],
                )
                .unwrap();
            }
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.count_for_tests("SELECT COUNT(*) FROM number_calls", &[]), 1);
        assert_eq!(s.number_calls_since("+923004444444", now - 24 * hour, now).unwrap().since, 1);
        let plan = query_plan(&s, NUMBER_CALLS, rusqlite::params!["+923004444444", 0, 0]);
        assert!(plan.iter().all(|p| p.contains("number_calls_by_number")), "{plan:?}");
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// However many final calls are on record, the purge looks only at
    /// those that ended before the cutoff, in the order it takes them.
    #[test]
    fn the_purge_walks_the_end_index() {
        let (s, _) = store_with_call(Backend::Sqlite);
        let plan = query_plan(&s, PURGE_SQLITE, [0, 10]);
        assert!(plan.contains(&"SEARCH calls USING INDEX calls_by_end (ended_at>? AND ended_at<?)".into()), "{plan:?}");
        // The cascade to each purged call's webhook deliveries: by call.
        let cascade = "SEARCH webhook_deliveries USING COVERING INDEX webhook_deliveries_by_call (call_id=?)";
        assert!(plan.contains(&cascade.into()), "{plan:?}");
        // Nothing else is walked, and the index gives the order.
        let walks = |p: &String| p.contains("SCAN") || p.contains("calls_queue") || p.contains("TEMP B-TREE");
        assert!(!plan.iter().any(walks), "{plan:?}");
    }

    #[test]
    fn status_lookups_use_the_queue_index() {
        let (s, _) = store_with_call(Backend::Sqlite);
        let plan = query_plan(&s, OVERDUE, [0]);
        assert!(plan.iter().all(|p| p.contains("USING INDEX calls_queue")), "{plan:?}");
        let indexes: Vec<String> = s
            .sqlite_for_tests()
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'calls'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!indexes.iter().any(|i| i == "calls_by_status"), "{indexes:?}");
    }

    /// `GET /v1/calls` with and without `?status=`, first page and later
    /// pages: one user's calls come from that user's index, in its order
    /// (only ties in `created_at` are sorted, by id).
    #[test]
    fn user_listings_use_the_user_indexes() {
        let (s, _) = store_with_call(Backend::Sqlite);
        let id = CallId::generate();
        for (status, index) in [(None, "calls_by_user"), (Some("failed"), "calls_by_user_status")] {
            for cursor in [None, Some(5)] {
                let sql = user_calls_sql(status.is_some());
                let plan = query_plan(&s, &sql, rusqlite::params![1, status, cursor, id.as_str(), 20]);
                let search = format!("SEARCH calls USING INDEX {index} (");
                assert!(plan[0].starts_with(&search), "status {status:?}, cursor {cursor:?}: {plan:?}");
                assert_eq!(plan[1..], ["USE TEMP B-TREE FOR LAST TERM OF ORDER BY"], "{status:?} {cursor:?}");
            }
        }
    }

    backends! {
        fn options_and_keys_are_kept(b) {
            let (mut s, id) = store_with_call(b);
            let c = s.call(&id).unwrap().unwrap();
            assert_eq!(c.options, CallOptions { mode: CallMode::Read, language: "ur".into(), require_keypress: true });
            assert_eq!((c.verified, c.attempts), (false, 0));
            assert_eq!(c.keys, "");
            s.record_keys(&id, "51").unwrap();
            assert_eq!(s.call(&id).unwrap().unwrap().keys, "51");
            s.finish_call(&id, &CallEnd::failed(FailReason::HangupBeforeCode, None)).unwrap();
            s.record_keys(&id, "9").unwrap();
            assert_eq!(s.call(&id).unwrap().unwrap().keys, "51", "a final call keeps its keys");
        }

        fn an_entry_is_kept_with_the_end_of_the_call_and_in_its_webhook(b) {
            let mut s = b.open();
            let u = s.add_user("acme1", "h").unwrap();
            s.set_webhook_url("acme1", Some("https://hooks.example.com/otp")).unwrap();
            let enter = CallOptions { mode: CallMode::Enter, language: "en".into(), require_keypress: false };
            let id = CallId::generate();
            s.insert_call(&NewCall { id: &id, user_id: u.id, number: "+923001234567", code: "246810", options: &enter })
                .unwrap();
            assert_eq!(s.call(&id).unwrap().unwrap().options.mode, CallMode::Enter);
            s.mark_dialing(&id).unwrap();
            s.mark_answered(&id).unwrap();
            let end = CallEnd { status: CallStatus::Completed, reason: None, detail: None, readings: None };
            assert!(s.finish_entry(&id, &end, 2, true).unwrap());
            let c = s.call(&id).unwrap().unwrap();
            assert_eq!((c.status, c.verified, c.attempts, c.code), (CallStatus::Completed, true, 2, None));
            let body: String = s
                .query_one(
                    "SELECT body FROM webhook_deliveries WHERE call_id = ?1 AND status = 'completed'",
                    args![id.as_str()],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(body.contains(r#""verified":true"#) && body.contains(r#""attempts":2"#), "{body}");

            // A call that is over already keeps the entry it ended with.
            let late = CallEnd::failed(FailReason::WrongCode, None);
            assert!(!s.finish_entry(&id, &late, 3, false).unwrap());
            let c = s.call(&id).unwrap().unwrap();
            assert_eq!((c.status, c.verified, c.attempts), (CallStatus::Completed, true, 2));
        }

        fn happy_path_erases_code_at_the_end(b) {
            let (mut s, id) = store_with_call(b);
            let c = s.call(&id).unwrap().unwrap();
            assert_eq!(c.status, CallStatus::Queued);
            assert_eq!(c.code.as_ref().map(Secret::expose), Some("482915"));
            assert!(!format!("{c:?}").contains("482915"), "Debug of a call never shows its code");
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

        fn final_calls_do_not_move(b) {
            let (mut s, id) = store_with_call(b);
            assert!(s.finish_call(&id, &CallEnd::failed(FailReason::Busy, None)).unwrap());
            assert!(!s.mark_answered(&id).unwrap());
            let end = CallEnd { status: CallStatus::Completed, reason: None, detail: None, readings: Some(2) };
            assert!(!s.finish_call(&id, &end).unwrap());
            assert_eq!(s.call(&id).unwrap().unwrap().status, CallStatus::Failed);
        }

        fn a_late_cause_refines_a_generic_failure(b) {
            let (mut s, id) = store_with_call(b);
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

        fn ringing_then_answered_and_durations(b) {
            let (mut s, id) = store_with_call(b);
            assert!(!s.mark_ringing(&id).unwrap(), "a queued call does not ring");
            s.mark_dialing(&id).unwrap();
            assert!(s.mark_ringing(&id).unwrap());
            assert!(!s.mark_ringing(&id).unwrap());
            assert!(s.mark_answered(&id).unwrap());
            let end = CallEnd { status: CallStatus::Completed, reason: None, detail: None, readings: Some(1) };
            s.finish_call(&id, &end).unwrap();
            let c = s.call(&id).unwrap().unwrap();
            assert_eq!(c.ring_ms(), Some(c.answered_at.unwrap() - c.ringing_at.unwrap()));
            assert_eq!(c.talk_ms(), Some(c.ended_at.unwrap() - c.answered_at.unwrap()));
        }

        fn cancel_only_before_answer_and_erases_code(b) {
            let (mut s, id) = store_with_call(b);
            s.mark_dialing(&id).unwrap();
            s.mark_ringing(&id).unwrap();
            assert!(s.cancel_call(&id).unwrap());
            let c = s.call(&id).unwrap().unwrap();
            assert_eq!((c.status, c.code), (CallStatus::Canceled, None));
            assert!(!s.mark_answered(&id).unwrap(), "a canceled call cannot be answered");
            let (mut s, id) = store_with_call(b);
            assert!(!s.mark_answered(&id).unwrap(), "a call never dialled cannot be answered");
            s.mark_dialing(&id).unwrap();
            s.mark_answered(&id).unwrap();
            assert!(!s.cancel_call(&id).unwrap());
        }

        /// Review item 5: a call that shows `ringing` when it is answered
        /// becomes `answered`, with its time, and can no longer be canceled.
        fn a_ringing_call_is_answered(b) {
            let (mut s, id) = store_with_call(b);
            s.mark_dialing(&id).unwrap();
            s.mark_ringing(&id).unwrap();
            assert!(s.mark_answered(&id).unwrap());
            let c = s.call(&id).unwrap().unwrap();
            assert_eq!(c.status, CallStatus::Answered);
            assert!(c.answered_at.is_some());
            assert!(!s.cancel_call(&id).unwrap(), "no cancel once answered");
        }

        /// Only a dialled, live call with its own token passes; nothing but the
        /// status is read, and a final call or a requeued one loses its token.
        fn fastagi_tokens_admit_only_the_dialled_call(b) {
            let (mut s, id) = store_with_call(b);
            let right = TokenHash::of("right-token");
            let wrong = TokenHash::of("wrong-token");
            assert_eq!(s.check_agi_token(&id, &right).unwrap(), TokenCheck::NotInFlight(CallStatus::Queued));
            assert_eq!(s.check_agi_token(&CallId::generate(), &right).unwrap(), TokenCheck::UnknownCall);
            s.mark_dialing_with(&id, &right).unwrap();
            assert_eq!(s.check_agi_token(&id, &wrong).unwrap(), TokenCheck::WrongToken);
            assert_eq!(s.check_agi_token(&id, &right).unwrap(), TokenCheck::Valid(CallStatus::Dialing));
            assert_eq!(s.call(&id).unwrap().unwrap().status, CallStatus::Dialing, "checking changes nothing");
            s.mark_ringing(&id).unwrap();
            assert_eq!(s.check_agi_token(&id, &right).unwrap(), TokenCheck::Valid(CallStatus::Ringing));
            // Requeued (the Originate never left): the old token is void.
            let (mut s2, id2) = store_with_call(b);
            s2.mark_dialing_with(&id2, &right).unwrap();
            s2.requeue(&id2).unwrap();
            assert_eq!(s2.check_agi_token(&id2, &right).unwrap(), TokenCheck::NotInFlight(CallStatus::Queued));
            s2.mark_dialing_with(&id2, &wrong).unwrap();
            assert_eq!(s2.check_agi_token(&id2, &right).unwrap(), TokenCheck::WrongToken);
            // Final: refused, and the hash is gone with the code.
            s.finish_call(&id, &CallEnd::failed(FailReason::HangupBeforeCode, None)).unwrap();
            assert_eq!(s.check_agi_token(&id, &right).unwrap(), TokenCheck::NotInFlight(CallStatus::Failed));
            let hash: Option<Vec<u8>> =
                s.query_one("SELECT agi_token_hash FROM calls WHERE id = ?1", args![id.as_str()], |r| r.get(0)).unwrap();
            assert_eq!(hash, None);
        }

        fn only_overdue_queued_calls_expire(b) {
            let mut s = b.open();
            let u = s.add_user("acme1", "h").unwrap();
            let mk = |s: &mut Store, deadline: i64| {
                let id = CallId::generate();
                let new = NewCall { id: &id, user_id: u.id, number: "+923001234567", code: "1234", options: &english() };
                s.insert_call_with(&new, &NewCallLifecycle { deadline_at: Some(deadline), ..NewCallLifecycle::default() })
                    .unwrap();
                id
            };
            let overdue = mk(&mut s, 1_000);
            let later = mk(&mut s, 10_000);
            let dialing = mk(&mut s, 1_000);
            s.mark_dialing(&dialing).unwrap();
            assert_eq!(s.expire_overdue(5_000).unwrap(), vec![overdue.clone()]);
            let c = s.call(&overdue).unwrap().unwrap();
            assert_eq!((c.status, c.code), (CallStatus::Expired, None));
            assert_eq!(s.call(&later).unwrap().unwrap().status, CallStatus::Queued);
            assert_eq!(s.call(&dialing).unwrap().unwrap().status, CallStatus::Dialing);
            assert!(s.expire_call(&later, 10_000).unwrap());
        }

        fn purge_removes_only_old_final_calls(b) {
            let (mut s, old) = store_with_call(b);
            s.finish_call(&old, &CallEnd::failed(FailReason::Busy, None)).unwrap();
            let live = CallId::generate();
            let u = s.user("acme1").unwrap().unwrap();
            s.insert_call(&NewCall {
                id: &live,
                user_id: u.id,
                number: "+923001234567",
                code: "1234",
                options: &english(),
            })
            .unwrap();
            let ended = s.call(&old).unwrap().unwrap().ended_at.unwrap();
            assert_eq!(s.purge_calls(ended, 10).unwrap(), 0, "cutoff is exclusive");
            assert_eq!(s.purge_calls(i64::MAX, 10).unwrap(), 1);
            assert!(s.call(&old).unwrap().is_none());
            assert!(s.call(&live).unwrap().is_some(), "a live call is never purged");
        }

        /// The last day's calls per number: counted like a scan of the
        /// calls, rows past 25 hours trimmed by later inserts (at most 4
        /// each).
        fn number_counts_keep_only_the_last_day(b) {
            let (s, _) = store_with_call(b);
            let now = now_ms();
            let hour = 3_600_000;
            let add = |number: &str, created: i64| {
                s.execute_for_tests(
                    "INSERT INTO calls (id, number, status, created_at, updated_at) VALUES (?1, ?2, 'queued', ?3, ?3)",
                    args![CallId::generate_at(created).as_str(), number, created],
                );
            };
            let rows = |s: &Store| s.count_for_tests("SELECT COUNT(*) FROM number_calls", &[]);
            // Ten old calls (two days ago), then calls of the last day.
            for i in 0..10 {
                add("+923001111111", now - 48 * hour + i);
            }
            assert_eq!(rows(&s), 11, "the store_with_call call and ten old ones");
            add("+923002222222", now - 20 * hour);
            assert_eq!(rows(&s), 11 + 1 - 4, "an insert trims 4 old rows at most");
            add("+923002222222", now - 10 * 60_000);
            add("+923002222222", now - 60_000);
            assert_eq!(rows(&s), 4, "the old ones are all gone, the last day's stay");
            let c = s.number_calls_since("+923002222222", now - 24 * hour, now - 15 * 60_000).unwrap();
            let expected =
                NumberCalls { since: 3, oldest_since: Some(now - 20 * hour), recent: 2, oldest_recent: Some(now - 10 * 60_000) };
            assert_eq!(c, expected);
            assert_eq!(s.number_calls_since("+923001111111", now - 24 * hour, now).unwrap().since, 0);
        }

        /// A purge batch takes at most its size, the calls that ended first.
        fn purge_batches_take_the_oldest_ends_first(b) {
            let mut s = b.open();
            let u = s.add_user("acme1", "h").unwrap();
            let ids: Vec<CallId> = (0..5)
                .map(|i: i64| {
                    let id = CallId::generate();
                    let new = NewCall { id: &id, user_id: u.id, number: "+923001234567", code: "1", options: &english() };
                    s.insert_call(&new).unwrap();
                    s.finish_call(&id, &CallEnd::failed(FailReason::Busy, None)).unwrap();
                    // Ends in the reverse order of the calls.
                    s.execute_for_tests("UPDATE calls SET ended_at = ?2 WHERE id = ?1", args![id.as_str(), 100 - i]);
                    id
                })
                .collect();
            assert_eq!(s.purge_calls(1_000, 2).unwrap(), 2);
            let left: Vec<bool> = ids.iter().map(|id| s.call(id).unwrap().is_some()).collect();
            assert_eq!(left, [true, true, true, false, false], "the two that ended first went");
            assert_eq!(s.purge_calls(1_000, 2).unwrap(), 2);
            assert_eq!(s.purge_calls(1_000, 2).unwrap(), 1, "fewer than asked: none left");
            assert_eq!(s.purge_calls(1_000, 2).unwrap(), 0);
        }

        fn listing_pages_newest_first_per_user(b) {
            let mut s = b.open();
            let a = s.add_user("a", "h").unwrap();
            let b = s.add_user("b", "h").unwrap();
            let mut ids = Vec::new();
            for _ in 0..5 {
                let id = CallId::generate();
                s.insert_call(&NewCall {
                    id: &id,
                    user_id: a.id,
                    number: "+923001234567",
                    code: "1234",
                    options: &english(),
                })
                .unwrap();
                ids.push(id);
            }
            let other = CallId::generate();
            s.insert_call(&NewCall {
                id: &other,
                user_id: b.id,
                number: "+923001234567",
                code: "1234",
                options: &english(),
            })
            .unwrap();
            s.finish_call(&ids[0], &CallEnd::failed(FailReason::Busy, None)).unwrap();
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let page = s.user_calls(a.id, None, cursor.as_ref(), 2).unwrap();
                if page.is_empty() {
                    break;
                }
                let last = page.last().unwrap();
                cursor = Some(CallCursor { created_at: last.created_at, id: last.id.clone() });
                assert_eq!(CallCursor::decode(&cursor.as_ref().unwrap().encode()), cursor);
                seen.extend(page.into_iter().map(|c| (c.created_at, c.id.as_str().to_owned())));
            }
            assert_eq!(seen.len(), 5, "every call of a once, none of b");
            assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first, no repeats");
            let failed = s.user_calls(a.id, Some(CallStatus::Failed), None, 10).unwrap();
            assert_eq!(failed.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![ids[0].clone()]);
            assert_eq!(CallCursor::decode("x-y"), None);
        }

        fn unknown_call_is_none(b) {
            let (s, _) = store_with_call(b);
            assert!(s.call(&CallId::generate()).unwrap().is_none());
            assert_eq!(s.recent_calls(10).unwrap().len(), 1);
        }
    }
}
