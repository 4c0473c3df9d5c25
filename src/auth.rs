//! API user authentication: name + password against the stored bcrypt hash.
//!
//! Every outcome the caller sees is the same (`None`): unknown user, wrong
//! password, disabled user. An unknown user still costs one bcrypt verify
//! (against a dummy hash) so response time does not tell which names exist.
//! bcrypt runs on the blocking pool: at cost 12 one verify is ~0.2 s of CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::{Db, StoreError, User};

/// bcrypt reads at most 72 bytes including a terminating NUL; we refuse
/// longer passwords instead of silently ignoring their tail.
pub const MAX_PASSWORD_BYTES: usize = 71;

/// Checks credentials against the user table.
#[derive(Clone)]
pub struct Authenticator {
    db: Db,
    dummy_hash: Arc<String>,
    /// bcrypt verifies run so far: what the failed-login limits bound.
    verifies: Arc<AtomicU64>,
}

impl Authenticator {
    /// `cost` is used for the dummy hash, so unknown users take as long as known ones.
    pub fn new(db: Db, cost: u32) -> Result<Authenticator, bcrypt::BcryptError> {
        let random: [u8; 16] = rand::random();
        let dummy_hash = bcrypt::hash(random, cost)?;
        Ok(Authenticator { db, dummy_hash: Arc::new(dummy_hash), verifies: Arc::new(AtomicU64::new(0)) })
    }

    /// How many bcrypt verifies this authenticator has run.
    pub fn verifies(&self) -> u64 {
        self.verifies.load(Ordering::Relaxed)
    }

    /// The user if `name`/`password` are right and the user is enabled.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<Option<User>, StoreError> {
        let lookup = name.to_owned();
        let user = self.db.run(move |s| s.user(&lookup)).await?;
        let hash = match &user {
            Some(u) => u.password_hash.clone(),
            None => self.dummy_hash.as_ref().clone(),
        };
        let password = password.to_owned();
        self.verifies.fetch_add(1, Ordering::Relaxed);
        let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        Ok(user.filter(|u| matches && u.enabled))
    }
}

/// True if `password` matches `hash`; over-long passwords never match.
pub fn verify_password(password: &str, hash: &str) -> bool {
    password.len() <= MAX_PASSWORD_BYTES && bcrypt::non_truncating_verify(password, hash).unwrap_or(false)
}

/// Hashes a new password, refusing what bcrypt could not hold whole.
pub fn hash_password(password: &str, cost: u32) -> Result<String, String> {
    if password.is_empty() {
        return Err("password must not be empty".into());
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("password must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt ignores the rest)"));
    }
    bcrypt::non_truncating_hash(password, cost).map_err(|e| format!("cannot hash password: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn right_wrong_unknown_disabled() {
        let mut store = Store::open_in_memory().unwrap();
        store.add_user("acme1", &hash_password("s3cret-pass", 4).unwrap()).unwrap();
        store.add_user("off", &hash_password("s3cret-pass", 4).unwrap()).unwrap();
        store.set_enabled("off", false).unwrap();
        let auth = Authenticator::new(Db::new(store), 4).unwrap();
        assert_eq!(auth.authenticate("acme1", "s3cret-pass").await.unwrap().unwrap().name, "acme1");
        assert!(auth.authenticate("acme1", "wrong").await.unwrap().is_none());
        assert!(auth.authenticate("nobody", "s3cret-pass").await.unwrap().is_none());
        assert!(auth.authenticate("off", "s3cret-pass").await.unwrap().is_none());
        assert!(auth.authenticate("acme1", &"s".repeat(100)).await.unwrap().is_none());
    }

    #[test]
    fn refuses_passwords_bcrypt_would_truncate() {
        assert!(hash_password(&"x".repeat(72), 4).is_err());
        assert!(hash_password("", 4).is_err());
        assert!(hash_password(&"x".repeat(71), 4).is_ok());
    }
}
