//! An answered call arrives on FastAGI: prove it is our channel, read the
//! code (or have the callee type it), record how it went.
//!
//! The channel's `agi_uniqueid` names the call (we set it as `ChannelId` on
//! Originate), but a call id is no secret and the FastAGI port is open to
//! every local process. So before anything is played the session must
//! answer `GET VARIABLE VOICE_OTP_TOKEN` with the token this dial's
//! Originate carried ([`super::token`]), and the call must be in flight
//! (dialled, not final). A session that fails - no call id of ours, no or a
//! wrong token, a call never dialled or already over, a second session for
//! a call - is hung up with nothing played, logged with the peer address
//! (the server's span) and counted in `voice_otp_agi_sessions_refused_total`.
//! The real call is untouched by such a session: it keeps its status and
//! its code, and when it is answered it hears the code.
//!
//! A session that is served first sets the channel variable
//! [`REACHED_VARIABLE`], before anything is played: the dialplan's FastAGI
//! failover (asterisk-conf/extensions.conf) tries the next daemon's address
//! only when it is absent. `AGISTATUS=FAILURE` alone cannot tell "no
//! daemon took the call" from "a daemon read the code, then a command
//! failed", and the second must never be read again by another daemon. The
//! mark comes after the token question, not before: a daemon that was
//! reached but refused the session (impostor, call not ours, the database
//! down) takes no call - and hangs the channel up, which ends the dialplan
//! anyway.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::dispatcher::{Claim, LiveCalls};
use super::flow::{self, FlowEnd, Verdict};
use super::options::{CallMode, CallOptions};
use super::token::{TOKEN_VARIABLE, TokenHash};
use super::{Call, CallId, CallStatus, FailReason};
use crate::agi::Admission as Step;
use crate::agi::playback::Playback;
use crate::agi::{AgiChannel, AgiSession};
use crate::config::CallConfig;
use crate::metrics::{Metrics, RefusedSession};
use crate::store::{CallEnd, Db, Store, StoreError, TokenCheck};

/// The channel variable a served session sets before the flow starts:
/// "a daemon took this call", for the dialplan's failover.
pub const REACHED_VARIABLE: &str = "VOICE_OTP_AGI_REACHED";

/// How long the peer has to answer `GET VARIABLE` with the token. Asterisk
/// answers at once; an impostor that stalls must not hold a session slot.
const TOKEN_WAIT: Duration = Duration::from_secs(5);

/// How long a refused session's hang-up waits for its answer.
const REFUSED_HANG_UP_WAIT: Duration = Duration::from_secs(2);

/// What a FastAGI session needs from the daemon.
#[derive(Clone)]
pub struct OtpAgi {
    db: Db,
    live: LiveCalls,
    call: Arc<CallConfig>,
    metrics: Arc<Metrics>,
}

/// Why a session was served or not, decided in one database trip.
enum Admission {
    /// Token right, call in flight, claimed for this session, marked
    /// answered.
    Serve(Box<Call>, Claim),
    /// Refused: hang up, play nothing.
    Refuse(RefusedSession),
}

impl OtpAgi {
    /// Builds the handler.
    pub fn new(db: Db, live: LiveCalls, call: CallConfig, metrics: Arc<Metrics>) -> OtpAgi {
        OtpAgi { db, live, call: Arc::new(call), metrics }
    }

    /// Runs one FastAGI session to its end.
    pub async fn handle<S>(&self, mut session: AgiSession<S>)
    where
        AgiSession<S>: AgiChannel,
    {
        let Some(id) = session.request().uniqueid().and_then(CallId::parse) else {
            self.refuse(&mut session, RefusedSession::NotOurs).await;
            return;
        };
        // Every log line of the session, the flow's included, names the call.
        let span = tracing::info_span!("call", call_id = %id);
        self.run(&id, &mut session).instrument(span).await;
    }

