//! Abuse limits: who may make the daemon place a call, how often, and where
//! to. Every refusal names the configuration key of the rule that refused.
//!
//! A request to place a call passes, in this order:
//! 1. [`Limits::login`]: the failed-login limits, then the credentials.
//!    Failures are counted per client address and per (user name, client
//!    address); either one full refuses that address *before* any password
//!    check. A name is never locked: when it has many recent failures (from
//!    anywhere), the bcrypt verifies it may still cost are rationed to a slow
//!    rate, so the right password from an address with no failures gets
//!    through after a short wait at worst, and credentials the cache already
//!    vouches for pass at once. Each login in progress holds its failure
//!    slots until it is proven right, so neither concurrent guesses nor
//!    clients that hang up mid-verify get more verifies than the limits allow.
//! 2. [`Limits::check_request`]: the user's request rate, then the
//!    toll-fraud guard (allowed destination countries and prefixes, refused
//!    kinds of line such as premium rate).
//! 3. [`NumberQuota::check`] and [`UserQuota::check`], run in the same store
//!    operation as the insert of the call: calls per destination number per
//!    short window and per day, counted from the `calls` table, and calls
//!    per user per day, from hourly counts a trigger keeps (so they survive
//!    a restart and two requests racing for the last slot cannot both get it).
//!
//! Any front end (the seed API, a JSON API) makes the same three calls.
//! Per-minute and failed-login windows live in memory: a restart forgets
//! them, which at worst grants one extra window. On a database several
//! daemons share (PostgreSQL), the failed logins are shared too
//! ([`Limits::shared_through`]): each daemon writes the failures - and the
//! successes that forgive them - it sees, and adds the others' to its own
//! windows before every login (read at most every [`SHARED_READ_EVERY`]),
//! so guesses spread over the daemons count as one daemon's would, and a
//! restarted daemon reads back the day's. The per-minute request rate and
//! the ration of a name's verifies stay per daemon.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::{AuthError, Authenticator, Lookup};
use crate::config::{LimitsConfig, PhoneConfig};
use crate::phone::{Country, NumberType, PhoneNumber};
use crate::secret::Secret;
use crate::store::{Db, LoginEvent, LoginEventKind, Store, StoreError, User};

/// How often a daemon sharing its database reads the other daemons' failed
/// logins: at most once per this, before a login.
pub const SHARED_READ_EVERY: Duration = Duration::from_millis(250);

/// Events read per database trip.
const SHARED_READ_BATCH: u32 = 500;

/// One day, the window of `limits.number_calls_per_day`.
const DAY: Duration = Duration::from_secs(86_400);

/// What kind of rule refused a request; each front end words it (the seed
/// API's status and reason phrase, the JSON API's problem type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// A rate or quota is used up (HTTP 429); a retry can succeed later.
    TooMany,
    /// The toll-fraud guard (HTTP 403). Retrying does not help.
    Forbidden,
    /// The call queue is full (HTTP 503): Asterisk down or the trunk
    /// saturated for long.
    QueueFull,
}

/// Why a request was refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Which kind of rule.
    pub kind: RefusalKind,
    /// What exactly, for the caller, naming the configuration key of the
    /// rule, e.g. `limit of 3 calls per 600 s to this number reached
    /// (limits.number_calls_per_window)`. No status words: the front end
    /// adds its own.
    pub detail: String,
    /// When a retry can succeed at the earliest, when it can.
    pub retry_after: Option<Duration>,
}

impl Refusal {
    /// A used-up rate or quota that frees up after `retry_after`.
    pub fn too_many(detail: impl Into<String>, retry_after: Duration) -> Refusal {
        Refusal { kind: RefusalKind::TooMany, detail: detail.into(), retry_after: Some(retry_after) }
    }

    /// A destination the toll-fraud guard does not allow.
    pub fn forbidden(detail: impl Into<String>) -> Refusal {
        Refusal { kind: RefusalKind::Forbidden, detail: detail.into(), retry_after: None }
    }

    /// A full call queue; `retry_after` is a suggestion.
    pub fn queue_full(detail: impl Into<String>, retry_after: Duration) -> Refusal {
        Refusal { kind: RefusalKind::QueueFull, detail: detail.into(), retry_after: Some(retry_after) }
    }
}

/// Why [`Limits::login`] let nobody in.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Too many failed logins for this name or address: no password check ran.
    #[error("login refused by a limit")]
    Limited(Refusal),
    /// Unknown user, wrong password or disabled user (one answer for all).
    #[error("unauthorized")]
    Unauthorized,
    /// The check could not come to a verdict (the user table, the bcrypt task).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// The in-memory limits of one daemon, shared by every request.
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    allowed_countries: Vec<Country>,
    allowed_prefixes: Vec<String>,
    refused_types: Vec<NumberType>,
    user_requests: Mutex<SlidingWindows<i64>>,
    logins: Mutex<LoginBook>,
    shared: Option<SharedLogins>,
}

/// The failed logins of the other daemons on a shared database.
struct SharedLogins {
    db: Db,
    /// This daemon's id: its own events are not read back.
    daemon: String,
    /// How often to read (tests: at every login).
    every: Duration,
    /// The last event read, and when; one reader at a time.
    read: tokio::sync::Mutex<(i64, Option<Instant>)>,
}

impl std::fmt::Debug for SharedLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLogins").field("daemon", &self.daemon).finish_non_exhaustive()
    }
}

