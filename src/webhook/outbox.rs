//! Which deliveries run when: every attempt is a task of its own, started
//! as soon as its delivery is due and a slot is free, within three caps -
//! attempts in progress at once overall, per destination host and per user
//! (`[webhooks] max_concurrent*`). A receiver that never answers holds only
//! its own slots, each for at most `timeout_secs`; everyone else's
//! deliveries go on.
//!
//! Finding due work costs a window over a pending index, never a walk of
//! the history nor, in steady state, of a stalled user's backlog:
//! - a cursor moves through the due deliveries in (`next_attempt_at`, id)
//!   order. Every due delivery behind it is waiting for an attempt to end:
//!   in progress, behind an earlier pending change of its call, or held by a
//!   full user or host cap. New rows and retries become due ahead of it.
//! - when an attempt ends, what it may have unblocked is looked up directly:
//!   that user's and that host's due deliveries (if the cap was full) and the
//!   call's next change (if this one is done), each by its own index.
//! - a delivery that could start but for the overall cap moves the cursor
//!   back to it, so the next scan takes it once a slot frees.
//! - a delivery another daemon on the database is sending (its claim,
//!   [`crate::store::Store::claim_delivery`]) is passed over without a
//!   slot: when that daemon is done, it looks up the call's next change
//!   itself; a retry is due again ahead of every cursor.
//! - every `FULL_RESCAN` (30 s) the cursor starts over, a safety net for what the
//!   rules above cannot see (a wall clock set back, an attempt that could
//!   not be recorded).
//!
//! The order of a call's changes and at-least-once delivery are the
//! store's: a delivery is done only once its attempt is recorded.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::call::now_ms;
use crate::config::WebhooksConfig;
use crate::metrics::Metrics;
use crate::store::{Attempt, AttemptVerdict, Db, Delivery, DueRef, DueScope, OutboxPosition, StoreError};

/// Due deliveries one database query looks at: bounds how long the
/// database thread is held by one look, whatever the backlog.
const WINDOW: u32 = 256;
/// Longest sleep between looks at the outbox (new rows are not signalled).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How often the cursor starts over (see the module doc).
const FULL_RESCAN: Duration = Duration::from_secs(30);

/// The concurrency caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Attempts in progress at once overall.
    pub global: u32,
    /// ...to one destination host.
    pub per_host: u32,
    /// ...for one user's calls.
    pub per_user: u32,
}

impl Caps {
    /// The caps of `[webhooks]`.
    pub fn from_config(policy: &WebhooksConfig) -> Caps {
        Caps {
            global: policy.max_concurrent,
            per_host: policy.max_concurrent_per_host,
            per_user: policy.max_concurrent_per_user,
        }
    }
}

/// Whether a due delivery may start now, and if not, what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Start,
    InFlight,
    BehindEarlier,
    UserFull,
    HostFull,
    GlobalFull,
}

/// The attempts in progress, counted against the caps.
#[derive(Debug, Clone)]
struct Slots {
    caps: Caps,
    in_flight: HashMap<i64, (Option<i64>, String)>,
    per_user: HashMap<Option<i64>, u32>,
    per_host: HashMap<String, u32>,
}

/// The caps that were full before an attempt ended: their waiting
/// deliveries may start now.
#[derive(Debug, Default, PartialEq, Eq)]
struct Freed {
    user: Option<Option<i64>>,
    host: Option<String>,
}

impl Slots {
    fn new(caps: Caps) -> Slots {
        Slots { caps, in_flight: HashMap::new(), per_user: HashMap::new(), per_host: HashMap::new() }
    }

    fn user_count(&self, user: Option<i64>) -> u32 {
        self.per_user.get(&user).copied().unwrap_or(0)
    }

    fn host_count(&self, host: &str) -> u32 {
        self.per_host.get(host).copied().unwrap_or(0)
    }

    fn global_full(&self) -> bool {
        self.in_flight.len() >= self.caps.global as usize
    }

