//! Places stored calls through AMI and turns Asterisk's events into status
//! changes.
//!
//! One task takes queued call ids in order and sends `Originate` (marking the
//! call `dialing` first, so a crash can never lead to a second Originate of
//! the same call). Another follows AMI events: `OriginateResponse` (answered
//! or not, and why) and `Hangup` (the Q.850 cause), matched to calls by the
//! channel `Uniqueid`, which is the call id we gave as `ChannelId`. Events of
//! channels that are not ours are dropped without touching the database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{CallId, CallStatus, FailReason};
use crate::ami::{Action, AmiClient, LinkState, Message, MessageKind};
use crate::config::Config;
use crate::phone::PhoneNumber;
use crate::store::{CallEnd, Db};

/// The channel variable that tells the dialplan where our FastAGI server is.
pub const AGI_URL_VARIABLE: &str = "VOICE_OTP_AGI";

/// How long an Originate waits for the AMI link to come up before the call
/// fails (covers a request arriving while the daemon is still logging in).
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// How long after a `Hangup` event an answered call may still be claimed by
/// its FastAGI session before it is declared lost.
const AGI_GRACE: Duration = Duration::from_secs(3);

/// Calls whose FastAGI session is running; the AGI handler owns their
/// final status.
#[derive(Clone, Default)]
pub struct LiveCalls(Arc<Mutex<HashSet<CallId>>>);

impl LiveCalls {
    /// Claims `id` for a FastAGI session; false if another session has it.
    pub fn claim(&self, id: &CallId) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone())
    }

    /// Releases a claim.
    pub fn release(&self, id: &CallId) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// True while a session runs for `id`.
    pub fn contains(&self, id: &CallId) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }
}

/// Handle to submit stored calls for dialling.
#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::UnboundedSender<CallId>,
}

impl Dispatcher {
    /// Hands a stored, `queued` call to the dialler.
    pub fn submit(&self, id: CallId) {
        // Only fails once the dialler has stopped (shutdown); the call stays
        // `queued` in the database.
        let _ = self.tx.send(id);
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
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Inner { config, db, ami, agi_url, live, tracked: Mutex::new(TrackedCalls::default()) });
        let events = state.ami.events();
        tracker.spawn(dial_loop(state.clone(), rx, shutdown.clone()));
        tracker.spawn(event_loop(state, events, shutdown));
        Dispatcher { tx }
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
    }
}

async fn dial_loop(state: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<CallId>, shutdown: CancellationToken) {
    loop {
        let id = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = rx.recv() => match next { Some(id) => id, None => return },
        };
        originate(&state, id).await;
    }
}

async fn originate(state: &Inner, id: CallId) {
    let lookup = id.clone();
    let call = match state.db.run(move |s| s.call(&lookup)).await {
        Ok(Some(call)) if call.status == CallStatus::Queued => call,
        Ok(_) => return,
        Err(e) => {
            tracing::error!(call_id = %id, error = %e, "could not load queued call");
            return;
        }
    };
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
    let action = Action::originate(crate::ami::action::Originate {
        channel: dial.channel.render(&number),
        context: dial.context.clone(),
        exten: dial.exten.clone(),
        priority: 1,
        timeout_ms: u64::from(dial.ring_timeout_secs) * 1000,
        caller_id: (!dial.caller_id.is_empty()).then(|| dial.caller_id.clone()),
        channel_id: id.as_str().to_owned(),
        variables: vec![(AGI_URL_VARIABLE.to_owned(), state.agi_url.clone())],
    });
    let action = match action {
        Ok(a) => a,
        Err(e) => {
            state.finish(&id, CallEnd::failed(FailReason::SystemError, Some(format!("originate: {e}")))).await;
            return;
        }
    };
    if !wait_connected(&state.ami).await {
        let detail = "AMI not connected".to_owned();
        state.finish(&id, CallEnd::failed(FailReason::SystemError, Some(detail))).await;
        return;
    }
    // Mark before sending: if we die in between, the call is `dialing`
    // without an Originate, which recovery can see - never the reverse.
    let mark = id.clone();
    match state.db.run(move |s| s.mark_dialing(&mark)).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::error!(call_id = %id, error = %e, "could not mark call dialing");
            return;
        }
    }
    state.tracked.lock().unwrap_or_else(|p| p.into_inner()).calls.insert(
        id.clone(),
        Tracked { since: Instant::now(), cause: None, responded: false, hung_up: false },
    );
    tracing::info!(call_id = %id, "originating");
    match state.ami.send(action).await {
        Ok(resp) if resp.get("Response").is_some_and(|r| r.eq_ignore_ascii_case("Success")) => {}
        Ok(resp) => {
            let why = resp.get("Message").unwrap_or("no message").to_owned();
            state.with_tracked(&id, |t| t.responded = true);
            let detail = format!("Originate refused by Asterisk: {why}");
            state.finish(&id, CallEnd::failed(FailReason::SystemError, Some(detail))).await;
        }
        Err(e) => {
            state.with_tracked(&id, |t| t.responded = true);
            let detail = format!("Originate failed: {e}");
            state.finish(&id, CallEnd::failed(FailReason::SystemError, Some(detail))).await;
        }
    }
}

async fn wait_connected(ami: &AmiClient) -> bool {
    let mut link = ami.link_state();
    let connected = tokio::time::timeout(CONNECT_WAIT, link.wait_for(|s| *s == LinkState::Connected)).await;
    matches!(connected, Ok(Ok(_)))
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
    match name {
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
            } else {
                let why = match cause {
                    Some(c) => FailReason::from_cause(c),
                    None => FailReason::from_originate_reason(reason),
                };
                state.finish(&id, CallEnd::failed(why, None)).await;
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
        CallStatus::Queued | CallStatus::Dialing => {
            let why = cause.map(FailReason::from_cause).unwrap_or(FailReason::SystemError);
            state.finish(&id, CallEnd::failed(why, None)).await;
        }
        CallStatus::Answered => {
            let state = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(AGI_GRACE).await;
                if state.live.contains(&id) {
                    return;
                }
                let detail = "hung up without a FastAGI session (check the dialplan)".to_owned();
                state.finish(&id, CallEnd::failed(FailReason::SystemError, Some(detail))).await;
            });
        }
        CallStatus::Completed | CallStatus::Failed => {}
    }
}