/// Every failed-login count, behind one lock so that checking them and
/// taking slots is one step.
#[derive(Debug)]
struct LoginBook {
    /// Failures per client address, whatever the name.
    by_ip: SlidingWindows<IpAddr>,
    /// Failures per (name, client address).
    by_user_ip: SlidingWindows<(String, IpAddr)>,
    /// Failures per name, from every address: beyond the limit the name's
    /// verifies are rationed by `verify_rate`.
    by_user: SlidingWindows<String>,
    /// The ration of verifies for names over their failure limit.
    verify_rate: RateGates<String>,
}

impl Limits {
    /// Limits as configured.
    pub fn new(config: &LimitsConfig, phone: &PhoneConfig) -> Limits {
        let failure_window = Duration::from_secs(config.login_failure_window_secs);
        Limits {
            config: config.clone(),
            allowed_countries: phone.allowed_countries(),
            allowed_prefixes: phone.allowed_prefixes.clone(),
            refused_types: phone.refused_number_types.clone(),
            user_requests: Mutex::new(SlidingWindows::new(config.user_requests_per_minute, Duration::from_secs(60))),
            logins: Mutex::new(LoginBook {
                by_ip: SlidingWindows::new(config.login_failures_per_ip, failure_window),
                by_user_ip: SlidingWindows::new(config.login_failures_per_user_ip, failure_window),
                by_user: SlidingWindows::new(config.login_failures_per_user, failure_window),
                verify_rate: RateGates::per_minute(config.login_verifies_per_user_per_minute),
            }),
            shared: None,
        }
    }

    /// The same limits, with failed logins shared with every other daemon
    /// on `db` (see the module docs); `daemon` is this one's id there.
    pub fn shared_through(self, db: Db, daemon: String) -> Limits {
        self.shared_every(db, daemon, SHARED_READ_EVERY)
    }

    fn shared_every(mut self, db: Db, daemon: String, every: Duration) -> Limits {
        self.shared = Some(SharedLogins { db, daemon, every, read: tokio::sync::Mutex::new((0, None)) });
        self
    }

    /// Adds the other daemons' logins written since the last read to the
    /// windows. A database failure is logged: the local counts still hold.
    async fn read_shared(&self) {
        let Some(shared) = &self.shared else { return };
        let mut read = shared.read.lock().await;
        if read.1.is_some_and(|at| at.elapsed() < shared.every) {
            return;
        }
        loop {
            let (daemon, after) = (shared.daemon.clone(), read.0);
            let events = match shared.db.run(move |s| s.login_events_after(&daemon, after, SHARED_READ_BATCH)).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::error!(error = %e, "could not read the other daemons' failed logins");
                    return;
                }
            };
            let Some(last) = events.last().map(|e| e.id) else { break };
            self.apply_shared(&events);
            read.0 = last;
            if events.len() < SHARED_READ_BATCH as usize {
                break;
            }
        }
        read.1 = Some(Instant::now());
    }

    fn apply_shared(&self, events: &[LoginEvent]) {
        let (now, now_ms) = (Instant::now(), crate::time::now_ms());
        let mut book = lock(&self.logins);
        for e in events {
            let pair = (e.name.clone(), e.ip);
            match e.kind {
                LoginEventKind::Failed { verified } => {
                    let ago = Duration::from_millis(u64::try_from(now_ms - e.at_ms).unwrap_or(0));
                    // Older than this process's clock can say: long gone.
                    let Some(at) = now.checked_sub(ago) else { continue };
                    book.by_ip.record_at(e.ip, at);
                    book.by_user_ip.record_at(pair, at);
                    if verified {
                        book.by_user.record_at(e.name.clone(), at);
                    }
                }
                LoginEventKind::Succeeded => {
                    book.by_user.clear(&e.name);
                    book.by_user_ip.clear(&pair);
                }
            }
        }
    }

    /// Writes a login this daemon saw for the others to count.
    async fn share(&self, kind: LoginEventKind, name: &str, client: IpAddr) {
        let Some(shared) = &self.shared else { return };
        let (daemon, name) = (shared.daemon.clone(), name.to_owned());
        let at = crate::time::now_ms();
        if let Err(e) = shared.db.run(move |s| s.record_login_event(&daemon, kind, &name, client, at)).await {
            tracing::error!(error = %e, "could not share a failed login with the other daemons");
        }
    }

    /// Checks `name`/`password` from `client`, behind the failed-login
    /// limits (see the module docs); a failure counts against the address,
    /// the (name, address) pair and the name.
    pub async fn login(
        &self,
        auth: &Authenticator,
        name: &str,
        password: &Secret,
        client: IpAddr,
    ) -> Result<User, LoginError> {
        self.read_shared().await;
        let client = address_bucket(client);
        let mut attempt = self.begin_login(name, client).map_err(LoginError::Limited)?;
        let pending = match auth.lookup(name, password).await {
            Ok(Lookup::Accepted(user)) => {
                let forgives = attempt.forgives();
                attempt.succeeded();
                if forgives {
                    self.share(LoginEventKind::Succeeded, name, client).await;
                }
                return Ok(user);
            }
            Ok(Lookup::Verify(pending)) => pending,
            Err(e) => {
                attempt.release();
                return Err(LoginError::Auth(e));
            }
        };
        // Refused here, the attempt stays a failure of the address and the
        // pair: the password was not proven right, and giving the slots back
        // would let a guess at a cached password cost nothing.
        if let Err(refusal) = attempt.take_verify() {
            drop(attempt);
            self.share(LoginEventKind::Failed { verified: false }, name, client).await;
            return Err(LoginError::Limited(refusal));
        }
        match pending.verify().await {
            Ok(Some(user)) => {
                let forgives = attempt.forgives();
                attempt.succeeded();
                if forgives {
                    self.share(LoginEventKind::Succeeded, name, client).await;
                }
                Ok(user)
            }
            Ok(None) => {
                let verified = attempt.name_slot;
                attempt.failed();
                self.share(LoginEventKind::Failed { verified }, name, client).await;
                Err(LoginError::Unauthorized)
            }
            Err(e) => {
                // Our fault, not the caller's: give the slots back.
                attempt.release();
                Err(LoginError::Auth(e))
            }
        }
    }

    /// Takes a failure slot for `client` and for (`name`, `client`), or
    /// says how long until one is free.
    fn begin_login(&self, name: &str, client: IpAddr) -> Result<LoginAttempt<'_>, Refusal> {
        let now = Instant::now();
        let mut book = lock(&self.logins);
        if let Err(wait) = book.by_ip.check(&client, now) {
            return Err(Refusal::too_many(
                "too many failed logins from this address (limits.login_failures_per_ip)",
                wait,
            ));
        }
        let pair = (name.to_owned(), client);
        if let Err(wait) = book.by_user_ip.check(&pair, now) {
            return Err(Refusal::too_many(
                "too many failed logins for this user name from this address (limits.login_failures_per_user_ip)",
                wait,
            ));
        }
        book.by_ip.record(client, now);
        book.by_user_ip.record(pair.clone(), now);
        Ok(LoginAttempt { limits: self, pair, name_slot: false, settled: false })
    }

    /// After a successful login: the user's request rate, then the
    /// toll-fraud guard. A refused request still counts toward the rate.
    pub fn check_request(&self, user: &User, number: &PhoneNumber) -> Result<(), Refusal> {
        let now = Instant::now();
        {
            let mut requests = lock(&self.user_requests);
            if let Err(wait) = requests.check(&user.id, now) {
                let description = format!(
                    "limit of {} requests per minute per user reached (limits.user_requests_per_minute)",
                    self.config.user_requests_per_minute
                );
                return Err(Refusal::too_many(description, wait));
            }
            requests.record(user.id, now);
        }
        self.check_destination(number)
    }

    /// The toll-fraud guard: `number` must be in an allowed country or
    /// start with an allowed prefix, and be of no refused kind (premium
    /// rate, ...: fraud pays best inside an allowed country).
    pub fn check_destination(&self, number: &PhoneNumber) -> Result<(), Refusal> {
        let country = number.country();
        let by_country = country.is_some_and(|c| self.allowed_countries.contains(&c));
        let by_prefix = self.allowed_prefixes.iter().any(|p| number.e164().starts_with(p.as_str()));
        if by_country || by_prefix {
            if self.refused_types.contains(&number.kind()) {
                return Err(Refusal::forbidden(format!(
                    "the destination is a {} number (phone.refused_number_types)",
                    number.kind().name()
                )));
            }
            return Ok(());
        }
        let what = match country {
            Some(c) => format!("destination country {} is", c.code()),
            None => "a destination outside any country is".to_owned(),
        };
        Err(Refusal::forbidden(format!("{what} not allowed (phone.allowed_countries, phone.allowed_prefixes)")))
    }

    /// The user's daily cap, to be checked inside the store operation that
    /// inserts the call.
    pub fn user_quota(&self) -> UserQuota {
        UserQuota { per_day: self.config.user_calls_per_day }
    }

    /// The per-number quotas, to be checked inside the store operation
    /// that inserts the call.
    pub fn number_quota(&self) -> NumberQuota {
        NumberQuota {
            per_window: self.config.number_calls_per_window,
            window: Duration::from_secs(self.config.number_window_secs),
            per_day: self.config.number_calls_per_day,
        }
    }
}