    /// The key caps come before the overall one: a delivery they hold waits
    /// for its own key's slot (found by a lookup of that key), while one held
    /// only by the overall cap must be found again by the next scan.
    fn verdict(&self, d: &DueRef) -> Verdict {
        if self.in_flight.contains_key(&d.position.id) {
            Verdict::InFlight
        } else if d.behind_earlier {
            Verdict::BehindEarlier
        } else if self.user_count(d.user_id) >= self.caps.per_user {
            Verdict::UserFull
        } else if self.host_count(&d.host) >= self.caps.per_host {
            Verdict::HostFull
        } else if self.global_full() {
            Verdict::GlobalFull
        } else {
            Verdict::Start
        }
    }

    fn take(&mut self, id: i64, user: Option<i64>, host: &str) {
        if self.in_flight.insert(id, (user, host.to_owned())).is_none() {
            *self.per_user.entry(user).or_default() += 1;
            *self.per_host.entry(host.to_owned()).or_default() += 1;
        }
    }

    fn release(&mut self, id: i64) -> Freed {
        let Some((user, host)) = self.in_flight.remove(&id) else { return Freed::default() };
        let mut freed = Freed::default();
        let n = self.per_user.entry(user).or_default();
        if *n >= self.caps.per_user {
            freed.user = Some(user);
        }
        *n -= 1;
        if *n == 0 {
            self.per_user.remove(&user);
        }
        let n = self.per_host.entry(host.clone()).or_default();
        if *n >= self.caps.per_host {
            freed.host = Some(host.clone());
        }
        *n -= 1;
        if *n == 0 {
            self.per_host.remove(&host);
        }
        freed
    }

    /// Whether a lookup of `scope` could still start something.
    fn room_for(&self, scope: &DueScope) -> bool {
        !self.global_full()
            && match scope {
                DueScope::All | DueScope::Call(_) => true,
                DueScope::User(user) => self.user_count(*user) < self.caps.per_user,
                DueScope::Host(host) => self.host_count(host) < self.caps.per_host,
            }
    }
}

/// What one window of due deliveries leads to.
#[derive(Debug, PartialEq, Eq)]
struct Picked<T> {
    /// Deliveries to start, in order, as their claims handed them over.
    start: Vec<T>,
    /// The last row looked at and dealt with (started, left waiting for an
    /// attempt of ours to end, or being sent by another daemon).
    passed: Option<OutboxPosition>,
    /// The first row that could start but for the overall cap; nothing
    /// after it was looked at.
    stalled: Option<OutboxPosition>,
}

/// Takes slots in `slots` for the rows of `window` that may start and that
/// `claim` hands over. `claim` gives `None` for a row another daemon on the
/// database is sending (or that is no longer pending): it takes no slot,
/// so a later row may have it. (Counting such a row's slot would leave the
/// rows after it behind the cursor, held by a cap that no attempt of ours
/// will free - until the next full rescan.)
fn pick<T, E>(
    slots: &mut Slots,
    window: &[DueRef],
    mut claim: impl FnMut(&DueRef) -> Result<Option<T>, E>,
) -> Result<Picked<T>, E> {
    let mut picked = Picked { start: Vec::new(), passed: None, stalled: None };
    for d in window {
        match slots.verdict(d) {
            Verdict::Start => {
                if let Some(claimed) = claim(d)? {
                    slots.take(d.position.id, d.user_id, &d.host);
                    picked.start.push(claimed);
                }
            }
            Verdict::GlobalFull => {
                picked.stalled = Some(d.position);
                break;
            }
            Verdict::InFlight | Verdict::BehindEarlier | Verdict::UserFull | Verdict::HostFull => {}
        }
        picked.passed = Some(d.position);
    }
    Ok(picked)
}

/// A lookup of due deliveries still to make.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lookup {
    scope: DueScope,
    after: Option<OutboxPosition>,
}

/// How an attempt ended, as the worker needs it.
struct Ended {
    delivery: i64,
    /// The delivery is done (delivered or given up) and recorded: the
    /// call's next change may go.
    done: bool,
    call_id: String,
}

