//! Places stored calls through AMI and turns Asterisk's events into status
//! changes.
//!
//! The queue is the database: one task (the dialler) takes the oldest
//! `queued` call whenever the AMI link is up and fewer than
//! `[queue] max_concurrent_calls` calls are in flight, and sends
//! `Originate`, marking the call `dialing` first, so no crash, restart or
//! reconnect can ever lead to a second Originate of the same call. A call
//! still queued after its deadline is `expired` instead. While Asterisk is
//! down calls simply wait. Whenever the link (re)connects, and every
//! [`RECONCILE_EVERY`] after that, the dialler asks Asterisk (`Status`) about
//! each call in flight that no live FastAGI session holds: a channel that is
//! gone - Asterisk restarted, the daemon was killed, events were lost with
//! the link - ends the call as `failed`/`system_error`; it is never dialled
//! again. Another task follows AMI events: `Newstate` (ringing),
//! `OriginateResponse` (answered or not, and why) and `Hangup` (the Q.850
//! cause), matched to calls by the channel `Uniqueid`, which is the call id
//! we gave as `ChannelId`. Events of channels that are not ours are dropped
//! without touching the database.
//!
//! `OriginateResponse` and `Hangup` arrive in either order. The Hangup cause
//! tells failures apart (Reason 0 covers most of them), so a failed
//! `OriginateResponse` without a cause yet waits briefly for its Hangup
//! before settling for what the Reason alone says.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{Call, CallId, CallStatus, FailReason, now_ms, token};
use crate::ami::{Action, AmiClient, AmiError, LinkState, Message, MessageKind};
use crate::config::Config;
use crate::phone::PhoneNumber;
use crate::secret::Secret;
use crate::store::{CallEnd, Db};

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

/// How long after a `Hangup` event an answered call may still be claimed by
/// its FastAGI session before it is declared lost.
const AGI_GRACE: Duration = Duration::from_secs(3);

/// How long a failed `OriginateResponse` waits for its `Hangup` (and the
/// cause in it) before the call fails on the Reason alone.
const HANGUP_WAIT: Duration = Duration::from_secs(2);

/// Calls whose FastAGI session is running; the AGI handler owns their
/// final status.
#[derive(Clone, Default)]
pub struct LiveCalls(Arc<Mutex<HashSet<CallId>>>);

impl LiveCalls {
    /// Claims `id` for a FastAGI session; `None` if another session has it.
    /// The claim lasts as long as the returned guard: however the session
    /// ends - returning, an error, a panic in its task - it is released, so
    /// reconciliation never skips a call forever for a session long gone.
    pub fn claim(&self, id: &CallId) -> Option<Claim> {
        let fresh = self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        fresh.then(|| Claim { live: self.clone(), id: id.clone() })
    }

    /// True while a session runs for `id`.
    pub fn contains(&self, id: &CallId) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    /// How many FastAGI sessions are reading a code right now.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A FastAGI session's hold on its call (see [`LiveCalls::claim`]).
pub struct Claim {
    live: LiveCalls,
    id: CallId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.live.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// Handle to the dialler.
#[derive(Clone)]
pub struct Dispatcher {
    wake: Arc<Notify>,
    ami: AmiClient,
}

impl Dispatcher {
    /// Tells the dialler a call was stored as `queued`. The call itself is
    /// taken from the database, in order, when its turn comes; the id is
    /// only logged.
    pub fn submit(&self, id: CallId) {
        tracing::debug!(call_id = %id, "queued");
        self.wake.notify_one();
    }

    /// Hangs up a call's channel (after it was canceled). The channel is
    /// named by its Uniqueid, which Asterisk's `Hangup` action accepts in
    /// place of a channel name. Best effort: if the channel is not up yet or
    /// gone already, the call is canceled in the database anyway, and a
    /// late answer finds no live call to read (the FastAGI handler hangs up).
    pub async fn hang_up(&self, id: &CallId) {
        // Cause 16, normal clearing: we ended it on purpose.
        let action = match Action::hangup(id.as_str(), 16) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(call_id = %id, error = %e, "cannot build Hangup");
                return;
            }
        };
        match self.ami.send(action).await {
            Ok(resp) => tracing::info!(call_id = %id, response = resp.get("Response"), "hangup sent for canceled call"),
            Err(e) => tracing::info!(call_id = %id, error = %e, "hangup of canceled call not carried out"),
        }
    }

