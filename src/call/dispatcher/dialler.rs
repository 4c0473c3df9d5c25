//! The dialler: queued calls to `Originate`, calls in flight checked
//! against Asterisk's channels, overdue calls expired.
//!
//! The queue is the database: this task takes the oldest `queued` call
//! whenever the AMI link is up and fewer than `[queue] max_concurrent_calls`
//! calls are in flight, and sends `Originate`, marking the call `dialing`
//! first, so no crash, restart or reconnect can ever lead to a second
//! Originate of the same call. The call is tracked before `dialing` is
//! committed, so its channel's events are followed from the moment anyone
//! can see it dialing. It goes back to the queue only when the client proves
//! the Originate was never written ([`AmiError::NotConnected`]). Each dial
//! carries a fresh FastAGI token (only its hash is stored) and, on PJSIP
//! trunks, the call id as a SIP header. A call still queued after its
//! deadline is `expired` instead. While Asterisk is down calls simply wait.
//!
//! Whenever the link (re)connects, and every [`RECONCILE_EVERY`] after that,
//! the dialler asks Asterisk (`Status`) about each call in flight that no
//! live FastAGI session holds: a channel that is gone - Asterisk restarted,
//! the daemon was killed, events were lost with the link - ends the call as
//! `failed`/`system_error`; it is never dialled again. Only Asterisk's "no
//! such channel" means gone: any other refusal (`Permission denied`, ...)
//! leaves the call as it is, logged, to be asked about again next time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::state::State;
use crate::ami::{Action, AmiError, ChannelStatus, LinkState, Originate};
use crate::call::{Call, CallStatus, FailReason, now_ms, token};
use crate::metrics::CallEnded;
use crate::phone::PhoneNumber;
use crate::secret::Secret;
use crate::store::CallEnd;

/// The channel variable that tells the dialplan where our FastAGI server is.
pub const AGI_URL_VARIABLE: &str = "VOICE_OTP_AGI";

/// How often the dialler looks at the queue without being woken (deadlines,
/// calls finished without an event).
const DIAL_TICK: Duration = Duration::from_secs(1);

/// How often calls in flight are checked against Asterisk's channels.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// A call originated less than this long ago may not have a channel yet;
/// the periodic check leaves it alone.
const FRESH_CALL: Duration = Duration::from_secs(5);

/// The dialler's task, until `shutdown`.
pub(super) async fn run(state: Arc<State>, shutdown: CancellationToken) {
    let mut link = state.ami.link_state();
    // Reconcile on every (re)connection before dialling anything new.
    let mut reconciled_at: Option<Instant> = None;
    // Expiry is a scan of the queue: once per tick, not on every wake-up
    // (there is one per call queued or ended).
    let mut expired_at: Option<Instant> = None;
    let mut free = FreeSlots::default();
    loop {
        let connected = *link.borrow_and_update() == LinkState::Connected;
        if !connected {
            reconciled_at = None;
        } else if reconciled_at.is_none_or(|t| t.elapsed() >= RECONCILE_EVERY) {
            let after_connect = reconciled_at.is_none();
            reconcile(&state, after_connect).await;
            reconciled_at = Some(Instant::now());
        }
        if expired_at.is_none_or(|t| t.elapsed() >= DIAL_TICK) {
            expire_overdue(&state).await;
            expired_at = Some(Instant::now());
        }
        if connected {
            dial_ready(&state, &mut free).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = state.wake.notified() => {}
            changed = link.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(DIAL_TICK) => {}
        }
    }
}

/// Free trunk slots as the dial loop knows them, kept between passes.
///
/// Counting the calls in flight is a scan of them, so it is done only when
/// the estimate runs out: every Originate takes one slot off it, and calls
/// that end are not added back (only the dialler puts calls in flight, so
/// the estimate can only be too low, never let more than
/// `max_concurrent_calls` out). When it reaches 0 with calls waiting, a
/// count - of at most `max_concurrent_calls` rows - finds the freed slots.
#[derive(Default)]
struct FreeSlots(Option<u64>);

