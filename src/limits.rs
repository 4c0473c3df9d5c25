//! Abuse limits: who may make the daemon place a call, how often, and where
//! to. Every refusal names the configuration key of the rule that refused.
//!
//! A request to place a call passes, in this order:
//! 1. [`Limits::login`]: the failed-login limits per user name and per
//!    client IP, checked *before* the bcrypt verify, so a locked-out name or
//!    address never reaches bcrypt; then the verify itself. Each login in
//!    progress holds a failure slot until it is proven right, so neither
//!    concurrent guesses nor clients that hang up mid-verify get more
//!    verifies than the limit allows.
//! 2. [`Limits::check_request`]: the user's request rate, then the
//!    toll-fraud guard (allowed destination countries and prefixes).
//! 3. [`NumberQuota::check`], run in the same store operation as the insert
//!    of the call: calls per destination number per short window and per
//!    day, counted from the `calls` table (so they survive a restart and two
//!    requests racing for the last slot cannot both get it).
//!
//! Any front end (the seed API, a JSON API) makes the same three calls.
//! Per-minute and failed-login windows live in memory: a restart forgets
//! them, which at worst grants one extra window.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::Authenticator;
use crate::config::{LimitsConfig, PhoneConfig};
use crate::phone::{Country, PhoneNumber};
use crate::store::{Store, StoreError, User};

/// One day, the window of `limits.number_calls_per_day`.
const DAY: Duration = Duration::from_secs(86_400);

/// Why a request was refused by a limit; the description is shown to the
/// caller as is and names the configuration key of the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A rate or quota is used up: HTTP 429 with `Retry-After`.
    TooMany {
        /// `Too Many Requests: ...`, naming the limit.
        description: String,
        /// When a retry can succeed (at the earliest).
        retry_after: Duration,
    },
    /// The toll-fraud guard: HTTP 403. Retrying does not help.
    Forbidden {
        /// `Forbidden: ...`, naming the rule.
        description: String,
    },
    /// The call queue is full (Asterisk down or the trunk saturated for
    /// long): HTTP 503 with `Retry-After`.
    QueueFull {
        /// `Service Unavailable: ...`, naming the limit.
        description: String,
        /// A suggested wait before retrying.
        retry_after: Duration,
    },
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
    /// The user table could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The in-memory limits of one daemon, shared by every request.
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    allowed_countries: Vec<Country>,
    allowed_prefixes: Vec<String>,
    user_requests: Mutex<SlidingWindows<i64>>,
    failures_by_user: Mutex<SlidingWindows<String>>,
    failures_by_ip: Mutex<SlidingWindows<IpAddr>>,
}

impl Limits {
    /// Limits as configured.
    pub fn new(config: &LimitsConfig, phone: &PhoneConfig) -> Limits {
        let failure_window = Duration::from_secs(config.login_failure_window_secs);
        Limits {
            config: config.clone(),
            allowed_countries: phone.allowed_countries(),
            allowed_prefixes: phone.allowed_prefixes.clone(),
            user_requests: Mutex::new(SlidingWindows::new(config.user_requests_per_minute, Duration::from_secs(60))),
            failures_by_user: Mutex::new(SlidingWindows::new(config.login_failures_per_user, failure_window)),
            failures_by_ip: Mutex::new(SlidingWindows::new(config.login_failures_per_ip, failure_window)),
        }
    }

    /// Checks `name`/`password` unless the name or `client` is locked out,
    /// and counts a failure against both.
    pub async fn login(
        &self,
        auth: &Authenticator,
        name: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<User, LoginError> {
        let attempt = self.begin_login(name, client).map_err(LoginError::Limited)?;
        match auth.authenticate(name, password).await {
            Ok(Some(user)) => {
                attempt.succeeded();
                Ok(user)
            }
            Ok(None) => {
                attempt.failed();
                Err(LoginError::Unauthorized)
            }
            Err(e) => {
                // Our fault, not the caller's: give the slot back.
                attempt.release();
                Err(LoginError::Store(e))
            }
        }
    }

    /// Takes a failure slot for `name` and for `client`, or says how long
    /// until one is free.
    fn begin_login(&self, name: &str, client: IpAddr) -> Result<LoginAttempt<'_>, Refusal> {
        let now = Instant::now();
        // Both locks together, so the two checks and the two records are one step.
        let mut by_user = lock(&self.failures_by_user);
        let mut by_ip = lock(&self.failures_by_ip);
        let user_key = name.to_owned();
        if let Err(wait) = by_user.check(&user_key, now) {
            return Err(too_many("too many failed logins for this user name (limits.login_failures_per_user)", wait));
        }
        if let Err(wait) = by_ip.check(&client, now) {
            return Err(too_many("too many failed logins from this address (limits.login_failures_per_ip)", wait));
        }
        by_user.record(user_key.clone(), now);
        by_ip.record(client, now);
        Ok(LoginAttempt { limits: self, user: user_key, client, settled: false })
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
                return Err(too_many(&description, wait));
            }
            requests.record(user.id, now);
        }
        self.check_destination(number)
    }

    /// The toll-fraud guard: `number` must be in an allowed country or
    /// start with an allowed prefix.
    pub fn check_destination(&self, number: &PhoneNumber) -> Result<(), Refusal> {
        let country = number.country();
        let by_country = country.is_some_and(|c| self.allowed_countries.contains(&c));
        let by_prefix = self.allowed_prefixes.iter().any(|p| number.e164().starts_with(p.as_str()));
        if by_country || by_prefix {
            return Ok(());
        }
        let what = match country {
            Some(c) => format!("destination country {} is", c.code()),
            None => "a destination outside any country is".to_owned(),
        };
        Err(Refusal::Forbidden {
            description: format!("Forbidden: {what} not allowed (phone.allowed_countries, phone.allowed_prefixes)"),
        })
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
            return Ok(Err(too_many(&description, wait(calls.oldest_recent, window_ms))));
        }
        if self.per_day > 0 && calls.since >= self.per_day {
            let description =
                format!("limit of {} calls per day to this number reached (limits.number_calls_per_day)", self.per_day);
            return Ok(Err(too_many(&description, wait(calls.oldest_since, day_ms))));
        }
        Ok(Ok(()))
    }
}

