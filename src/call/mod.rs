//! Calls: what a call is (id, status, reason), the dispatcher that places
//! them through AMI and follows their events, and the flow the callee hears.
//!
//! - `flow`: the script read to the callee, over typed AGI commands.
//! - `dispatcher`: its `dialler` (queued call -> `Originate`, reconciliation,
//!   expiry) and its `follower` (typed AMI events -> status changes).
//! - `agi_handler`: an answered call arriving on FastAGI -> the flow.
//! - `json`: the call as the JSON API and webhooks show it.
//! - `token`: the per-dial FastAGI token that proves a session is our channel.
//! - `options`: per-call mode (read or enter), language and voicemail-safe
//!   mode, and how a request's values, a user's defaults and `[call]`
//!   combine.

pub mod agi_handler;
pub mod dispatcher;
pub mod flow;
pub mod json;
pub mod language;
pub mod options;
pub mod token;

use std::fmt;

use serde::Serialize;

use crate::ami::OriginateReason;
use crate::metrics::{CallEnded, Metrics};
use crate::secret::Secret;

crate::hex_id!(
    time_ordered
    /// An unguessable call identifier, 32 lowercase hex digits: the
    /// creation time (Unix ms, 48 bits), then 80 random bits. It is also
    /// the Asterisk channel's `Uniqueid` (`ChannelId` on Originate), so AMI
    /// events and the FastAGI session name the call directly.
    ///
    /// Why the time first: the id keys the calls' primary index and the
    /// webhook deliveries' index by call. Fully random ids put each new
    /// call on a random page of both and scattered each day's calls over
    /// all of them, so with a month of history every insert touched pages
    /// the cache no longer held, and purging a day rewrote nearly every
    /// page. In time order a day's calls share a run of pages, and the
    /// newest - the ones in use - stay cached. 80 random bits are still
    /// beyond guessing (and an id alone opens nothing: a FastAGI session
    /// also needs the dial's token, an API user sees only their own calls);
    /// the creation time they reveal is in the call's JSON anyway.
    CallId
);

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// Stored, not yet handed to Asterisk.
    Queued,
    /// Originate sent; the phone is not ringing yet.
    Dialing,
    /// The callee's phone rings (AMI `Newstate` Ringing of our channel).
    Ringing,
    /// The callee answered; the code is being read.
    Answered,
    /// At least one full reading of the code reached the callee (read
    /// mode), or the callee typed the code right (enter mode).
    Completed,
    /// The call ended without a full reading, or without the code typed
    /// right; `reason` says why.
    Failed,
    /// Not dialled before its deadline (`[dial] deadline_secs`).
    Expired,
    /// Canceled through the API before it was answered.
    Canceled,
}

