//! Counts kept by triggers (migration 9), so that reading them costs a
//! handful of rows whatever the history: for `/metrics`, calls per (status,
//! reason) and webhook deliveries still pending; for the per-user daily
//! cap, each user's calls per hour.

use super::backend::args;
use super::{Store, StoreError};

/// The calls on record per (status, reason); `reason` '' stands for none.
const SCRAPE_CALLS: &str = "SELECT status, reason, n FROM call_counts WHERE n > 0";

/// Webhook deliveries neither delivered nor given up.
const SCRAPE_PENDING: &str = "SELECT pending FROM webhook_backlog WHERE id = 1";

/// A user's calls in the hours after ?2, and the oldest of those hours.
/// (The CAST keeps PostgreSQL's SUM of BIGINTs an integer, not NUMERIC.)
const USER_DAY: &str =
    "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT), MIN(hour) FROM user_call_hours WHERE user_id = ?1 AND hour > ?2";

/// Every statement run per scrape or per request here, for the test that
/// none of them reads `calls`.
#[cfg(test)]
const STATEMENTS: [&str; 3] = [SCRAPE_CALLS, SCRAPE_PENDING, USER_DAY];

/// One hour, the bucket of the per-user daily count.
const HOUR_MS: i64 = 3_600_000;

/// What [`Store::user_calls_last_day`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserDay {
    /// Calls stored in this hour and the 23 before.
    pub calls: u64,
    /// When (Unix ms) the oldest of those hours began: a day after that,
    /// its calls stop counting.
    pub oldest_hour_starts_ms: Option<i64>,
}

/// What a `/metrics` scrape needs from the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeCounts {
    /// Calls on record per (status, reason), zero counts left out.
    pub calls: Vec<(String, Option<String>, u64)>,
    /// Webhook deliveries waiting.
    pub webhooks_pending: u64,
}

impl Store {
    /// The counts a scrape shows, read from the tables the triggers keep:
    /// a few rows, not a scan of the calls.
    pub fn scrape_counts(&self) -> Result<ScrapeCounts, StoreError> {
        let calls = self.query(SCRAPE_CALLS, &[], |r| {
            let reason: String = r.get(1)?;
            Ok((r.get(0)?, (!reason.is_empty()).then_some(reason), r.get(2)?))
        })?;
        let webhooks_pending = self.query_one(SCRAPE_PENDING, &[], |r| r.get(0))?;
        Ok(ScrapeCounts { calls, webhooks_pending })
    }

