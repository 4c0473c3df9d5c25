//! Verifications: the service makes the code, calls the person to read it,
//! and later tells the business whether what its user typed is right -
//! with a limit on checks and an expiry (Twilio Verify's model).
//!
//! - [`code`]: the code itself. It is never stored: it is derived from the
//!   daemon's verification key and a random per-verification salt, so it
//!   can be read out again (a re-send calls with the same code) and checked,
//!   but a copy of the database alone reveals nothing about it.
//! - [`Verification`] and [`VerificationStatus`]: what is stored and how it
//!   moves; the store (`store/verifications.rs`) keeps the transitions
//!   atomic, so two checks racing cannot both spend the last attempt.

pub mod code;
pub mod json;

use std::fmt;

use serde::Serialize;

pub use code::{CodeLength, VerifyKey};

use crate::call::language::Language;

crate::hex_id!(
    /// A verification id: 128 random bits as 32 lowercase hex digits, like
    /// a call id (and, like it, no secret).
    VerificationId
);

/// Where a verification stands. Only `pending` ever changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    /// Calls may be (re)sent and the code checked.
    Pending,
    /// A check gave the right code.
    Approved,
    /// Canceled through the API.
    Canceled,
    /// `[verify] ttl_secs` passed without the right code.
    Expired,
    /// `[verify] max_checks` wrong codes were checked.
    MaxAttemptsReached,
}

impl VerificationStatus {
    /// Every status.
    pub const ALL: [VerificationStatus; 5] = [
        VerificationStatus::Pending,
        VerificationStatus::Approved,
        VerificationStatus::Canceled,
        VerificationStatus::Expired,
        VerificationStatus::MaxAttemptsReached,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationStatus::Pending => "pending",
            VerificationStatus::Approved => "approved",
            VerificationStatus::Canceled => "canceled",
            VerificationStatus::Expired => "expired",
            VerificationStatus::MaxAttemptsReached => "max_attempts_reached",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<VerificationStatus> {
        VerificationStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Final statuses never change; the salt (and so the code) is gone.
    pub fn is_final(self) -> bool {
        self != VerificationStatus::Pending
    }
}

impl fmt::Display for VerificationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored verification.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Its id.
    pub id: VerificationId,
    /// The API user who asked for it.
    pub user_id: Option<i64>,
    /// Destination, E.164.
    pub number: String,
    /// Digits in the code.
    pub code_length: CodeLength,
    /// With the key, derives the code; erased when the verification is final.
    pub salt: Option<[u8; 16]>,
    /// Current status.
    pub status: VerificationStatus,
    /// Wrong codes checked so far.
    pub failed_checks: u32,
    /// Calls placed for it so far.
    pub sends: u32,
    /// Language its calls are read in (resolved when created).
    pub language: Language,
    /// Where its status changes are POSTed; `None`: the user's default.
    pub callback_url: Option<String>,
    /// The latest call placed for it.
    pub last_call_id: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the last change.
    pub updated_at: i64,
    /// Unix ms after which it is `expired`.
    pub expires_at: i64,
    /// Unix ms when it reached a final status.
    pub ended_at: Option<i64>,
}

impl Verification {
    /// The status as of `now`: a pending verification past its expiry is
    /// `expired` even before housekeeping has written it so.
    pub fn status_at(&self, now: i64) -> VerificationStatus {
        if self.status == VerificationStatus::Pending && now >= self.expires_at {
            VerificationStatus::Expired
        } else {
            self.status
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_statuses_round_trip() {
        let a = VerificationId::generate();
        assert_ne!(a, VerificationId::generate());
        assert_eq!(VerificationId::parse(a.as_str()), Some(a));
        assert_eq!(VerificationId::parse("ABC"), None);
        for s in VerificationStatus::ALL {
            assert_eq!(VerificationStatus::parse(s.as_str()), Some(s));
            assert_eq!(s.is_final(), s != VerificationStatus::Pending);
        }
    }
}
