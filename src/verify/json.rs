//! A verification as the JSON API and its webhooks show it. Never the code.

use serde::Serialize;

use super::Verification;
use crate::time::format_ms;

/// Where a verification lives in the API (relative URLs).
#[derive(Debug, Serialize)]
pub struct VerificationLinks {
    /// `GET` it.
    #[serde(rename = "self")]
    pub this: String,
    /// `POST` a code to it.
    pub check: String,
    /// `POST` to cancel it.
    pub cancel: String,
}

/// The public view of a [`Verification`] at a moment.
#[derive(Debug, Serialize)]
pub struct VerificationJson<'a> {
    /// Its id.
    pub id: &'a str,
    /// Destination, E.164.
    pub number: &'a str,
    /// `pending`, `approved`, `canceled`, `expired`, `max_attempts_reached`.
    pub status: &'static str,
    /// Digits in the code.
    pub code_length: u8,
    /// Language its calls are read in.
    pub language: &'a str,
    /// Calls placed for it.
    pub sends: u32,
    /// Wrong codes checked.
    pub failed_checks: u32,
    /// Checks left before `max_attempts_reached` (0 once final).
    pub attempts_left: u32,
    /// The latest call placed for it (`GET /v1/calls/{id}` tells how it went).
    pub call_id: Option<&'a str>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// When it expires (or expired).
    pub expires_at: String,
    /// When it reached its final status.
    pub ended_at: Option<String>,
    /// Its webhook URL, if it has its own.
    pub callback_url: Option<&'a str>,
    /// Where to go next.
    pub links: VerificationLinks,
}

impl Verification {
    /// The JSON shape as of `now`, for a daemon allowing `max_checks` wrong codes.
    pub fn to_json(&self, now: i64, max_checks: u32) -> VerificationJson<'_> {
        let status = self.status_at(now);
        let base = format!("/v1/verifications/{}", self.id);
        VerificationJson {
            id: self.id.as_str(),
            number: &self.number,
            status: status.as_str(),
            code_length: self.code_length.get(),
            language: self.language.as_str(),
            sends: self.sends,
            failed_checks: self.failed_checks,
            attempts_left: if status.is_final() { 0 } else { max_checks.saturating_sub(self.failed_checks) },
            call_id: self.last_call_id.as_deref(),
            created_at: format_ms(self.created_at),
            updated_at: format_ms(self.updated_at),
            expires_at: format_ms(self.expires_at),
            ended_at: self.ended_at.map(format_ms),
            callback_url: self.callback_url.as_deref(),
            links: VerificationLinks { check: format!("{base}/check"), cancel: format!("{base}/cancel"), this: base },
        }
    }
}
