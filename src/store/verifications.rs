//! Verifications and their transitions. Like calls, every change is one
//! conditional `UPDATE ... WHERE status = 'pending'`, and a check reads,
//! compares and counts in one transaction on the database thread, so two
//! checks racing for the last attempt cannot both be judged.

use super::backend::{Row, TxKind, args};
use super::{Store, StoreError};
use crate::call::language::Language;
use crate::time::now_ms;
use crate::verify::{CodeLength, Verification, VerificationId, VerificationStatus, VerifyKey};

/// What [`Store::insert_verification`] stores.
#[derive(Debug, Clone)]
pub struct NewVerification<'a> {
    /// Its id.
    pub id: &'a VerificationId,
    /// The requesting user.
    pub user_id: i64,
    /// Destination, E.164.
    pub number: &'a str,
    /// Digits in the code.
    pub code_length: CodeLength,
    /// Random salt that, with the key, derives the code.
    pub salt: [u8; 16],
    /// Language its calls are read in.
    pub language: &'a Language,
    /// Its own webhook URL (checked); `None`: the user's default.
    pub callback_url: Option<&'a str>,
    /// Unix ms after which it expires.
    pub expires_at: i64,
}

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The right code: now `approved`.
    Approved,
    /// A wrong code; this many checks are left.
    Wrong {
        /// Checks left before `max_attempts_reached`.
        attempts_left: u32,
    },
    /// The verification was not pending (or expired just now); nothing counted.
    Final(VerificationStatus),
    /// No such verification (of this user).
    NotFound,
}

const COLUMNS: &str = "id, user_id, number, code_length, salt, status, failed_checks, sends, language, \
                       callback_url, last_call_id, created_at, updated_at, expires_at, ended_at";

fn from_row(row: &Row<'_>) -> Result<Verification, StoreError> {
    let id: String = row.get(0)?;
    let status: String = row.get(5)?;
    let length: i64 = row.get(3)?;
    let salt: Option<Vec<u8>> = row.get(4)?;
    let (Some(id), Some(status), Some(code_length)) = (
        VerificationId::parse(&id),
        VerificationStatus::parse(&status),
        u64::try_from(length).ok().and_then(CodeLength::new),
    ) else {
        return Err(StoreError::Corrupt(format!("verification {id:?} status {status:?} length {length}")));
    };
    let salt = match salt.map(<[u8; 16]>::try_from) {
        None => None,
        Some(Ok(salt)) => Some(salt),
        Some(Err(_)) => return Err(StoreError::Corrupt(format!("verification {id} salt"))),
    };
    Ok(Verification {
        id,
        user_id: row.get(1)?,
        number: row.get(2)?,
        code_length,
        salt,
        status,
        failed_checks: row.get(6)?,
        sends: row.get(7)?,
        language: row.get(8)?,
        callback_url: row.get(9)?,
        last_call_id: row.get(10)?,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
        expires_at: row.get(13)?,
        ended_at: row.get(14)?,
    })
}

/// The row of a check, locked on PostgreSQL until the check commits: two
/// checks racing on two connections (or two daemons) are judged one after
/// the other, as SQLite's single writer judges them.
const FOR_CHECK: &str = "SELECT {COLUMNS} FROM verifications WHERE id = ?1 AND user_id = ?2";

/// The retention purge of verifications: the `?2` that ended first before
/// `?1` (only final ones have an end), by `verifications_by_end`.
pub(super) const PURGE_SQLITE: &str = "DELETE FROM verifications WHERE rowid IN (
       SELECT rowid FROM verifications WHERE ended_at < ?1 AND status <> 'pending' ORDER BY ended_at LIMIT ?2)";

/// [`PURGE_SQLITE`] on PostgreSQL (no `rowid`).
pub(super) const PURGE_POSTGRES: &str = "DELETE FROM verifications WHERE id IN (
       SELECT id FROM verifications WHERE ended_at < ?1 AND status <> 'pending' ORDER BY ended_at LIMIT ?2)";

