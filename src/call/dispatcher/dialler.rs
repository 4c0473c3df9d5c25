//! The dialler: queued calls to `Originate` on one of the Asterisk servers,
//! calls in flight checked against their server's channels, overdue calls
//! expired.
//!
//! The queue is the database: this task takes the oldest `queued` call
//! whenever a server can take it - logged in, fewer than its
//! `max_concurrent_calls` in flight, its pacing (`max_calls_per_second`)
//! letting an Originate through - picks one such server by weight
//! ([`super::select`]) and sends `Originate` there, marking the call
//! `dialing` on that server first, so no crash, restart or reconnect can
//! ever lead to a second Originate of the same call. The call is tracked
//! (on that server) before `dialing` is committed, so its channel's events
//! are followed from the moment anyone can see it dialing. It goes back to
//! the queue only when the client proves the Originate was never written
//! ([`AmiError::NotConnected`]); the next turn places it on another server
//! if that one is down. Each dial carries a fresh FastAGI token (only its
//! hash is stored), the FastAGI URLs to try and, on PJSIP trunks, the call
//! id as a SIP header. A call still queued after its deadline is `expired`
//! instead. While every server is down calls simply wait.
//!
//! Per dial the dialler does one database trip and one pass over the
//! servers (a handful); it counts a server's calls in flight only when its
//! estimate of free slots runs out ([`FreeSlots`]).
//!
//! Whenever a server's link (re)connects, and every [`RECONCILE_EVERY`]
//! after that, the dialler asks that server (`Status`) about each call in
//! flight on it that no live FastAGI session holds: a channel that is gone
//! (Asterisk restarted, the daemon was killed, events were lost with the
//! link) ends the call as `failed`/`system_error`; it is never dialled
//! again. Only Asterisk's "no such channel" means gone: any other refusal
//! (`Permission denied`, ...) leaves the call as it is, logged, to be asked
//! about again next time. Calls that name no server (dialled before there
//! were several) are asked about on the first configured server.
//!
//! A server that cannot be asked (link down, or no longer configured) has
//! its calls in flight looked at every [`RECONCILE_EVERY`] instead: those
//! dialled longer ago than any call lasts (ring timeout + an hour) end
//! `failed`/`system_error`, as no word of their end can come.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::pacing::Pacer;
use super::select::Picker;
use super::state::State;
use crate::ami::{Action, AmiError, ChannelStatus, LinkState, Originate};
use crate::call::{Call, CallStatus, FailReason, now_ms, token};
use crate::metrics::CallEnded;
use crate::phone::PhoneNumber;
use crate::secret::Secret;
use crate::store::{CallEnd, InFlight};

/// The channel variable that tells the dialplan where our FastAGI server is.
pub const AGI_URL_VARIABLE: &str = "VOICE_OTP_AGI";

/// The channel variable of the `n`th FastAGI URL (1-based): the first is
/// [`AGI_URL_VARIABLE`], the ones to try after it `VOICE_OTP_AGI_2`, ...
pub fn agi_url_variable(n: usize) -> String {
    if n <= 1 { AGI_URL_VARIABLE.to_owned() } else { format!("{AGI_URL_VARIABLE}_{n}") }
}

/// How often the dialler looks at the queue without being woken (deadlines,
/// calls finished without an event).
const DIAL_TICK: Duration = Duration::from_secs(1);

/// How often calls in flight are checked against Asterisk's channels.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// A call originated less than this long ago may not have a channel yet
/// (its Originate may still be on its way): the periodic check leaves it
/// alone, and a check right after a (re)connection that finds no channel
/// for it asks again once it is this old instead of failing it.
const FRESH_CALL: Duration = Duration::from_secs(5);

/// Wakes the dialler whenever `link` changes (up, down), until `shutdown`.
pub(super) async fn wake_on_link_changes(
    state: Arc<State>,
    mut link: watch::Receiver<LinkState>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = link.changed() => if changed.is_err() { return },
        }
        state.wake.notify_one();
    }
}

/// What the dialler keeps of one server between turns.
struct Slot {
    free: FreeSlots,
    pacer: Pacer,
    /// When its calls were last reconciled; `None`: since it (re)connected,
    /// not yet.
    reconciled_at: Option<Instant>,
    /// Its link's reconnect count at that reconciliation: a different one
    /// now means it went down and up again in between.
    logins: u64,
    /// When a call that had no channel yet at the last reconciliation is
    /// old enough to be asked about again.
    recheck_at: Option<Instant>,
    /// While its link is down: when its calls were last looked at for
    /// ones older than the longest call ([`end_unreachable`]).
    unreachable_checked_at: Option<Instant>,
}

