//! The event follower: typed AMI events to call status changes, one task
//! per Asterisk server, each reading only its own server's link.
//!
//! `Newstate` Ringing marks a call `ringing`, `OriginateResponse` tells
//! whether it was answered (and if not, why), `Hangup` gives the Q.850
//! cause and frees the trunk slot; `DialEnd` is only logged. Events are
//! matched to calls by the channel's `Uniqueid`, which is the call id the
//! dialler gave as `ChannelId`, and must come from the server the call was
//! placed on. Events of channels that are not ours, of calls not tracked,
//! or of a call tracked on another server (a second Asterisk claiming a
//! channel of that id: a misconfiguration, or a hostile peer) are dropped
//! without touching the database: each costs one parse and one map look-up.
//!
//! `OriginateResponse` and `Hangup` arrive in either order. The Hangup cause
//! tells failures apart (Reason 0 covers most of them), so a failed
//! `OriginateResponse` without a cause yet waits [`HANGUP_WAIT`] for its
//! Hangup before settling for what the Reason alone says. A Hangup of an
//! answered call belongs to its FastAGI session; if none claims the call
//! within [`AGI_GRACE`], the dialplan never reached us and the call fails.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::state::State;
use crate::ami::{ChannelState, Event, Message, OriginateReason};
use crate::call::{CallId, CallStatus, FailReason};
use crate::store::CallEnd;

/// How long after a `Hangup` event an answered call may still be claimed by
/// its FastAGI session before it is declared lost.
const AGI_GRACE: Duration = Duration::from_secs(3);

/// How long a failed `OriginateResponse` waits for its `Hangup` (and the
/// cause in it) before the call fails on the Reason alone.
const HANGUP_WAIT: Duration = Duration::from_secs(2);

/// The follower of server `server`'s `events`, until `shutdown` or the end
/// of the event stream.
pub(super) async fn run(
    state: Arc<State>,
    server: usize,
    mut events: broadcast::Receiver<Arc<Message>>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => ev,
        };
        match event {
            Ok(msg) => on_message(&state, server, &msg).await,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    server = state.server_name(server),
                    missed = n,
                    "AMI events dropped: event follower fell behind"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn on_message(state: &Arc<State>, server: usize, msg: &Message) {
    let Some(event) = Event::parse(msg) else { return };
    let Some(id) = event.uniqueid().and_then(CallId::parse) else { return };
    if let Some(owner) = state.tracked_on(&id)
        && owner != server
    {
        tracing::debug!(
            call_id = %id,
            from = state.server_name(server),
            placed_on = state.server_name(owner),
            "AMI event of another server's call ignored"
        );
        return;
    }
    let span = tracing::info_span!("call", call_id = %id);
    on_event(state, server, event, id).instrument(span).await;
}

async fn on_event(state: &Arc<State>, server: usize, event: Event<'_>, id: CallId) {
    match event {
        Event::Newstate(e) => {
            // On the outbound leg Ringing means the far end sent 180 Ringing.
            if e.state != ChannelState::Ringing || state.with_tracked(&id, server, |_| ()).is_none() {
                return;
            }
            let mark = id.clone();
            match state.db.run(move |s| s.mark_ringing(&mark)).await {
                Ok(true) => tracing::info!(call_id = %id, "ringing"),
                Ok(false) => {}
                Err(e) => tracing::error!(call_id = %id, error = %e, "could not mark call ringing"),
            }
        }
        Event::OriginateResponse(e) => {
            let Some(cause) = state.with_tracked(&id, server, |t| {
                t.responded = true;
                t.cause
            }) else {
                return;
            };
            if e.reason == OriginateReason::Answered {
                let mark = id.clone();
                if let Err(e) = state.db.run(move |s| s.mark_answered(&mark)).await {
                    tracing::error!(call_id = %id, error = %e, "could not mark call answered");
                }
                tracing::info!(call_id = %id, "answered");
            } else if let Some(c) = cause {
                state.finish(&id, CallEnd::failed(FailReason::from_cause(c), None)).await;
            } else {
                // The Hangup with the cause usually follows within
                // milliseconds and settles the call itself; this is the
                // fallback if it never comes.
                let state = state.clone();
                let why = FailReason::from_originate_reason(e.reason);
                tokio::spawn(
                    async move {
                        tokio::time::sleep(HANGUP_WAIT).await;
                        state.finish(&id, CallEnd::failed(why, None)).await;
                    }
                    .in_current_span(),
                );
            }
        }
        Event::Hangup(e) => {
            let Some(()) = state.with_tracked(&id, server, |t| {
                t.hung_up = true;
                t.cause = e.cause;
            }) else {
                return;
            };
            if let Some(cause) = e.cause {
                let text = e.cause_text.unwrap_or("").to_owned();
                let rec = id.clone();
                if let Err(e) = state.db.run(move |s| s.record_cause(&rec, cause, &text)).await {
                    tracing::error!(call_id = %id, error = %e, "could not record hangup cause");
                }
            }
            on_hangup(state, id, e.cause).await;
            // A trunk slot came free.
            state.wake.notify_one();
        }
        Event::DialEnd(e) => {
            if state.with_tracked(&id, server, |_| ()).is_some() {
                tracing::debug!(call_id = %id, dial_status = %e.status, "dial ended");
            }
        }
    }
}

/// The channel is gone. Unanswered calls fail by their cause; answered
/// ones belong to their FastAGI session - unless none ever came.
async fn on_hangup(state: &Arc<State>, id: CallId, cause: Option<u16>) {
    let lookup = id.clone();
    let Ok(Some(call)) = state.db.run(move |s| s.call(&lookup)).await else { return };
    match call.status {
        CallStatus::Queued | CallStatus::Dialing | CallStatus::Ringing => {
            let why = cause.map(FailReason::from_cause).unwrap_or(FailReason::SystemError);
            state.finish(&id, CallEnd::failed(why, None)).await;
        }
        CallStatus::Answered => {
            let state = state.clone();
            tokio::spawn(
                async move {
                    tokio::time::sleep(AGI_GRACE).await;
                    if state.live.contains(&id) {
                        return;
                    }
                    let detail = "hung up without a FastAGI session (check the dialplan)".to_owned();
                    state.finish(&id, CallEnd::failed(FailReason::SystemError, Some(detail))).await;
                }
                .in_current_span(),
            );
        }
        CallStatus::Completed | CallStatus::Failed | CallStatus::Expired | CallStatus::Canceled => {}
    }
}