/// One attempt: sends the delivery and says what became of it. The outbox
/// records it.
pub trait Attempter: Send + Sync + 'static {
    /// Makes the attempt.
    fn attempt(&self, delivery: Delivery) -> impl Future<Output = (Attempt, AttemptVerdict)> + Send;
}

/// The worker: the slots, the cursor and the attempts in progress.
pub struct Outbox<A> {
    db: Db,
    attempter: Arc<A>,
    metrics: Arc<Metrics>,
    slots: Slots,
    cursor: Option<OutboxPosition>,
    lookups: VecDeque<Lookup>,
    tasks: JoinSet<Ended>,
    task_delivery: HashMap<tokio::task::Id, i64>,
    /// Test hook: the ids in progress, each time the worker has looked at
    /// everything it could and is about to wait.
    idle: Option<tokio::sync::mpsc::UnboundedSender<Vec<i64>>>,
}

impl<A: Attempter> Outbox<A> {
    /// A worker over `db` making attempts with `attempter`.
    pub fn new(db: Db, caps: Caps, attempter: A, metrics: Arc<Metrics>) -> Outbox<A> {
        Outbox {
            db,
            attempter: Arc::new(attempter),
            metrics,
            slots: Slots::new(caps),
            cursor: None,
            lookups: VecDeque::new(),
            tasks: JoinSet::new(),
            task_delivery: HashMap::new(),
            idle: None,
        }
    }

    /// Reports the ids in progress on `tx` whenever the worker goes idle.
    #[cfg(test)]
    fn report_idle(mut self, tx: tokio::sync::mpsc::UnboundedSender<Vec<i64>>) -> Self {
        self.idle = Some(tx);
        self
    }

