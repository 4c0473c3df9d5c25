//! `Idempotency-Key`s: the first request with a key is carried out and its
//! answer kept; a retry with the same key and the same request gets that
//! answer again instead of a second call (Stripe's semantics, and the IETF
//! httpapi draft's).
//!
//! Keys are per user and live for [`KEY_TTL_MS`]. A key is taken *before*
//! the request is carried out, in one conditional insert, so two copies of
//! a request racing each other cannot both place a call: the second sees
//! the key in progress and is told to retry. A key whose request never
//! finished (the daemon died mid-request) is free again after
//! [`IN_PROGRESS_TTL_MS`].

use super::backend::{TxKind, args};
use super::{Store, StoreError};

/// How long a key and its answer are kept: 24 hours.
pub const KEY_TTL_MS: i64 = 24 * 3600 * 1000;

/// How long a key may stay in progress before it counts as abandoned.
pub const IN_PROGRESS_TTL_MS: i64 = 60_000;

/// A kept answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    /// HTTP status.
    pub status: u16,
    /// The body, as sent.
    pub body: String,
    /// The `Location` header, if the answer had one.
    pub location: Option<String>,
}

/// What [`Store::take_idempotency_key`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is new (or its old use expired): carry the request out, then
    /// [`Store::keep_idempotent_answer`] (or [`Store::release_idempotency_key`]).
    Fresh,
    /// The same request was answered before: send this again.
    Replay(StoredAnswer),
    /// The same key came with another request (method, path or body).
    Mismatch,
    /// A request with this key is being carried out right now.
    InProgress,
}

impl Store {
    /// Takes `key` of user `user_id` for a request whose fingerprint (a
    /// hash of method, path and body) is `request_hash`, at `now`.
    pub fn take_idempotency_key(
        &mut self,
        user_id: i64,
        key: &str,
        request_hash: &[u8; 32],
        now: i64,
    ) -> Result<KeyClaim, StoreError> {
        self.tx(TxKind::Deferred, |s| {
            // An expired use, or an abandoned one, frees the key.
            s.execute(
                "DELETE FROM idempotency_keys WHERE user_id = ?1 AND key = ?2
                   AND (created_at <= ?3 OR (status IS NULL AND created_at <= ?4))",
                args![user_id, key, now - KEY_TTL_MS, now - IN_PROGRESS_TTL_MS],
            )?;
            // On PostgreSQL a racing insert of the same key waits here for
            // the other's commit, then does nothing: only one is Fresh.
            let inserted = s.execute(
                "INSERT INTO idempotency_keys (user_id, key, request_hash, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, key) DO NOTHING",
                args![user_id, key, &request_hash[..], now],
            )?;
            if inserted == 1 {
                return Ok(KeyClaim::Fresh);
            }
            let (hash, status, body, location): (Vec<u8>, Option<u16>, Option<String>, Option<String>) = s.query_one(
                "SELECT request_hash, status, body, location FROM idempotency_keys WHERE user_id = ?1 AND key = ?2",
                args![user_id, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            Ok(if hash != request_hash[..] {
                KeyClaim::Mismatch
            } else {
                match (status, body) {
                    (Some(status), Some(body)) => KeyClaim::Replay(StoredAnswer { status, body, location }),
                    _ => KeyClaim::InProgress,
                }
            })
        })
    }

    /// Keeps the answer to the request that took `key`.
    pub fn keep_idempotent_answer(&mut self, user_id: i64, key: &str, answer: &StoredAnswer) -> Result<(), StoreError> {
        self.execute(
            "UPDATE idempotency_keys SET status = ?3, body = ?4, location = ?5 WHERE user_id = ?1 AND key = ?2",
            args![user_id, key, answer.status, &answer.body, &answer.location],
        )?;
        Ok(())
    }

    /// Frees `key` without an answer: the request failed on our side (5xx),
    /// so a retry with the same key must be carried out afresh.
    pub fn release_idempotency_key(&mut self, user_id: i64, key: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM idempotency_keys WHERE user_id = ?1 AND key = ?2 AND status IS NULL",
            args![user_id, key],
        )?;
        Ok(())
    }

    /// Deletes keys older than their lifetime at `now`; returns how many.
    pub fn purge_idempotency_keys(&mut self, now: i64) -> Result<usize, StoreError> {
        self.execute("DELETE FROM idempotency_keys WHERE created_at <= ?1", args![now - KEY_TTL_MS])
    }

    /// Whether user `user_id` holds `key` (tests).
    #[cfg(test)]
    fn has_idempotency_key(&self, user_id: i64, key: &str) -> bool {
        self.query_opt(
            "SELECT 1 FROM idempotency_keys WHERE user_id = ?1 AND key = ?2",
            args![user_id, key],
            |_| Ok(()),
        )
        .unwrap()
        .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::backends;

    fn answer() -> StoredAnswer {
        StoredAnswer { status: 202, body: "{\"id\":\"x\"}".into(), location: Some("/v1/calls/x".into()) }
    }

    backends! {
        fn a_key_is_taken_once_then_replayed_or_refused(b) {
            let mut s = b.open();
            let (a, b) = (s.add_user("acme1", "h").unwrap().id, s.add_user("acme2", "h").unwrap().id);
            let (h1, h2) = ([1u8; 32], [2u8; 32]);
            let t = 1_000_000;
            assert_eq!(s.take_idempotency_key(a, "k", &h1, t).unwrap(), KeyClaim::Fresh);
            assert_eq!(s.take_idempotency_key(a, "k", &h1, t + 1).unwrap(), KeyClaim::InProgress);
            assert_eq!(s.take_idempotency_key(b, "k", &h1, t + 1).unwrap(), KeyClaim::Fresh, "keys are per user");
            s.keep_idempotent_answer(a, "k", &answer()).unwrap();
            assert_eq!(s.take_idempotency_key(a, "k", &h1, t + 2).unwrap(), KeyClaim::Replay(answer()));
            assert_eq!(s.take_idempotency_key(a, "k", &h2, t + 2).unwrap(), KeyClaim::Mismatch);
            // A day later the key is free again.
            assert_eq!(s.take_idempotency_key(a, "k", &h2, t + KEY_TTL_MS).unwrap(), KeyClaim::Fresh);
        }

        fn an_abandoned_or_released_key_is_free_again(b) {
            let mut s = b.open();
            let a = s.add_user("acme1", "h").unwrap().id;
            let t = 1_000_000;
            assert_eq!(s.take_idempotency_key(a, "k", &[1; 32], t).unwrap(), KeyClaim::Fresh);
            assert_eq!(s.take_idempotency_key(a, "k", &[1; 32], t + IN_PROGRESS_TTL_MS - 1).unwrap(), KeyClaim::InProgress);
            assert_eq!(s.take_idempotency_key(a, "k", &[1; 32], t + IN_PROGRESS_TTL_MS).unwrap(), KeyClaim::Fresh);
            s.release_idempotency_key(a, "k").unwrap();
            assert!(!s.has_idempotency_key(a, "k"));
            s.take_idempotency_key(a, "j", &[1; 32], t).unwrap();
            s.keep_idempotent_answer(a, "j", &answer()).unwrap();
            s.release_idempotency_key(a, "j").unwrap();
            assert!(s.has_idempotency_key(a, "j"), "a kept answer is never released");
            assert_eq!(s.purge_idempotency_keys(t + KEY_TTL_MS).unwrap(), 1);
            assert!(!s.has_idempotency_key(a, "j"));
        }
    }
}