/// What the queue holds for the dialler.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per dial and moved, never stored: boxing would only add an allocation"
)]
enum Next {
    /// Nothing waits.
    Empty,
    /// Calls wait but every trunk slot is taken.
    Full,
    /// The oldest waiting call, now marked `dialing`, and the free slots
    /// counting it.
    Call(Call, u64),
    /// The call moved on between the two reads (cannot happen with one
    /// database thread, but costs nothing to handle): look again.
    Moved,
}

/// Dials queued calls, oldest first, while trunk slots are free.
async fn dial_ready(state: &Arc<State>, free: &mut FreeSlots) {
    let max = u64::from(state.config.queue.max_concurrent_calls);
    loop {
        // One database trip: the oldest queued call (deadlines already
        // filtered out), a free slot for it, its row, and the mark
        // `dialing`. The queue is looked at first: every call that ends
        // wakes this loop, and most often nothing waits.
        //
        // Marked before the Originate is written: if we die in between, the
        // call is `dialing` without an Originate, which recovery can see -
        // never the reverse.
        let known = free.0.filter(|&n| n > 0);
        let tracker = state.clone();
        // A fresh token per dial: a call requeued after a failed write gets
        // a new one, and the old one is worth nothing.
        let (token, token_hash) = token::generate();
        let next = state
            .db
            .run(move |s| {
                let Some(id) = s.next_queued(now_ms())? else {
                    return Ok(Next::Empty);
                };
                let slots = match known {
                    Some(n) => n,
                    None => max.saturating_sub(s.in_flight_count()?),
                };
                if slots == 0 {
                    return Ok(Next::Full);
                }
                let Some(call) = s.call(&id)? else {
                    return Ok(Next::Moved);
                };
                // Tracked before `dialing` is committed: once anyone can see
                // the call dialing, its channel's events are followed.
                tracker.track(&id);
                Ok(if s.mark_dialing_with(&id, &token_hash)? { Next::Call(call, slots) } else { Next::Moved })
            })
            .await;
        let call = match next {
            Ok(Next::Call(call, slots)) => {
                free.0 = Some(slots - 1);
                call
            }
            Ok(Next::Full) => {
                free.0 = Some(0);
                return;
            }
            Ok(Next::Empty) => return,
            Ok(Next::Moved) => continue,
            Err(e) => {
                tracing::error!(error = %e, "could not read the call queue");
                return;
            }
        };
        let span = tracing::info_span!("call", call_id = %call.id);
        if !originate(state, call, token).instrument(span).await {
            return;
        }
    }
}

