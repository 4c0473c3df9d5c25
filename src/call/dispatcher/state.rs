//! What the dialler and the followers share: the daemon's parts they use,
//! the tracked calls, the wake-up for the dialler, and how a call is ended.
//! All hold one `Arc<State>`; none calls into another.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::live::LiveCalls;
use super::servers::AsteriskServers;
use super::tracked::{Tracked, TrackedCalls};
use crate::call::{CallId, FailReason};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{CallEnd, Db};

/// The dispatcher's shared state.
pub(super) struct State {
    pub(super) config: Arc<Config>,
    pub(super) db: Db,
    /// The Asterisk servers, in config order.
    pub(super) servers: AsteriskServers,
    /// Where Asterisk's dialplan reaches a FastAGI server: the first, then
    /// the ones to try when no daemon took the call at it.
    pub(super) agi_urls: Vec<String>,
    pub(super) live: LiveCalls,
    /// Where calls that end here are counted.
    pub(super) metrics: Arc<Metrics>,
    /// Calls originated whose last events have not all arrived yet.
    tracked: Mutex<TrackedCalls>,
    /// Wakes the dialler: a call was queued, a trunk slot came free or a
    /// link came up or went down.
    pub(super) wake: Arc<Notify>,
}

/// How long after its Originate a call can still be going on: it rings at
/// most `ring_timeout_secs`, and an hour more covers any conversation.
pub(super) fn longest_call(config: &Config) -> Duration {
    Duration::from_secs(u64::from(config.dial.ring_timeout_secs) + 3600)
}

impl State {
    pub(super) fn new(
        config: Arc<Config>,
        db: Db,
        servers: AsteriskServers,
        agi_urls: Vec<String>,
        live: LiveCalls,
        metrics: Arc<Metrics>,
    ) -> State {
        // An entry older than the longest call: its events are not coming.
        let max_age = longest_call(&config);
        State {
            config,
            db,
            servers,
            agi_urls,
            live,
            metrics,
            tracked: Mutex::new(TrackedCalls::new(max_age)),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Follows `id`'s channel events on `server` from now on.
    pub(super) fn track(&self, id: &CallId, server: usize) {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner()).track(id, server, Instant::now());
    }

    /// Runs `f` on what was seen of `id`'s channel, for an event of
    /// `server`; `None` when `id` is not tracked or tracked on another
    /// server (see [`TrackedCalls::update`]).
    pub(super) fn with_tracked<R>(&self, id: &CallId, server: usize, f: impl FnOnce(&mut Tracked) -> R) -> Option<R> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner()).update(id, server, Instant::now(), f)
    }

    /// The server `id`'s channel is followed on, if it is followed.
    pub(super) fn tracked_on(&self, id: &CallId) -> Option<usize> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner()).server_of(id)
    }

    /// The name of server `index`, for logs.
    pub(super) fn server_name(&self, index: usize) -> &str {
        self.servers.get(index).map_or("?", |s| s.name.as_str())
    }

    /// Records the call's end (a no-op if it already ended), logs and
    /// counts it, and wakes the dialler: a trunk slot may have come free.
    pub(super) async fn finish(&self, id: &CallId, end: CallEnd) {
        let call_id = id.clone();
        let logged = end.clone();
        // The ended row is read back in the same trip, for its ring and
        // talk times: one look-up by key, only when the call did end here.
        match self.db.run(move |s| if s.finish_call(&call_id, &end)? { s.call(&call_id) } else { Ok(None) }).await {
            Ok(Some(call)) => {
                self.metrics.call_ended(call.ended());
                tracing::info!(
                    call_id = %id,
                    status = %logged.status,
                    reason = logged.reason.map(FailReason::as_str),
                    detail = logged.detail.as_deref(),
                    "call ended"
                )
            }
            Ok(None) => {}
            Err(e) => tracing::error!(call_id = %id, error = %e, "could not record call end"),
        }
        self.wake.notify_one();
    }
}
