//! The webhook outbox: one row per status change to announce, written in
//! the same transaction as the change itself, and every delivery attempt.
//!
//! A delivery is due when its `next_attempt_at` has come and no older
//! delivery of the same call is still pending, so a receiver sees a call's
//! statuses in order even across retries. Per-user settings (default URL,
//! signing secret) live on the `users` row.

use rusqlite::{Connection, OptionalExtension, params};

use super::calls::read_call;
use super::{Store, StoreError};
use crate::call::{CallId, now_ms};

/// A pending delivery, ready to sign and send.
#[derive(Clone)]
pub struct Delivery {
    /// Row id; also sent as `X-Voice-OTP-Delivery` so receivers can dedupe.
    pub id: i64,
    /// The call it is about.
    pub call_id: String,
    /// Destination.
    pub url: String,
    /// The call status it announces.
    pub status: String,
    /// The call JSON at the time of the change.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The user's signing secret at send time (rotation applies to retries).
    pub secret: Option<String>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("call_id", &self.call_id)
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// What one attempt produced.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The receiver's HTTP status, if it answered.
    pub http_status: Option<u16>,
    /// Why it failed (connection refused, timeout, destination refused...).
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: i64,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptVerdict {
    /// A 2xx: done.
    Delivered,
    /// Try again at this Unix ms.
    RetryAt(i64),
    /// Attempts exhausted or the destination is refused for good.
    GiveUp,
}

/// A delivery as recorded, for `voice-otp call webhooks`.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    /// Row id.
    pub id: i64,
    /// Announced status.
    pub status: String,
    /// Destination.
    pub url: String,
    /// Attempts made.
    pub attempts: u32,
    /// Unix ms of the 2xx.
    pub delivered_at: Option<i64>,
    /// Unix ms when retries stopped.
    pub gave_up_at: Option<i64>,
    /// Every attempt: (Unix ms, HTTP status, error).
    pub tries: Vec<(i64, Option<u16>, Option<String>)>,
}