/// The dialler's task, until `shutdown`.
pub(super) async fn run(state: Arc<State>, shutdown: CancellationToken) {
    let mut slots: Vec<Slot> = state
        .servers
        .iter()
        .map(|s| Slot {
            free: FreeSlots::default(),
            pacer: Pacer::new(s.max_calls_per_second),
            reconciled_at: None,
            logins: 0,
            recheck_at: None,
            unreachable_checked_at: None,
        })
        .collect();
    let mut picker = Picker::new(slots.len());
    // Expiry is a scan of the queue: once per tick, not on every wake-up
    // (there is one per call queued or ended).
    let mut expired_at: Option<Instant> = None;
    loop {
        for (index, slot) in slots.iter_mut().enumerate() {
            let Some(server) = state.servers.get(index) else { continue };
            let logins = server.ami.reconnects();
            if !server.ami.is_connected() {
                slot.reconciled_at = None;
                // Only once an attempt failed: at start, the first login
                // is given its chance to reconcile instead.
                if server.ami.is_down() && slot.unreachable_checked_at.is_none_or(|t| t.elapsed() >= RECONCILE_EVERY) {
                    end_unreachable(&state, &server.name, index == 0).await;
                    slot.unreachable_checked_at = Some(Instant::now());
                }
                continue;
            }
            slot.unreachable_checked_at = None;
            // Reconcile on every (re)connection before dialling anything new.
            let after_connect = slot.reconciled_at.is_none() || slot.logins != logins;
            let due = slot.reconciled_at.is_some_and(|t| t.elapsed() >= RECONCILE_EVERY)
                || slot.recheck_at.is_some_and(|t| Instant::now() >= t);
            if after_connect || due {
                slot.recheck_at = reconcile(&state, index, after_connect).await;
                slot.reconciled_at = Some(Instant::now());
                slot.logins = logins;
            }
        }
        if expired_at.is_none_or(|t| t.elapsed() >= DIAL_TICK) {
            expire_overdue(&state).await;
            expired_at = Some(Instant::now());
        }
        let paced_until = dial_ready(&state, &mut slots, &mut picker).await;
        let wait = paced_until.map_or(DIAL_TICK, |at| at.saturating_duration_since(Instant::now()).min(DIAL_TICK));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = state.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Free trunk slots of one server as the dial loop knows them, kept between
/// passes.
///
/// Counting a server's calls in flight is a scan of them, so it is done
/// only when the estimate runs out: every Originate takes one slot off it,
/// and calls that end are not added back (only the dialler puts calls in
/// flight on a server, so the estimate can only be too low, never let more
/// than `max_concurrent_calls` out). When it reaches 0 with calls waiting,
/// a count - of at most `max_concurrent_calls` rows - finds the freed
/// slots.
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
    /// Calls wait but every slot of the chosen server is taken.
    Full,
    /// The oldest waiting call, now marked `dialing` on the chosen server,
    /// and that server's free slots counting it.
    Call(Call, u64),
    /// The call moved on between the two reads (cannot happen with one
    /// database thread, but costs nothing to handle): look again.
    Moved,
}

/// Dials queued calls, oldest first, while some server can take one.
/// Returns when the queue is empty, every server that is up is full, or
/// the only servers with free slots are held back by their pacing - then
/// with the moment the first of them may take a call again.
async fn dial_ready(state: &Arc<State>, slots: &mut [Slot], picker: &mut Picker) -> Option<Instant> {
    // Servers found full by a count this pass: not counted again before the
    // next (a call ending wakes the dialler for that).
    let mut counted_full = vec![false; slots.len()];
    loop {
        let now = Instant::now();
        let up: Vec<usize> = (0..slots.len())
            .filter(|&i| !counted_full[i] && state.servers.get(i).is_some_and(|s| s.ami.is_connected()))
            .collect();
        // A server whose estimate ran out is counted again in the trip that
        // takes the next call: its slots may have come free since.
        let candidates: Vec<(usize, u32)> =
            up.iter().filter(|&&i| slots[i].pacer.ready(now)).map(|&i| (i, weight(state, i))).collect();
        let Some(chosen) = picker.choose(&candidates) else {
            return up.iter().filter_map(|&i| slots[i].pacer.ready_at(now)).min();
        };
        let server = state.servers.get(chosen)?;
        let (name, max) = (server.name.clone(), u64::from(server.max_concurrent_calls));
        // One database trip: the oldest queued call (deadlines already
        // filtered out), a free slot for it on the chosen server, its row,
        // and the mark `dialing` there. The queue is looked at first: every
        // call that ends wakes this loop, and most often nothing waits.
        //
        // Marked before the Originate is written: if we die in between, the
        // call is `dialing` without an Originate, which recovery can see -
        // never the reverse.
        let known = slots[chosen].free.0.filter(|&n| n > 0);
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
                let free = match known {
                    Some(n) => n,
                    None => max.saturating_sub(s.in_flight_count_on(&name)?),
                };
                if free == 0 {
                    return Ok(Next::Full);
                }
                let Some(call) = s.call(&id)? else {
                    return Ok(Next::Moved);
                };
                // Tracked before `dialing` is committed: once anyone can see
                // the call dialing, its channel's events are followed.
                tracker.track(&id, chosen);
                Ok(if s.mark_dialing_on(&id, &token_hash, &name)? { Next::Call(call, free) } else { Next::Moved })
            })
            .await;
        let call = match next {
            Ok(Next::Call(call, free)) => {
                slots[chosen].free.0 = Some(free - 1);
                slots[chosen].pacer.take(Instant::now());
                picker.commit(&candidates, chosen);
                call
            }
            Ok(Next::Full) => {
                slots[chosen].free.0 = Some(0);
                counted_full[chosen] = true;
                continue;
            }
            Ok(Next::Empty) => return None,
            Ok(Next::Moved) => continue,
            Err(e) => {
                tracing::error!(error = %e, "could not read the call queue");
                return None;
            }
        };
        let span = tracing::info_span!("call", call_id = %call.id, server = %state.server_name(chosen));
        originate(state, chosen, call, token).instrument(span).await;
    }
}