impl Store {
    /// Stores a new `pending` verification with no send yet.
    pub fn insert_verification(&mut self, new: &NewVerification<'_>) -> Result<(), StoreError> {
        let now = now_ms();
        self.execute(
            "INSERT INTO verifications (id, user_id, number, code_length, salt, status, language, callback_url,
                                        created_at, updated_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8, ?8, ?9)",
            args![
                new.id.as_str(),
                new.user_id,
                new.number,
                new.code_length.get(),
                &new.salt[..],
                new.language,
                new.callback_url,
                now,
                new.expires_at
            ],
        )?;
        Ok(())
    }

    /// Reads a verification.
    pub fn verification(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        self.query_opt(&format!("SELECT {COLUMNS} FROM verifications WHERE id = ?1"), args![id.as_str()], from_row)
    }

    /// The user's verification of `number` that is still pending and not
    /// expired at `now`, if any (the newest, should there be several).
    pub fn pending_verification(
        &self,
        user_id: i64,
        number: &str,
        now: i64,
    ) -> Result<Option<Verification>, StoreError> {
        self.query_opt(
            &format!(
                "SELECT {COLUMNS} FROM verifications
                 WHERE user_id = ?1 AND number = ?2 AND status = 'pending' AND expires_at > ?3
                 ORDER BY created_at DESC LIMIT 1"
            ),
            args![user_id, number, now],
            from_row,
        )
    }

    /// Counts one call placed for a pending verification. False if it is
    /// no longer pending.
    pub fn record_verification_send(&mut self, id: &VerificationId, call_id: &str) -> Result<bool, StoreError> {
        let n = self.execute(
            "UPDATE verifications SET sends = sends + 1, last_call_id = ?2, updated_at = ?3
             WHERE id = ?1 AND status = 'pending'",
            args![id.as_str(), call_id, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// Checks `guess` against verification `id` of user `user_id`: the right
    /// code approves it; a wrong one counts, and the `max_checks`-th wrong
    /// one ends it as `max_attempts_reached`. One transaction.
    pub fn check_verification(
        &mut self,
        id: &VerificationId,
        user_id: i64,
        key: &VerifyKey,
        guess: &str,
        max_checks: u32,
        now: i64,
    ) -> Result<CheckOutcome, StoreError> {
        let select = FOR_CHECK.replace("{COLUMNS}", COLUMNS);
        let locked = format!("{select} FOR UPDATE");
        let sql = self.pick(&select, &locked).to_owned();
        self.tx(TxKind::Deferred, |s| {
            let found = s.query_opt(&sql, args![id.as_str(), user_id], from_row)?;
            let Some(v) = found else { return Ok(CheckOutcome::NotFound) };
            let status = v.status_at(now);
            let (VerificationStatus::Pending, Some(salt)) = (status, v.salt) else {
                return Ok(CheckOutcome::Final(status));
            };
            if key.is_code(id, &salt, v.code_length, guess) {
                finish(s, id, VerificationStatus::Approved, now)?;
                return Ok(CheckOutcome::Approved);
            }
            let failed = v.failed_checks + 1;
            s.execute(
                "UPDATE verifications SET failed_checks = ?2, updated_at = ?3 WHERE id = ?1",
                args![id.as_str(), failed, now],
            )?;
            if failed >= max_checks {
                finish(s, id, VerificationStatus::MaxAttemptsReached, now)?;
                Ok(CheckOutcome::Final(VerificationStatus::MaxAttemptsReached))
            } else {
                Ok(CheckOutcome::Wrong { attempts_left: max_checks - failed })
            }
        })
    }

    /// `pending` -> `canceled`. False if it was final already.
    pub fn cancel_verification(&mut self, id: &VerificationId, now: i64) -> Result<bool, StoreError> {
        self.tx(TxKind::Deferred, |s| finish(s, id, VerificationStatus::Canceled, now))
    }

    /// Ends every pending verification whose expiry passed at `now` as
    /// `expired`; returns their ids.
    pub fn expire_verifications(&mut self, now: i64) -> Result<Vec<VerificationId>, StoreError> {
        let ids: Vec<String> = self.query(
            "SELECT id FROM verifications WHERE status = 'pending' AND expires_at <= ?1",
            args![now],
            |r| r.get(0),
        )?;
        let mut expired = Vec::new();
        for id in ids.iter().filter_map(|s| VerificationId::parse(s)) {
            if self.tx(TxKind::Deferred, |s| finish(s, &id, VerificationStatus::Expired, now))? {
                expired.push(id);
            }
        }
        Ok(expired)
    }

    /// Deletes the first `max` final verifications that ended before
    /// `cutoff` (Unix ms), those that ended first; returns how many went.
    /// The retention purge runs it until fewer go, one batch per trip to the
    /// database thread, as it does [`Store::purge_calls`].
    pub fn purge_verifications(&mut self, cutoff: i64, max: usize) -> Result<usize, StoreError> {
        self.execute(self.pick(PURGE_SQLITE, PURGE_POSTGRES), args![cutoff, max])
    }
}

/// `pending` -> `status` (final), erasing the salt: with it goes any way to
/// know the code again, key or not. False if it was not pending. Runs in
/// the caller's transaction.
fn finish(s: &Store, id: &VerificationId, status: VerificationStatus, now: i64) -> Result<bool, StoreError> {
    debug_assert!(status.is_final());
    let n = s.execute(
        "UPDATE verifications SET status = ?2, salt = NULL, ended_at = ?3, updated_at = ?3
         WHERE id = ?1 AND status = 'pending'",
        args![id.as_str(), status.as_str(), now],
    )?;
    if n == 1 {
        // The change and its webhook are one commit.
        let v =
            s.query_one(&format!("SELECT {COLUMNS} FROM verifications WHERE id = ?1"), args![id.as_str()], from_row)?;
        super::webhooks::enqueue_verification_change(s, &v)?;
    }
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{Backend, backends};
    use crate::verify::code::new_salt;

    fn key() -> VerifyKey {
        VerifyKey::from_bytes([3; 32])
    }

    fn setup(b: Backend, expires_in: i64) -> (Store, i64, VerificationId, String) {
        let mut s = b.open();
        let user = s.add_user("acme1", "h").unwrap().id;
        let id = VerificationId::generate();
        let salt = new_salt();
        let new = NewVerification {
            id: &id,
            user_id: user,
            number: "+923001234567",
            code_length: CodeLength::DEFAULT,
            salt,
            language: &Language::from("en"),
            callback_url: None,
            expires_at: now_ms() + expires_in,
        };
        s.insert_verification(&new).unwrap();
        let code = key().code(&id, &salt, CodeLength::DEFAULT).expose().to_owned();
        (s, user, id, code)
    }

    fn wrong(code: &str) -> String {
        code.chars().map(|c| if c == '9' { '0' } else { char::from(c as u8 + 1) }).collect()
    }

    /// However many verifications are on record, the purge looks only at
    /// those that ended before the cutoff, in the order it takes them.
    #[test]
    fn the_purge_walks_the_end_index() {
        let (s, ..) = setup(Backend::Sqlite, 1_000);
        let plan = crate::store::query_plan(&s, PURGE_SQLITE, [0, 10]);
        assert!(plan.iter().any(|p| p.contains("USING INDEX verifications_by_end (ended_at<?)")), "{plan:?}");
        let walks = |p: &String| p.contains("SCAN") || p.contains("TEMP B-TREE");
        assert!(!plan.iter().any(walks), "{plan:?}");
    }

    backends! {
        fn the_right_code_approves_once_and_erases_the_salt(b) {
            let (mut s, user, id, code) = setup(b, 600_000);
            let now = now_ms();
            assert_eq!(
                s.check_verification(&id, user, &key(), &wrong(&code), 5, now).unwrap(),
                CheckOutcome::Wrong { attempts_left: 4 }
            );
            assert_eq!(s.check_verification(&id, user, &key(), &code, 5, now).unwrap(), CheckOutcome::Approved);
            let v = s.verification(&id).unwrap().unwrap();
            assert_eq!((v.status, v.salt, v.failed_checks), (VerificationStatus::Approved, None, 1));
            assert_eq!(
                s.check_verification(&id, user, &key(), &code, 5, now).unwrap(),
                CheckOutcome::Final(VerificationStatus::Approved),
                "approved once; later checks change nothing"
            );
        }

        fn the_last_wrong_check_ends_it_and_the_right_code_is_then_refused(b) {
            let (mut s, user, id, code) = setup(b, 600_000);
            let now = now_ms();
            for left in (1..5).rev() {
                let got = s.check_verification(&id, user, &key(), &wrong(&code), 5, now).unwrap();
                assert_eq!(got, CheckOutcome::Wrong { attempts_left: left });
            }
            let last = s.check_verification(&id, user, &key(), "", 5, now).unwrap();
            assert_eq!(last, CheckOutcome::Final(VerificationStatus::MaxAttemptsReached));
            let after = s.check_verification(&id, user, &key(), &code, 5, now).unwrap();
            assert_eq!(after, CheckOutcome::Final(VerificationStatus::MaxAttemptsReached));
            assert_eq!(s.verification(&id).unwrap().unwrap().failed_checks, 5);
        }

        fn expiry_other_users_and_cancel(b) {
            // Lives a minute: pending now however slow the statements are.
            let (mut s, user, id, code) = setup(b, 60_000);
            let later = now_ms() + 120_000;
            assert_eq!(s.check_verification(&id, user + 1, &key(), &code, 5, later).unwrap(), CheckOutcome::NotFound);
            assert_eq!(
                s.check_verification(&id, user, &key(), &code, 5, later).unwrap(),
                CheckOutcome::Final(VerificationStatus::Expired),
                "past its expiry even before housekeeping ran"
            );
            assert!(s.pending_verification(user, "+923001234567", later).unwrap().is_none());
            assert!(s.pending_verification(user, "+923001234567", now_ms()).unwrap().is_some());
            assert_eq!(s.expire_verifications(later).unwrap(), vec![id.clone()]);
            assert!(!s.cancel_verification(&id, later).unwrap(), "final stays final");
            let (mut s, _, id, _) = setup(b, 600_000);
            assert!(s.record_verification_send(&id, "c1").unwrap());
            assert!(s.cancel_verification(&id, now_ms()).unwrap());
            assert!(!s.record_verification_send(&id, "c2").unwrap());
            let v = s.verification(&id).unwrap().unwrap();
            assert_eq!((v.status, v.sends, v.last_call_id.as_deref()), (VerificationStatus::Canceled, 1, Some("c1")));
            assert_eq!(s.purge_verifications(now_ms() + 1, 10).unwrap(), 1);
        }

        /// A purge batch takes at most its size, the verifications that
        /// ended first; pending ones never go.
        fn purge_batches_take_the_oldest_ends_first(b) {
            let (mut s, user, pending, _) = setup(b, 600_000);
            let mut ended = Vec::new();
            for at in [300, 100, 200] {
                let id = VerificationId::generate();
                let new = NewVerification {
                    id: &id,
                    user_id: user,
                    number: "+923001234568",
                    code_length: CodeLength::DEFAULT,
                    salt: new_salt(),
                    language: &Language::from("en"),
                    callback_url: None,
                    expires_at: now_ms() + 600_000,
                };
                s.insert_verification(&new).unwrap();
                assert!(s.cancel_verification(&id, at).unwrap());
                ended.push(id);
            }
            assert_eq!(s.purge_verifications(1_000, 2).unwrap(), 2);
            let left = |s: &Store| ended.iter().filter(|id| s.verification(id).unwrap().is_some()).count();
            assert!(s.verification(&ended[0]).unwrap().is_some(), "the one that ended last is left");
            assert_eq!(left(&s), 1);
            assert_eq!(s.purge_verifications(1_000, 2).unwrap(), 1, "fewer than asked: none left");
            assert_eq!(s.purge_verifications(i64::MAX, 2).unwrap(), 0);
            assert!(s.verification(&pending).unwrap().is_some(), "a pending verification is never purged");
        }
    }
}