    /// Runs until `shutdown`. Attempts in progress then are dropped
    /// unrecorded, so they are made again after a restart.
    pub async fn run(mut self, shutdown: CancellationToken) {
        match self.db.run(|s| s.fill_delivery_hosts()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "webhook outbox: hosts recorded for older deliveries"),
            Err(e) => tracing::error!(error = %e, "webhook outbox: could not record hosts of older deliveries"),
        }
        let mut rescan_at = Instant::now() + FULL_RESCAN;
        loop {
            if Instant::now() >= rescan_at {
                self.cursor = None;
                rescan_at = Instant::now() + FULL_RESCAN;
            }
            self.lookups.push_back(Lookup { scope: DueScope::All, after: None });
            while let Some(lookup) = self.lookups.pop_front() {
                let looked = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    looked = self.look(lookup) => looked,
                };
                if let Err(e) = looked {
                    // What the dropped lookups would have found, the next
                    // scans and the full rescan find.
                    tracing::error!(error = %e, "webhook outbox unreadable");
                    self.lookups.clear();
                }
            }
            if let Some(idle) = &self.idle {
                let mut ids: Vec<i64> = self.slots.in_flight.keys().copied().collect();
                ids.sort_unstable();
                let _ = idle.send(ids);
            }
            let now = now_ms();
            let next = self.db.run(move |s| s.next_due_after(now)).await.ok().flatten();
            let wait = match next {
                Some(at) => Duration::from_millis((at - now).clamp(0, IDLE_POLL.as_millis() as i64) as u64),
                None => IDLE_POLL,
            };
            let ended = tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(ended) = self.tasks.join_next_with_id() => Some(ended),
                _ = tokio::time::sleep(wait) => None,
            };
            if let Some(ended) = ended {
                self.ended(ended);
                while let Some(ended) = self.tasks.try_join_next_with_id() {
                    self.ended(ended);
                }
            }
        }
    }

    /// One window of `lookup`: starts what may start, moves the cursor, and
    /// queues the next window if this one was full and more could start.
    async fn look(&mut self, lookup: Lookup) -> Result<(), StoreError> {
        if lookup.scope == DueScope::All && self.slots.global_full() {
            return Ok(());
        }
        let now = now_ms();
        let after = if lookup.scope == DueScope::All { self.cursor } else { lookup.after };
        let mut slots = self.slots.clone();
        let scope = lookup.scope.clone();
        // Deciding on the database thread lets one job read the window and
        // claim the chosen rows; the slots it took come back as ours, as
        // nothing else changes them meanwhile (`&mut self`).
        let (seen, picked, slots) = self
            .db
            .run(move |s| {
                let window = s.due_window(now, &scope, after, WINDOW)?;
                let picked = pick(&mut slots, &window, |d| s.claim_delivery(d.position.id))?;
                Ok((window.len(), picked, slots))
            })
            .await?;
        self.slots = slots;
        for d in picked.start {
            self.start(d);
        }
        if let Some(stalled) = picked.stalled {
            self.rewind(stalled.just_before());
        }
        let passed = picked.passed.or(after);
        if lookup.scope == DueScope::All {
            self.cursor = passed;
        }
        if seen == WINDOW as usize && picked.stalled.is_none() {
            if self.slots.room_for(&lookup.scope) {
                self.lookups.push_front(Lookup { scope: lookup.scope, after: passed });
            } else if self.slots.global_full()
                && let Some(passed) = passed
            {
                // The rest of this scope waits for an overall slot, which
                // only the cursor's scan hands out: bring it back to here.
                self.rewind(passed);
            }
        }
        Ok(())
    }

    fn rewind(&mut self, to: OutboxPosition) {
        if let Some(cursor) = self.cursor
            && cursor > to
        {
            self.cursor = Some(to);
        }
    }

    fn queue(&mut self, scope: DueScope) {
        if !self.lookups.iter().any(|l| l.scope == scope) {
            self.lookups.push_back(Lookup { scope, after: None });
        }
    }

    fn start(&mut self, d: Delivery) {
        let span = tracing::info_span!("call", call_id = %d.call_id);
        let delivery = d.id;
        let task = attempt(self.db.clone(), self.attempter.clone(), self.metrics.clone(), d).instrument(span);
        let handle = self.tasks.spawn(task);
        self.task_delivery.insert(handle.id(), delivery);
    }

    fn ended(&mut self, result: Result<(tokio::task::Id, Ended), tokio::task::JoinError>) {
        let (task, ended) = match result {
            Ok((task, ended)) => (task, Some(ended)),
            Err(e) => {
                // Unrecorded, so still pending where it was: the next full
                // rescan finds it, which also spaces out a crash loop.
                tracing::error!(error = %e, "webhook attempt task failed");
                (e.id(), None)
            }
        };
        let Some(delivery) = self.task_delivery.remove(&task) else { return };
        let freed = self.slots.release(delivery);
        if let Some(user) = freed.user {
            self.queue(DueScope::User(user));
        }
        if let Some(host) = freed.host {
            self.queue(DueScope::Host(host));
        }
        if let Some(ended) = ended
            && ended.done
        {
            debug_assert_eq!(ended.delivery, delivery);
            self.queue(DueScope::Call(ended.call_id));
        }
    }
}