async fn expire_overdue(state: &State) {
    match state.db.run(|s| s.expire_overdue(now_ms())).await {
        Ok(ids) => {
            for id in ids {
                state.metrics.call_ended(CallEnded::undialled(CallStatus::Expired.as_str()));
                tracing::info!(call_id = %id, "call expired before it could be dialled");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not expire overdue calls"),
    }
}

/// Checks every call in flight that no FastAGI session of ours holds
/// against Asterisk's channels; those whose channel is gone fail. Right
/// after a (re)connection every such call is checked (events may have been
/// lost with the link, or a previous daemon left them); otherwise only those
/// older than [`FRESH_CALL`].
async fn reconcile(state: &State, after_connect: bool) {
    let calls = match state.db.run(|s| s.in_flight()).await {
        Ok(calls) => calls,
        Err(e) => {
            tracing::error!(error = %e, "could not list calls in flight");
            return;
        }
    };
    let fresh_after = now_ms() - FRESH_CALL.as_millis() as i64;
    for call in calls {
        if state.live.contains(&call.id) {
            continue;
        }
        if !after_connect && call.dialed_at.is_some_and(|t| t > fresh_after) {
            continue;
        }
        let span = tracing::info_span!("call", call_id = %call.id);
        // `Status` accepts a Uniqueid where a channel name goes.
        match state.ami.channel_status(call.id.as_str()).instrument(span.clone()).await {
            Ok(ChannelStatus::Exists) => state.track(&call.id),
            Ok(ChannelStatus::Gone) => {
                let detail = format!(
                    "Asterisk has no channel for this {} call any more (Asterisk restarted, or the daemon or its AMI link was down when it ended); not dialled again",
                    call.status
                );
                tracing::warn!(call_id = %call.id, status = %call.status, "call lost: no channel in Asterisk");
                state.finish(&call.id, CallEnd::failed(FailReason::SystemError, Some(detail))).instrument(span).await;
            }
            Err(AmiError::Rejected(answer)) => {
                // Asterisk would not say (a manager user without any of the
                // write classes `Status` needs - system, call, reporting -
                // say): the channel may well be alive, so its events are
                // followed as if it were.
                tracing::warn!(
                    call_id = %call.id,
                    %answer,
                    "Asterisk refused to say whether the call's channel exists; call left as it is, asked again at the next check"
                );
                state.track(&call.id);
            }
            // The link failed mid-check: the next connection checks again.
            Err(e) => {
                tracing::warn!(call_id = %call.id, error = %e, "could not ask Asterisk about a call in flight");
                return;
            }
        }
    }
}

/// Sends the Originate for a call just marked `dialing`, with the FastAGI
/// `token` whose hash was stored with that mark. False when the dialler
/// should stop for now (the AMI link is down).
async fn originate(state: &State, call: Call, token: Secret) -> bool {
    let id = call.id.clone();
    let dial = &state.config.dial;
    // The stored number was validated on the way in; parsing the E.164 form
    // again cannot fail unless the row was edited by hand.
    let number = match PhoneNumber::parse(&call.number, state.config.phone.default_country) {
        Ok(n) => n,
        Err(e) => {
            state.finish(&id, CallEnd::failed(FailReason::SystemError, Some(format!("stored number {e}")))).await;
            return true;
        }
    };
    let channel = dial.channel.render(&number);
    let mut variables = vec![
        (AGI_URL_VARIABLE.to_owned(), state.agi_url.clone()),
        (token::TOKEN_VARIABLE.to_owned(), token.expose().to_owned()),
    ];
    if !dial.call_id_header.is_empty() && channel.starts_with("PJSIP/") {
        variables.push((format!("PJSIP_HEADER(add,{})", dial.call_id_header), id.as_str().to_owned()));
    }
    let action = Action::originate(Originate {
        channel,
        context: dial.context.clone(),
        exten: dial.exten.clone(),
        priority: 1,
        timeout_ms: u64::from(dial.ring_timeout_secs) * 1000,
        caller_id: (!dial.caller_id.is_empty()).then(|| dial.caller_id.clone()),
        channel_id: id.as_str().to_owned(),
        variables,
    });
    let action = match action {
        Ok(a) => a,
        Err(e) => {
            state.finish(&id, CallEnd::failed(FailReason::SystemError, Some(format!("originate: {e}")))).await;
            return true;
        }
    };
    tracing::info!(call_id = %id, "originating");
    match state.ami.send(action).await {
        Ok(_) => true,
        Err(AmiError::NotConnected) => {
            // Provably never written: back in the queue, first in line, and
            // no events of this dial will come.
            state.with_tracked(&id, |t| {
                t.responded = true;
                t.hung_up = true;
            });
            let back = id.clone();
            if let Err(e) = state.db.run(move |s| s.requeue(&back)).await {
                tracing::error!(call_id = %id, error = %e, "could not put the call back in the queue");
            }
            tracing::info!(call_id = %id, "AMI link down before the Originate was sent; call queued again");
            false
        }
        Err(AmiError::Rejected(why)) => {
            // No OriginateResponse follows a refused Originate.
            state.with_tracked(&id, |t| t.responded = true);
            let detail = format!("Originate refused by Asterisk: {why}");
            state.finish(&id, CallEnd::failed(FailReason::SystemError, Some(detail))).await;
            true
        }
        Err(e) => {
            // Written, outcome unknown (link lost, no answer in time): the
            // call stays in flight; its events or the next reconciliation
            // settle it. Never sent again.
            tracing::warn!(call_id = %id, error = %e, "Originate sent but not confirmed; waiting for Asterisk's word");
            state.ami.is_connected()
        }
    }
}