/// Queues the webhook for the call's current state if the call or its user
/// has a URL. Runs inside the caller's transaction.
pub(super) fn enqueue_call_change(conn: &Connection, id: &CallId) -> Result<(), StoreError> {
    // The call's own callback URL, else its user's webhook URL. Most calls
    // have neither: find that out before reading the whole row.
    let url = conn
        .prepare_cached(
            "SELECT COALESCE(c.callback_url, u.webhook_url) FROM calls c LEFT JOIN users u ON u.id = c.user_id
             WHERE c.id = ?1",
        )?
        .query_row([id.as_str()], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten();
    let Some(url) = url else { return Ok(()) };
    let Some(call) = read_call(conn, id)? else { return Ok(()) };
    let body = serde_json::to_string(&call.to_json()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let now = now_ms();
    conn.prepare_cached(
        "INSERT INTO webhook_deliveries (call_id, user_id, url, status, body, created_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    )?
    .execute(params![id.as_str(), call.user_id, url, call.status.as_str(), body, now])?;
    Ok(())
}

/// A fresh signing secret: 256 random bits as hex.
fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Store {
    /// Deliveries due at `now`, oldest first, at most one pending per call.
    pub fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT d.id, d.call_id, d.url, d.status, d.body, d.attempts, u.webhook_secret
             FROM webhook_deliveries d LEFT JOIN users u ON u.id = d.user_id
             WHERE d.delivered_at IS NULL AND d.gave_up_at IS NULL AND d.next_attempt_at <= ?1
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                               WHERE e.call_id = d.call_id AND e.id < d.id
                                 AND e.delivered_at IS NULL AND e.gave_up_at IS NULL)
             ORDER BY d.id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit], |r| {
            Ok(Delivery {
                id: r.get(0)?,
                call_id: r.get(1)?,
                url: r.get(2)?,
                status: r.get(3)?,
                body: r.get(4)?,
                attempts: r.get(5)?,
                secret: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the next pending delivery is due (Unix ms), if any.
    pub fn next_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        let at = self
            .conn
            .prepare_cached(
                "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE delivered_at IS NULL AND gave_up_at IS NULL",
            )?
            .query_row([], |r| r.get(0))?;
        Ok(at)
    }

    /// Deliveries not yet delivered nor given up.
    pub fn pending_deliveries(&self) -> Result<u64, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE delivered_at IS NULL AND gave_up_at IS NULL",
            )?
            .query_row([], |r| r.get(0))?;
        Ok(n)
    }

    /// Records one attempt and its verdict in one transaction.
    pub fn record_attempt(
        &mut self,
        delivery: i64,
        attempt: &Attempt,
        verdict: AttemptVerdict,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        tx.prepare_cached(
            "INSERT INTO webhook_attempts (delivery_id, at, http_status, error, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![delivery, now, attempt.http_status, attempt.error, attempt.duration_ms])?;
        let (delivered, gave_up, next) = match verdict {
            AttemptVerdict::Delivered => (Some(now), None, None),
            AttemptVerdict::GiveUp => (None, Some(now), None),
            AttemptVerdict::RetryAt(at) => (None, None, Some(at)),
        };
        tx.prepare_cached(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, delivered_at = ?2, gave_up_at = ?3,
                    next_attempt_at = COALESCE(?4, next_attempt_at)
             WHERE id = ?1",
        )?
        .execute(params![delivery, delivered, gave_up, next])?;
        tx.commit()?;
        Ok(())
    }

    /// Every delivery of a call with its attempts, oldest first.
    pub fn call_deliveries(&self, id: &CallId) -> Result<Vec<DeliveryRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, status, url, attempts, delivered_at, gave_up_at FROM webhook_deliveries
             WHERE call_id = ?1 ORDER BY id",
        )?;
        let mut records: Vec<DeliveryRecord> = stmt
            .query_map([id.as_str()], |r| {
                Ok(DeliveryRecord {
                    id: r.get(0)?,
                    status: r.get(1)?,
                    url: r.get(2)?,
                    attempts: r.get(3)?,
                    delivered_at: r.get(4)?,
                    gave_up_at: r.get(5)?,
                    tries: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut tries = self
            .conn
            .prepare_cached("SELECT at, http_status, error FROM webhook_attempts WHERE delivery_id = ?1 ORDER BY id")?;
        for rec in &mut records {
            rec.tries =
                tries.query_map([rec.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
        }
        Ok(records)
    }

    /// Sets (or with `None` clears) a user's default webhook URL.
    pub fn set_webhook_url(&mut self, name: &str, url: Option<&str>) -> Result<(), StoreError> {
        let n = self.conn.execute("UPDATE users SET webhook_url = ?2 WHERE name = ?1", params![name, url])?;
        if n == 0 {
            return Err(StoreError::NoSuchUser(name.to_owned()));
        }
        Ok(())
    }

    /// A user's default webhook URL (`Ok(None)`: none set).
    pub fn webhook_url(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT webhook_url FROM users WHERE name = ?1", [name], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NoSuchUser(name.to_owned()))
    }

    /// Gives a user a new signing secret and returns it - the only time it
    /// is shown. Pending deliveries are signed with the new one.
    pub fn rotate_webhook_secret(&mut self, name: &str) -> Result<String, StoreError> {
        let secret = new_secret();
        let n = self.conn.execute("UPDATE users SET webhook_secret = ?2 WHERE name = ?1", params![name, secret])?;
        if n == 0 {
            return Err(StoreError::NoSuchUser(name.to_owned()));
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::CallStatus;
    use crate::call::options::CallOptions;
    use crate::store::{CallEnd, NewCall, NewCallLifecycle};

    fn english() -> CallOptions {
        CallOptions { mode: crate::call::options::CallMode::Read, language: "en".into(), require_keypress: false }
    }

    fn setup(default_url: Option<&str>) -> (Store, CallId) {
        let mut s = Store::open_in_memory().unwrap();
        let u = s.add_user("acme1", "h").unwrap();
        s.set_webhook_url("acme1", default_url).unwrap();
        let id = CallId::generate();
        s.insert_call_with(
            &NewCall { id: &id, user_id: u.id, number: "+923001234567", code: "482915", options: &english() },
            &NewCallLifecycle::default(),
        )
        .unwrap();
        (s, id)
    }

    #[test]
    fn every_status_change_is_queued_in_order_without_the_code() {
        let (mut s, id) = setup(Some("http://hooks.example/a"));
        s.mark_dialing(&id).unwrap();
        s.mark_ringing(&id).unwrap();
        s.mark_answered(&id).unwrap();
        let end = CallEnd { status: CallStatus::Completed, reason: None, detail: None, readings: Some(2) };
        s.finish_call(&id, &end).unwrap();
        // Refused transitions queue nothing.
        s.mark_answered(&id).unwrap();
        let due = s.due_deliveries(i64::MAX, 10).unwrap();
        assert_eq!(due.len(), 1, "one at a time per call");
        assert_eq!(due[0].status, "dialing");
        assert!(!due[0].body.contains("482915"));
        let json: serde_json::Value = serde_json::from_str(&due[0].body).unwrap();
        assert_eq!(json["status"], "dialing");
        assert_eq!(json["id"], id.as_str());
        assert_eq!(due[0].secret.as_ref().map(String::len), Some(64));
        let mut order = Vec::new();
        while let Some(d) = s.due_deliveries(i64::MAX, 10).unwrap().into_iter().next() {
            order.push(d.status.clone());
            let ok = Attempt { http_status: Some(204), error: None, duration_ms: 1 };
            s.record_attempt(d.id, &ok, AttemptVerdict::Delivered).unwrap();
        }
        assert_eq!(order, ["dialing", "ringing", "answered", "completed"]);
        assert_eq!(s.pending_deliveries().unwrap(), 0);
    }

    #[test]
    fn a_retry_holds_back_later_changes_of_the_same_call() {
        let (mut s, id) = setup(Some("http://hooks.example/a"));
        s.mark_dialing(&id).unwrap();
        s.finish_call(&id, &CallEnd::failed(crate::call::FailReason::Busy, None)).unwrap();
        let first = s.due_deliveries(i64::MAX, 10).unwrap().remove(0);
        let failed = Attempt { http_status: Some(500), error: None, duration_ms: 3 };
        s.record_attempt(first.id, &failed, AttemptVerdict::RetryAt(5_000)).unwrap();
        assert!(s.due_deliveries(4_999, 10).unwrap().is_empty(), "the failed one waits, and the next waits for it");
        assert_eq!(s.next_delivery_at().unwrap(), Some(5_000));
        let again = s.due_deliveries(5_000, 10).unwrap();
        assert_eq!((again[0].id, again[0].attempts), (first.id, 1));
        s.record_attempt(first.id, &failed, AttemptVerdict::GiveUp).unwrap();
        assert_eq!(s.due_deliveries(i64::MAX, 10).unwrap()[0].status, "failed");
        let records = s.call_deliveries(&id).unwrap();
        assert_eq!(records[0].tries.len(), 2);
        assert!(records[0].gave_up_at.is_some());
    }

    #[test]
    fn no_url_no_delivery_and_the_call_url_wins() {
        let (mut s, id) = setup(None);
        s.mark_dialing(&id).unwrap();
        assert_eq!(s.pending_deliveries().unwrap(), 0);
        let u = s.user("acme1").unwrap().unwrap();
        s.set_webhook_url("acme1", Some("http://default.example/")).unwrap();
        let id2 = CallId::generate();
        let life = NewCallLifecycle { deadline_at: None, callback_url: Some("http://own.example/".into()) };
        s.insert_call_with(
            &NewCall { id: &id2, user_id: u.id, number: "+923001234567", code: "1", options: &english() },
            &life,
        )
        .unwrap();
        s.mark_dialing(&id2).unwrap();
        assert_eq!(s.due_deliveries(i64::MAX, 10).unwrap()[0].url, "http://own.example/");
    }

    #[test]
    fn secrets_rotate_and_stay_out_of_debug() {
        let (mut s, id) = setup(Some("http://hooks.example/a"));
        let before = s.rotate_webhook_secret("acme1").unwrap();
        let after = s.rotate_webhook_secret("acme1").unwrap();
        assert_ne!(before, after);
        s.mark_dialing(&id).unwrap();
        let d = s.due_deliveries(i64::MAX, 1).unwrap().remove(0);
        assert_eq!(d.secret.as_deref(), Some(after.as_str()));
        assert!(!format!("{d:?}").contains(&after));
        assert!(s.rotate_webhook_secret("ghost").is_err());
    }
}
