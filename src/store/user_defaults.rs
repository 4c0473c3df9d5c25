//! Users' call defaults: the mode, language and voicemail-safe mode their
//! calls get when a request does not say (columns of `users`; NULL =
//! `[call]`'s).

use super::backend::{TxKind, args};
use super::{Store, StoreError};
use crate::call::options::{CallMode, Language, UserCallDefaults};

/// A change to a user's defaults: `None` leaves a field alone,
/// `Some(None)` clears it back to the configuration's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDefaultsChange {
    /// New default mode.
    pub mode: Option<Option<CallMode>>,
    /// New default language.
    pub language: Option<Option<Language>>,
    /// New default voicemail-safe mode.
    pub require_keypress: Option<Option<bool>>,
}

impl Store {
    /// The defaults of user `user_id` (all `None` for an unknown id, whose
    /// calls then follow the configuration).
    pub fn user_call_defaults(&self, user_id: i64) -> Result<UserCallDefaults, StoreError> {
        let found =
            self.query_opt("SELECT language, require_keypress, mode FROM users WHERE id = ?1", args![user_id], |r| {
                let mode: Option<String> = r.get(2)?;
                Ok((UserCallDefaults { mode: None, language: r.get(0)?, require_keypress: r.get(1)? }, mode))
            })?;
        let Some((mut defaults, mode)) = found else { return Ok(UserCallDefaults::default()) };
        if let Some(mode) = mode {
            defaults.mode =
                Some(CallMode::parse(&mode).ok_or_else(|| StoreError::Corrupt(format!("user mode {mode:?}")))?);
        }
        Ok(defaults)
    }

    /// Applies `change` to user `name`'s defaults, in one write.
    pub fn set_user_call_defaults(&mut self, name: &str, change: &UserDefaultsChange) -> Result<(), StoreError> {
        self.tx(TxKind::Deferred, |s| {
            let id: Option<i64> = s.query_opt("SELECT id FROM users WHERE name = ?1", args![name], |r| r.get(0))?;
            let Some(id) = id else {
                return Err(StoreError::NoSuchUser(name.to_owned()));
            };
            if let Some(language) = &change.language {
                s.execute("UPDATE users SET language = ?2 WHERE id = ?1", args![id, language.as_ref()])?;
            }
            if let Some(mode) = change.mode {
                s.execute("UPDATE users SET mode = ?2 WHERE id = ?1", args![id, mode.map(CallMode::as_str)])?;
            }
            if let Some(require_keypress) = change.require_keypress {
                s.execute("UPDATE users SET require_keypress = ?2 WHERE id = ?1", args![id, require_keypress])?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::backends;

    backends! {
        fn set_clear_and_leave_alone(b) {
            let mut s = b.open();
            let u = s.add_user("acme1", "h").unwrap();
            assert_eq!(s.user_call_defaults(u.id).unwrap(), UserCallDefaults::default());

            let both = UserDefaultsChange {
                mode: Some(Some(CallMode::Enter)),
                language: Some(Some("ur".into())),
                require_keypress: Some(Some(true)),
            };
            s.set_user_call_defaults("acme1", &both).unwrap();
            let set =
                UserCallDefaults { mode: Some(CallMode::Enter), language: Some("ur".into()), require_keypress: Some(true) };
            assert_eq!(s.user_call_defaults(u.id).unwrap(), set);

            // Only the keypress and mode defaults are cleared; the language stays.
            let clear = UserDefaultsChange { mode: Some(None), language: None, require_keypress: Some(None) };
            s.set_user_call_defaults("acme1", &clear).unwrap();
            let after = UserCallDefaults { language: Some("ur".into()), ..UserCallDefaults::default() };
            assert_eq!(s.user_call_defaults(u.id).unwrap(), after);

            // The mode alone.
            let enter = UserDefaultsChange { mode: Some(Some(CallMode::Enter)), ..UserDefaultsChange::default() };
            s.set_user_call_defaults("acme1", &enter).unwrap();
            assert_eq!(s.user_call_defaults(u.id).unwrap(), UserCallDefaults { mode: Some(CallMode::Enter), ..after });

            assert!(matches!(s.set_user_call_defaults("ghost", &both), Err(StoreError::NoSuchUser(_))));
            assert_eq!(s.user_call_defaults(9999).unwrap(), UserCallDefaults::default());
        }
    }
}