    /// Starts the dialler and the event follower on `tracker`.
    pub fn start(
        config: Arc<Config>,
        db: Db,
        ami: AmiClient,
        agi_url: String,
        live: LiveCalls,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Dispatcher {
        let wake = Arc::new(Notify::new());
        let state = Arc::new(Inner {
            config,
            db,
            ami: ami.clone(),
            agi_url,
            live,
            tracked: Mutex::new(TrackedCalls::default()),
            wake: wake.clone(),
        });
        let events = state.ami.events();
        tracker.spawn(dial_loop(state.clone(), shutdown.clone()));
        tracker.spawn(event_loop(state, events, shutdown));
        Dispatcher { wake, ami }
    }
}

struct Inner {
    config: Arc<Config>,
    db: Db,
    ami: AmiClient,
    agi_url: String,
    live: LiveCalls,
    /// Calls originated whose last events have not all arrived yet.
    tracked: Mutex<TrackedCalls>,
    /// Wakes the dialler: a call was queued or a trunk slot came free.
    wake: Arc<Notify>,
}

/// How often entries whose closing events never came are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct TrackedCalls {
    calls: HashMap<CallId, Tracked>,
    last_sweep: Option<Instant>,
}

struct Tracked {
    since: Instant,
    cause: Option<u16>,
    responded: bool,
    hung_up: bool,
}

impl Inner {
    fn with_tracked<R>(&self, id: &CallId, f: impl FnOnce(&mut Tracked) -> R) -> Option<R> {
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        let entry = tracked.calls.get_mut(id)?;
        let r = f(entry);
        // Forget a call once both of its closing events were seen.
        if entry.responded && entry.hung_up {
            tracked.calls.remove(id);
        }
        // And, now and then, any entry old enough that its events are not
        // coming any more. Not on every event: with thousands of calls in
        // flight a scan per event made event handling quadratic.
        let now = Instant::now();
        if tracked.last_sweep.is_none_or(|at| now - at >= SWEEP_EVERY) {
            let max_age = Duration::from_secs(u64::from(self.config.dial.ring_timeout_secs) + 3600);
            tracked.calls.retain(|_, t| now - t.since < max_age);
            tracked.last_sweep = Some(now);
        }
        Some(r)
    }

    async fn finish(&self, id: &CallId, end: CallEnd) {
        let call_id = id.clone();
        let logged = end.clone();
        match self.db.run(move |s| s.finish_call(&call_id, &end)).await {
            Ok(true) => tracing::info!(
                call_id = %id,
                status = %logged.status,
                reason = logged.reason.map(FailReason::as_str),
                detail = logged.detail.as_deref(),
                "call ended"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(call_id = %id, error = %e, "could not record call end"),
        }
        self.wake.notify_one();
    }

    fn track(&self, id: &CallId) {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner()).calls.entry(id.clone()).or_insert_with(|| Tracked {
            since: Instant::now(),
            cause: None,
            responded: false,
            hung_up: false,
        });
    }
}