/// Makes one attempt and records it; the metric and log line say how it went.
async fn attempt<A: Attempter>(db: Db, attempter: Arc<A>, metrics: Arc<Metrics>, d: Delivery) -> Ended {
    let (id, call_id, status, attempts) = (d.id, d.call_id.clone(), d.status.clone(), d.attempts + 1);
    let (record, verdict) = attempter.attempt(d).await;
    let outcome = match verdict {
        AttemptVerdict::Delivered => "delivered",
        AttemptVerdict::RetryAt(_) => "failed",
        AttemptVerdict::GiveUp => "gave_up",
    };
    metrics.webhook_attempt(outcome);
    tracing::info!(
        delivery = id,
        status = %status,
        attempt = attempts,
        http_status = record.http_status,
        error = record.error.as_deref(),
        outcome,
        "webhook attempt"
    );
    let recorded = db.run(move |s| s.record_attempt(id, &record, verdict)).await;
    if let Err(e) = &recorded {
        tracing::error!(delivery = id, error = %e, "could not record webhook attempt");
    }
    let done = recorded.is_ok() && matches!(verdict, AttemptVerdict::Delivered | AttemptVerdict::GiveUp);
    Ended { delivery: id, done, call_id }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::CallId;
    use crate::call::options::{CallMode, CallOptions};
    use crate::store::testing::{Backend, async_backends};
    use crate::store::{CallEnd, NewCall, NewCallLifecycle, Store};

    fn due(id: i64, user: i64, host: &str) -> DueRef {
        DueRef {
            position: OutboxPosition { at: 1_000, id },
            call_id: format!("c{id}"),
            user_id: Some(user),
            host: host.into(),
            behind_earlier: false,
        }
    }

    #[test]
    fn picking_respects_every_cap_and_the_call_order() {
        let mut slots = Slots::new(Caps { global: 4, per_host: 2, per_user: 2 });
        let mut behind = due(5, 3, "c.example");
        behind.behind_earlier = true;
        let window = [
            due(1, 1, "a.example"),
            due(2, 1, "a.example"),
            due(3, 1, "b.example"), // user 1 full
            due(4, 2, "a.example"), // a.example full
            behind,
            due(6, 2, "b.example"),
            due(7, 3, "c.example"),
            due(8, 3, "d.example"), // the overall cap: stop here
            due(9, 4, "e.example"),
        ];
        let picked = pick(&mut slots, &window, |d| Ok::<_, ()>(Some(d.position.id))).unwrap();
        assert_eq!(picked.start, [1, 2, 6, 7]);
        assert_eq!(picked.passed.map(|p| p.id), Some(7));
        assert_eq!(picked.stalled.map(|p| p.id), Some(8), "nothing after the stall is looked at");
        assert_eq!(slots.verdict(&window[0]), Verdict::InFlight);
        assert_eq!(slots.verdict(&window[2]), Verdict::UserFull);
        assert_eq!(slots.verdict(&window[3]), Verdict::HostFull);
        assert_eq!(slots.verdict(&window[4]), Verdict::BehindEarlier);
        assert_eq!(slots.verdict(&window[7]), Verdict::GlobalFull);

        // Ending an attempt frees the caps that were full, and only those.
        assert_eq!(slots.release(1), Freed { user: Some(Some(1)), host: Some("a.example".into()) });
        assert_eq!(slots.release(7), Freed::default());
        assert_eq!(slots.release(7), Freed::default(), "twice is harmless");
        assert_eq!(slots.verdict(&window[2]), Verdict::Start);
        assert!(slots.room_for(&DueScope::User(Some(1))) && slots.room_for(&DueScope::Host("a.example".into())));
        assert!(slots.room_for(&DueScope::User(Some(9))), "a user with nothing in progress");
        let mut one_slot = Slots::new(Caps { global: 1, per_host: 1, per_user: 1 });
        one_slot.take(1, Some(1), "a.example");
        assert!(!one_slot.room_for(&DueScope::User(Some(2))), "no overall slot: no room anywhere");
        assert_eq!(slots.in_flight.len(), 2);
        slots.release(2);
        slots.release(6);
        assert!(slots.in_flight.is_empty() && slots.per_user.is_empty() && slots.per_host.is_empty());
    }

    #[test]
    fn rows_another_daemon_sends_take_no_slot() {
        let mut slots = Slots::new(Caps { global: 8, per_host: 8, per_user: 2 });
        let window: Vec<DueRef> = (1..=4).map(|id| due(id, 1, "a.example")).collect();
        let elsewhere = [1, 2];
        let picked =
            pick(&mut slots, &window, |d| Ok::<_, ()>((!elsewhere.contains(&d.position.id)).then_some(d.position.id)))
                .unwrap();
        assert_eq!(picked.start, [3, 4], "the user's two slots go to the rows claimed");
        assert_eq!(picked.passed.map(|p| p.id), Some(4));
        assert_eq!(slots.user_count(Some(1)), 2);
        assert!(!slots.in_flight.contains_key(&1));
        let failed = pick(&mut Slots::new(slots.caps), &window, |_| Err::<Option<i64>, _>("db down"));
        assert_eq!(failed, Err("db down"), "a claim that fails ends the pick");
    }

    /// An attempt in progress, or the verdict the test gave before it began.
    enum Plan {
        Waiting(tokio::sync::oneshot::Sender<AttemptVerdict>),
        Decided(AttemptVerdict),
    }

    /// An attempter whose attempts end when the test says so.
    #[derive(Default)]
    struct Remote {
        plans: std::sync::Mutex<HashMap<String, Plan>>,
    }

    impl Attempter for Arc<Remote> {
        async fn attempt(&self, d: Delivery) -> (Attempt, AttemptVerdict) {
            let key = format!("{}/{}", d.call_id, d.status);
            let rx = {
                let mut plans = self.plans.lock().unwrap();
                if let Some(Plan::Decided(verdict)) = plans.remove(&key) {
                    return (Attempt { http_status: Some(200), error: None, duration_ms: 1 }, verdict);
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                plans.insert(key, Plan::Waiting(tx));
                rx
            };
            let verdict = rx.await.unwrap_or(AttemptVerdict::GiveUp);
            (Attempt { http_status: Some(200), error: None, duration_ms: 1 }, verdict)
        }
    }

    impl Remote {
        /// Ends the attempt of `call`'s `status` change, now or when it begins.
        fn end(&self, call: &CallId, status: &str, verdict: AttemptVerdict) {
            let key = format!("{}/{status}", call.as_str());
            let mut plans = self.plans.lock().unwrap();
            match plans.remove(&key) {
                Some(Plan::Waiting(tx)) => tx.send(verdict).unwrap(),
                _ => {
                    plans.insert(key, Plan::Decided(verdict));
                }
            }
        }
    }

    struct World {
        db: Db,
        remote: Arc<Remote>,
        idle: tokio::sync::mpsc::UnboundedReceiver<Vec<i64>>,
        names: HashMap<i64, String>,
        shutdown: CancellationToken,
    }

    impl World {
        /// A worker over a store `setup` filled; returns the calls it made.
        async fn start(
            b: Backend,
            caps: Caps,
            setup: impl FnOnce(&mut Store) -> Vec<CallId> + Send + 'static,
        ) -> (World, Vec<CallId>) {
            World::start_of(b, None, caps, setup).await
        }

        /// [`World::start`] with the worker's store working for daemon
        /// `owner` on a database several daemons share.
        async fn start_of(
            b: Backend,
            owner: Option<&str>,
            caps: Caps,
            setup: impl FnOnce(&mut Store) -> Vec<CallId> + Send + 'static,
        ) -> (World, Vec<CallId>) {
            let (made, calls_made) = std::sync::mpsc::channel();
            // On PostgreSQL a pool of four: the worker's reads and writes
            // race each other as they do in a daemon.
            let db = b.db_of(owner, 4, move |store| {
                let calls = setup(store);
                let mut names = HashMap::new();
                for call in &calls {
                    for d in store.call_deliveries(call).unwrap() {
                        names.insert(d.id, key(call, &d.status));
                    }
                }
                made.send((calls, names)).unwrap();
            });
            let (calls, names) = calls_made.recv().unwrap();
            let remote = Arc::new(Remote::default());
            let (idle_tx, idle) = tokio::sync::mpsc::unbounded_channel();
            let shutdown = CancellationToken::new();
            let outbox = Outbox::new(db.clone(), caps, remote.clone(), Arc::new(Metrics::new())).report_idle(idle_tx);
            tokio::spawn(outbox.run(shutdown.clone()));
            (World { db, remote, idle, names, shutdown }, calls)
        }

        /// Waits until the worker, having looked at everything it could,
        /// has exactly `expected` attempts in progress.
        async fn in_progress(&mut self, expected: &[String]) {
            let mut expected = expected.to_vec();
            expected.sort();
            let mut last = Vec::new();
            let wait = async {
                loop {
                    let ids = self.idle.recv().await.expect("worker alive");
                    last = ids.iter().map(|id| self.names[id].clone()).collect::<Vec<_>>();
                    last.sort();
                    if last == expected {
                        return;
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(10), wait).await.is_err() {
                panic!("never idle with {expected:?} in progress; last: {last:?}");
            }
        }
    }

    fn english() -> CallOptions {
        CallOptions { language: "en".into(), require_keypress: false, mode: CallMode::Read }
    }

    /// A call of `user` to `url`, taken through `statuses` ("dialing", "failed").
    fn call(s: &mut Store, user: &str, url: &str, statuses: &[&str]) -> CallId {
        let u = match s.user(user).unwrap() {
            Some(u) => u,
            None => s.add_user(user, "h").unwrap(),
        };
        let id = CallId::generate();
        let life = NewCallLifecycle { callback_url: Some(url.into()), ..NewCallLifecycle::default() };
        s.insert_call_with(
            &NewCall { id: &id, user_id: u.id, number: "+923001234567", code: "1234", options: &english() },
            &life,
        )
        .unwrap();
        for status in statuses {
            match *status {
                "dialing" => s.mark_dialing(&id).unwrap(),
                "failed" => s.finish_call(&id, &CallEnd::failed(crate::call::FailReason::Busy, None)).unwrap(),
                other => panic!("{other}"),
            };
        }
        id
    }

    fn key(call: &CallId, status: &str) -> String {
        format!("{}/{status}", call.as_str())
    }

    async_backends! {
        async fn a_hung_user_holds_only_its_own_slots(b) {
            let caps = Caps { global: 8, per_host: 3, per_user: 2 };
            let (mut w, calls) = World::start(b, caps, |s| {
                let mut v: Vec<CallId> = (0..4).map(|_| call(s, "a", "http://hang.example/", &["dialing"])).collect();
                v.push(call(s, "b", "http://b.example/", &["dialing", "failed"]));
                v
            })
            .await;
            let (a, b) = (&calls[..4], &calls[4]);
            // A's first two start (its cap), B's first change alongside.
            w.in_progress(&[key(&a[0], "dialing"), key(&a[1], "dialing"), key(b, "dialing")]).await;
            // B's next change goes as soon as its first is done, A's still hung.
            w.remote.end(b, "dialing", AttemptVerdict::Delivered);
            w.in_progress(&[key(&a[0], "dialing"), key(&a[1], "dialing"), key(b, "failed")]).await;
            w.remote.end(b, "failed", AttemptVerdict::Delivered);
            // A's cap holds its other two.
            w.in_progress(&[key(&a[0], "dialing"), key(&a[1], "dialing")]).await;
            // One of A's ends: its next due delivery takes the slot at once.
            w.remote.end(&a[0], "dialing", AttemptVerdict::RetryAt(now_ms() + 3_600_000));
            w.in_progress(&[key(&a[1], "dialing"), key(&a[2], "dialing")]).await;
            w.shutdown.cancel();
            let pending = w.db.run(|s| s.pending_deliveries()).await.unwrap();
            assert_eq!(pending, 4, "A's four remain pending; B's two are delivered");
        }

        async fn a_shared_host_and_the_overall_cap_hand_slots_on(b) {
            let caps = Caps { global: 2, per_host: 1, per_user: 4 };
            let (mut w, c) = World::start(b, caps, |s| {
                vec![
                    call(s, "a", "http://shared.example/a", &["dialing"]),
                    call(s, "b", "http://SHARED.example:8080/b", &["dialing"]),
                    call(s, "c", "http://c1.example/", &["dialing"]),
                    call(s, "c", "http://c2.example/", &["dialing"]),
                ]
            })
            .await;
            // shared.example takes one at a time; the overall cap of two leaves
            // C's second waiting for an overall slot, B for its host.
            w.in_progress(&[key(&c[0], "dialing"), key(&c[2], "dialing")]).await;
            // An overall slot frees: C's second takes it (B still waits for its host).
            w.remote.end(&c[2], "dialing", AttemptVerdict::Delivered);
            w.in_progress(&[key(&c[0], "dialing"), key(&c[3], "dialing")]).await;
            // The shared host frees: B's goes.
            w.remote.end(&c[0], "dialing", AttemptVerdict::Delivered);
            w.in_progress(&[key(&c[1], "dialing"), key(&c[3], "dialing")]).await;
            w.remote.end(&c[1], "dialing", AttemptVerdict::Delivered);
            w.remote.end(&c[3], "dialing", AttemptVerdict::Delivered);
            w.in_progress(&[]).await;
            assert_eq!(w.db.run(|s| s.pending_deliveries()).await.unwrap(), 0);
            w.shutdown.cancel();
        }

        async fn deliveries_another_daemon_sends_leave_our_slots_to_the_next(b) {
            // The first two of a user's four deliveries are being sent by
            // daemon b: daemon a's two slots for that user go to the other
            // two at once, not after the next full rescan.
            let caps = Caps { global: 8, per_host: 8, per_user: 2 };
            let (mut w, c) = World::start_of(b, Some("daemon-a"), caps, |s| {
                let v: Vec<CallId> = (0..4).map(|_| call(s, "a", "http://a.example/", &["dialing"])).collect();
                // b is alive (its lease fresh), so its claims hold.
                s.execute_for_tests(
                    "INSERT INTO daemons (id, started_at, seen_at) VALUES ('daemon-b', ?1, ?1)",
                    &[now_ms().into()],
                );
                for id in &v[..2] {
                    s.execute_for_tests(
                        "UPDATE webhook_deliveries SET claimed_by = 'daemon-b', claimed_until = ?2 WHERE call_id = ?1",
                        &[id.as_str().into(), (now_ms() + 3_600_000).into()],
                    );
                }
                v
            })
            .await;
            w.in_progress(&[key(&c[2], "dialing"), key(&c[3], "dialing")]).await;
            w.shutdown.cancel();
        }

        async fn a_calls_next_change_waits_for_its_retry(b) {
            let (mut w, c) = World::start(b, Caps { global: 4, per_host: 4, per_user: 4 }, |s| {
                vec![call(s, "a", "http://a.example/", &["dialing", "failed"])]
            })
            .await;
            w.in_progress(&[key(&c[0], "dialing")]).await;
            // A retry soon (but not before the idle turn is seen on a slow
            // machine): the later change still waits, then follows.
            w.remote.end(&c[0], "dialing", AttemptVerdict::RetryAt(now_ms() + 2_000));
            w.in_progress(&[]).await;
            w.in_progress(&[key(&c[0], "dialing")]).await;
            w.remote.end(&c[0], "dialing", AttemptVerdict::GiveUp);
            w.in_progress(&[key(&c[0], "failed")]).await;
            w.shutdown.cancel();
        }

        async fn a_backlog_larger_than_a_window_is_worked_through(b) {
            // More due deliveries than one window, all of one hung user ahead of
            // another user's: the scan pages past them to B's.
            let caps = Caps { global: 64, per_host: 64, per_user: 1 };
            let n = WINDOW as usize + 10;
            let (mut w, c) = World::start(b, caps, move |s| {
                let mut v: Vec<CallId> = (0..n).map(|_| call(s, "a", "http://a.example/", &["dialing"])).collect();
                v.push(call(s, "b", "http://b.example/", &["dialing"]));
                v
            })
            .await;
            w.in_progress(&[key(&c[0], "dialing"), key(&c[n], "dialing")]).await;
            w.remote.end(&c[0], "dialing", AttemptVerdict::Delivered);
            w.in_progress(&[key(&c[1], "dialing"), key(&c[n], "dialing")]).await;
            w.shutdown.cancel();
        }
    }
}
