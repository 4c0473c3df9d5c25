//! Users' call defaults: the language and voicemail-safe mode their calls
//! get when a request does not say (columns of `users`; NULL = `[call]`'s).

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};
use crate::call::options::UserCallDefaults;

/// A change to a user's defaults: `None` leaves a field alone,
/// `Some(None)` clears it back to the configuration's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDefaultsChange {
    /// New default language.
    pub language: Option<Option<String>>,
    /// New default voicemail-safe mode.
    pub require_keypress: Option<Option<bool>>,
}

impl Store {
    /// The defaults of user `user_id` (all `None` for an unknown id, whose
    /// calls then follow the configuration).
    pub fn user_call_defaults(&self, user_id: i64) -> Result<UserCallDefaults, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT language, require_keypress FROM users WHERE id = ?1")?;
        let found = stmt
            .query_row([user_id], |r| Ok(UserCallDefaults { language: r.get(0)?, require_keypress: r.get(1)? }))
            .optional()?;
        Ok(found.unwrap_or_default())
    }

    /// Applies `change` to user `name`'s defaults, in one write.
    pub fn set_user_call_defaults(&mut self, name: &str, change: &UserDefaultsChange) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let id: Option<i64> = tx.query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        let Some(id) = id else {
            return Err(StoreError::NoSuchUser(name.to_owned()));
        };
        if let Some(language) = &change.language {
            tx.execute("UPDATE users SET language = ?2 WHERE id = ?1", params![id, language])?;
        }
        if let Some(require_keypress) = change.require_keypress {
            tx.execute("UPDATE users SET require_keypress = ?2 WHERE id = ?1", params![id, require_keypress])?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_and_leave_alone() {
        let mut s = Store::open_in_memory().unwrap();
        let u = s.add_user("acme1", "h").unwrap();
        assert_eq!(s.user_call_defaults(u.id).unwrap(), UserCallDefaults::default());

        let both = UserDefaultsChange { language: Some(Some("ur".into())), require_keypress: Some(Some(true)) };
        s.set_user_call_defaults("acme1", &both).unwrap();
        let set = UserCallDefaults { language: Some("ur".into()), require_keypress: Some(true) };
        assert_eq!(s.user_call_defaults(u.id).unwrap(), set);

        // Only the keypress default is cleared; the language stays.
        let clear = UserDefaultsChange { language: None, require_keypress: Some(None) };
        s.set_user_call_defaults("acme1", &clear).unwrap();
        let after = UserCallDefaults { language: Some("ur".into()), require_keypress: None };
        assert_eq!(s.user_call_defaults(u.id).unwrap(), after);

        assert!(matches!(s.set_user_call_defaults("ghost", &both), Err(StoreError::NoSuchUser(_))));
        assert_eq!(s.user_call_defaults(9999).unwrap(), UserCallDefaults::default());
    }
}
