//! The webhook outbox: one row per status change to announce, written in
//! the same transaction as the change itself, and every delivery attempt.
//!
//! A delivery is due when its `next_attempt_at` has come; it may start only
//! when no older delivery of the same call is still pending, so a receiver
//! sees a call's statuses in order even across retries. The worker finds due
//! work in windows over the pending indexes, in (`next_attempt_at`, id)
//! order, from a position it keeps, or by destination host, user or call
//! (see `webhook::outbox`): never by walking finished history. Per-user
//! settings (default URL, signing secret) live on the `users` row.

use super::backend::{TxKind, Value, args};
use super::calls::read_call;
use super::{Store, StoreError};
use crate::call::{CallId, now_ms};
use crate::secret::Secret;
use crate::verify::Verification;

/// A pending delivery, ready to sign and send.
#[derive(Clone)]
pub struct Delivery {
    /// Row id; also sent as `X-Voice-OTP-Delivery` so receivers can dedupe.
    pub id: i64,
    /// The call it is about.
    pub call_id: String,
    /// The user whose call it is (`None`: the user was deleted).
    pub user_id: Option<i64>,
    /// Destination.
    pub url: String,
    /// The destination's host, the per-host cap's key (see [`destination_host`]).
    pub host: String,
    /// When it became (or becomes) due, Unix ms: its place in the outbox.
    pub next_attempt_at: i64,
    /// The call status it announces (for a verification's: its status).
    pub status: String,
    /// The event it announces, as sent in `X-Voice-OTP-Event`:
    /// `call.<status>` or `verification.<status>`.
    pub event: String,
    /// The call JSON at the time of the change.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The user's signing secret at send time (rotation applies to retries).
    pub secret: Option<Secret>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("call_id", &self.call_id)
            .field("user_id", &self.user_id)
            .field("host", &self.host)
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// A place in the outbox's order of due work: (`next_attempt_at`, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxPosition {
    /// `next_attempt_at`, Unix ms.
    pub at: i64,
    /// Row id, which orders deliveries due in the same millisecond.
    pub id: i64,
}

impl OutboxPosition {
    /// The position just before this one: a scan after it sees this row
    /// again (ids are integers, so no row lies in between).
    pub fn just_before(self) -> OutboxPosition {
        OutboxPosition { at: self.at, id: self.id - 1 }
    }
}

/// Which due deliveries a window looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DueScope {
    /// All of them.
    All,
    /// One user's (`None`: deliveries of deleted users).
    User(Option<i64>),
    /// Those to one destination host.
    Host(String),
    /// One call's.
    Call(String),
}

/// A due delivery as a window shows it: what deciding whether it may start
/// takes, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRef {
    /// Its place in the order.
    pub position: OutboxPosition,
    /// The call it is about.
    pub call_id: String,
    /// The user whose call it is.
    pub user_id: Option<i64>,
    /// The destination's host.
    pub host: String,
    /// An older delivery of the same call is still pending: it must wait.
    pub behind_earlier: bool,
}