/// Calls to one destination number per short window and per day.
#[derive(Debug, Clone, Copy)]
pub struct NumberQuota {
    per_window: u32,
    window: Duration,
    per_day: u32,
}

impl NumberQuota {
    /// Whether one more call to `number` (E.164) fits, at `now_ms`. Run it
    /// in the same [`crate::store::Db::run`] as the insert, so two requests
    /// cannot both take the last slot.
    pub fn check(&self, store: &Store, number: &str, now_ms: i64) -> Result<Result<(), Refusal>, StoreError> {
        if self.per_window == 0 && self.per_day == 0 {
            return Ok(Ok(()));
        }
        let window_ms = millis(self.window);
        let day_ms = millis(DAY);
        let calls = store.number_calls_since(number, now_ms - day_ms.max(window_ms), now_ms - window_ms)?;
        // When the oldest call in a window leaves it, a slot frees up.
        let wait = |oldest: Option<i64>, span_ms: i64| {
            Duration::from_millis(oldest.map_or(0, |t| (t + span_ms - now_ms).max(0)) as u64)
        };
        if self.per_window > 0 && calls.recent >= self.per_window {
            let description = format!(
                "limit of {} calls per {} s to this number reached (limits.number_calls_per_window)",
                self.per_window,
                self.window.as_secs()
            );
            return Ok(Err(Refusal::too_many(description, wait(calls.oldest_recent, window_ms))));
        }
        if self.per_day > 0 && calls.since >= self.per_day {
            let description =
                format!("limit of {} calls per day to this number reached (limits.number_calls_per_day)", self.per_day);
            return Ok(Err(Refusal::too_many(description, wait(calls.oldest_since, day_ms))));
        }
        Ok(Ok(()))
    }
}

/// The key an address is counted under by the per-address limits: an IPv4
/// address as itself (also when it arrives IPv4-mapped, `::ffff:a.b.c.d`),
/// an IPv6 address as its /64. One IPv6 host usually holds a whole /64 and
/// can pick any address in it, so counting /128s apart would give it 2^64
/// fresh addresses.
pub fn address_bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(network.into())
        }
        v4 => v4,
    }
}

