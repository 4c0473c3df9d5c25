//! The dispatcher: puts stored calls on the phone through the Asterisk
//! servers' AMI links and follows them there, as tasks that share only a
//! `state::State`:
//!
//! - `dialler`: queued call -> a server (`select`, `pacing`) -> `Originate`
//!   (marked `dialing` on that server first, so never twice),
//!   reconciliation of each server's calls in flight with its channels
//!   (`Status`), expiry of calls past their deadline.
//! - `follower`: one per server, its typed AMI events (`Newstate`,
//!   `OriginateResponse`, `Hangup`) -> call status, with the waits for a
//!   late Hangup cause and a late FastAGI session.
//! - `servers`: the configured Asterisk servers and their AMI links
//!   ([`AsteriskServers`]), shared with the ops endpoints.
//! - `select`: which server takes the next call (weighted, among those
//!   logged in with a free slot).
//! - `pacing`: at most `max_calls_per_second` Originates to a server.
//! - `tracked`: the calls whose channel events are followed, and on which
//!   server.
//! - `live`: the calls a FastAGI session serves ([`LiveCalls`]), shared
//!   with the FastAGI handler.
//!
//! [`Dispatcher`] is the handle the rest of the daemon holds: it wakes the
//! dialler for a newly queued call and hangs up a canceled one.

mod dialler;
mod follower;
mod live;
mod pacing;
mod select;
mod servers;
mod state;
mod tracked;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use dialler::{AGI_URL_VARIABLE, RECONCILE_EVERY, agi_url_variable};
pub use live::{Claim, LiveCalls};
pub use servers::{AsteriskServer, AsteriskServers};

use super::CallId;
use crate::ami::Action;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Db;

/// Handle to the dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    wake: Arc<Notify>,
    db: Db,
    servers: AsteriskServers,
}

impl Dispatcher {
    /// Tells the dialler a call was stored as `queued`. The call itself is
    /// taken from the database, in order, when its turn comes; the id is
    /// only logged.
    pub fn submit(&self, id: CallId) {
        tracing::debug!(call_id = %id, "queued");
        self.wake.notify_one();
    }

    /// Hangs up a call's channel (after it was canceled), on the server it
    /// was originated on. The channel is named by its Uniqueid, which
    /// Asterisk's `Hangup` action accepts in place of a channel name. Best
    /// effort: if the channel is not up yet or gone already, the call is
    /// canceled in the database anyway, and a late answer finds no live call
    /// to read (the FastAGI handler hangs up).
    pub async fn hang_up(&self, id: &CallId) {
        let lookup = id.clone();
        let server = match self.db.run(move |s| s.call(&lookup)).await {
            Ok(Some(call)) => call.asterisk,
            Ok(None) => None,
            Err(e) => {
                tracing::error!(call_id = %id, error = %e, "cannot read the canceled call's server");
                return;
            }
        };
        // No server: never dialled - or dialled before there were several,
        // on the one server there was.
        let index = match server {
            Some(name) => match self.servers.index_of(&name) {
                Some(i) => i,
                None => {
                    tracing::warn!(call_id = %id, server = %name, "canceled call's Asterisk server is no longer configured; not hung up");
                    return;
                }
            },
            None => 0,
        };
        let Some(server) = self.servers.get(index) else { return };
        // Cause 16, normal clearing: we ended it on purpose.
        let action = match Action::hangup(id.as_str(), 16) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(call_id = %id, error = %e, "cannot build Hangup");
                return;
            }
        };
        match server.ami.send(action).await {
            Ok(_) => tracing::info!(call_id = %id, server = %server.name, "hangup sent for canceled call"),
            Err(e) => {
                tracing::info!(call_id = %id, server = %server.name, error = %e, "hangup of canceled call not carried out")
            }
        }
    }

    /// Starts the dialler and one event follower per server on `tracker`;
    /// the calls they end are counted in `metrics`. `agi_urls` are the
    /// FastAGI URLs handed to the dialplan, first to try first (at least
    /// one).
    #[expect(clippy::too_many_arguments, reason = "the daemon's parts, each named once at the one call site")]
    pub fn start(
        config: Arc<Config>,
        db: Db,
        servers: AsteriskServers,
        agi_urls: Vec<String>,
        live: LiveCalls,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Dispatcher {
        let state = Arc::new(state::State::new(config, db.clone(), servers.clone(), agi_urls, live, metrics));
        // Subscribed before any task runs, so no event of a call the
        // dialler originates can be missed.
        for (index, server) in servers.iter().enumerate() {
            let events = server.ami.events();
            tracker.spawn(follower::run(state.clone(), index, events, shutdown.clone()));
            tracker.spawn(dialler::wake_on_link_changes(state.clone(), server.ami.link_state(), shutdown.clone()));
        }
        tracker.spawn(dialler::run(state.clone(), shutdown));
        Dispatcher { wake: state.wake.clone(), db, servers }
    }
}
