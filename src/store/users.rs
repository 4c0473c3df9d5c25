//! API users: name, bcrypt hash, enabled flag.

use super::backend::{Row, Value, args};
use super::{Store, StoreError};
use crate::call::now_ms;

/// A stored API user.
#[derive(Clone)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// Unique login name.
    pub name: String,
    /// bcrypt hash of the password.
    pub password_hash: String,
    /// Disabled users are refused like unknown ones.
    pub enabled: bool,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

const USER_COLUMNS: &str = "id, name, password_hash, enabled, created_at";

fn user_from_row(row: &Row<'_>) -> Result<User, StoreError> {
    Ok(User {
        id: row.get(0)?,
        name: row.get(1)?,
        password_hash: row.get(2)?,
        enabled: row.get(3)?,
        created_at: row.get(4)?,
    })
}

impl Store {
    /// Adds a user; the name must be new.
    pub fn add_user(&mut self, name: &str, password_hash: &str) -> Result<User, StoreError> {
        let now = now_ms();
        let inserted = self.execute(
            "INSERT INTO users (name, password_hash, enabled, created_at, webhook_secret)
             VALUES (?1, ?2, TRUE, ?3, ?4)
             ON CONFLICT(name) DO NOTHING",
            // Every user gets a webhook signing secret at birth; the CLI
            // shows it once (`user add`, `user webhook --rotate-secret`).
            args![name, password_hash, now, hex::encode(rand::random::<[u8; 32]>())],
        )?;
        if inserted == 0 {
            return Err(StoreError::UserExists(name.to_owned()));
        }
        self.user(name)?.ok_or_else(|| StoreError::NoSuchUser(name.to_owned()))
    }

    /// Looks a user up by name.
    pub fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.query_opt(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"), args![name], user_from_row)
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"), &[], user_from_row)
    }

    /// Replaces a user's password hash.
    pub fn set_password(&mut self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        self.update_user(name, "UPDATE users SET password_hash = ?2 WHERE name = ?1", password_hash.into())
    }

    /// Replaces user `id`'s hash with `new` only if it still is `old` (the
    /// one just verified); false if it changed meanwhile (`user passwd`).
    pub fn replace_password_hash(&mut self, id: i64, old: &str, new: &str) -> Result<bool, StoreError> {
        let n = self
            .execute("UPDATE users SET password_hash = ?3 WHERE id = ?1 AND password_hash = ?2", args![id, old, new])?;
        Ok(n == 1)
    }

    /// Enables or disables a user.
    pub fn set_enabled(&mut self, name: &str, enabled: bool) -> Result<(), StoreError> {
        self.update_user(name, "UPDATE users SET enabled = ?2 WHERE name = ?1", enabled.into())
    }

    /// Removes a user. Their calls stay, detached, for the record.
    pub fn remove_user(&mut self, name: &str) -> Result<(), StoreError> {
        let n = self.execute("DELETE FROM users WHERE name = ?1", args![name])?;
        if n == 0 { Err(StoreError::NoSuchUser(name.to_owned())) } else { Ok(()) }
    }

    fn update_user(&mut self, name: &str, sql: &str, value: Value<'_>) -> Result<(), StoreError> {
        let n = self.execute(sql, &[Value::from(name), value])?;
        if n == 0 { Err(StoreError::NoSuchUser(name.to_owned())) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::backends;

    #[test]
    fn hash_is_not_in_debug() {
        let u = User { id: 1, name: "a".into(), password_hash: "$2b$secret".into(), enabled: true, created_at: 0 };
        assert!(!format!("{u:?}").contains("secret"));
    }

    backends! {
        fn add_find_update_remove(b) {
            let mut s = b.open();
            let u = s.add_user("acme1", "$2b$04$hash").unwrap();
            assert!(u.enabled);
            assert!(matches!(s.add_user("acme1", "x"), Err(StoreError::UserExists(_))));
            s.set_enabled("acme1", false).unwrap();
            assert!(!s.user("acme1").unwrap().unwrap().enabled);
            s.set_password("acme1", "$2b$04$other").unwrap();
            assert_eq!(s.user("acme1").unwrap().unwrap().password_hash, "$2b$04$other");
            assert!(matches!(s.set_enabled("nobody", true), Err(StoreError::NoSuchUser(_))));
            s.remove_user("acme1").unwrap();
            assert!(s.user("acme1").unwrap().is_none());
            assert!(matches!(s.remove_user("acme1"), Err(StoreError::NoSuchUser(_))));
        }

    }
}
