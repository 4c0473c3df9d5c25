//! Per-call options - the mode (the code read to the callee, or typed by
//! them), the language and voicemail-safe mode - and the one place that
//! decides them: the request's value, else the user's default, else
//! `[call]`'s.
//!
//! Front ends (the seed API's form fields, a JSON body) only turn their
//! input into a [`RequestedOptions`] through [`RequestedOptions::check`] or
//! [`parse_require_keypress`]; the refusal ([`OptionError`]) names the field
//! and the values it accepts, ready for a 400.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What the call does with the code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallMode {
    /// The code is read to the callee.
    #[default]
    Read,
    /// The callee types the code on the keypad, and the call says whether it
    /// was right: a check that they hold the phone.
    Enter,
}

impl CallMode {
    /// Every mode, in the order listed to clients.
    pub const ALL: [CallMode; 2] = [CallMode::Read, CallMode::Enter];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            CallMode::Read => "read",
            CallMode::Enter => "enter",
        }
    }

    /// Reads a name as requests, the CLI and the store spell it.
    pub fn parse(name: &str) -> Option<CallMode> {
        CallMode::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

impl fmt::Display for CallMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The values `mode` accepts, as listed in refusals.
pub const MODE_VALUES: &str = "read, enter";

/// Reads a request's or the command line's `mode`.
pub fn parse_mode(text: &str) -> Result<CallMode, OptionError> {
    CallMode::parse(text).ok_or_else(|| OptionError { field: "mode", expected: MODE_VALUES.into() })
}

use crate::config::CallConfig;

pub use super::language::Language;

/// How one call is read, fixed when the call is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallOptions {
    /// Read the code to the callee, or have them type it.
    pub mode: CallMode,
    /// Asterisk sound language (`sounds/<language>/`), one of `[call] languages`.
    pub language: Language,
    /// Voicemail-safe mode: read the code only after the callee presses a key
    /// (no effect in enter mode, which says no code).
    pub require_keypress: bool,
}

/// A user's defaults, set with `voice-otp user set`; `None` = `[call]`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserCallDefaults {
    /// Default mode of the user's calls.
    pub mode: Option<CallMode>,
    /// Default language of the user's calls.
    pub language: Option<Language>,
    /// Default voicemail-safe mode of the user's calls.
    pub require_keypress: Option<bool>,
}

/// What a request asked for, already checked against the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestedOptions {
    /// The `mode` field, if given.
    pub mode: Option<CallMode>,
    /// The `language` field, if given.
    pub language: Option<Language>,
    /// The `require_keypress` field, if given.
    pub require_keypress: Option<bool>,
}

/// A refused option value; `Display` is the text after `Bad Request: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    /// The request field.
    pub field: &'static str,
    /// What it accepts.
    pub expected: String,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} must be one of: {}", self.field, self.expected)
    }
}

impl std::error::Error for OptionError {}

/// The spellings `require_keypress` accepts in a form or on the command line.
pub const REQUIRE_KEYPRESS_VALUES: &str = "1, 0, true, false";

/// Reads a form's `require_keypress` (`1`/`true` or `0`/`false`).
pub fn parse_require_keypress(text: &str) -> Result<bool, OptionError> {
    match text {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(OptionError { field: "require_keypress", expected: REQUIRE_KEYPRESS_VALUES.into() }),
    }
}

/// Checks a language against `[call] languages`.
pub fn check_language(name: &str, cfg: &CallConfig) -> Result<Language, OptionError> {
    match cfg.languages.iter().find(|l| *l == name) {
        Some(language) => Ok(language.clone()),
        None => Err(OptionError { field: "language", expected: languages_list(cfg) }),
    }
}

/// `[call] languages` as a list for messages: `en, ur`.
pub fn languages_list(cfg: &CallConfig) -> String {
    cfg.languages.iter().map(Language::as_str).collect::<Vec<_>>().join(", ")
}

impl RequestedOptions {
    /// Checks a request's optional fields (`require_keypress` already a bool,
    /// e.g. from JSON, or read by [`parse_require_keypress`]), in the order
    /// the seed API lists them: language, then mode.
    pub fn check(
        language: Option<&str>,
        require_keypress: Option<bool>,
        mode: Option<&str>,
        cfg: &CallConfig,
    ) -> Result<RequestedOptions, OptionError> {
        let language = language.map(|l| check_language(l, cfg)).transpose()?;
        let mode = mode.map(parse_mode).transpose()?;
        Ok(RequestedOptions { mode, language, require_keypress })
    }

