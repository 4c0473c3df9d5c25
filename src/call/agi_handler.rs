//! An answered call arrives on FastAGI: find it, read the code, record how
//! it went.
//!
//! The channel's `agi_uniqueid` is the call id (we set it as `ChannelId` on
//! Originate). A connection naming no live call of ours - unknown id, a call
//! already finished, a second session for the same call - is hung up with
//! nothing played.

use std::sync::Arc;

use tracing::Instrument;

use super::dispatcher::LiveCalls;
use super::flow::{self, FlowEnd};
use super::{CallId, CallStatus, FailReason};
use crate::agi::{AgiChannel, AgiSession, Command};
use crate::config::CallConfig;
use crate::store::{CallEnd, Db};

/// What a FastAGI session needs from the daemon.
#[derive(Clone)]
pub struct OtpAgi {
    db: Db,
    live: LiveCalls,
    call: Arc<CallConfig>,
}

impl OtpAgi {
    /// Builds the handler.
    pub fn new(db: Db, live: LiveCalls, call: CallConfig) -> OtpAgi {
        OtpAgi { db, live, call: Arc::new(call) }
    }

    /// Runs one FastAGI session to its end.
    pub async fn handle<S>(&self, mut session: AgiSession<S>)
    where
        AgiSession<S>: AgiChannel,
    {
        let Some(id) = session.request().uniqueid().and_then(CallId::parse) else {
            tracing::warn!("FastAGI session without a call id of ours; hanging up");
            hang_up(&mut session).await;
            return;
        };
        if !self.live.claim(&id) {
            tracing::warn!(call_id = %id, "second FastAGI session for a call; hanging up");
            hang_up(&mut session).await;
            return;
        }
        // Every log line of the session, the flow's included, names the call.
        let span = tracing::info_span!("call", call_id = %id);
        self.run_claimed(&id, &mut session).instrument(span).await;
        self.live.release(&id);
    }

    async fn run_claimed<C: AgiChannel>(&self, id: &CallId, session: &mut C) {
        // One trip to the database: load the call and, if it is still
        // waiting to be answered, mark it answered.
        let lookup = id.clone();
        let loaded = self
            .db
            .run(move |s| {
                let call = s.call(&lookup)?;
                let waiting = call
                    .as_ref()
                    .is_some_and(|c| matches!(c.status, CallStatus::Queued | CallStatus::Dialing) && c.code.is_some());
                let marked = if waiting { s.mark_answered(&lookup).map(|_| ()) } else { Ok(()) };
                Ok((call, marked))
            })
            .await;
        let call = match loaded {
            Ok((Some(call), marked)) => {
                if let Err(e) = marked {
                    tracing::error!(call_id = %id, error = %e, "could not mark call answered");
                }
                call
            }
            Ok((None, _)) => {
                tracing::warn!(call_id = %id, "FastAGI session for an unknown call; hanging up");
                hang_up(session).await;
                return;
            }
            Err(e) => {
                tracing::error!(call_id = %id, error = %e, "could not load call; hanging up");
                hang_up(session).await;
                return;
            }
        };
        let code = match (call.status, call.code) {
            (CallStatus::Queued | CallStatus::Dialing | CallStatus::Ringing | CallStatus::Answered, Some(code)) => code,
            _ => {
                tracing::warn!(call_id = %id, status = %call.status, "FastAGI session for a finished call; hanging up");
                hang_up(session).await;
                return;
            }
        };
        tracing::info!(call_id = %id, language = %call.options.language, require_keypress = call.options.require_keypress, "reading code");
        let outcome = flow::read_code(session, &code, &self.call, &call.options).await;
        if !outcome.keys.is_empty() {
            let (keyed, keys) = (id.clone(), outcome.keys.clone());
            if let Err(e) = self.db.run(move |s| s.record_keys(&keyed, &keys)).await {
                tracing::error!(call_id = %id, error = %e, "could not record the keys pressed");
            }
        }
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
        let finish = id.clone();
        match self.db.run(move |s| s.finish_call(&finish, &end)).await {
            Ok(_) => {
                tracing::info!(call_id = %id, %status, readings, keys = %outcome.keys, end = ?outcome.end, "call ended")
            }
            Err(e) => tracing::error!(call_id = %id, error = %e, "could not record call end"),
        }
        if outcome.end != FlowEnd::HungUp {
            hang_up(session).await;
        }
    }
}

async fn hang_up<C: AgiChannel>(session: &mut C) {
    // The channel may be gone already; nothing to do about an error here.
    let _ = session.run(Command::Hangup).await;
}

impl crate::agi::AgiHandler for OtpAgi {
    async fn handle(&self, session: AgiSession) {
        OtpAgi::handle(self, session).await;
    }
}
