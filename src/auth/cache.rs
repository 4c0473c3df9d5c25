//! The credential cache: remembers that a (user, password) passed bcrypt so
//! the next requests with it cost a keyed hash instead of ~0.2 s of CPU.
//!
//! What is kept per user is a tag: BLAKE3 keyed with a random per-process
//! key over the name, the password *and the stored bcrypt hash*, plus an
//! expiry. The password itself is never kept, and the tag is worthless
//! outside this process. Because the stored hash is part of the tag, a
//! `user passwd` (a new hash, a new salt) makes the old tag miss on the very
//! next request, whichever process changed it: the caller looks the user row
//! up on every request anyway (a removed user has no row, a disabled one is
//! refused by the caller before the cache is asked).

use std::time::{Duration, Instant};

/// A bounded, expiring memory of verified credentials. See the module docs.
pub struct CredentialCache {
    key: [u8; blake3::KEY_LEN],
    ttl: Duration,
    /// `None` when disabled (TTL 0 or no room).
    entries: Option<quick_cache::sync::Cache<String, Entry>>,
}

#[derive(Clone)]
struct Entry {
    tag: blake3::Hash,
    expires: Instant,
}

impl CredentialCache {
    /// Remembers credentials for `ttl`, for at most `max_users` users (the
    /// least recently useful ones are evicted first). A zero `ttl` or
    /// `max_users` disables it: every request is checked with bcrypt.
    pub fn new(ttl: Duration, max_users: usize) -> CredentialCache {
        let enabled = !ttl.is_zero() && max_users > 0;
        CredentialCache { key: rand::random(), ttl, entries: enabled.then(|| quick_cache::sync::Cache::new(max_users)) }
    }

    /// A cache that remembers nothing.
    pub fn disabled() -> CredentialCache {
        CredentialCache::new(Duration::ZERO, 0)
    }

    /// True if `password` was verified against exactly this `password_hash`
    /// of user `name` less than the TTL ago.
    pub fn verified(&self, name: &str, password_hash: &str, password: &str) -> bool {
        self.verified_at(name, password_hash, password, Instant::now())
    }

    /// Records a successful bcrypt verify. Call it only for a match.
    pub fn remember(&self, name: &str, password_hash: &str, password: &str) {
        self.remember_at(name, password_hash, password, Instant::now());
    }

    fn verified_at(&self, name: &str, password_hash: &str, password: &str, now: Instant) -> bool {
        let Some(entries) = &self.entries else { return false };
        let Some(entry) = entries.get(name) else { return false };
        // blake3::Hash's `==` is constant-time: how long the comparison takes
        // says nothing about how much of a guessed password's tag matched.
        entry.tag == self.tag(name, password_hash, password) && now < entry.expires
    }

    fn remember_at(&self, name: &str, password_hash: &str, password: &str, now: Instant) {
        if let Some(entries) = &self.entries {
            let entry = Entry { tag: self.tag(name, password_hash, password), expires: now + self.ttl };
            entries.insert(name.to_owned(), entry);
        }
    }

    /// Each field is length-prefixed so no two different triples hash alike.
    fn tag(&self, name: &str, password_hash: &str, password: &str) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        for field in [name, password_hash, password] {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        hasher.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2b$04$abcdefghijklmnopqrstuuJ3Wf2yL1m0C2bJ8e2f9t0qk8a1b2c3d";

    #[test]
    fn hit_needs_the_same_name_password_and_stored_hash() {
        let cache = CredentialCache::new(Duration::from_secs(300), 10);
        assert!(!cache.verified("acme1", HASH, "s3cret"));
        cache.remember("acme1", HASH, "s3cret");
        assert!(cache.verified("acme1", HASH, "s3cret"));
        assert!(!cache.verified("acme1", HASH, "s3cret "));
        assert!(!cache.verified("acme1", HASH, "wrong"));
        assert!(!cache.verified("acme2", HASH, "s3cret"));
        // `user passwd` stores a new hash: the old password misses at once.
        assert!(!cache.verified("acme1", "$2b$04$another-salt-and-hash", "s3cret"));
    }

    #[test]
    fn fields_cannot_be_shifted_into_each_other() {
        let cache = CredentialCache::new(Duration::from_secs(300), 10);
        assert_ne!(cache.tag("ab", "c", "d"), cache.tag("a", "bc", "d"));
        assert_ne!(cache.tag("a", "b", "cd"), cache.tag("a", "bc", "d"));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = CredentialCache::new(Duration::from_secs(300), 10);
        let t0 = Instant::now();
        cache.remember_at("acme1", HASH, "s3cret", t0);
        assert!(cache.verified_at("acme1", HASH, "s3cret", t0 + Duration::from_secs(299)));
        assert!(!cache.verified_at("acme1", HASH, "s3cret", t0 + Duration::from_secs(300)));
        // A new verify starts a new TTL.
        cache.remember_at("acme1", HASH, "s3cret", t0 + Duration::from_secs(300));
        assert!(cache.verified_at("acme1", HASH, "s3cret", t0 + Duration::from_secs(301)));
    }

    #[test]
    fn zero_ttl_or_size_remembers_nothing() {
        for cache in [CredentialCache::new(Duration::ZERO, 10), CredentialCache::new(Duration::from_secs(1), 0)] {
            cache.remember("acme1", HASH, "s3cret");
            assert!(!cache.verified("acme1", HASH, "s3cret"));
        }
    }

    #[test]
    fn size_is_bounded() {
        let cache = CredentialCache::new(Duration::from_secs(300), 8);
        for i in 0..1000 {
            cache.remember(&format!("user{i}"), HASH, "s3cret");
        }
        let kept = (0..1000).filter(|i| cache.verified(&format!("user{i}"), HASH, "s3cret")).count();
        assert!((1..=8).contains(&kept), "kept {kept}");
    }
}