    async fn run<C: AgiChannel>(&self, id: &CallId, session: &mut C) {
        let presented = match read_token(session).await {
            Ok(Some(token)) => TokenHash::of(&token),
            Ok(None) => {
                self.refuse(session, RefusedSession::NoToken).await;
                return;
            }
            Err(why) => {
                // Stalled or broken: the stream cannot be trusted for a HANGUP.
                tracing::warn!(call_id = %id, %why, "FastAGI session refused: no token read");
                self.metrics.agi_session_refused(RefusedSession::NoToken);
                return;
            }
        };
        // Its proof is in: not to be closed for room while it is checked.
        if !session.admission(Step::Vouching) {
            tracing::debug!(call_id = %id, "FastAGI session closed for room before its token was checked");
            return;
        }
        let (lookup, live) = (id.clone(), self.live.clone());
        // One trip: the token is checked before the call is claimed, so a
        // session with a wrong token never holds the claim that the real
        // channel's session needs.
        let admitted = self
            .db
            .run(move |s| {
                let status = match s.check_agi_token(&lookup, &presented)? {
                    TokenCheck::Valid(status) => status,
                    TokenCheck::UnknownCall => return Ok(Admission::Refuse(RefusedSession::UnknownCall)),
                    TokenCheck::NotInFlight(_) => return Ok(Admission::Refuse(RefusedSession::NotInFlight)),
                    TokenCheck::WrongToken => return Ok(Admission::Refuse(RefusedSession::WrongToken)),
                };
                let Some(claim) = live.claim(&lookup) else {
                    return Ok(Admission::Refuse(RefusedSession::Duplicate));
                };
                if status != CallStatus::Answered
                    && let Err(e) = s.mark_answered(&lookup)
                {
                    // Reading the code matters more than the mark.
                    tracing::error!(call_id = %lookup, error = %e, "could not mark call answered");
                }
                match s.call(&lookup)? {
                    Some(call) => Ok(Admission::Serve(Box::new(call), claim)),
                    None => Ok(Admission::Refuse(RefusedSession::UnknownCall)),
                }
            })
            .await;
        let (call, claim) = match admitted {
            Ok(Admission::Serve(call, claim)) => {
                // Its token is the call's: no flood of connections may close
                // it now (vouching, it could not have been closed meanwhile).
                session.admission(Step::Admitted);
                (call, claim)
            }
            Ok(Admission::Refuse(why)) => {
                session.admission(Step::Refused);
                self.refuse(session, why).await;
                return;
            }
            Err(e) => {
                tracing::error!(call_id = %id, error = %e, "could not load call; hanging up");
                session.admission(Step::Refused);
                hang_up(session).await;
                return;
            }
        };
        if let Err(e) = session.set_channel_variable(REACHED_VARIABLE, "1").await {
            // The flow finds out the same way and ends the call as it should.
            tracing::warn!(call_id = %id, error = %e, "could not mark the channel as taken");
        }
        self.serve(id, *call, session).await;
        drop(claim);
    }

    async fn serve<C: AgiChannel>(&self, id: &CallId, call: Call, session: &mut C) {
        let Some(code) = call.code else {
            // In flight always has its code; a hand-edited row may not.
            tracing::error!(call_id = %id, status = %call.status, "call in flight without a code; hanging up");
            hang_up(session).await;
            return;
        };
        if call.options.mode == CallMode::Enter {
            self.serve_entry(id, code.expose(), &call.options, session).await;
            return;
        }
        // Debug, not info: the "call ended" line says all of it, and a line
        // more per session was 1-2% of a FastAGI session's CPU.
        tracing::debug!(call_id = %id, language = %call.options.language, require_keypress = call.options.require_keypress, "reading code");
        let outcome = flow::read_code(session, code.expose(), &self.call, &call.options).await;
        let end = match (&outcome.end, outcome.readings) {
            (_, n) if n >= 1 => {
                CallEnd { status: CallStatus::Completed, reason: None, detail: None, readings: Some(n) }
            }
            (FlowEnd::NoKeypress, _) => CallEnd { readings: Some(0), ..CallEnd::failed(FailReason::NoKeypress, None) },
            (FlowEnd::Error(e), _) => CallEnd {
                readings: Some(0),
                ..CallEnd::failed(FailReason::SystemError, Some(format!("call flow: {e}")))
            },
            _ => CallEnd { readings: Some(0), ..CallEnd::failed(FailReason::HangupBeforeCode, None) },
        };
        let (status, readings) = (end.status, outcome.readings);
        let (finish, keys) = (id.clone(), outcome.keys.clone());
        // The keys and the end in one trip to the database thread; the end
        // is recorded even if the keys could not be.
        let recorded = self
            .db
            .run(move |s| {
                let keyed = if keys.is_empty() { Ok(()) } else { s.record_keys(&finish, &keys) };
                Ok((keyed, ended(s, &finish, |s| s.finish_call(&finish, &end))))
            })
            .await;
        let (keyed, finished) = recorded.unwrap_or_else(|e| (Ok(()), Err(e)));
        if let Err(e) = keyed {
            tracing::error!(call_id = %id, error = %e, "could not record the keys pressed");
        }
        match finished {
            Ok(ended) => {
                self.count(ended);
                tracing::info!(call_id = %id, %status, readings, keys = %outcome.keys, end = ?outcome.end,
                    language = %call.options.language, require_keypress = call.options.require_keypress, "call ended")
            }
            Err(e) => tracing::error!(call_id = %id, error = %e, "could not record call end"),
        }
        if outcome.end != FlowEnd::HungUp {
            hang_up(session).await;
        }
    }

