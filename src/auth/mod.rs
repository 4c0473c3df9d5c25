//! API user authentication: name + password against the stored bcrypt hash.
//!
//! Every outcome the caller sees is the same (`None`): unknown user, wrong
//! password, disabled user. An unknown user still costs one bcrypt verify
//! (against a dummy hash at `auth.bcrypt_cost`) so response time does not
//! tell which names exist; and a stored hash of another cost (made before
//! `auth.bcrypt_cost` changed) is replaced by one of the configured cost on
//! its user's next successful login, so stored hashes converge on the
//! dummy's cost instead of telling names apart by timing.
//! bcrypt runs on the blocking pool: at cost 12 one verify is ~0.2 s of CPU,
//! so at most one verify per core runs at a time (a flood of wrong passwords
//! queues instead of taking every thread), and credentials that passed are
//! remembered by [`CredentialCache`] for the next requests.

mod cache;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;

pub use cache::CredentialCache;

use crate::secret::Secret;
use crate::store::{Db, StoreError, User};

/// Why a credential check could not come to a verdict (never "wrong
/// password": that is `Ok(None)`). The caller answers 503 and logs it; the
/// text names no secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The user table could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bcrypt task died or the verifier pool is gone (shutting down).
    #[error("password check failed: {0}")]
    Verifier(String),
}

/// bcrypt reads at most 72 bytes including a terminating NUL; we refuse
/// longer passwords instead of silently ignoring their tail.
pub const MAX_PASSWORD_BYTES: usize = 71;

/// Checks credentials against the user table.
#[derive(Clone)]
pub struct Authenticator {
    db: Db,
    /// `auth.bcrypt_cost`: of the dummy hash, and of every stored hash in the end.
    cost: u32,
    dummy_hash: Arc<String>,
    cache: Arc<CredentialCache>,
    /// One permit per core: bcrypt verifies allowed to run at once.
    verifiers: Arc<Semaphore>,
    verifies: Arc<AtomicU64>,
}