/// The per-host cap's key of a destination URL: its host, lower-case,
/// without IPv6 brackets - the host `webhook::check_url` names. Empty for a
/// URL that does not parse (its attempt then fails for good at once).
pub fn destination_host(url: &str) -> String {
    url.parse::<hyper::Uri>()
        .ok()
        .and_then(|uri| {
            uri.authority().map(|a| a.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
        })
        .unwrap_or_default()
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
pub(super) fn enqueue_call_change(s: &Store, id: &CallId) -> Result<(), StoreError> {
    // The call's own callback URL, else its user's webhook URL. Most calls
    // have neither: find that out before reading the whole row.
    let url: Option<String> = s
        .query_opt(
            "SELECT COALESCE(c.callback_url, u.webhook_url) FROM calls c LEFT JOIN users u ON u.id = c.user_id
             WHERE c.id = ?1",
            args![id.as_str()],
            |r| r.get(0),
        )?
        .flatten();
    let Some(url) = url else { return Ok(()) };
    let Some(call) = read_call(s, id)? else { return Ok(()) };
    let body = serde_json::to_string(&call.to_json()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let now = now_ms();
    let host = destination_host(&url);
    s.execute(
        "INSERT INTO webhook_deliveries (call_id, user_id, url, host, status, body, created_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        args![id.as_str(), call.user_id, &url, &host, call.status.as_str(), &body, now],
    )?;
    Ok(())
}

/// Queues the webhook for verification `v`'s current state, if it or its
/// user has a URL, filed under its latest call (so it follows that call's
/// own changes). Runs inside the caller's transaction.
pub(super) fn enqueue_verification_change(s: &Store, v: &Verification) -> Result<(), StoreError> {
    let Some(call_id) = v.last_call_id.as_deref() else { return Ok(()) };
    let url = match &v.callback_url {
        Some(url) => Some(url.clone()),
        None => s
            .query_opt("SELECT webhook_url FROM users WHERE id = ?1", args![v.user_id], |r| r.get::<Option<String>>(0))?
            .flatten(),
    };
    let Some(url) = url else { return Ok(()) };
    let now = now_ms();
    let status = v.status_at(now);
    // Attempts left are 0 in every final state, the only ones announced.
    let body = serde_json::to_string(&v.to_json(now, 0)).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let host = destination_host(&url);
    s.execute(
        "INSERT INTO webhook_deliveries (call_id, user_id, url, host, status, event, body, created_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        args![call_id, v.user_id, &url, &host, status.as_str(), format!("verification.{status}"), &body, now],
    )?;
    Ok(())
}

/// How long a daemon's claim on a delivery it is sending lasts: longer
/// than an attempt can take (`webhooks.timeout_secs` is at most 300 s). A
/// claim whose daemon died runs out, and another daemon sends it.
const CLAIM_MS: i64 = 600_000;

/// A fresh signing secret: 256 random bits as hex.
fn new_secret() -> Secret {
    Secret::new(hex::encode(rand::random::<[u8; 32]>()))
}

/// [`Store::due_window`]'s statement for a scope: the index it walks and
/// its filter on `?5`, per database. SQLite is told the index (`INDEXED
/// BY`); PostgreSQL has no such clause and finds it from the filter.
fn due_window_sql(postgres: bool, scope: &DueScope) -> String {
    let (index, filter) = match (scope, postgres) {
        (DueScope::All, _) => ("webhook_deliveries_pending", "CAST(?5 AS TEXT) IS NULL"),
        (DueScope::User(_), false) => ("webhook_deliveries_pending_by_user", "d.user_id IS ?5"),
        // `IS NOT DISTINCT FROM` would read no index: one filter per case.
        (DueScope::User(Some(_)), true) => ("", "d.user_id = ?5"),
        (DueScope::User(None), true) => ("", "d.user_id IS NULL AND CAST(?5 AS BIGINT) IS NULL"),
        (DueScope::Host(_), _) => ("webhook_deliveries_pending_by_host", "d.host = ?5"),
        (DueScope::Call(_), _) => ("webhook_deliveries_by_call", "d.call_id = ?5"),
    };
    let indexed = if postgres { String::new() } else { format!(" INDEXED BY {index}") };
    format!(
        "SELECT d.id, d.next_attempt_at, d.call_id, d.user_id, d.host, CASE WHEN d.host IS NULL THEN d.url END,
                EXISTS (SELECT 1 FROM webhook_deliveries e
                        WHERE e.call_id = d.call_id AND e.id < d.id
                          AND e.delivered_at IS NULL AND e.gave_up_at IS NULL)
         FROM webhook_deliveries d{indexed}
         WHERE d.delivered_at IS NULL AND d.gave_up_at IS NULL AND {filter}
           AND d.next_attempt_at <= ?1 AND (d.next_attempt_at, d.id) > (?2, ?3)
         ORDER BY d.next_attempt_at, d.id LIMIT ?4"
    )
}

impl Store {
    /// At most `window` deliveries of `scope` due at `now`, in outbox order,
    /// after `after` (`None`: from the first). Each query walks one of the
    /// pending partial indexes, so its cost is the window, whatever the
    /// history.
    pub fn due_window(
        &self,
        now: i64,
        scope: &DueScope,
        after: Option<OutboxPosition>,
        window: u32,
    ) -> Result<Vec<DueRef>, StoreError> {
        // The scope picks the index: the range on its leading column(s) then
        // reads rows already in (next_attempt_at, id) order.
        let sql = due_window_sql(self.is_postgres(), scope);
        let key: Value<'_> = match scope {
            DueScope::All => Value::Null,
            DueScope::User(user) => Value::from(*user),
            DueScope::Host(host) => Value::from(host),
            DueScope::Call(call) => Value::from(call),
        };
        let after = after.unwrap_or(OutboxPosition { at: i64::MIN, id: i64::MIN });
        self.query(&sql, &[Value::from(now), after.at.into(), after.id.into(), window.into(), key], |r| {
            let host: Option<String> = r.get(4)?;
            let url: Option<String> = r.get(5)?;
            Ok(DueRef {
                position: OutboxPosition { at: r.get(1)?, id: r.get(0)? },
                call_id: r.get(2)?,
                user_id: r.get(3)?,
                host: host.unwrap_or_else(|| destination_host(url.as_deref().unwrap_or_default())),
                behind_earlier: r.get(6)?,
            })
        })
    }

    /// The pending deliveries among `ids`, in the order given, ready to
    /// send: [`Store::claim_delivery`] of each (the tests' shorthand; the
    /// outbox claims row by row as it picks).
    #[cfg(test)]
    pub fn deliveries(&self, ids: &[i64]) -> Result<Vec<Delivery>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for &id in ids {
            found.extend(self.claim_delivery(id)?);
        }
        Ok(found)
    }

    /// Delivery `id` ready to send, if it is still pending. On a database
    /// several daemons share, it is claimed first (until its attempt is
    /// recorded, its daemon's lease runs out, or for `CLAIM_MS`, ten
    /// minutes): `None` if another daemon holds it, so no two daemons send
    /// a delivery at once.
    pub fn claim_delivery(&self, id: i64) -> Result<Option<Delivery>, StoreError> {
        if let Some(owner) = &self.owner {
            let now = now_ms();
            // A claim is held until it runs out or its daemon's lease does
            // (that daemon is taken for dead, as with its calls).
            let claimed = self.execute(
                "UPDATE webhook_deliveries SET claimed_by = ?2, claimed_until = ?3
                 WHERE id = ?1 AND delivered_at IS NULL AND gave_up_at IS NULL
                   AND (claimed_until IS NULL OR claimed_until <= ?4 OR claimed_by = ?2
                        OR NOT EXISTS (SELECT 1 FROM daemons d
                                       WHERE d.id = webhook_deliveries.claimed_by AND d.seen_at > ?5))",
                args![id, owner.id.as_str(), now + CLAIM_MS, now, now - owner.lease_ms],
            )?;
            if claimed == 0 {
                return Ok(None);
            }
        }
        self.query_opt(
            "SELECT d.id, d.call_id, d.user_id, d.url, d.host, d.next_attempt_at, d.status, d.body, d.attempts,
                    u.webhook_secret, COALESCE(d.event, 'call.' || d.status)
             FROM webhook_deliveries d LEFT JOIN users u ON u.id = d.user_id
             WHERE d.id = ?1 AND d.delivered_at IS NULL AND d.gave_up_at IS NULL",
            args![id],
            |r| {
                let url: String = r.get(3)?;
                let host: Option<String> = r.get(4)?;
                Ok(Delivery {
                    id: r.get(0)?,
                    call_id: r.get(1)?,
                    user_id: r.get(2)?,
                    host: host.unwrap_or_else(|| destination_host(&url)),
                    url,
                    next_attempt_at: r.get(5)?,
                    status: r.get(6)?,
                    body: r.get(7)?,
                    attempts: r.get(8)?,
                    secret: r.get::<Option<String>>(9)?.map(Secret::new),
                    event: r.get(10)?,
                })
            },
        )
    }

    /// When the next pending delivery not yet due at `now` becomes due
    /// (Unix ms), if any. Deliveries already due and waiting (for a slot, or
    /// behind an earlier one) are not counted: their turn comes when an
    /// attempt ends, not at a time.
    pub fn next_due_after(&self, now: i64) -> Result<Option<i64>, StoreError> {
        self.query_one(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries
             WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at > ?1",
            args![now],
            |r| r.get(0),
        )
    }

    /// Sets the host of pending deliveries queued before hosts were
    /// recorded (schema 10), so lookups by host find them. Returns how many.
    pub fn fill_delivery_hosts(&mut self) -> Result<usize, StoreError> {
        self.tx(TxKind::Deferred, |s| {
            let missing: Vec<(i64, String)> = s.query(
                "SELECT id, url FROM webhook_deliveries
                 WHERE delivered_at IS NULL AND gave_up_at IS NULL AND host IS NULL",
                &[],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            for (id, url) in &missing {
                s.execute("UPDATE webhook_deliveries SET host = ?2 WHERE id = ?1", args![*id, destination_host(url)])?;
            }
            Ok(missing.len())
        })
    }

    /// Deliveries not yet delivered nor given up.
    pub fn pending_deliveries(&self) -> Result<u64, StoreError> {
        self.query_one(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE delivered_at IS NULL AND gave_up_at IS NULL",
            &[],
            |r| r.get(0),
        )
    }

    /// Records one attempt and its verdict in one transaction.
    pub fn record_attempt(
        &mut self,
        delivery: i64,
        attempt: &Attempt,
        verdict: AttemptVerdict,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.tx(TxKind::Deferred, |s| {
            s.execute(
                "INSERT INTO webhook_attempts (delivery_id, at, http_status, error, duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                args![delivery, now, attempt.http_status, &attempt.error, attempt.duration_ms],
            )?;
            let (delivered, gave_up, next) = match verdict {
                AttemptVerdict::Delivered => (Some(now), None, None),
                AttemptVerdict::GiveUp => (None, Some(now), None),
                AttemptVerdict::RetryAt(at) => (None, None, Some(at)),
            };
            // The claim (if any) ends with the attempt: a retry is anyone's.
            s.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, delivered_at = ?2, gave_up_at = ?3,
                        next_attempt_at = COALESCE(?4, next_attempt_at), claimed_by = NULL, claimed_until = NULL
                 WHERE id = ?1",
                args![delivery, delivered, gave_up, next],
            )?;
            Ok(())
        })
    }

    /// Every delivery of a call with its attempts, oldest first.
    pub fn call_deliveries(&self, id: &CallId) -> Result<Vec<DeliveryRecord>, StoreError> {
        let mut records: Vec<DeliveryRecord> = self.query(
            "SELECT id, status, url, attempts, delivered_at, gave_up_at FROM webhook_deliveries
             WHERE call_id = ?1 ORDER BY id",
            args![id.as_str()],
            |r| {
                Ok(DeliveryRecord {
                    id: r.get(0)?,
                    status: r.get(1)?,
                    url: r.get(2)?,
                    attempts: r.get(3)?,
                    delivered_at: r.get(4)?,
                    gave_up_at: r.get(5)?,
                    tries: Vec::new(),
                })
            },
        )?;
        for rec in &mut records {
            rec.tries = self.query(
                "SELECT at, http_status, error FROM webhook_attempts WHERE delivery_id = ?1 ORDER BY id",
                args![rec.id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
        }
        Ok(records)
    }

    /// Sets (or with `None` clears) a user's default webhook URL.
    pub fn set_webhook_url(&mut self, name: &str, url: Option<&str>) -> Result<(), StoreError> {
        let n = self.execute("UPDATE users SET webhook_url = ?2 WHERE name = ?1", args![name, url])?;
        if n == 0 {
            return Err(StoreError::NoSuchUser(name.to_owned()));
        }
        Ok(())
    }

    /// A user's default webhook URL (`Ok(None)`: none set).
    pub fn webhook_url(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.query_opt("SELECT webhook_url FROM users WHERE name = ?1", args![name], |r| r.get(0))?
            .ok_or_else(|| StoreError::NoSuchUser(name.to_owned()))
    }

    /// Gives a user a new signing secret and returns it - the only time it
    /// is shown. Pending deliveries are signed with the new one.
    pub fn rotate_webhook_secret(&mut self, name: &str) -> Result<Secret, StoreError> {
        let secret = new_secret();
        let n = self.execute("UPDATE users SET webhook_secret = ?2 WHERE name = ?1", args![name, secret.expose()])?;
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
    use crate::store::testing::{Backend, backends};
    use crate::store::{CallEnd, NewCall, NewCallLifecycle};

    fn english() -> CallOptions {
        CallOptions { mode: crate::call::options::CallMode::Read, language: "en".into(), require_keypress: false }
    }

    fn setup(b: Backend, default_url: Option<&str>) -> (Store, CallId) {
        let mut s = b.open();
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

    /// A new call of `user` with `callback_url`, moved to `dialing` (one delivery).
    fn dialing_call(s: &mut Store, user: &str, callback_url: &str) -> CallId {
        let u = s.user(user).unwrap().unwrap();
        let id = CallId::generate();
        let life = NewCallLifecycle { callback_url: Some(callback_url.into()), ..NewCallLifecycle::default() };
        s.insert_call_with(
            &NewCall { id: &id, user_id: u.id, number: "+923001234567", code: "1234", options: &english() },
            &life,
        )
        .unwrap();
        s.mark_dialing(&id).unwrap();
        id
    }

    /// What may start now, oldest first: due and not behind an earlier one.
    fn startable(s: &Store, now: i64) -> Vec<Delivery> {
        let due = s.due_window(now, &DueScope::All, None, 100).unwrap();
        let ids: Vec<i64> = due.iter().filter(|d| !d.behind_earlier).map(|d| d.position.id).collect();
        s.deliveries(&ids).unwrap()
    }

    #[test]
    fn finding_due_work_walks_only_the_pending_indexes() {
        let s = Store::open_in_memory().unwrap();
        for scope in [DueScope::All, DueScope::User(Some(1)), DueScope::Host("h".into())] {
            let (index, filter) = match scope {
                DueScope::All => ("webhook_deliveries_pending", "?5 IS NULL"),
                DueScope::User(_) => ("webhook_deliveries_pending_by_user", "d.user_id IS ?5"),
                _ => ("webhook_deliveries_pending_by_host", "d.host = ?5"),
            };
            // The statement as due_window builds it, with its plan.
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT d.id FROM webhook_deliveries d INDEXED BY {index}
                 WHERE d.delivered_at IS NULL AND d.gave_up_at IS NULL AND {filter}
                   AND d.next_attempt_at <= ?1 AND (d.next_attempt_at, d.id) > (?2, ?3)
                 ORDER BY d.next_attempt_at, d.id LIMIT ?4"
            );
            let plan: Vec<String> = s
                .sqlite_for_tests()
                .prepare(&sql)
                .unwrap()
                .query_map(rusqlite::params![0, 0, 0, 1, rusqlite::types::Value::Null], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("\n");
            assert!(plan.contains(&format!("USING INDEX {index} (")), "{scope:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{scope:?}: read in index order, no sort: {plan}");
        }
        // And due_window itself prepares for every scope.
        for scope in [DueScope::All, DueScope::User(None), DueScope::Host("h".into()), DueScope::Call("c".into())] {
            assert!(s.due_window(0, &scope, None, 1).unwrap().is_empty());
        }
    }

    #[test]
    fn destination_hosts() {
        for (url, host) in [
            ("https://Hooks.Example.com/otp?x=1", "hooks.example.com"),
            ("http://hooks.example.com:8080", "hooks.example.com"),
            ("http://[::1]:81/", "::1"),
            ("http://10.1.2.3/", "10.1.2.3"),
            ("not a url", ""),
        ] {
            assert_eq!(destination_host(url), host, "{url}");
        }
    }

    backends! {
        fn every_status_change_is_queued_in_order_without_the_code(b) {
            let (mut s, id) = setup(b, Some("http://Hooks.Example:8080/a"));
            s.mark_dialing(&id).unwrap();
            s.mark_ringing(&id).unwrap();
            s.mark_answered(&id).unwrap();
            let end = CallEnd { status: CallStatus::Completed, reason: None, detail: None, readings: Some(2) };
            s.finish_call(&id, &end).unwrap();
            // Refused transitions queue nothing.
            s.mark_answered(&id).unwrap();
            let due = s.due_window(i64::MAX, &DueScope::All, None, 10).unwrap();
            assert_eq!(due.len(), 4);
            let waiting: Vec<bool> = due.iter().map(|d| d.behind_earlier).collect();
            assert_eq!(waiting, [false, true, true, true], "one at a time per call");
            assert!(due.iter().all(|d| d.host == "hooks.example" && d.call_id == id.as_str()));
            let ready = startable(&s, i64::MAX);
            assert_eq!(ready.len(), 1);
            assert_eq!(ready[0].status, "dialing");
            assert_eq!(ready[0].host, "hooks.example");
            assert!(!ready[0].body.contains("482915"));
            let json: serde_json::Value = serde_json::from_str(&ready[0].body).unwrap();
            assert_eq!(json["status"], "dialing");
            assert_eq!(json["id"], id.as_str());
            assert_eq!(ready[0].secret.as_ref().map(Secret::len), Some(64));
            let mut order = Vec::new();
            while let Some(d) = startable(&s, i64::MAX).into_iter().next() {
                order.push(d.status.clone());
                let ok = Attempt { http_status: Some(204), error: None, duration_ms: 1 };
                s.record_attempt(d.id, &ok, AttemptVerdict::Delivered).unwrap();
            }
            assert_eq!(order, ["dialing", "ringing", "answered", "completed"]);
            assert_eq!(s.pending_deliveries().unwrap(), 0);
        }

        fn a_retry_holds_back_later_changes_of_the_same_call(b) {
            let (mut s, id) = setup(b, Some("http://hooks.example/a"));
            s.mark_dialing(&id).unwrap();
            s.finish_call(&id, &CallEnd::failed(crate::call::FailReason::Busy, None)).unwrap();
            let first = startable(&s, i64::MAX).remove(0);
            let failed = Attempt { http_status: Some(500), error: None, duration_ms: 3 };
            let later = first.next_attempt_at + 5_000;
            s.record_attempt(first.id, &failed, AttemptVerdict::RetryAt(later)).unwrap();
            assert!(startable(&s, later - 1).is_empty(), "the failed one waits, and the next waits for it");
            assert_eq!(s.next_due_after(later - 1).unwrap(), Some(later));
            assert_eq!(s.next_due_after(later).unwrap(), None, "only what is not due yet");
            let again = startable(&s, later);
            assert_eq!((again[0].id, again[0].attempts, again[0].next_attempt_at), (first.id, 1, later));
            s.record_attempt(first.id, &failed, AttemptVerdict::GiveUp).unwrap();
            assert_eq!(startable(&s, i64::MAX)[0].status, "failed");
            let records = s.call_deliveries(&id).unwrap();
            assert_eq!(records[0].tries.len(), 2);
            assert!(records[0].gave_up_at.is_some());
        }

        fn no_url_no_delivery_and_the_call_url_wins(b) {
            let (mut s, id) = setup(b, None);
            s.mark_dialing(&id).unwrap();
            assert_eq!(s.pending_deliveries().unwrap(), 0);
            s.set_webhook_url("acme1", Some("http://default.example/")).unwrap();
            dialing_call(&mut s, "acme1", "http://own.example/");
            assert_eq!(startable(&s, i64::MAX)[0].url, "http://own.example/");
        }

        fn secrets_rotate_and_stay_out_of_debug(b) {
            let (mut s, id) = setup(b, Some("http://hooks.example/a"));
            let before = s.rotate_webhook_secret("acme1").unwrap();
            let after = s.rotate_webhook_secret("acme1").unwrap();
            assert_ne!(before, after);
            s.mark_dialing(&id).unwrap();
            let d = startable(&s, i64::MAX).remove(0);
            assert_eq!(d.secret.as_ref().map(Secret::expose), Some(after.expose()));
            assert!(!format!("{d:?}").contains(after.expose()));
            assert!(!format!("{after:?}").contains(after.expose()));
            assert!(s.rotate_webhook_secret("ghost").is_err());
        }

        fn windows_page_in_order_and_scopes_select(b) {
            let mut s = b.open();
            let a = s.add_user("a", "h").unwrap().id;
            let b = s.add_user("b", "h").unwrap().id;
            let a1 = dialing_call(&mut s, "a", "http://a.example/1");
            let b1 = dialing_call(&mut s, "b", "http://shared.example/b");
            let a2 = dialing_call(&mut s, "a", "http://SHARED.example:81/a");
            let calls = |v: &[DueRef]| v.iter().map(|d| d.call_id.clone()).collect::<Vec<_>>();
            let ids = |c: &[&CallId]| c.iter().map(|c| c.as_str().to_owned()).collect::<Vec<_>>();

            let all = s.due_window(i64::MAX, &DueScope::All, None, 10).unwrap();
            assert_eq!(calls(&all), ids(&[&a1, &b1, &a2]));
            assert!(all.windows(2).all(|w| w[0].position < w[1].position), "outbox order");
            let first = s.due_window(i64::MAX, &DueScope::All, None, 2).unwrap();
            assert_eq!(calls(&first), ids(&[&a1, &b1]));
            let rest = s.due_window(i64::MAX, &DueScope::All, Some(first[1].position), 2).unwrap();
            assert_eq!(calls(&rest), ids(&[&a2]), "the next window starts after the last one seen");
            let again = s.due_window(i64::MAX, &DueScope::All, Some(all[2].position.just_before()), 2).unwrap();
            assert_eq!(calls(&again), ids(&[&a2]), "just_before sees that row again");
            assert!(s.due_window(all[0].position.at - 1, &DueScope::All, None, 10).unwrap().is_empty(), "not due yet");

            let of_a = s.due_window(i64::MAX, &DueScope::User(Some(a)), None, 10).unwrap();
            assert_eq!(calls(&of_a), ids(&[&a1, &a2]));
            let of_b = s.due_window(i64::MAX, &DueScope::User(Some(b)), None, 10).unwrap();
            assert_eq!(calls(&of_b), ids(&[&b1]));
            assert!(s.due_window(i64::MAX, &DueScope::User(None), None, 10).unwrap().is_empty());
            let shared = s.due_window(i64::MAX, &DueScope::Host("shared.example".into()), None, 10).unwrap();
            assert_eq!(calls(&shared), ids(&[&b1, &a2]), "the host, whatever the case and port");
            let one = s.due_window(i64::MAX, &DueScope::Call(a2.as_str().into()), None, 10).unwrap();
            assert_eq!(calls(&one), ids(&[&a2]));
            assert_eq!(one[0].user_id, Some(a));

            // Paging one row at a time through rows due in the same millisecond.
            s.execute_for_tests("UPDATE webhook_deliveries SET next_attempt_at = 5", &[]);
            for scope in [DueScope::All, DueScope::User(Some(a)), DueScope::Host("shared.example".into())] {
                let (mut after, mut seen) = (None, Vec::new());
                while let Some(d) = s.due_window(5, &scope, after, 1).unwrap().pop() {
                    after = Some(d.position);
                    seen.push(d.call_id);
                }
                let all_of_scope = s.due_window(5, &scope, None, 10).unwrap();
                assert_eq!(seen, calls(&all_of_scope), "{scope:?}");
                assert!(seen.len() >= 2, "{scope:?}");
            }

            // Delivered rows leave every scope.
            let ok = Attempt { http_status: Some(200), error: None, duration_ms: 1 };
            s.record_attempt(all[1].position.id, &ok, AttemptVerdict::Delivered).unwrap();
            let shared = s.due_window(i64::MAX, &DueScope::Host("shared.example".into()), None, 10).unwrap();
            assert_eq!(calls(&shared), ids(&[&a2]));
            assert_eq!(s.deliveries(&[all[1].position.id, all[0].position.id]).unwrap().len(), 1, "only pending ones");
        }

        /// Two daemons on one database: a delivery one of them claimed is
        /// not handed to the other until its attempt is recorded (or the
        /// claim or its daemon's lease runs out); without an owner nothing
        /// is claimed.
        fn a_claimed_delivery_goes_to_one_daemon_at_a_time(b) {
            let (s, id) = setup(b, Some("http://hooks.example/a"));
            let mut s = s;
            s.mark_dialing(&id).unwrap();
            let due = |s: &Store| s.due_window(i64::MAX, &DueScope::All, None, 10).unwrap()[0].position.id;
            let first = due(&s);
            let a = s.working_for("daemon-a", 60_000);
            a.renew_lease(true).unwrap();
            assert_eq!(a.deliveries(&[first]).unwrap().len(), 1, "a claims it");
            assert_eq!(a.deliveries(&[first]).unwrap().len(), 1, "a's own claim stands");
            let mut b2 = a.working_for("daemon-b", 60_000);
            b2.renew_lease(true).unwrap();
            assert!(b2.deliveries(&[first]).unwrap().is_empty(), "b is left out while a sends it");
            let failed = Attempt { http_status: Some(500), error: None, duration_ms: 1 };
            b2.record_attempt(first, &failed, AttemptVerdict::RetryAt(0)).unwrap();
            assert_eq!(b2.deliveries(&[first]).unwrap().len(), 1, "after the attempt, a retry is anyone's");
            // A claim whose time is up is anyone's...
            let c = b2.working_for("daemon-c", 60_000);
            c.renew_lease(true).unwrap();
            assert!(c.deliveries(&[first]).unwrap().is_empty());
            c.execute_for_tests("UPDATE webhook_deliveries SET claimed_until = 1", &[]);
            assert_eq!(c.deliveries(&[first]).unwrap().len(), 1);
            // ...and so is one whose daemon's lease ran out (taken for dead).
            let d = c.working_for("daemon-d", 60_000);
            d.renew_lease(true).unwrap();
            assert!(d.deliveries(&[first]).unwrap().is_empty(), "c is alive");
            d.execute_for_tests("UPDATE daemons SET seen_at = 1 WHERE id = 'daemon-c'", &[]);
            assert_eq!(d.deliveries(&[first]).unwrap().len(), 1, "c's lease ran out");
        }

        fn hosts_of_older_rows_are_filled_in(b) {
            let (mut s, id) = setup(b, Some("https://[2001:DB8::1]:8443/x"));
            s.mark_dialing(&id).unwrap();
            s.execute_for_tests("UPDATE webhook_deliveries SET host = NULL", &[]);
            // Until filled in, the host comes from the URL; lookups by host miss it.
            assert_eq!(startable(&s, i64::MAX)[0].host, "2001:db8::1");
            assert!(s.due_window(i64::MAX, &DueScope::Host("2001:db8::1".into()), None, 1).unwrap().is_empty());
            assert_eq!(s.fill_delivery_hosts().unwrap(), 1);
            assert_eq!(s.due_window(i64::MAX, &DueScope::Host("2001:db8::1".into()), None, 1).unwrap().len(), 1);
            assert_eq!(s.fill_delivery_hosts().unwrap(), 0);
        }

    }
}