    /// Enter mode: the callee types the code. What they typed stays in the
    /// flow; only the verdict and the number of codes typed are kept.
    async fn serve_entry<C: AgiChannel>(&self, id: &CallId, code: &str, options: &CallOptions, session: &mut C) {
        tracing::debug!(call_id = %id, language = %options.language, "taking the code on the keypad");
        let outcome = flow::take_code(session, code, &self.call, options).await;
        let failed = |reason| CallEnd { readings: Some(0), ..CallEnd::failed(reason, None) };
        let end = match (&outcome.verdict, &outcome.end) {
            (Some(Verdict::Verified), _) => {
                CallEnd { status: CallStatus::Completed, reason: None, detail: None, readings: Some(0) }
            }
            (Some(Verdict::WrongCode), _) => failed(FailReason::WrongCode),
            (Some(Verdict::NoInput), _) => failed(FailReason::NoInput),
            (None, FlowEnd::Error(e)) => CallEnd {
                readings: Some(0),
                ..CallEnd::failed(FailReason::SystemError, Some(format!("call flow: {e}")))
            },
            (None, _) => failed(FailReason::HangupBeforeCode),
        };
        let (status, attempts) = (end.status, outcome.attempts);
        let verified = outcome.verdict == Some(Verdict::Verified);
        let finish = id.clone();
        match self.db.run(move |s| ended(s, &finish, |s| s.finish_entry(&finish, &end, attempts, verified))).await {
            Ok(ended) => {
                self.count(ended);
                tracing::info!(call_id = %id, %status, attempts, verdict = ?outcome.verdict, end = ?outcome.end,
                    language = %options.language, mode = "enter", "call ended")
            }
            Err(e) => tracing::error!(call_id = %id, error = %e, "could not record call end"),
        }
        if outcome.end != FlowEnd::HungUp {
            hang_up(session).await;
        }
    }

    /// Counts a call this session ended; `None` (something else ended it
    /// first, a cancel or a lost channel) was counted there.
    fn count(&self, ended: Option<Call>) {
        if let Some(call) = ended {
            self.metrics.call_ended(call.ended());
        }
    }

    /// Hangs up a session that may not be served, with nothing played -
    /// without waiting long for the answer: a peer that never answers must
    /// not keep the connection (Asterisk answers at once).
    async fn refuse<C: AgiChannel>(&self, session: &mut C, why: RefusedSession) {
        tracing::warn!(reason = why.as_str(), "FastAGI session refused; hanging up with nothing played");
        self.metrics.agi_session_refused(why);
        let _ = tokio::time::timeout(REFUSED_HANG_UP_WAIT, hang_up(session)).await;
    }
}

/// Runs `finish` (a move to a final status); when it moved the call, reads
/// the ended row back in the same database trip, for the metrics.
fn ended(
    s: &mut Store,
    id: &CallId,
    finish: impl FnOnce(&mut Store) -> Result<bool, StoreError>,
) -> Result<Option<Call>, StoreError> {
    if finish(s)? { s.call(id) } else { Ok(None) }
}

/// The token the channel carries, if any. `Err` when the peer did not
/// answer in time or the session broke.
async fn read_token<C: AgiChannel>(session: &mut C) -> Result<Option<String>, String> {
    match tokio::time::timeout(TOKEN_WAIT, session.channel_variable(TOKEN_VARIABLE)).await {
        Err(_) => Err(format!("no answer to GET VARIABLE within {TOKEN_WAIT:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(token)) => Ok(token),
    }
}

/// Ends the call: cause 16, normal clearing.
async fn hang_up<C: AgiChannel>(session: &mut C) {
    session.hang_up(16).await;
}

impl crate::agi::AgiHandler for OtpAgi {
    async fn handle(&self, session: AgiSession) {
        OtpAgi::handle(self, session).await;
    }
}
