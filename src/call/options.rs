//! Per-call options - the language the code is read in and voicemail-safe
//! mode - and the one place that decides them: the request's value, else
//! the user's default, else `[call]`'s.
//!
//! Front ends (the seed API's form fields, a JSON body) only turn their
//! input into a [`RequestedOptions`] through [`RequestedOptions::check`] or
//! [`parse_require_keypress`]; the refusal ([`OptionError`]) names the field
//! and the values it accepts, ready for a 400.

use std::fmt;

use serde::Serialize;

use crate::config::CallConfig;

/// How one call is read, fixed when the call is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallOptions {
    /// Asterisk sound language (`sounds/<language>/`), one of `[call] languages`.
    pub language: String,
    /// Voicemail-safe mode: read the code only after the callee presses a key.
    pub require_keypress: bool,
}

/// A user's defaults, set with `voice-otp user set`; `None` = `[call]`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserCallDefaults {
    /// Default language of the user's calls.
    pub language: Option<String>,
    /// Default voicemail-safe mode of the user's calls.
    pub require_keypress: Option<bool>,
}

/// What a request asked for, already checked against the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestedOptions {
    /// The `language` field, if given.
    pub language: Option<String>,
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

/// Whether `name` can be a language: it becomes a folder name in Asterisk's
/// sounds directory and an AGI argument, so only plain characters
/// (`en`, `ur`, `pt_BR`, `zh-Hans`).
pub fn is_language_name(name: &str) -> bool {
    (1..=16).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a language against `[call] languages`.
pub fn check_language(name: &str, cfg: &CallConfig) -> Result<String, OptionError> {
    if cfg.languages.iter().any(|l| l == name) {
        Ok(name.to_owned())
    } else {
        Err(OptionError { field: "language", expected: cfg.languages.join(", ") })
    }
}

impl RequestedOptions {
    /// Checks a request's optional fields (`require_keypress` already a bool,
    /// e.g. from JSON, or read by [`parse_require_keypress`]).
    pub fn check(
        language: Option<&str>,
        require_keypress: Option<bool>,
        cfg: &CallConfig,
    ) -> Result<RequestedOptions, OptionError> {
        let language = language.map(|l| check_language(l, cfg)).transpose()?;
        Ok(RequestedOptions { language, require_keypress })
    }

    /// The call's options: the request's value, else the user's default,
    /// else the configuration's. A user default naming a language the
    /// configuration no longer offers falls back to `default_language`
    /// (the request itself did nothing wrong), with a warning.
    pub fn resolve(self, user: &UserCallDefaults, cfg: &CallConfig) -> CallOptions {
        let user_language = user.language.as_deref().filter(|l| {
            let offered = cfg.languages.iter().any(|c| c == l);
            if !offered {
                tracing::warn!(language = %l, "a user's default language is not in [call] languages; using the default");
            }
            offered
        });
        CallOptions {
            language: self
                .language
                .or_else(|| user_language.map(str::to_owned))
                .unwrap_or_else(|| cfg.default_language.clone()),
            require_keypress: self.require_keypress.or(user.require_keypress).unwrap_or(cfg.require_keypress),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_then_user_then_config() {
        let cfg = CallConfig { require_keypress: true, ..CallConfig::default() };
        let none = UserCallDefaults::default();
        let user = UserCallDefaults { language: Some("ur".into()), require_keypress: Some(false) };

        let plain = RequestedOptions::default();
        assert_eq!(plain.clone().resolve(&none, &cfg), CallOptions { language: "en".into(), require_keypress: true });
        assert_eq!(plain.resolve(&user, &cfg), CallOptions { language: "ur".into(), require_keypress: false });

        let asked = RequestedOptions::check(Some("en"), Some(true), &cfg).unwrap();
        assert_eq!(asked.resolve(&user, &cfg), CallOptions { language: "en".into(), require_keypress: true });
    }

    #[test]
    fn unknown_language_names_the_supported_ones() {
        let err = RequestedOptions::check(Some("fr"), None, &CallConfig::default()).unwrap_err();
        assert_eq!(err.to_string(), "language must be one of: en, ur");
        // Case matters: Asterisk's folders are case-sensitive.
        assert!(RequestedOptions::check(Some("UR"), None, &CallConfig::default()).is_err());
    }

    #[test]
    fn a_withdrawn_user_language_falls_back() {
        let user = UserCallDefaults { language: Some("fr".into()), require_keypress: None };
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
    fn language_names() {
        for ok in ["en", "ur", "pt_BR", "zh-Hans"] {
            assert!(is_language_name(ok), "{ok}");
        }
        for bad in ["", "../en", "en/x", "e n", "en\r\n", &"a".repeat(17)] {
            assert!(!is_language_name(bad), "{bad:?}");
        }
    }
}