fn weight(state: &State, index: usize) -> u32 {
    state.servers.get(index).map_or(1, |s| s.weight)
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

/// Checks every call in flight on server `index` that no FastAGI session of
/// ours holds against that server's channels; those whose channel is gone
/// fail. Right after a (re)connection every such call is checked (events
/// may have been lost with the link, or a previous daemon left them);
/// otherwise only those older than [`FRESH_CALL`]. A call younger than that
/// with no channel is not failed - its Originate may not have reached
/// Asterisk yet - and the answer is when to ask again.
async fn reconcile(state: &State, index: usize, after_connect: bool) -> Option<Instant> {
    if index == 0 && after_connect {
        warn_unconfigured(state).await;
    }
    let server = state.servers.get(index)?;
    // Calls naming no server were dialled when there was only one.
    let calls = unheld_in_flight(state, &server.name, index == 0).await?;
    let now = now_ms();
    let fresh_after = now - FRESH_CALL.as_millis() as i64;
    let mut recheck_in: Option<i64> = None;
    for call in calls {
        if !after_connect && call.dialed_at.is_some_and(|t| t > fresh_after) {
            continue;
        }
        let span = tracing::info_span!("call", call_id = %call.id, server = %server.name);
        // `Status` accepts a Uniqueid where a channel name goes.
        match server.ami.channel_status(call.id.as_str()).instrument(span.clone()).await {
            Ok(ChannelStatus::Exists) => state.track(&call.id, index),
            Ok(ChannelStatus::Gone) if call.dialed_at.is_some_and(|t| t > fresh_after) => {
                let wait = call.dialed_at.unwrap_or(now) - fresh_after;
                tracing::debug!(call_id = %call.id, server = %server.name, wait_ms = wait, "no channel yet for a call just dialled; asked again later");
                recheck_in = Some(recheck_in.map_or(wait, |w| w.min(wait)));
            }
            Ok(ChannelStatus::Gone) => {
                let detail = format!(
                    "Asterisk server {} has no channel for this {} call any more (Asterisk restarted, or the daemon or \
                     its AMI link was down when it ended); not dialled again",
                    server.name, call.status
                );
                tracing::warn!(call_id = %call.id, status = %call.status, server = %server.name, "call lost: no channel in Asterisk");
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
                    server = %server.name,
                    "Asterisk refused to say whether the call's channel exists; call left as it is, asked again at the next check"
                );
                state.track(&call.id, index);
            }
            // The link failed mid-check: the next connection checks again.
            Err(e) => {
                tracing::warn!(call_id = %call.id, server = %server.name, error = %e, "could not ask Asterisk about a call in flight");
                return None;
            }
        }
    }
    recheck_in.map(|ms| Instant::now() + Duration::from_millis(ms as u64))
}

/// The calls in flight on `server` (with `unassigned`, also those naming
/// none) that this daemon follows and no FastAGI session of its own holds;
/// `None` (logged) if the database cannot say.
async fn unheld_in_flight(state: &State, server: &str, unassigned: bool) -> Option<Vec<InFlight>> {
    let name = server.to_owned();
    match state.db.run(move |s| s.in_flight_on(&name, unassigned)).await {
        Ok(calls) => Some(calls.into_iter().filter(|c| !state.live.contains(&c.id)).collect()),
        Err(e) => {
            tracing::error!(server, error = %e, "could not list calls in flight");
            None
        }
    }
}