/// A login in progress holding one failure slot per key. Dropped without a
/// verdict (the client hung up mid-verify, the bcrypt already running) it
/// stays a failure: hanging up must not buy free verifies.
struct LoginAttempt<'a> {
    limits: &'a Limits,
    user: String,
    client: IpAddr,
    settled: bool,
}

impl LoginAttempt<'_> {
    /// The password was right: the name's failures are forgiven; the
    /// address gives back only this attempt's slot (one right password must
    /// not wipe an address's guesses at other names).
    fn succeeded(mut self) {
        self.settled = true;
        lock(&self.limits.failures_by_user).clear(&self.user);
        lock(&self.limits.failures_by_ip).remove_one(&self.client);
    }

    /// The password was wrong: the slots stay taken, that is the failure.
    fn failed(mut self) {
        self.settled = true;
    }

    /// No verdict (storage failed): give both slots back.
    fn release(mut self) {
        self.settled = true;
        lock(&self.limits.failures_by_user).remove_one(&self.user);
        lock(&self.limits.failures_by_ip).remove_one(&self.client);
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            tracing::debug!("login attempt abandoned; counted as a failure");
        }
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

fn too_many(what: &str, retry_after: Duration) -> Refusal {
    Refusal::TooMany { description: format!("Too Many Requests: {what}"), retry_after }
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
    use crate::store::{Db, NewCall};

    fn limits(toml: &str) -> Limits {
        let config = crate::config::Config::from_toml(toml).unwrap();
        Limits::new(&config.limits, &config.phone)
    }

    fn store_with_user() -> (Store, User) {
        let mut store = Store::open_in_memory().unwrap();
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

    #[tokio::test]
    async fn locked_out_logins_never_reach_bcrypt() {
        let (store, _) = store_with_user();
        let auth = Authenticator::new(Db::new(store), 4).unwrap();
        let limits = limits("[limits]\nlogin_failures_per_user = 3\nlogin_failures_per_ip = 100\n");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(matches!(limits.login(&auth, "acme1", "wrong", ip).await, Err(LoginError::Unauthorized)));
        }
        let verifies = auth.verifies();
        for password in ["wrong", "right-pass"] {
            match limits.login(&auth, "acme1", password, ip).await {
                Err(LoginError::Limited(Refusal::TooMany { description, retry_after })) => {
                    assert!(description.contains("limits.login_failures_per_user"), "{description}");
                    assert!(retry_after > Duration::from_secs(800), "{retry_after:?}");
                }
                other => panic!("expected a lockout, got {other:?}"),
            }
        }
        assert_eq!(auth.verifies(), verifies, "no bcrypt verify while locked out");
        // Another name from the same address is not locked.
        assert!(matches!(limits.login(&auth, "other", "x", ip).await, Err(LoginError::Unauthorized)));
    }

    #[tokio::test]
    async fn an_address_is_locked_across_names_and_success_forgives_the_name() {
        let (store, _) = store_with_user();
        let auth = Authenticator::new(Db::new(store), 4).unwrap();
        let limits = limits("[limits]\nlogin_failures_per_user = 2\nlogin_failures_per_ip = 3\n");
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(limits.login(&auth, "acme1", "wrong", ip).await.is_err());
        assert!(limits.login(&auth, "acme1", "right-pass", ip).await.is_ok());
        // The name's failure is forgiven: two more wrong tries are 401, not 429.
        for name in ["acme1", "acme1"] {
            assert!(matches!(limits.login(&auth, name, "wrong", ip).await, Err(LoginError::Unauthorized)));
        }
        // The address now has 3 failures (the success gave back only its own slot).
        let other = limits.login(&auth, "someone", "x", ip).await;
        assert!(
            matches!(&other, Err(LoginError::Limited(Refusal::TooMany { description, .. })) if description.contains("limits.login_failures_per_ip")),
            "{other:?}"
        );
        let elsewhere: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(limits.login(&auth, "someone", "x", elsewhere).await.is_err());
    }

    #[tokio::test]
    async fn concurrent_guesses_get_no_more_verifies_than_the_limit() {
        let (store, _) = store_with_user();
        let auth = Authenticator::new(Db::new(store), 4).unwrap();
        let limits = std::sync::Arc::new(limits("[limits]\nlogin_failures_per_user = 4\n"));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let guesses = (0..40).map(|_| {
            let (auth, limits) = (auth.clone(), limits.clone());
            tokio::spawn(async move { limits.login(&auth, "acme1", "wrong", ip).await })
        });
        let mut unauthorized = 0;
        for guess in guesses.collect::<Vec<_>>() {
            if matches!(guess.await.unwrap(), Err(LoginError::Unauthorized)) {
                unauthorized += 1;
            }
        }
        assert_eq!(unauthorized, 4);
        assert_eq!(auth.verifies(), 4);
    }

    #[test]
    fn abandoned_logins_count_as_failures() {
        let limits = limits("[limits]\nlogin_failures_per_user = 2\n");
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        drop(limits.begin_login("acme1", ip).unwrap());
        drop(limits.begin_login("acme1", ip).unwrap());
        assert!(limits.begin_login("acme1", ip).is_err());
    }

    #[test]
    fn user_rate_counts_requests_per_minute() {
        let (_, user) = store_with_user();
        let limits = limits("[limits]\nuser_requests_per_minute = 2\n");
        let number = PhoneNumber::parse("03001234567", Country::parse("PK").unwrap()).unwrap();
        assert!(limits.check_request(&user, &number).is_ok());
        assert!(limits.check_request(&user, &number).is_ok());
        match limits.check_request(&user, &number) {
            Err(Refusal::TooMany { description, retry_after }) => {
                assert!(description.contains("2 requests per minute"), "{description}");
                assert!(description.contains("limits.user_requests_per_minute"), "{description}");
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
        let Err(Refusal::Forbidden { description }) = default.check_destination(&number("+442079460000")) else {
            panic!("a UK number must be refused by default");
        };
        assert_eq!(
            description,
            "Forbidden: destination country GB is not allowed (phone.allowed_countries, phone.allowed_prefixes)"
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
    fn number_quota_counts_stored_calls_in_both_windows() {
        let (mut store, user) = store_with_user();
        let quota =
            limits("[limits]\nnumber_calls_per_window = 2\nnumber_window_secs = 600\nnumber_calls_per_day = 3\n")
                .number_quota();
        let number = "+923001234567";
        let insert = |store: &mut Store, at: i64| {
            let id = CallId::generate();
            let options = crate::call::options::CallOptions {
                mode: crate::call::options::CallMode::Read,
                language: "en".into(),
                require_keypress: false,
            };
            store.insert_call(&NewCall { id: &id, user_id: user.id, number, code: "1234", options: &options }).unwrap();
            store
                .conn_for_tests()
                .execute("UPDATE calls SET created_at = ?1 WHERE id = ?2", (at, id.as_str()))
                .unwrap();
        };
        let t = 1_000_000_000_000;
        insert(&mut store, t);
        insert(&mut store, t + 1_000);
        assert!(quota.check(&store, "+923001234568", t + 2_000).unwrap().is_ok(), "other numbers are free");
        match quota.check(&store, number, t + 2_000).unwrap() {
            Err(Refusal::TooMany { description, retry_after }) => {
                assert!(description.contains("limits.number_calls_per_window"), "{description}");
                assert_eq!(retry_after, Duration::from_millis(598_000));
            }
            other => panic!("{other:?}"),
        }
        // Ten minutes on, the short window is free, but the day has one slot left.
        let later = t + 600_000;
        assert!(quota.check(&store, number, later).unwrap().is_ok());
        insert(&mut store, later);
        match quota.check(&store, number, later + 700_000).unwrap() {
            Err(Refusal::TooMany { description, retry_after }) => {
                assert!(description.contains("3 calls per day"), "{description}");
                assert!(description.contains("limits.number_calls_per_day"), "{description}");
                assert_eq!(retry_after, Duration::from_millis(86_400_000 - 700_000 - 600_000));
            }
            other => panic!("{other:?}"),
        }
        assert!(quota.check(&store, number, t + 86_400_000).unwrap().is_ok(), "a day later the first left");
    }
}
