//! [`Language`]: the language a call is read in, checked once where it
//! enters - the configuration, a request, the command line, a stored row -
//! so everything after holds a name that is safe as a folder of Asterisk's
//! sounds directory and as an AGI argument.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A language name: 1 to 16 of `A-Z a-z 0-9 _ -` (`en`, `ur`, `pt_BR`,
/// `zh-Hans`), as Asterisk's `sounds/<language>/` folders are named. Case
/// matters: those folders are case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Language(String);

impl Language {
    /// `name` if it is a language name.
    pub fn parse(name: &str) -> Option<Language> {
        let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        ((1..=16).contains(&name.len()) && name.bytes().all(plain)).then(|| Language(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Language {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Language {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// For tests: a literal known to be a language name.
#[cfg(test)]
impl From<&str> for Language {
    fn from(name: &str) -> Language {
        Language::parse(name).expect("a language name")
    }
}

impl<'de> Deserialize<'de> for Language {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Language, D::Error> {
        let name = String::deserialize(d)?;
        Language::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{}` is not a language name (1-16 of A-Z a-z 0-9 _ -, as Asterisk's sounds/<language>/)",
                name.escape_debug()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names() {
        for good in ["en", "ur", "pt_BR", "zh-Hans", "a", "abcdefghijklmnop"] {
            assert_eq!(Language::parse(good).map(|l| l.as_str().to_owned()), Some(good.to_owned()));
        }
        for bad in ["", "../x", "en ur", "e\"n", "abcdefghijklmnopq", "ен", "en\n"] {
            assert_eq!(Language::parse(bad), None, "{bad:?}");
        }
        let err = toml::from_str::<std::collections::HashMap<String, Language>>("l = \"../x\"").unwrap_err();
        assert!(err.to_string().contains("../x") && err.to_string().contains("not a language name"), "{err}");
    }
}