    /// The calls user `user_id` stored in the 24 hourly buckets up to and
    /// including `now_ms`'s (so between 23 and 24 hours back).
    pub fn user_calls_last_day(&self, user_id: i64, now_ms: i64) -> Result<UserDay, StoreError> {
        self.query_one(USER_DAY, args![user_id, now_ms / HOUR_MS - 24], |r| {
            let oldest: Option<i64> = r.get(1)?;
            Ok(UserDay { calls: r.get(0)?, oldest_hour_starts_ms: oldest.map(|h| h * HOUR_MS) })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::options::{CallMode, CallOptions};
    use crate::call::{CallId, FailReason};
    use crate::store::testing::backends;
    use crate::store::{CallEnd, NewCall, NewCallLifecycle};

    /// The kept counts next to what a full scan says, both sorted.
    fn assert_counts_true(s: &Store, step: &str) {
        let mut kept = s.scrape_counts().unwrap();
        kept.calls.sort();
        let mut scanned = s.call_counts().unwrap();
        scanned.sort();
        assert_eq!(kept.calls, scanned, "calls after {step}");
        assert_eq!(kept.webhooks_pending, s.pending_deliveries().unwrap(), "pending webhooks after {step}");
    }

    fn add(s: &mut Store, user_id: i64, deadline_at: Option<i64>) -> CallId {
        let id = CallId::generate();
        let options = CallOptions { language: "en".into(), require_keypress: false, mode: CallMode::Read };
        let new = NewCall { id: &id, user_id, number: "+923001234567", code: "1234", options: &options };
        s.insert_call_with(&new, &NewCallLifecycle { deadline_at, ..NewCallLifecycle::default() }).unwrap();
        id
    }

    #[test]
    fn a_database_with_history_gets_its_counts_at_migration() {
        let dir = std::env::temp_dir().join(format!("voice-otp-stats-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("old.db");
        {
            // The database as it was just before the counts' migration,
            // with history written the way that version wrote it.
            std::fs::create_dir_all(&dir).unwrap();
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            let before = super::super::migrations::version_of("CREATE TABLE call_counts") - 1;
            super::super::migrations::migrate_to(&mut conn, before).unwrap();
            conn.execute_batch(
                "INSERT INTO users (id, name, password_hash, enabled, created_at, webhook_url, webhook_secret)
                     VALUES (1, 'acme1', 'h', 1, 0, 'https://hooks.example.com/otp', 's');",
            )
            .unwrap();
            let now = crate::call::now_ms();
            for (status, reason) in [("failed", Some("no_answer")); 3].into_iter().chain([("queued", None)]) {
                let id = CallId::generate();
                conn.execute(
                    "INSERT INTO calls (id, user_id, number, status, reason, created_at, updated_at)
                     VALUES (?1, 1, '+923001234567', ?2, ?3, ?4, ?4)",
                    rusqlite::params![id.as_str(), status, reason, now],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO webhook_deliveries (call_id, user_id, url, status, body, created_at, next_attempt_at)
                     VALUES (?1, 1, 'https://hooks.example.com/otp', ?2, '{}', ?3, ?3)",
                    rusqlite::params![id.as_str(), status, now],
                )
                .unwrap();
            }
        }
        let s = Store::open(&path).unwrap();
        assert_counts_true(&s, "migration");
        assert!(s.scrape_counts().unwrap().calls.contains(&("failed".into(), Some("no_answer".into()), 3)));
        let user = s.user("acme1").unwrap().unwrap();
        assert_eq!(s.user_calls_last_day(user.id, crate::call::now_ms()).unwrap().calls, 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The same on PostgreSQL: no plan of a scrape's statements reads
    /// `calls` or `webhook_deliveries`.
    #[test]
    fn counts_are_read_without_the_calls_or_deliveries_tables_on_postgres() {
        if crate::store::testing::postgres_url().is_none() {
            return;
        }
        let s = crate::store::testing::Backend::Postgres.open();
        let nulls = [crate::store::Value::Null, crate::store::Value::Null];
        for sql in STATEMENTS {
            let params = &nulls[..sql.matches("?").count().min(2)];
            let plan: Vec<String> = s.query(&format!("EXPLAIN {sql}"), params, |r| r.get(0)).unwrap();
            let plan = plan.join("\n");
            assert!(!plan.contains(" on calls ") && !plan.contains(" on webhook_deliveries "), "{sql}: {plan}");
        }
    }

    #[test]
    fn counts_are_read_without_the_calls_or_deliveries_tables() {
        let s = Store::open_in_memory().unwrap();
        for sql in STATEMENTS {
            let mut stmt = s.sqlite_for_tests().prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for step in &plan {
                let tables: Vec<&str> = step.split_whitespace().collect();
                assert!(!tables.contains(&"calls") && !tables.contains(&"webhook_deliveries"), "{sql}: {plan:?}");
                assert!(!step.contains("USING TEMP B-TREE"), "{sql}: {plan:?}");
            }
        }
    }

    backends! {
        fn kept_counts_equal_a_full_scan_through_every_change(b) {
            let mut s = b.open();
            assert_counts_true(&s, "nothing");
            let user = s.add_user("acme1", "h").unwrap();
            // Every status change of this user's calls queues a webhook.
            s.set_webhook_url("acme1", Some("https://hooks.example.com/otp")).unwrap();
            let calls: Vec<CallId> = (0..7).map(|_| add(&mut s, user.id, Some(1_000))).collect();
            assert_counts_true(&s, "inserts");
            let [done, busy, refined, expired, canceled, ringing, queued] = calls.as_slice() else { unreachable!() };
            for id in [done, busy, refined, canceled, ringing] {
                assert!(s.mark_dialing(id).unwrap());
            }
            assert_counts_true(&s, "dialing");
            assert!(s.mark_ringing(done).unwrap() && s.mark_ringing(ringing).unwrap());
            assert!(s.mark_answered(done).unwrap());
            assert_counts_true(&s, "ringing, answered");
            let completed =
                CallEnd { status: crate::call::CallStatus::Completed, reason: None, detail: None, readings: Some(2) };
            assert!(s.finish_call(done, &completed).unwrap());
            assert!(s.finish_call(busy, &CallEnd::failed(FailReason::Busy, None)).unwrap());
            assert!(s.finish_call(refined, &CallEnd::failed(FailReason::SystemError, None)).unwrap());
            assert_counts_true(&s, "finished");
            // A late Hangup turns system_error into the reason its cause stands for.
            s.record_cause(refined, 17, "User busy").unwrap();
            assert_eq!(s.call(refined).unwrap().unwrap().reason.as_deref(), Some("busy"));
            assert_counts_true(&s, "reason refined");
            assert!(s.cancel_call(canceled).unwrap());
            assert!(s.expire_call(expired, 2_000).unwrap());
            assert!(!s.expire_call(queued, 500).unwrap(), "not yet due");
            assert_counts_true(&s, "cancel, expiry");
            assert!(s.requeue(ringing).is_ok());
            // A failed write changes nothing.
            let undone = s.tx(crate::store::backend::TxKind::Deferred, |s| {
                s.execute("UPDATE calls SET status = 'failed', reason = 'congestion'", &[])?;
                s.execute("DELETE FROM webhook_deliveries", &[])?;
                Err::<(), _>(crate::store::StoreError::Corrupt("undo".into()))
            });
            assert!(undone.is_err());
            assert_counts_true(&s, "a rolled back write");
            // Deliveries delivered and given up leave the backlog.
            let pending = s.pending_deliveries().unwrap();
            assert!(pending >= 10, "{pending}");
            s.execute_for_tests("UPDATE webhook_deliveries SET delivered_at = 1 WHERE id % 3 = 0", &[]);
            s.execute_for_tests("UPDATE webhook_deliveries SET gave_up_at = 1 WHERE id % 3 = 1", &[]);
            s.execute_for_tests("UPDATE webhook_deliveries SET gave_up_at = 2 WHERE id % 3 = 0", &[]);
            assert_counts_true(&s, "deliveries settled");
            // The retention purge takes final calls and, by cascade, their deliveries.
            assert!(s.purge_calls(i64::MAX, 100).unwrap() >= 5);
            assert_counts_true(&s, "purge");
            s.remove_user("acme1").unwrap();
            assert_counts_true(&s, "user removed");
        }
    }
}
