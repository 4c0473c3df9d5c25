//! The dispatcher: puts stored calls on the phone through AMI and follows
//! them there, as two tasks that share only a `state::State`:
//!
//! - `dialler`: queued call -> `Originate` (marked `dialing` first, so never
//!   twice), reconciliation of calls in flight with Asterisk's channels
//!   (`Status`), expiry of calls past their deadline.
//! - `follower`: typed AMI events (`Newstate`, `OriginateResponse`,
//!   `Hangup`) -> call status, with the waits for a late Hangup cause and a
//!   late FastAGI session.
//! - `tracked`: the calls whose channel events are followed.
//! - `live`: the calls a FastAGI session serves ([`LiveCalls`]), shared
//!   with the FastAGI handler.
//!
//! [`Dispatcher`] is the handle the rest of the daemon holds: it wakes the
//! dialler for a newly queued call and hangs up a canceled one.

mod dialler;
mod follower;
mod live;
mod state;
mod tracked;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use dialler::{AGI_URL_VARIABLE, RECONCILE_EVERY};
pub use live::{Claim, LiveCalls};

use super::CallId;
use crate::ami::{Action, AmiClient};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Db;

/// Handle to the dispatcher.
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
            Ok(_) => tracing::info!(call_id = %id, "hangup sent for canceled call"),
            Err(e) => tracing::info!(call_id = %id, error = %e, "hangup of canceled call not carried out"),
        }
    }

    /// Starts the dialler and the event follower on `tracker`; the calls
    /// they end are counted in `metrics`.
    #[expect(clippy::too_many_arguments, reason = "the daemon's parts, each named once at the one call site")]
    pub fn start(
        config: Arc<Config>,
        db: Db,
        ami: AmiClient,
        agi_url: String,
        live: LiveCalls,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Dispatcher {
        let state = Arc::new(state::State::new(config, db, ami.clone(), agi_url, live, metrics));
        // Subscribed before either task runs, so no event of a call the
        // dialler originates can be missed.
        let events = ami.events();
        tracker.spawn(dialler::run(state.clone(), shutdown.clone()));
        tracker.spawn(follower::run(state.clone(), events, shutdown));
        Dispatcher { wake: state.wake.clone(), ami }
    }
}