/// Calls one user may place per 24 hours: what a leaked credential costs.
#[derive(Debug, Clone, Copy)]
pub struct UserQuota {
    per_day: u32,
}

impl UserQuota {
    /// Whether user `user_id` may place one more call at `now_ms`. Reads at
    /// most 24 hourly counts (kept by a trigger on every stored call), never
    /// the user's calls. Run it in the same [`crate::store::Db::run`] as the
    /// insert, like [`NumberQuota::check`].
    pub fn check(&self, store: &Store, user_id: i64, now_ms: i64) -> Result<Result<(), Refusal>, StoreError> {
        if self.per_day == 0 {
            return Ok(Ok(()));
        }
        let day = store.user_calls_last_day(user_id, now_ms)?;
        if day.calls < u64::from(self.per_day) {
            return Ok(Ok(()));
        }
        // A slot frees up when the oldest hour counted leaves the day.
        let wait = day.oldest_hour_starts_ms.map_or(0, |start| (start + millis(DAY) - now_ms).max(0));
        let detail =
            format!("limit of {} calls per day for this user reached (limits.user_calls_per_day)", self.per_day);
        Ok(Err(Refusal::too_many(detail, Duration::from_millis(wait as u64))))
    }
}

/// A login in progress holding its failure slots. Dropped without a
/// verdict (the client hung up mid-verify, the bcrypt already running) it
/// stays a failure: hanging up must not buy free verifies.
struct LoginAttempt<'a> {
    limits: &'a Limits,
    /// (name, client address).
    pair: (String, IpAddr),
    /// Whether a slot of the name's own count is held too (taken only for
    /// a bcrypt verify: cache hits and refusals cost the name nothing).
    name_slot: bool,
    settled: bool,
}

impl LoginAttempt<'_> {
    /// Before a bcrypt verify: a slot of the name's failure count, or, when
    /// that is full, one of the name's rationed verifies.
    fn take_verify(&mut self) -> Result<(), Refusal> {
        let now = Instant::now();
        let mut book = lock(&self.limits.logins);
        let name = &self.pair.0;
        if book.by_user.check(name, now).is_err()
            && let Err(wait) = book.verify_rate.take(name, now)
        {
            let description = format!(
                "this user name has too many recent failed logins; its password checks are limited to {} per minute (limits.login_verifies_per_user_per_minute)",
                self.limits.config.login_verifies_per_user_per_minute
            );
            return Err(Refusal::too_many(description, wait));
        }
        book.by_user.record(name.clone(), now);
        self.name_slot = true;
        Ok(())
    }

    /// Whether the name or the pair has failures a success would forgive
    /// (only then is a success worth telling the other daemons).
    fn forgives(&self) -> bool {
        let book = lock(&self.limits.logins);
        book.by_user.events.contains_key(&self.pair.0) || book.by_user_ip.events.contains_key(&self.pair)
    }

    /// The password was right: the name's and the pair's failures are
    /// forgiven; the address gives back only this attempt's slot (one right
    /// password must not wipe an address's guesses at other names).
    fn succeeded(mut self) {
        self.settled = true;
        let mut book = lock(&self.limits.logins);
        book.by_user.clear(&self.pair.0);
        book.by_user_ip.clear(&self.pair);
        book.by_ip.remove_one(&self.pair.1);
    }

    /// The password was wrong: the slots stay taken, that is the failure.
    fn failed(mut self) {
        self.settled = true;
    }

    /// No verdict (storage failed): give every slot back.
    fn release(mut self) {
        self.settled = true;
        let mut book = lock(&self.limits.logins);
        if self.name_slot {
            book.by_user.remove_one(&self.pair.0);
        }
        book.by_user_ip.remove_one(&self.pair);
        book.by_ip.remove_one(&self.pair.1);
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            tracing::debug!("login attempt abandoned or refused; counted as a failure");
        }
    }
}

/// "At most one event per `interval`" for many keys (a token bucket of one
/// token): the slow rate at which a name over its failure limit may still
/// cost a bcrypt verify.
#[derive(Debug)]
struct RateGates<K> {
    /// `None`: no ration (the rate is 0, meaning "off").
    interval: Option<Duration>,
    /// When each key's next event is allowed; keys whose time has passed
    /// are swept out like [`SlidingWindows`]' expired keys.
    next: HashMap<K, Instant>,
    sweep_at: usize,
}

impl<K: Hash + Eq> RateGates<K> {
    fn per_minute(rate: u32) -> Self {
        let interval = (rate > 0).then(|| Duration::from_secs(60) / rate);
        RateGates { interval, next: HashMap::new(), sweep_at: MIN_SWEEP }
    }

    /// Takes `key`'s token if it is there, else says how long until it is.
    fn take(&mut self, key: &K, now: Instant) -> Result<(), Duration>
    where
        K: Clone,
    {
        let Some(interval) = self.interval else { return Ok(()) };
        if let Some(&next) = self.next.get(key)
            && next > now
        {
            return Err(next - now);
        }
        if self.next.len() >= self.sweep_at {
            self.next.retain(|_, next| *next > now);
            self.sweep_at = (self.next.len() * 2).max(MIN_SWEEP);
        }
        self.next.insert(key.clone(), now + interval);
        Ok(())
    }
}

/// "At most `limit` events per `window`" for many keys: a log of the
/// instants of each key's events within the window (at most `limit` each).
#[derive(Debug)]
struct SlidingWindows<K> {
    limit: u32,
    window: Duration,
    events: HashMap<K, VecDeque<Instant>>,
    /// Map size at which expired keys are swept out, so keys that stop
    /// coming (a scan of made-up user names) do not pile up.
    sweep_at: usize,
}