async fn dial_loop(state: Arc<Inner>, shutdown: CancellationToken) {
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
async fn dial_ready(state: &Arc<Inner>, free: &mut FreeSlots) {
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

async fn expire_overdue(state: &Inner) {
    match state.db.run(|s| s.expire_overdue(now_ms())).await {
        Ok(ids) => {
            for id in ids {
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
async fn reconcile(state: &Inner, after_connect: bool) {
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
        match channel_exists(state, &call.id).instrument(span.clone()).await {
            Some(true) => state.track(&call.id),
            Some(false) => {
                let detail = format!(
                    "Asterisk has no channel for this {} call any more (Asterisk restarted, or the daemon or its AMI link was down when it ended); not dialled again",
                    call.status
                );
                tracing::warn!(call_id = %call.id, status = %call.status, "call lost: no channel in Asterisk");
                state.finish(&call.id, CallEnd::failed(FailReason::SystemError, Some(detail))).instrument(span).await;
            }
            // The link failed mid-check: the next connection checks again.
            None => return,
        }
    }
}

/// Asks Asterisk whether the channel whose Uniqueid is `id` exists
/// (`Status` accepts a Uniqueid where a channel name goes). `None`: no
/// answer (link trouble).
async fn channel_exists(state: &Inner, id: &CallId) -> Option<bool> {
    let action = Action::new("Status").and_then(|a| a.header("Channel", id.as_str())).ok()?;
    match state.ami.send(action).await {
        Ok(_) => Some(true),
        Err(AmiError::Rejected(message)) => {
            tracing::debug!(%message, "Status: no such channel");
            Some(false)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not ask Asterisk about a call in flight");
            None
        }
    }
}

/// Sends the Originate for a call just marked `dialing`, with the FastAGI
/// `token` whose hash was stored with that mark. False when the dialler
/// should stop for now (the AMI link is down).
async fn originate(state: &Inner, call: Call, token: Secret) -> bool {
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
    let action = Action::originate(crate::ami::action::Originate {
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
            // Provably never written: back in the queue, first in line.
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

async fn event_loop(state: Arc<Inner>, mut events: broadcast::Receiver<Arc<Message>>, shutdown: CancellationToken) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => ev,
        };
        match event {
            Ok(msg) => on_event(&state, &msg).await,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "AMI events dropped: event follower fell behind");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn on_event(state: &Arc<Inner>, msg: &Message) {
    let MessageKind::Event(name) = msg.kind() else { return };
    let Some(id) = msg.get("Uniqueid").and_then(CallId::parse) else { return };
    let span = tracing::info_span!("call", call_id = %id);
    on_call_event(state, name, id, msg).instrument(span).await;
}

async fn on_call_event(state: &Arc<Inner>, name: &str, id: CallId, msg: &Message) {
    match name {
        "Newstate" => {
            // ChannelState 5 is AST_STATE_RINGING on the outbound leg: the
            // far end sent 180 Ringing.
            let ringing = msg.get("ChannelState").is_some_and(|s| s.trim() == "5")
                || msg.get("ChannelStateDesc").is_some_and(|s| s.trim().eq_ignore_ascii_case("Ringing"));
            if !ringing || state.with_tracked(&id, |_| ()).is_none() {
                return;
            }
            let mark = id.clone();
            match state.db.run(move |s| s.mark_ringing(&mark)).await {
                Ok(true) => tracing::info!(call_id = %id, "ringing"),
                Ok(false) => {}
                Err(e) => tracing::error!(call_id = %id, error = %e, "could not mark call ringing"),
            }
        }
        "OriginateResponse" => {
            let Some(cause) = state.with_tracked(&id, |t| {
                t.responded = true;
                t.cause
            }) else {
                return;
            };
            let reason: u32 = msg.get("Reason").and_then(|r| r.trim().parse().ok()).unwrap_or(0);
            if reason == 4 {
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
                tokio::spawn(
                    async move {
                        tokio::time::sleep(HANGUP_WAIT).await;
                        let why = FailReason::from_originate_reason(reason);
                        state.finish(&id, CallEnd::failed(why, None)).await;
                    }
                    .in_current_span(),
                );
            }
        }
        "Hangup" => {
            // Cause 0 ("Unknown") is what Asterisk reports when our own
            // FastAGI HANGUP ends the call: no Q.850 cause to keep.
            let cause: Option<u16> = msg.get("Cause").and_then(|c| c.trim().parse().ok()).filter(|&c| c != 0);
            let Some(()) = state.with_tracked(&id, |t| {
                t.hung_up = true;
                t.cause = cause;
            }) else {
                return;
            };
            if let Some(cause) = cause {
                let text = msg.get("Cause-txt").unwrap_or("").to_owned();
                let rec = id.clone();
                if let Err(e) = state.db.run(move |s| s.record_cause(&rec, cause, &text)).await {
                    tracing::error!(call_id = %id, error = %e, "could not record hangup cause");
                }
            }
            on_hangup(state, id, cause).await;
            // A trunk slot came free.
            state.wake.notify_one();
        }
        _ => {}
    }
}

/// The channel is gone. Unanswered calls fail by their cause; answered
/// ones belong to their FastAGI session - unless none ever came.
async fn on_hangup(state: &Arc<Inner>, id: CallId, cause: Option<u16>) {
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
