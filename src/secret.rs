//! One type for every secret the daemon holds in memory: passwords, the AMI
//! secret, codes, FastAGI tokens, webhook signing secrets.
//!
//! [`Secret`] keeps its text out of `Debug` and `Display` (both print
//! `<redacted>`), so a secret that ends up in a struct that is logged, in an
//! error or in a panic message shows nothing. Reading it takes a deliberate
//! [`Secret::expose`], which is easy to find in review. Equality is in
//! constant time, so comparing a guess with the real value does not tell how
//! many leading bytes were right.

use std::fmt;

/// A secret string. `Debug` and `Display` print `<redacted>`.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The secret itself. Every call site is a place where it leaves our
    /// control: keep it out of logs and error texts.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for the empty secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Its length in bytes (not secret: codes have public length rules).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Compares with `guess` in time that depends only on the lengths.
    pub fn matches(&self, guess: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), guess.as_bytes())
    }
}

/// Byte strings equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // Accumulate differences without an early exit; black_box keeps the
    // optimiser from turning the loop back into a short-circuiting compare.
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.matches(&other.0)
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Secret {
        Secret(text)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Secret {
        Secret(text.to_owned())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_it() {
        let s = Secret::new("hunter2-482915");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            code: Secret,
        }
        assert!(!format!("{:?}", Holder { code: s.clone() }).contains("482915"));
        assert_eq!(s.expose(), "hunter2-482915");
    }

    #[test]
    fn comparison_is_exact() {
        let s = Secret::new("482915");
        assert!(s.matches("482915"));
        assert!(!s.matches("482914") && !s.matches("48291") && !s.matches("4829150") && !s.matches(""));
        assert_eq!(s, Secret::from("482915"));
        assert_ne!(s, Secret::from("000000"));
        assert!(constant_time_eq(b"", b""));
    }
}