    /// The call's options: the request's value, else the user's default,
    /// else the configuration's. A user default naming a language the
    /// configuration no longer offers falls back to `default_language`
    /// (the request itself did nothing wrong), with a warning.
    pub fn resolve(self, user: &UserCallDefaults, cfg: &CallConfig) -> CallOptions {
        let user_language = user.language.as_ref().filter(|l| {
            let offered = cfg.languages.contains(l);
            if !offered {
                tracing::warn!(language = %l, "a user's default language is not in [call] languages; using the default");
            }
            offered
        });
        CallOptions {
            mode: self.mode.or(user.mode).unwrap_or(cfg.mode),
            language: self.language.or_else(|| user_language.cloned()).unwrap_or_else(|| cfg.default_language.clone()),
            require_keypress: self.require_keypress.or(user.require_keypress).unwrap_or(cfg.require_keypress),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lang(name: &str) -> Language {
        Language::parse(name).unwrap()
    }

    #[test]
    fn request_then_user_then_config() {
        let cfg = CallConfig { require_keypress: true, mode: CallMode::Enter, ..CallConfig::default() };
        let none = UserCallDefaults::default();
        let user =
            UserCallDefaults { mode: Some(CallMode::Read), language: Some(lang("ur")), require_keypress: Some(false) };
        let options =
            |mode, language: &str, require_keypress| CallOptions { mode, language: lang(language), require_keypress };

        let plain = RequestedOptions::default();
        assert_eq!(plain.clone().resolve(&none, &cfg), options(CallMode::Enter, "en", true));
        assert_eq!(plain.resolve(&user, &cfg), options(CallMode::Read, "ur", false));

        let asked = RequestedOptions::check(Some("en"), Some(true), Some("enter"), &cfg).unwrap();
        assert_eq!(asked.resolve(&user, &cfg), options(CallMode::Enter, "en", true));
        // Each field on its own: the user's mode, the request's language.
        let asked = RequestedOptions::check(Some("en"), None, None, &cfg).unwrap();
        assert_eq!(asked.resolve(&user, &cfg), options(CallMode::Read, "en", false));
    }

    #[test]
    fn unknown_language_names_the_supported_ones() {
        let err = RequestedOptions::check(Some("fr"), None, None, &CallConfig::default()).unwrap_err();
        assert_eq!(err.to_string(), "language must be one of: en, ur");
        // Case matters: Asterisk's folders are case-sensitive.
        assert!(RequestedOptions::check(Some("UR"), None, None, &CallConfig::default()).is_err());
    }

    #[test]
    fn a_withdrawn_user_language_falls_back() {
        let user = UserCallDefaults { language: Some(lang("fr")), ..UserCallDefaults::default() };
        let got = RequestedOptions::default().resolve(&user, &CallConfig::default());
        assert_eq!(got.language, "en");
    }

    #[test]
    fn require_keypress_spellings() {
        assert_eq!(parse_require_keypress("1"), Ok(true));
        assert_eq!(parse_require_keypress("true"), Ok(true));
        assert_eq!(parse_require_keypress("0"), Ok(false));
        assert_eq!(parse_require_keypress("false"), Ok(false));
        let err = parse_require_keypress("yes").unwrap_err();
        assert_eq!(err.to_string(), "require_keypress must be one of: 1, 0, true, false");
        assert!(parse_require_keypress("TRUE").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("read"), Ok(CallMode::Read));
        assert_eq!(parse_mode("enter"), Ok(CallMode::Enter));
        for bad in ["", "Enter", "ENTER", "type", "read "] {
            let err = parse_mode(bad).unwrap_err();
            assert_eq!((err.field, err.to_string().as_str()), ("mode", "mode must be one of: read, enter"), "{bad:?}");
        }
        for mode in CallMode::ALL {
            assert_eq!(CallMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(CallMode::default(), CallMode::Read, "today's flow stays the default");
        assert_eq!(MODE_VALUES, CallMode::ALL.map(CallMode::as_str).join(", "));
    }
}