/// Smallest map size that triggers a sweep.
const MIN_SWEEP: usize = 1024;

impl<K: Hash + Eq> SlidingWindows<K> {
    fn new(limit: u32, window: Duration) -> Self {
        SlidingWindows { limit, window, events: HashMap::new(), sweep_at: MIN_SWEEP }
    }

    /// `Ok` if one more event fits now, else how long until one does.
    fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let Some(log) = self.events.get_mut(key) else { return Ok(()) };
        expire(log, now, self.window);
        match log.front() {
            Some(&oldest) if log.len() >= self.limit as usize => {
                Err((oldest + self.window).saturating_duration_since(now))
            }
            _ => Ok(()),
        }
    }

    fn record(&mut self, key: K, now: Instant) {
        if self.limit == 0 {
            return;
        }
        if self.events.len() >= self.sweep_at {
            let window = self.window;
            self.events.retain(|_, log| {
                expire(log, now, window);
                !log.is_empty()
            });
            self.sweep_at = (self.events.len() * 2).max(MIN_SWEEP);
        }
        let log = self.events.entry(key).or_default();
        log.push_back(now);
        // Only the newest `limit` events can matter.
        while log.len() > self.limit as usize {
            log.pop_front();
        }
    }

    /// [`SlidingWindows::record`] of an event at `at`, which may be older
    /// than events already logged (another daemon's): kept in order.
    fn record_at(&mut self, key: K, at: Instant) {
        if self.limit == 0 {
            return;
        }
        let log = self.events.entry(key).or_default();
        let place = log.partition_point(|&t| t <= at);
        log.insert(place, at);
        while log.len() > self.limit as usize {
            log.pop_front();
        }
    }

    fn remove_one(&mut self, key: &K) {
        if let Some(log) = self.events.get_mut(key) {
            log.pop_back();
            if log.is_empty() {
                self.events.remove(key);
            }
        }
    }

    fn clear(&mut self, key: &K) {
        self.events.remove(key);
    }
}