impl Authenticator {
    /// `cost` is used for the dummy hash, so unknown users take as long as
    /// known ones, and for rehashing stored hashes of another cost. Remembers
    /// nothing until given a cache ([`Self::with_cache`]).
    pub fn new(db: Db, cost: u32) -> Result<Authenticator, bcrypt::BcryptError> {
        let random: [u8; 16] = rand::random();
        let dummy_hash = bcrypt::hash(random, cost)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Authenticator {
            db,
            cost,
            dummy_hash: Arc::new(dummy_hash),
            cache: Arc::new(CredentialCache::disabled()),
            verifiers: Arc::new(Semaphore::new(cores)),
            verifies: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Remembers verified credentials in `cache`.
    pub fn with_cache(mut self, cache: CredentialCache) -> Authenticator {
        self.cache = Arc::new(cache);
        self
    }

    /// The user if `name`/`password` are right and the user is enabled:
    /// [`Self::lookup`], then, when the cache did not answer, the verify.
    pub async fn authenticate(&self, name: &str, password: &Secret) -> Result<Option<User>, AuthError> {
        match self.lookup(name, password).await? {
            Lookup::Accepted(user) => Ok(Some(user)),
            Lookup::Verify(pending) => pending.verify().await,
        }
    }

    /// The first, cheap half of a check: reads the user row and asks the
    /// credential cache. Either the cache accepts the credentials, or a
    /// bcrypt verify is needed, which the caller may still refuse to run
    /// (the login limits ration verifies for a name under attack).
    ///
    /// The user row is read on every call, so a password changed, a user
    /// disabled or removed (by the CLI too) counts from the next request on,
    /// cache or not. Only a match of an enabled user is remembered.
    pub async fn lookup(&self, name: &str, password: &Secret) -> Result<Lookup, AuthError> {
        let lookup = name.to_owned();
        let user = self.db.run(move |s| s.user(&lookup)).await?;
        if let Some(user) = user.as_ref().filter(|u| self.remembered(Some(u), password)) {
            tracing::debug!(user = name, "credentials accepted from the cache");
            return Ok(Lookup::Accepted(user.clone()));
        }
        Ok(Lookup::Verify(PendingVerify {
            auth: self.clone(),
            name: name.to_owned(),
            password: password.clone(),
            user,
        }))
    }

    /// bcrypt verifies run so far (cache hits run none).
    pub fn verifies(&self) -> u64 {
        self.verifies.load(Ordering::Relaxed)
    }

    fn remembered(&self, user: Option<&User>, password: &Secret) -> bool {
        user.is_some_and(|u| u.enabled && self.cache.verified(&u.name, &u.password_hash, password.expose()))
    }
}

/// What [`Authenticator::lookup`] found.
pub enum Lookup {
    /// The credential cache vouches for these credentials: no verify needed.
    Accepted(User),
    /// Only a bcrypt verify can tell.
    Verify(PendingVerify),
}

/// A bcrypt verify not yet run, from [`Authenticator::lookup`].
pub struct PendingVerify {
    auth: Authenticator,
    name: String,
    password: Secret,
    user: Option<User>,
}

impl PendingVerify {
    /// Runs the verify (against a dummy hash for an unknown name, so both
    /// cost the same): the user if the password is right and the user
    /// enabled. At most one verify per core runs at a time.
    pub async fn verify(self) -> Result<Option<User>, AuthError> {
        let PendingVerify { auth, name, password, user } = self;
        // Held by the blocking task itself, so a client that goes away does
        // not free a core that bcrypt is still using.
        let permit = auth.verifiers.clone().acquire_owned().await.map_err(|e| AuthError::Verifier(e.to_string()))?;
        // While we queued, a request with the same credentials may have
        // verified them.
        if auth.remembered(user.as_ref(), &password) {
            return Ok(user);
        }
        let (user_name, hash, enabled) = match &user {
            Some(u) => (u.name.clone(), u.password_hash.clone(), u.enabled),
            None => (String::new(), auth.dummy_hash.as_ref().clone(), false),
        };
        let cache = auth.cache.clone();
        let cost = auth.cost;
        auth.verifies.fetch_add(1, Ordering::Relaxed);
        let (matches, rehashed) = tokio::task::spawn_blocking(move || {
            let password = password.expose();
            let matches = verify_password(password, &hash);
            // Remembered before the permit goes, so the requests queued
            // behind this one with the same credentials find it.
            if matches && enabled {
                cache.remember(&user_name, &hash, password);
            }
            // Still on this core's permit: the rehash is another bcrypt run.
            let rehashed = (matches && enabled && hash_cost(&hash) != Some(cost))
                .then(|| bcrypt::non_truncating_hash(password, cost).ok())
                .flatten()
                .inspect(|new| cache.remember(&user_name, new, password));
            drop(permit);
            (matches, rehashed)
        })
        .await
        .map_err(|e| AuthError::Verifier(e.to_string()))?;
        let mut user = user;
        if let (Some(new), Some(u)) = (rehashed, user.as_mut()) {
            let (id, old, fresh) = (u.id, u.password_hash.clone(), new.clone());
            // Only over the hash just verified: a `user passwd` in between wins.
            match auth.db.run(move |s| s.replace_password_hash(id, &old, &fresh)).await {
                Ok(true) => {
                    tracing::info!(user = %name, cost, "password rehashed at the configured bcrypt cost");
                    u.password_hash = new;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(user = %name, error = %e, "could not store the rehashed password"),
            }
        }
        let user = user.filter(|u| matches && u.enabled);
        tracing::debug!(user = ?name, accepted = user.is_some(), "credentials checked with bcrypt");
        Ok(user)
    }
}

/// Longest user name (`voice-otp user add` takes no longer).
pub const MAX_NAME_BYTES: usize = 64;

/// True if some user could have `name`: 1-64 of `A-Z a-z 0-9 . _ @ -`, the
/// names `voice-otp user add` takes. Anything else is refused before any
/// limit, cache or database sees it - a NUL, a line break or 16 KiB of
/// name from an unauthenticated client costs nothing, and says nothing
/// about which users exist.
pub fn is_possible_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// The cost a bcrypt hash was made with; `None` if it is no bcrypt hash.
fn hash_cost(hash: &str) -> Option<u32> {
    hash.parse::<bcrypt::HashParts>().ok().map(|parts| parts.get_cost())
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
    use crate::store::testing::{Backend, async_backends, backends};

    fn pw(text: &str) -> Secret {
        Secret::new(text)
    }

    /// Users `acme1` (enabled) and `off` (disabled), both with `s3cret-pass`.
    fn two_users(b: Backend) -> Db {
        b.db(2, |store| {
            store.add_user("acme1", &hash_password("s3cret-pass", 4).unwrap()).unwrap();
            store.add_user("off", &hash_password("s3cret-pass", 4).unwrap()).unwrap();
            store.set_enabled("off", false).unwrap();
        })
    }

    fn cached(db: Db) -> Authenticator {
        Authenticator::new(db, 4).unwrap().with_cache(CredentialCache::new(std::time::Duration::from_secs(300), 100))
    }

    /// Changes made through another connection - what the CLI does while the
    /// daemon runs - count from the next request on.
    #[tokio::test]
    async fn passwd_disable_remove_from_another_connection_drop_the_entry() {
        let dir = std::env::temp_dir().join(format!("voice-otp-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("auth.db");
        let mut cli = Store::open(&path).unwrap();
        cli.add_user("acme1", &hash_password("old-pass", 4).unwrap()).unwrap();
        let auth = cached(Db::new(Store::open(&path).unwrap()));
        assert!(auth.authenticate("acme1", &pw("old-pass")).await.unwrap().is_some());
        assert!(auth.authenticate("acme1", &pw("old-pass")).await.unwrap().is_some());
        assert_eq!(auth.verifies(), 1);

        cli.set_password("acme1", &hash_password("new-pass", 4).unwrap()).unwrap();
        assert!(auth.authenticate("acme1", &pw("old-pass")).await.unwrap().is_none());
        assert!(auth.authenticate("acme1", &pw("new-pass")).await.unwrap().is_some());
        assert!(auth.authenticate("acme1", &pw("new-pass")).await.unwrap().is_some());
        assert_eq!(auth.verifies(), 3);

        cli.set_enabled("acme1", false).unwrap();
        assert!(auth.authenticate("acme1", &pw("new-pass")).await.unwrap().is_none());
        cli.set_enabled("acme1", true).unwrap();
        assert!(auth.authenticate("acme1", &pw("new-pass")).await.unwrap().is_some());

        cli.remove_user("acme1").unwrap();
        assert!(auth.authenticate("acme1", &pw("new-pass")).await.unwrap().is_none());
        // Re-created with the same password: a new salt, so a fresh verify.
        let before = auth.verifies();
        cli.add_user("acme1", &hash_password("new-pass", 4).unwrap()).unwrap();
        assert!(auth.authenticate("acme1", &pw("new-pass")).await.unwrap().is_some());
        assert_eq!(auth.verifies(), before + 1);
        drop(cli);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    backends! {
        fn a_rehash_never_overwrites_a_password_changed_meanwhile(b) {
        let mut store = b.open();
            let user = store.add_user("acme1", &hash_password("old-pass", 4).unwrap()).unwrap();
            let changed = hash_password("new-pass", 4).unwrap();
            store.set_password("acme1", &changed).unwrap();
            // The hash verified was the old one: the swap must not happen.
            assert!(!store.replace_password_hash(user.id, &user.password_hash, "$2b$05$x").unwrap());
            assert_eq!(store.user("acme1").unwrap().unwrap().password_hash, changed);
            assert!(store.replace_password_hash(user.id, &changed, "$2b$05$x").unwrap());
        }
    }

    #[test]
    fn refuses_passwords_bcrypt_would_truncate() {
        assert!(hash_password(&"x".repeat(72), 4).is_err());
        assert!(hash_password("", 4).is_err());
        assert!(hash_password(&"x".repeat(71), 4).is_ok());
    }

    async_backends! {
        async fn right_wrong_unknown_disabled(b) {
            let auth = Authenticator::new(two_users(b), 4).unwrap();
            assert_eq!(auth.authenticate("acme1", &pw("s3cret-pass")).await.unwrap().unwrap().name, "acme1");
            assert!(auth.authenticate("acme1", &pw("wrong")).await.unwrap().is_none());
            assert!(auth.authenticate("nobody", &pw("s3cret-pass")).await.unwrap().is_none());
            assert!(auth.authenticate("off", &pw("s3cret-pass")).await.unwrap().is_none());
            assert!(auth.authenticate("acme1", &pw(&"s".repeat(100))).await.unwrap().is_none());
        }

        async fn second_request_is_served_from_the_cache(b) {
            let auth = cached(two_users(b));
            assert!(auth.authenticate("acme1", &pw("s3cret-pass")).await.unwrap().is_some());
            assert_eq!(auth.verifies(), 1);
            for _ in 0..5 {
                assert_eq!(auth.authenticate("acme1", &pw("s3cret-pass")).await.unwrap().unwrap().name, "acme1");
            }
            assert_eq!(auth.verifies(), 1, "hits must not run bcrypt");
        }

        async fn lookup_accepts_only_what_the_cache_vouches_for(b) {
            let auth = cached(two_users(b));
            assert!(matches!(auth.lookup("acme1", &pw("s3cret-pass")).await.unwrap(), Lookup::Verify(_)));
            let Lookup::Verify(pending) = auth.lookup("acme1", &pw("s3cret-pass")).await.unwrap() else { unreachable!() };
            assert!(pending.verify().await.unwrap().is_some());
            assert!(
                matches!(auth.lookup("acme1", &pw("s3cret-pass")).await.unwrap(), Lookup::Accepted(u) if u.name == "acme1")
            );
            assert!(matches!(auth.lookup("acme1", &pw("wrong")).await.unwrap(), Lookup::Verify(_)));
            assert!(matches!(auth.lookup("nobody", &pw("s3cret-pass")).await.unwrap(), Lookup::Verify(_)));
            assert_eq!(auth.verifies(), 1, "lookups never run bcrypt");
        }

        async fn failures_are_never_remembered(b) {
            let auth = cached(two_users(b));
            for _ in 0..2 {
                assert!(auth.authenticate("acme1", &pw("wrong")).await.unwrap().is_none());
                assert!(auth.authenticate("nobody", &pw("s3cret-pass")).await.unwrap().is_none());
                assert!(auth.authenticate("off", &pw("s3cret-pass")).await.unwrap().is_none());
            }
            assert_eq!(auth.verifies(), 6, "every failure costs a verify: none was cached");
            // The right password after wrong ones still works (and is cached).
            assert!(auth.authenticate("acme1", &pw("s3cret-pass")).await.unwrap().is_some());
            assert!(auth.authenticate("acme1", &pw("s3cret-pass")).await.unwrap().is_some());
            assert_eq!(auth.verifies(), 7);
        }

        async fn concurrent_first_requests_verify_once_per_core_at_most(b) {
            let auth = cached(two_users(b));
            let tasks: Vec<_> = (0..32)
                .map(|_| {
                    let auth = auth.clone();
                    tokio::spawn(async move { auth.authenticate("acme1", &pw("s3cret-pass")).await.unwrap().is_some() })
                })
                .collect();
            for t in tasks {
                assert!(t.await.unwrap());
            }
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
            assert!(auth.verifies() <= cores, "{} verifies for one password", auth.verifies());
        }

        /// After `auth.bcrypt_cost` changes, stored hashes of the old cost are
        /// replaced on their user's next good login, so they cost what the dummy
        /// hash for unknown names costs.
        async fn a_stored_hash_of_another_cost_is_rehashed_on_login(b) {
            let db = two_users(b); // hashed at cost 4
            let auth = cached(db.clone());
            let auth = Authenticator { cost: 5, ..auth };
            let stored = |db: &Db| {
                let db = db.clone();
                async move { db.run(|s| s.user("acme1")).await.unwrap().unwrap().password_hash }
            };
            assert!(auth.authenticate("acme1", &pw("wrong")).await.unwrap().is_none());
            assert_eq!(hash_cost(&stored(&db).await), Some(4), "a failure rehashes nothing");
            assert!(auth.authenticate("acme1", &pw("s3cret-pass")).await.unwrap().is_some());
            let new = stored(&db).await;
            assert_eq!(hash_cost(&new), Some(5));
            assert!(verify_password("s3cret-pass", &new));
            // The new hash is what the cache vouches for: no second verify.
            let verifies = auth.verifies();
            assert!(auth.authenticate("acme1", &pw("s3cret-pass")).await.unwrap().is_some());
            assert_eq!(auth.verifies(), verifies);
            assert_eq!(hash_cost(&auth.dummy_hash), Some(4), "this test's dummy; Authenticator::new makes it at `cost`");
            assert_eq!(hash_cost(&Authenticator::new(db.clone(), 5).unwrap().dummy_hash), Some(5));
        }
    }
}
