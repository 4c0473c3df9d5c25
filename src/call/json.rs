//! The call as the JSON API and webhooks show it. One shape for both, so a
//! webhook body is exactly what `GET /v1/calls/{id}` answered at that moment.
//! Never the code.

use serde::Serialize;

use super::Call;
use super::options::CallMode;
use crate::time::format_ms;

/// Where a call lives in the API (relative URLs).
#[derive(Debug, Serialize)]
pub struct CallLinks {
    /// `GET` the call.
    #[serde(rename = "self")]
    pub this: String,
    /// `POST` to cancel it.
    pub cancel: String,
}

/// The public view of a [`Call`].
#[derive(Debug, Serialize)]
pub struct CallJson<'a> {
    /// The call id.
    pub id: &'a str,
    /// Destination, E.164.
    pub number: &'a str,
    /// Current status.
    pub status: &'static str,
    /// The `[[asterisk]]` server it was originated on (`null` until dialled).
    pub asterisk: Option<&'a str>,
    /// Why it failed.
    pub reason: Option<&'a str>,
    /// Operator-facing detail (which AMI error, ...).
    pub detail: Option<&'a str>,
    /// Q.850 hangup cause.
    pub cause: Option<u16>,
    /// Asterisk's text for it.
    pub cause_text: Option<&'a str>,
    /// Full readings of the code played to the callee.
    pub readings: u32,
    /// Keys the callee pressed, in order (read mode; never what is typed in
    /// enter mode).
    pub keys: &'a str,
    /// `read`: the code is read to the callee; `enter`: they type it.
    pub mode: &'static str,
    /// Enter mode: whether the callee typed the code right; `null` in read
    /// mode.
    pub verified: Option<bool>,
    /// Enter mode: codes the callee typed; `null` in read mode.
    pub attempts: Option<u32>,
    /// Language the code is read in.
    pub language: &'a str,
    /// Voicemail-safe mode: the code is read only after a key press.
    pub require_keypress: bool,
    /// Timestamps, RFC 3339 UTC with milliseconds.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Originate sent.
    pub dialed_at: Option<String>,
    /// The phone started ringing.
    pub ringing_at: Option<String>,
    /// The callee answered.
    pub answered_at: Option<String>,
    /// The call reached its final status.
    pub ended_at: Option<String>,
    /// Still queued at this time: expired instead of dialled.
    pub deadline_at: Option<String>,
    /// Ringing time, milliseconds.
    pub ring_duration_ms: Option<i64>,
    /// Connected time, milliseconds.
    pub talk_duration_ms: Option<i64>,
    /// This call's own webhook URL, if it has one.
    pub callback_url: Option<&'a str>,
    /// API links.
    pub links: CallLinks,
}

impl Call {
    /// The public JSON view.
    pub fn to_json(&self) -> CallJson<'_> {
        let when = |t: Option<i64>| t.map(format_ms);
        let this = format!("/v1/calls/{}", self.id);
        let entered = self.options.mode == CallMode::Enter;
        CallJson {
            id: self.id.as_str(),
            number: &self.number,
            status: self.status.as_str(),
            asterisk: self.asterisk.as_deref(),
            reason: self.reason.as_deref(),
            detail: self.detail.as_deref(),
            cause: self.cause,
            cause_text: self.cause_text.as_deref(),
            readings: self.readings,
            keys: &self.keys,
            mode: self.options.mode.as_str(),
            verified: entered.then_some(self.verified),
            attempts: entered.then_some(self.attempts),
            language: self.options.language.as_str(),
            require_keypress: self.options.require_keypress,
            created_at: format_ms(self.created_at),
            updated_at: format_ms(self.updated_at),
            dialed_at: when(self.dialed_at),
            ringing_at: when(self.ringing_at),
            answered_at: when(self.answered_at),
            ended_at: when(self.ended_at),
            deadline_at: when(self.deadline_at),
            ring_duration_ms: self.ring_ms(),
            talk_duration_ms: self.talk_ms(),
            callback_url: self.callback_url.as_deref(),
            links: CallLinks { cancel: format!("{this}/cancel"), this },
        }
    }
}