fn expire(log: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while log.front().is_some_and(|&t| now.saturating_duration_since(t) >= window) {
        log.pop_front();
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The windows hold plain data; a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_password;
    use crate::call::CallId;
    use crate::store::testing::{Backend, async_backends, backends};
    use crate::store::{Db, args};

    fn limits(toml: &str) -> Limits {
        let config = crate::config::Config::from_toml(toml).unwrap();
        Limits::new(&config.limits, &config.phone)
    }

    fn store_with_user(b: Backend) -> (Store, User) {
        let mut store = b.open();
        let user = store.add_user("acme1", &hash_password("right-pass", 4).unwrap()).unwrap();
        (store, user)
    }

    #[test]
    fn sliding_window_allows_limit_then_says_when() {
        let mut w = SlidingWindows::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(w.check(&"k", t0 + Duration::from_secs(i)).is_ok());
            w.record("k", t0 + Duration::from_secs(i));
        }
        let at = t0 + Duration::from_secs(10);
        assert_eq!(w.check(&"k", at), Err(Duration::from_secs(50)));
        assert!(w.check(&"other", at).is_ok(), "keys are independent");
        // The oldest event leaves the window: one slot frees up.
        assert!(w.check(&"k", t0 + Duration::from_secs(60)).is_ok());
        w.record("k", t0 + Duration::from_secs(60));
        assert!(w.check(&"k", t0 + Duration::from_secs(60)).is_err());
    }

    #[test]
    fn zero_switches_a_window_off() {
        let mut w = SlidingWindows::new(0, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..1000 {
            w.record(1, now);
            assert!(w.check(&1, now).is_ok());
        }
        assert!(w.events.is_empty());
    }

    #[test]
    fn expired_keys_are_swept() {
        let mut w = SlidingWindows::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        for k in 0..MIN_SWEEP {
            w.record(k, t0);
        }
        w.record(usize::MAX, t0 + Duration::from_secs(2));
        assert_eq!(w.events.len(), 1);
    }

    fn pw(text: &str) -> Secret {
        Secret::new(text)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn authenticator() -> Authenticator {
        let (store, _) = store_with_user(Backend::Sqlite);
        Authenticator::new(Db::new(store), 4)
            .unwrap()
            .with_cache(crate::auth::CredentialCache::new(Duration::from_secs(300), 100))
    }

    fn limited_by(result: &Result<User, LoginError>, key: &str) -> Duration {
        match result {
            Err(LoginError::Limited(Refusal { kind: RefusalKind::TooMany, detail, retry_after: Some(wait) }))
                if detail.contains(key) =>
            {
                *wait
            }
            other => panic!("expected a refusal naming {key}, got {other:?}"),
        }
    }

    /// The attack: a stranger who knows the name guesses from one address;
    /// the customer, from another, is served.
    #[tokio::test]
    async fn wrong_passwords_from_one_address_do_not_lock_the_name_elsewhere() {
        let auth = authenticator();
        let limits = limits("");
        let (stranger, customer) = (ip("127.0.0.2"), ip("127.0.0.3"));
        let mut answers = Vec::new();
        for _ in 0..8 {
            answers.push(match limits.login(&auth, "acme1", &pw("wrong"), stranger).await {
                Err(LoginError::Unauthorized) => "401",
                Err(LoginError::Limited(_)) => "429",
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(answers, ["401", "401", "401", "401", "401", "429", "429", "429"]);
        assert_eq!(auth.verifies(), 5, "refused guesses never reach bcrypt");
        assert_eq!(limits.login(&auth, "acme1", &pw("right-pass"), customer).await.unwrap().name, "acme1");
        // The stranger's address stays refused for the name, right password or not.
        let refused = limits.login(&auth, "acme1", &pw("right-pass"), stranger).await;
        assert!(limited_by(&refused, "limits.login_failures_per_user_ip") > Duration::from_secs(800));
    }

    #[tokio::test]
    async fn an_address_is_refused_for_a_name_before_bcrypt() {
        let auth = authenticator();
        let limits = limits("[limits]\nlogin_failures_per_user_ip = 3\nlogin_failures_per_ip = 100\n");
        let addr = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(matches!(limits.login(&auth, "acme1", &pw("wrong"), addr).await, Err(LoginError::Unauthorized)));
        }
        let verifies = auth.verifies();
        for password in ["wrong", "right-pass"] {
            limited_by(&limits.login(&auth, "acme1", &pw(password), addr).await, "limits.login_failures_per_user_ip");
        }
        assert_eq!(auth.verifies(), verifies, "no bcrypt verify for a refused address");
        // Another name from the same address is not refused.
        assert!(matches!(limits.login(&auth, "other", &pw("x"), addr).await, Err(LoginError::Unauthorized)));
    }

    #[tokio::test]
    async fn a_name_over_its_failures_is_rationed_not_locked_and_the_cache_still_passes() {
        let auth = authenticator();
        let limits = limits("[limits]\nlogin_failures_per_user = 2\nlogin_verifies_per_user_per_minute = 2\n");
        // A good login first: the credentials are now in the cache.
        assert!(limits.login(&auth, "acme1", &pw("right-pass"), ip("192.0.2.100")).await.is_ok());
        assert_eq!(auth.verifies(), 1);
        // Strangers from many addresses: two failures fill the name's count,
        // the third guess takes the one rationed verify, the fourth waits.
        for n in 1..=3 {
            let guess = limits.login(&auth, "acme1", &pw("wrong"), ip(&format!("192.0.2.{n}"))).await;
            assert!(matches!(guess, Err(LoginError::Unauthorized)), "{guess:?}");
        }
        let wait = limited_by(
            &limits.login(&auth, "acme1", &pw("wrong"), ip("192.0.2.4")).await,
            "limits.login_verifies_per_user_per_minute",
        );
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
        assert_eq!(auth.verifies(), 4);
        // The customer's cached credentials need no verify: served at once,
        // from any address.
        assert!(limits.login(&auth, "acme1", &pw("right-pass"), ip("198.51.100.9")).await.is_ok());
        assert_eq!(auth.verifies(), 4);
        // Other names are not rationed.
        assert!(matches!(limits.login(&auth, "other", &pw("x"), ip("192.0.2.4")).await, Err(LoginError::Unauthorized)));
    }

    #[tokio::test]
    async fn an_address_is_refused_across_names_and_success_forgives_the_name() {
        let auth = authenticator();
        let limits = limits("[limits]\nlogin_failures_per_user_ip = 2\nlogin_failures_per_ip = 3\n");
        let addr = ip("2001:db8::1");
        assert!(limits.login(&auth, "acme1", &pw("wrong"), addr).await.is_err());
        assert!(limits.login(&auth, "acme1", &pw("right-pass"), addr).await.is_ok());
        // The pair's failure is forgiven: two more wrong tries are 401, not 429.
        for _ in 0..2 {
            assert!(matches!(limits.login(&auth, "acme1", &pw("wrong"), addr).await, Err(LoginError::Unauthorized)));
        }
        // The address now has 3 failures (the success gave back only its own slot).
        limited_by(&limits.login(&auth, "someone", &pw("x"), addr).await, "limits.login_failures_per_ip");
        assert!(limits.login(&auth, "someone", &pw("x"), ip("192.0.2.7")).await.is_err());
    }

    #[tokio::test]
    async fn concurrent_guesses_get_no_more_verifies_than_the_limits() {
        let auth = authenticator();
        let limits = std::sync::Arc::new(limits(
            "[limits]\nlogin_failures_per_user = 4\nlogin_failures_per_user_ip = 100\nlogin_failures_per_ip = 100\n",
        ));
        let addr = ip("192.0.2.9");
        let guesses = (0..40).map(|_| {
            let (auth, limits) = (auth.clone(), limits.clone());
            tokio::spawn(async move { limits.login(&auth, "acme1", &pw("wrong"), addr).await })
        });
        let mut unauthorized = 0;
        for guess in guesses.collect::<Vec<_>>() {
            if matches!(guess.await.unwrap(), Err(LoginError::Unauthorized)) {
                unauthorized += 1;
            }
        }
        // Four failures, then one rationed verify; the other 35 wait.
        assert_eq!(unauthorized, 5);
        assert_eq!(auth.verifies(), 5);
    }

    #[test]
    fn addresses_are_counted_as_ipv4_or_ipv6_slash_64() {
        assert_eq!(address_bucket(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(address_bucket(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(address_bucket(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
        assert_eq!(address_bucket(ip("2001:db8:1:2::1")), address_bucket(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(address_bucket(ip("2001:db8:1:2::1")), address_bucket(ip("2001:db8:1:3::1")));
    }

    #[tokio::test]
    async fn one_ipv6_slash_64_is_one_address_to_the_login_limits() {
        let auth = authenticator();
        let limits = limits("[limits]\nlogin_failures_per_user_ip = 2\n");
        for host in ["2001:db8:0:1::1", "2001:db8:0:1::2"] {
            assert!(matches!(
                limits.login(&auth, "acme1", &pw("wrong"), ip(host)).await,
                Err(LoginError::Unauthorized)
            ));
        }
        let refused = limits.login(&auth, "acme1", &pw("wrong"), ip("2001:db8:0:1:ffff:1:2:3")).await;
        limited_by(&refused, "limits.login_failures_per_user_ip");
        assert!(limits.login(&auth, "acme1", &pw("right-pass"), ip("2001:db8:0:2::1")).await.is_ok(), "another /64");
    }

    #[test]
    fn abandoned_logins_count_as_failures() {
        let limits = limits("[limits]\nlogin_failures_per_user_ip = 2\n");
        let addr = ip("192.0.2.3");
        drop(limits.begin_login("acme1", addr).unwrap());
        drop(limits.begin_login("acme1", addr).unwrap());
        assert!(limits.begin_login("acme1", addr).is_err());
        assert!(limits.begin_login("acme1", ip("192.0.2.4")).is_ok(), "only that address");
    }

    #[test]
    fn rate_gates_let_one_event_per_interval_through() {
        let mut gates = RateGates::per_minute(2);
        let t0 = Instant::now();
        assert!(gates.take(&"k", t0).is_ok());
        assert_eq!(gates.take(&"k", t0 + Duration::from_secs(10)), Err(Duration::from_secs(20)));
        assert!(gates.take(&"other", t0).is_ok(), "keys are independent");
        assert!(gates.take(&"k", t0 + Duration::from_secs(30)).is_ok());
        assert!(gates.take(&"k", t0 + Duration::from_secs(31)).is_err());
        let mut off = RateGates::per_minute(0);
        for _ in 0..100 {
            assert!(off.take(&"k", t0).is_ok());
        }
        assert!(off.next.is_empty());
    }

    #[test]
    fn user_rate_counts_requests_per_minute() {
        let (_, user) = store_with_user(Backend::Sqlite);
        let limits = limits("[limits]\nuser_requests_per_minute = 2\n");
        let number = PhoneNumber::parse("03001234567", Country::parse("PK").unwrap()).unwrap();
        assert!(limits.check_request(&user, &number).is_ok());
        assert!(limits.check_request(&user, &number).is_ok());
        match limits.check_request(&user, &number) {
            Err(Refusal { kind: RefusalKind::TooMany, detail, retry_after: Some(retry_after) }) => {
                assert!(detail.contains("2 requests per minute"), "{detail}");
                assert!(detail.contains("limits.user_requests_per_minute"), "{detail}");
                assert!(retry_after <= Duration::from_secs(60) && retry_after > Duration::from_secs(50));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn destinations_outside_the_allow_list_are_forbidden() {
        let pk = Country::parse("PK").unwrap();
        let number = |n: &str| PhoneNumber::parse(n, pk).unwrap();
        let default = limits("");
        assert!(default.check_destination(&number("03001234567")).is_ok());
        let Err(refusal) = default.check_destination(&number("+442079460000")) else {
            panic!("a UK number must be refused by default");
        };
        assert_eq!(
            refusal,
            Refusal::forbidden(
                "destination country GB is not allowed (phone.allowed_countries, phone.allowed_prefixes)"
            )
        );
        assert!(default.check_destination(&number("+80012345678")).is_err(), "non-geographic");

        let wider = limits("[phone]\nallowed_countries = [\"PK\", \"gb\"]\nallowed_prefixes = [\"+1212\"]\n");
        assert!(wider.check_destination(&number("+442079460000")).is_ok());
        assert!(wider.check_destination(&number("+12125550123")).is_ok());
        assert!(wider.check_destination(&number("+13105550123")).is_err());
        let all = limits("[phone]\nallowed_countries = []\nallowed_prefixes = [\"+\"]\n");
        assert!(all.check_destination(&number("+80012345678")).is_ok());
        let none = limits("[phone]\nallowed_countries = []\n");
        assert!(none.check_destination(&number("03001234567")).is_err());
    }

    #[test]
    fn refused_kinds_are_forbidden_inside_allowed_countries() {
        let pk = Country::parse("PK").unwrap();
        let number = |n: &str| PhoneNumber::parse(n, pk).unwrap();
        let guard = limits("[phone]\nallowed_countries = [\"PK\", \"GB\", \"ES\"]\n");
        assert!(guard.check_destination(&number("+442079460958")).is_ok());
        for (n, kind) in [
            ("+449098790000", "premium_rate"),
            ("+34901123456", "shared_cost"),
            ("+443069990000", "uan"),
            ("+447031234567", "personal_number"),
        ] {
            assert_eq!(
                guard.check_destination(&number(n)),
                Err(Refusal::forbidden(format!("the destination is a {kind} number (phone.refused_number_types)"))),
                "{n}"
            );
        }
        // Even "+" (every destination) keeps refusing them; an empty list refuses none.
        let all = limits("[phone]\nallowed_prefixes = [\"+\"]\n");
        assert!(all.check_destination(&number("+449098790000")).is_err());
        let none = limits("[phone]\nallowed_prefixes = [\"+\"]\nrefused_number_types = []\n");
        assert!(none.check_destination(&number("+449098790000")).is_ok());
    }

    backends! {
        fn user_quota_counts_a_day_of_the_users_calls(b) {
            let (mut store, user) = store_with_user(b);
            let other = store.add_user("acme2", "h").unwrap();
            let quota = limits("[limits]\nuser_calls_per_day = 3\n").user_quota();
            let hour = 3_600_000;
            let t = 1_000_000 * hour;
            // Stored as if at `at`: the trigger counts a call in its creation hour.
            let insert = |store: &mut Store, user_id: i64, at: i64| {
                store.execute_for_tests(
                    "INSERT INTO calls (id, user_id, number, status, created_at, updated_at)
                     VALUES (?1, ?2, '+923001234567', 'queued', ?3, ?3)",
                    args![CallId::generate().as_str(), user_id, at],
                );
            };
            insert(&mut store, user.id, t + 10);
            insert(&mut store, user.id, t + 2 * hour);
            insert(&mut store, other.id, t + 2 * hour);
            assert!(quota.check(&store, user.id, t + 3 * hour).unwrap().is_ok());
            insert(&mut store, user.id, t + 3 * hour);
            match quota.check(&store, user.id, t + 3 * hour).unwrap() {
                Err(Refusal { kind: RefusalKind::TooMany, detail, retry_after }) => {
                    assert!(detail.contains("3 calls per day") && detail.contains("limits.user_calls_per_day"), "{detail}");
                    // The first call's hour leaves the day 21 hours on.
                    assert_eq!(retry_after, Some(Duration::from_millis((21 * hour) as u64)));
                }
                other => panic!("{other:?}"),
            }
            assert!(quota.check(&store, other.id, t + 3 * hour).unwrap().is_ok(), "users are counted apart");
            assert!(quota.check(&store, user.id, t + 24 * hour).unwrap().is_ok(), "a day later the first hour left");
            let off = limits("[limits]\nuser_calls_per_day = 0\n").user_quota();
            assert!(off.check(&store, user.id, t + 3 * hour).unwrap().is_ok());
        }

        fn number_quota_counts_stored_calls_in_both_windows(b) {
            let (mut store, user) = store_with_user(b);
            let quota =
                limits("[limits]\nnumber_calls_per_window = 2\nnumber_window_secs = 600\nnumber_calls_per_day = 3\n")
                    .number_quota();
            let number = "+923001234567";
            // Stored as at `at`: the counts are taken when a call is stored.
            let insert = |store: &mut Store, at: i64| {
                store.execute_for_tests(
                    "INSERT INTO calls (id, user_id, number, code, status, created_at, updated_at)
                     VALUES (?1, ?2, ?3, '1234', 'queued', ?4, ?4)",
                    args![CallId::generate_at(at).as_str(), user.id, number, at],
                );
            };
            let t = 1_000_000_000_000;
            insert(&mut store, t);
            insert(&mut store, t + 1_000);
            assert!(quota.check(&store, "+923001234568", t + 2_000).unwrap().is_ok(), "other numbers are free");
            match quota.check(&store, number, t + 2_000).unwrap() {
                Err(Refusal { kind: RefusalKind::TooMany, detail, retry_after }) => {
                    assert!(detail.contains("limits.number_calls_per_window"), "{detail}");
                    assert_eq!(retry_after, Some(Duration::from_millis(598_000)));
                }
                other => panic!("{other:?}"),
            }
            // Ten minutes on, the short window is free, but the day has one slot left.
            let later = t + 600_000;
            assert!(quota.check(&store, number, later).unwrap().is_ok());
            insert(&mut store, later);
            match quota.check(&store, number, later + 700_000).unwrap() {
                Err(Refusal { kind: RefusalKind::TooMany, detail, retry_after }) => {
                    assert!(detail.contains("3 calls per day"), "{detail}");
                    assert!(detail.contains("limits.number_calls_per_day"), "{detail}");
                    assert_eq!(retry_after, Some(Duration::from_millis(86_400_000 - 700_000 - 600_000)));
                }
                other => panic!("{other:?}"),
            }
            assert!(quota.check(&store, number, t + 86_400_000).unwrap().is_ok(), "a day later the first left");
        }
    }

    async_backends! {
        /// Two daemons on one database: the failures one saw count at the
        /// other, and a success at one forgives them at both.
        async fn failed_logins_are_counted_across_daemons(b) {
            let db = b.db(2, |s| {
                s.add_user("acme1", &hash_password("right-pass", 4).unwrap()).unwrap();
            });
            let auth = Authenticator::new(db.clone(), 4).unwrap();
            let config =
                "[limits]\nlogin_failures_per_user_ip = 3\nlogin_failures_per_ip = 100\nlogin_failures_per_user = 100\n";
            let a = limits(config).shared_every(db.clone(), "daemon-a".into(), Duration::ZERO);
            let other = limits(config).shared_every(db.clone(), "daemon-b".into(), Duration::ZERO);
            let x = ip("192.0.2.1");
            for _ in 0..3 {
                assert!(matches!(a.login(&auth, "acme1", &pw("wrong"), x).await, Err(LoginError::Unauthorized)));
            }
            let verifies = auth.verifies();
            limited_by(&other.login(&auth, "acme1", &pw("right-pass"), x).await, "limits.login_failures_per_user_ip");
            assert_eq!(auth.verifies(), verifies, "refused before any password check");
            // From another address: two failures and then the right password
            // at the first daemon ...
            let y = ip("192.0.2.2");
            for _ in 0..2 {
                assert!(matches!(a.login(&auth, "acme1", &pw("wrong"), y).await, Err(LoginError::Unauthorized)));
            }
            assert!(a.login(&auth, "acme1", &pw("right-pass"), y).await.is_ok());
            // ... and the second counts that address afresh: three wrong
            // passwords get a check, the fourth attempt is refused.
            for _ in 0..3 {
                assert!(matches!(other.login(&auth, "acme1", &pw("wrong"), y).await, Err(LoginError::Unauthorized)));
            }
            limited_by(&other.login(&auth, "acme1", &pw("wrong"), y).await, "limits.login_failures_per_user_ip");
        }
    }
}