impl CallStatus {
    /// Every status, for listings and checks.
    pub const ALL: [CallStatus; 8] = [
        CallStatus::Queued,
        CallStatus::Dialing,
        CallStatus::Ringing,
        CallStatus::Answered,
        CallStatus::Completed,
        CallStatus::Failed,
        CallStatus::Expired,
        CallStatus::Canceled,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Queued => "queued",
            CallStatus::Dialing => "dialing",
            CallStatus::Ringing => "ringing",
            CallStatus::Answered => "answered",
            CallStatus::Completed => "completed",
            CallStatus::Failed => "failed",
            CallStatus::Expired => "expired",
            CallStatus::Canceled => "canceled",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<CallStatus> {
        CallStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A final status never changes again and the code is gone.
    pub fn is_final(self) -> bool {
        matches!(self, CallStatus::Completed | CallStatus::Failed | CallStatus::Expired | CallStatus::Canceled)
    }

    /// A call in one of these may still be canceled: nobody answered yet.
    pub fn is_cancelable(self) -> bool {
        matches!(self, CallStatus::Queued | CallStatus::Dialing | CallStatus::Ringing)
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call failed, derived from what Asterisk reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// The line was busy (Q.850 cause 17).
    Busy,
    /// It rang until the ring timeout (cause 19 / OriginateResponse reason 3).
    NoAnswer,
    /// The callee rejected the call (cause 21).
    Rejected,
    /// The network says no such number (cause 1).
    InvalidNumber,
    /// No circuit or trunk capacity (cause 34 and friends).
    Congestion,
    /// Answered, but hung up before the code was read in full once (read
    /// mode) or typed right (enter mode).
    HangupBeforeCode,
    /// Asterisk or we failed (AMI down, Originate refused, AGI never came).
    SystemError,
    /// Voicemail-safe mode: no key after every "press any key" prompt; no
    /// digit was played.
    NoKeypress,
    /// Enter mode: the callee typed a code, but never the right one in
    /// `[call] entry_attempts` tries.
    WrongCode,
    /// Enter mode: the callee typed nothing at any prompt.
    NoInput,
}

impl FailReason {
    /// Every reason, for the metrics' series.
    pub const ALL: [FailReason; 10] = [
        FailReason::Busy,
        FailReason::NoAnswer,
        FailReason::Rejected,
        FailReason::InvalidNumber,
        FailReason::Congestion,
        FailReason::HangupBeforeCode,
        FailReason::SystemError,
        FailReason::NoKeypress,
        FailReason::WrongCode,
        FailReason::NoInput,
    ];

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<FailReason> {
        FailReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Busy => "busy",
            FailReason::NoAnswer => "no_answer",
            FailReason::Rejected => "rejected",
            FailReason::InvalidNumber => "invalid_number",
            FailReason::Congestion => "congestion",
            FailReason::HangupBeforeCode => "hangup_before_code",
            FailReason::SystemError => "system_error",
            FailReason::NoKeypress => "no_keypress",
            FailReason::WrongCode => "wrong_code",
            FailReason::NoInput => "no_input",
        }
    }

    /// The reason a Q.850 hangup cause of an unanswered call stands for.
    pub fn from_cause(cause: u16) -> FailReason {
        match cause {
            17 => FailReason::Busy,
            18 | 19 => FailReason::NoAnswer,
            21 => FailReason::Rejected,
            1 | 3 | 22 | 28 => FailReason::InvalidNumber,
            34 | 38 | 41 | 42 | 44 | 47 => FailReason::Congestion,
            _ => FailReason::SystemError,
        }
    }

    /// The reason an unanswered `OriginateResponse` stands for, when no
    /// hangup cause is known.
    pub fn from_originate_reason(reason: OriginateReason) -> FailReason {
        match reason {
            OriginateReason::NoAnswer => FailReason::NoAnswer,
            OriginateReason::Busy => FailReason::Busy,
            OriginateReason::Congestion => FailReason::Congestion,
            OriginateReason::Failed
            | OriginateReason::Hangup
            | OriginateReason::Answered
            | OriginateReason::Other(_) => FailReason::SystemError,
        }
    }
}

/// A stored call. The code is `None` once the call is final.
#[derive(Debug, Clone)]
pub struct Call {
    /// The call id (= Asterisk channel Uniqueid).
    pub id: CallId,
    /// The API user who asked for it.
    pub user_id: Option<i64>,
    /// Destination in E.164.
    pub number: String,
    /// The code; erased when the call ends. Redacted in `Debug`.
    pub code: Option<Secret>,
    /// Current status.
    pub status: CallStatus,
    /// Why it failed, for `failed` calls.
    pub reason: Option<String>,
    /// Free text for operators (which AMI error, ...). Never holds the code.
    pub detail: Option<String>,
    /// Q.850 hangup cause reported by Asterisk, if any.
    pub cause: Option<u16>,
    /// Asterisk's text for that cause.
    pub cause_text: Option<String>,
    /// Full readings of the code played to the callee.
    pub readings: u32,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of the last change.
    pub updated_at: i64,
    /// When Originate was sent.
    pub dialed_at: Option<i64>,
    /// When the phone started ringing.
    pub ringing_at: Option<i64>,
    /// When the callee answered.
    pub answered_at: Option<i64>,
    /// When the call reached a final status.
    pub ended_at: Option<i64>,
    /// A call still queued at this time (Unix ms) is not dialled but `expired`.
    pub deadline_at: Option<i64>,
    /// Keys the callee pressed during the call, in order (`0-9`, `*`, `#`).
    pub keys: String,
    /// Where this call's status changes are POSTed; `None`: the user's default.
    pub callback_url: Option<String>,
    /// Mode, language and voicemail-safe mode of the call.
    pub options: options::CallOptions,
    /// Enter mode: the callee typed the code right. Only the call flow sets
    /// it, after comparing; always false in read mode.
    pub verified: bool,
    /// Enter mode: codes the callee typed (an empty entry is none). The
    /// digits themselves are never kept.
    pub attempts: u32,
    /// The `[[asterisk]]` server it was originated on; `None` before it is
    /// dialled (and for calls dialled before there were several).
    pub asterisk: Option<String>,
}

impl Call {
    /// How long the phone rang: from `Ringing` to answer or, unanswered, to
    /// the end. `None` while ringing or when it never rang.
    pub fn ring_ms(&self) -> Option<i64> {
        let from = self.ringing_at?;
        Some(self.answered_at.or(self.ended_at)? - from)
    }

    /// How long the call was connected: from answer to the end.
    pub fn talk_ms(&self) -> Option<i64> {
        Some(self.ended_at? - self.answered_at?)
    }

    /// The call as `voice_otp_calls_ended_total` and the ring and talk
    /// histograms count it, once it is final. A stored reason this build
    /// does not know (a hand-edited row) is counted as `other`, so labels
    /// stay a fixed set.
    pub fn ended(&self) -> CallEnded {
        let reason = match &self.reason {
            None => "",
            Some(r) => FailReason::parse(r).map_or("other", FailReason::as_str),
        };
        let secs = |ms: i64| ms.max(0) as f64 / 1000.0;
        CallEnded {
            status: self.status.as_str(),
            reason,
            mode: self.options.mode.as_str(),
            ring_secs: self.ring_ms().map(secs),
            answered: self.answered_at.is_some(),
            talk_secs: self.talk_ms().map(secs),
        }
    }
}

/// Creates every series a call's end can count in `metrics` at 0: each
/// final status with its reasons, each mode's talk time.
pub fn declare_call_ends(metrics: &Metrics) {
    for status in CallStatus::ALL.into_iter().filter(|s| s.is_final()) {
        if status == CallStatus::Failed {
            for reason in FailReason::ALL {
                metrics.declare_call_end(status.as_str(), reason.as_str());
            }
        } else {
            metrics.declare_call_end(status.as_str(), "");
        }
    }
    for mode in options::CallMode::ALL {
        metrics.declare_mode(mode.as_str());
    }
}

/// Milliseconds since the Unix epoch (see [`crate::time`]).
pub use crate::time::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex_and_round_trip() {
        let a = CallId::generate();
        let b = CallId::generate();
        assert_ne!(a, b);
        assert_eq!(CallId::parse(a.as_str()), Some(a));
        assert_eq!(CallId::parse("xyz"), None);
        assert_eq!(CallId::parse(&"A".repeat(32)), None);
    }

    /// Ids sort by creation time, and calls created in the same
    /// millisecond still differ in their 80 random bits.
    #[test]
    fn ids_begin_with_their_time() {
        let t = 1_764_580_000_123;
        let first = CallId::generate_at(t);
        assert!(first.as_str().starts_with(&format!("{t:012x}")), "{first}");
        assert_eq!(CallId::parse(first.as_str()).as_ref(), Some(&first));
        let twin = CallId::generate_at(t);
        assert_ne!(first, twin);
        assert_eq!(first.as_str()[..12], twin.as_str()[..12]);
        let later = CallId::generate_at(t + 1);
        assert!(later.as_str() > first.as_str() && later.as_str() > twin.as_str());
        assert!(CallId::generate().as_str() > later.as_str(), "now is after 2025");
        let random: std::collections::HashSet<String> =
            (0..1000).map(|_| CallId::generate_at(t).as_str()[12..].to_owned()).collect();
        assert_eq!(random.len(), 1000);
    }

    #[test]
    fn causes_map_to_reasons() {
        assert_eq!(FailReason::from_cause(17), FailReason::Busy);
        assert_eq!(FailReason::from_cause(19), FailReason::NoAnswer);
        assert_eq!(FailReason::from_cause(21), FailReason::Rejected);
        assert_eq!(FailReason::from_cause(1), FailReason::InvalidNumber);
        assert_eq!(FailReason::from_cause(34), FailReason::Congestion);
        assert_eq!(FailReason::from_cause(16), FailReason::SystemError);
        assert_eq!(FailReason::from_originate_reason(OriginateReason::NoAnswer), FailReason::NoAnswer);
        assert_eq!(FailReason::from_originate_reason(OriginateReason::Busy), FailReason::Busy);
        assert_eq!(FailReason::from_originate_reason(OriginateReason::Congestion), FailReason::Congestion);
        assert_eq!(FailReason::from_originate_reason(OriginateReason::Failed), FailReason::SystemError);
    }

    fn call(status: CallStatus, reason: Option<&str>, mode: options::CallMode) -> Call {
        Call {
            id: CallId::generate(),
            user_id: None,
            number: "+923001234567".into(),
            code: None,
            status,
            reason: reason.map(str::to_owned),
            detail: None,
            cause: None,
            cause_text: None,
            readings: 0,
            created_at: 1_000,
            updated_at: 1_000,
            dialed_at: None,
            ringing_at: None,
            answered_at: None,
            ended_at: None,
            deadline_at: None,
            keys: String::new(),
            callback_url: None,
            options: options::CallOptions { mode, language: "en".into(), require_keypress: false },
            verified: false,
            attempts: 0,
            asterisk: None,
        }
    }

    #[test]
    fn an_ended_call_is_counted_with_its_ring_and_talk_times() {
        use options::CallMode;
        let mut answered = call(CallStatus::Completed, None, CallMode::Enter);
        (answered.dialed_at, answered.ringing_at, answered.answered_at, answered.ended_at) =
            (Some(1_000), Some(1_500), Some(4_000), Some(22_200));
        assert_eq!(
            answered.ended(),
            CallEnded {
                status: "completed",
                reason: "",
                mode: "enter",
                ring_secs: Some(2.5),
                answered: true,
                talk_secs: Some(18.2)
            }
        );
        let mut busy = call(CallStatus::Failed, Some("busy"), CallMode::Read);
        (busy.dialed_at, busy.ended_at) = (Some(1_000), Some(1_200));
        let end = busy.ended();
        assert_eq!(
            (end.status, end.reason, end.ring_secs, end.answered, end.talk_secs),
            ("failed", "busy", None, false, None)
        );
        let mut rang = call(CallStatus::Failed, Some("no_answer"), CallMode::Read);
        (rang.ringing_at, rang.ended_at) = (Some(2_000), Some(32_000));
        assert_eq!((rang.ended().ring_secs, rang.ended().talk_secs), (Some(30.0), None));
        // A reason this build does not know stays inside the fixed label set.
        assert_eq!(call(CallStatus::Failed, Some("made up"), CallMode::Read).ended().reason, "other");
        for r in FailReason::ALL {
            assert_eq!(FailReason::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn every_final_status_and_reason_has_a_series_from_the_start() {
        let metrics = Metrics::new();
        declare_call_ends(&metrics);
        let text = metrics.render(&crate::metrics::Snapshot::default());
        let series = text.lines().filter(|l| l.starts_with("voice_otp_calls_ended_total{")).count();
        assert_eq!(series, 3 + FailReason::ALL.len(), "{text}");
        for line in [
            "voice_otp_calls_ended_total{status=\"failed\",reason=\"system_error\"} 0",
            "voice_otp_calls_ended_total{status=\"canceled\",reason=\"\"} 0",
            "voice_otp_call_talk_duration_seconds_count{mode=\"enter\"} 0",
            "voice_otp_call_talk_duration_seconds_count{mode=\"read\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        assert!(!text.contains("status=\"queued\""), "only final statuses: {text}");
    }

    #[test]
    fn statuses_round_trip() {
        for s in CallStatus::ALL {
            assert_eq!(CallStatus::parse(s.as_str()), Some(s));
        }
        assert!(CallStatus::Completed.is_final() && CallStatus::Failed.is_final());
        assert!(CallStatus::Expired.is_final() && CallStatus::Canceled.is_final());
        assert!(!CallStatus::Answered.is_final() && !CallStatus::Ringing.is_final());
        assert!(CallStatus::Ringing.is_cancelable() && !CallStatus::Answered.is_cancelable());
    }
}