/// Ends the calls in flight on server `server` (with `unassigned`, also
/// those naming none) that were dialled longer ago than the longest call,
/// while that server cannot be asked: its link is down, or it is no longer
/// configured. Nothing of such a call is still going on, and no event nor
/// reconciliation will say how it ended (an Originate written just as the
/// link dropped, a server that never comes back). They end `failed`/
/// `system_error`; younger ones wait for the link.
async fn end_unreachable(state: &State, server: &str, unassigned: bool) {
    let Some(calls) = unheld_in_flight(state, server, unassigned).await else { return };
    let longest = super::state::longest_call(&state.config);
    let before = now_ms() - longest.as_millis() as i64;
    for call in calls {
        if call.dialed_at.is_none_or(|t| t > before) {
            continue;
        }
        let detail = format!(
            "Asterisk server {server} cannot be asked (AMI link down, or no longer configured) and this {} call \
             was dialled more than {} s ago, longer than any call lasts: no word of how it ended will come; not \
             dialled again",
            call.status,
            longest.as_secs()
        );
        tracing::warn!(call_id = %call.id, status = %call.status, server, "call lost: its server cannot be asked and it is older than any call");
        let span = tracing::info_span!("call", call_id = %call.id, server);
        state.finish(&call.id, CallEnd::failed(FailReason::SystemError, Some(detail))).instrument(span).await;
    }
}

/// Calls in flight on a server the config no longer has (removed or
/// renamed) have no link to be asked about or followed on: they are left
/// as they are, and said so whenever the first server (re)connects - then
/// those older than any call end ([`end_unreachable`]).
async fn warn_unconfigured(state: &State) {
    let by_server = match state.db.run(|s| s.in_flight_by_server()).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "could not count calls in flight per server");
            return;
        }
    };
    for (name, calls) in by_server {
        if let Some(name) = name.filter(|n| state.servers.index_of(n).is_none()) {
            tracing::warn!(
                server = %name,
                calls,
                "calls in flight on an Asterisk server that is no longer configured: not reconciled nor followed"
            );
            end_unreachable(state, &name, false).await;
        }
    }
}

/// Sends the Originate for a call just marked `dialing` on server `index`,
/// with the FastAGI `token` whose hash was stored with that mark.
async fn originate(state: &State, index: usize, call: Call, token: Secret) {
    let id = call.id.clone();
    let Some(server) = state.servers.get(index) else { return };
    let dial = &state.config.dial;
    // The stored number was validated on the way in; parsing the E.164 form
    // again cannot fail unless the row was edited by hand.
    let number = match PhoneNumber::parse(&call.number, state.config.phone.default_country) {
        Ok(n) => n,
        Err(e) => {
            state.finish(&id, CallEnd::failed(FailReason::SystemError, Some(format!("stored number {e}")))).await;
            return;
        }
    };
    let channel = dial.channel.render(&number);
    let mut variables: Vec<(String, String)> =
        state.agi_urls.iter().enumerate().map(|(i, url)| (agi_url_variable(i + 1), url.clone())).collect();
    variables.push((token::TOKEN_VARIABLE.to_owned(), token.expose().to_owned()));
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
            return;
        }
    };
    tracing::info!(call_id = %id, server = %server.name, "originating");
    match server.ami.send(action).await {
        Ok(_) => {}
        Err(AmiError::NotConnected) => {
            // Provably never written: back in the queue, first in line (for
            // a server that is up), and no events of this dial will come.
            state.with_tracked(&id, index, |t| {
                t.responded = true;
                t.hung_up = true;
            });
            let back = id.clone();
            if let Err(e) = state.db.run(move |s| s.requeue(&back)).await {
                tracing::error!(call_id = %id, error = %e, "could not put the call back in the queue");
            }
            tracing::info!(call_id = %id, server = %server.name, "AMI link down before the Originate was sent; call queued again");
        }
        Err(AmiError::Rejected(why)) => {
            // No OriginateResponse follows a refused Originate.
            state.with_tracked(&id, index, |t| t.responded = true);
            let detail = format!("Originate refused by Asterisk server {}: {why}", server.name);
            state.finish(&id, CallEnd::failed(FailReason::SystemError, Some(detail))).await;
        }
        Err(e) => {
            // Written, outcome unknown (link lost, no answer in time): the
            // call stays in flight; its events or the next reconciliation
            // of its server settle it. Never sent again.
            tracing::warn!(call_id = %id, server = %server.name, error = %e, "Originate sent but not confirmed; waiting for Asterisk's word");
        }
    }
}
