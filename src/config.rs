//! Configuration: one TOML file, every key optional.
//!
//! With no file at all the defaults talk to the sandbox Asterisk brought up by
//! `scripts/sandbox up`, so `voice-otp serve` works out of the box. Unknown keys
//! are rejected (serde's `deny_unknown_fields` names them), because a typo that
//! silently falls back to a default is worse than an error at start-up.
//! `voice-otp.example.toml` documents every key with its default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::call::language::Language;
use crate::phone::{Country, NumberTemplate, NumberType};
use crate::secret::Secret;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP front end.
    pub http: HttpConfig,
    /// The Asterisk servers calls are placed through (`[[asterisk]]`
    /// entries). Empty: the single server of `[ami]` (see
    /// [`Config::servers`]).
    pub asterisk: Vec<AsteriskConfig>,
    /// The single-server form: one Asterisk Manager Interface, named
    /// `default`. `None` when the file has no `[ami]` section (the
    /// sandbox's AMI user then); an error together with `[[asterisk]]`.
    pub ami: Option<AmiConfigSection>,
    /// FastAGI server Asterisk connects to when a call is answered.
    pub agi: AgiConfig,
    /// The database: SQLite (the default) or PostgreSQL.
    pub database: DatabaseConfig,
    /// How calls are placed (Originate parameters).
    pub dial: DialConfig,
    /// Phone number interpretation.
    pub phone: PhoneConfig,
    /// API user authentication.
    pub auth: AuthConfig,
    /// What the callee hears and how fast.
    pub call: CallConfig,
    /// Status-change webhooks.
    pub webhooks: WebhooksConfig,
    /// How long call records are kept.
    pub retention: RetentionConfig,
    /// Abuse limits: request rates, per-number quotas, failed logins.
    pub limits: LimitsConfig,
    /// How many calls run at once and how many may wait.
    pub queue: QueueConfig,
    /// Verifications: generated codes with checks (`/v1/verifications`).
    pub verify: VerifyConfig,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Address `/healthz` and `/metrics` are served on instead of `listen`
    /// (which then answers 404 for them). `None` (absent or `""`): on
    /// `listen`, like the APIs.
    #[serde(deserialize_with = "optional_addr")]
    pub ops_listen: Option<SocketAddr>,
    /// Largest accepted request body (POST form), in bytes.
    pub max_body_bytes: usize,
    /// Most client connections served at once; further ones wait in the
    /// kernel's accept queue until one ends.
    pub max_connections: usize,
    /// Most connections served at once from one client address (IPv6: one
    /// /64); more are answered 503 and closed at once. Trusted proxies are
    /// exempt. 0: no per-address cap.
    pub max_connections_per_ip: usize,
    /// A response that cannot be handed to the client within this many
    /// seconds (the client stopped reading) closes the connection.
    pub write_timeout_secs: u64,
    /// Requests served on one keep-alive connection; the last answer says
    /// `Connection: close`. 0: no cap.
    pub max_requests_per_connection: u64,
    /// Time a client has to send a request head, and the longest a
    /// keep-alive connection may sit idle before its next request.
    pub header_timeout_secs: u64,
    /// Time a client has to send a POST body.
    pub body_timeout_secs: u64,
    /// Proxies (e.g. the TLS proxy in front) whose `X-Forwarded-For` header
    /// names the real client for the per-IP login limit. Empty: the TCP peer
    /// is the client.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ops_listen: None,
            max_body_bytes: 8192,
            max_connections: 1024,
            max_connections_per_ip: 32,
            write_timeout_secs: 10,
            max_requests_per_connection: 1000,
            header_timeout_secs: 10,
            body_timeout_secs: 10,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `""` is "not set", so the example file can show the key with its default.
fn optional_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("`{text}` is not an address like 127.0.0.1:9090")))
}

/// `[ami]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmiConfigSection {
    /// Asterisk host running the manager interface.
    pub host: String,
    /// Manager TCP port.
    pub port: u16,
    /// Manager user (manager.conf section name).
    pub username: String,
    /// Manager secret. Never logged: `Debug` shows `<redacted>`.
    pub secret: Secret,
}

impl Default for AmiConfigSection {
    fn default() -> Self {
        // The sandbox's AMI user (asterisk-conf/sandbox/manager.conf).
        Self {
            host: "127.0.0.1".into(),
            port: 5038,
            username: "voice-otp".into(),
            secret: Secret::new("voice-otp-sandbox"),
        }
    }
}

/// The name of the one server of the single-server form (`[ami]`, or no
/// Asterisk configured at all).
pub const DEFAULT_SERVER: &str = "default";

/// Longest `[[asterisk]] name`: it goes into call records, logs and metric
/// labels.
pub const MAX_SERVER_NAME: usize = 32;

/// One `[[asterisk]]` entry: an Asterisk server calls are placed through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsteriskConfig {
    /// Recorded on each call placed through it (`"asterisk"` in the call's
    /// JSON) and the `server` label of its metrics: 1 to 32 of
    /// `A-Z a-z 0-9 _ -`, unique.
    pub name: String,
    /// Host of its manager interface.
    pub host: String,
    /// Manager TCP port.
    pub port: u16,
    /// Manager user (manager.conf section name).
    pub username: String,
    /// Manager secret. Never logged: `Debug` shows `<redacted>`.
    pub secret: Secret,
    /// Calls in flight on it (dialing, ringing or answered) at most: its
    /// trunk's channels.
    pub max_concurrent_calls: u32,
    /// Originates sent to it per second at most (carriers refuse call
    /// setups beyond their rate); 0: unpaced.
    pub max_calls_per_second: u32,
    /// Its share of the calls relative to the other servers' weights.
    pub weight: u32,
}

impl Default for AsteriskConfig {
    fn default() -> Self {
        let ami = AmiConfigSection::default();
        Self {
            name: String::new(),
            host: ami.host,
            port: ami.port,
            username: ami.username,
            secret: ami.secret,
            max_concurrent_calls: 10,
            max_calls_per_second: 5,
            weight: 1,
        }
    }
}

impl AsteriskConfig {
    /// The rules `Config::load` enforces on one entry; `key` is how the
    /// message names it (`asterisk[2]`, or `ami` for the single server, whose
    /// capacity is `concurrent_key`).
    fn check(&self, key: &str, concurrent_key: &str) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_SERVER_NAME
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(format!(
                "{key}.name must be 1 to {MAX_SERVER_NAME} of A-Z a-z 0-9 _ - (it names the server in call records and \
                 metrics), got {:?}",
                self.name
            ));
        }
        if self.host.is_empty() {
            return Err(format!("{key}.host must not be empty"));
        }
        for (field, value) in [("host", &self.host), ("username", &self.username)] {
            if value.chars().any(|c| c.is_control()) {
                return Err(format!("{key}.{field} must not contain control characters"));
            }
        }
        if self.secret.expose().chars().any(|c| c.is_control()) {
            return Err(format!("{key}.secret must not contain control characters"));
        }
        if self.max_concurrent_calls == 0 {
            return Err(format!("{concurrent_key} must be at least 1"));
        }
        if self.max_calls_per_second > 1000 {
            return Err(format!(
                "{key}.max_calls_per_second must be 0 (unpaced) to 1000, got {}",
                self.max_calls_per_second
            ));
        }
        if !(1..=1000).contains(&self.weight) {
            return Err(format!("{key}.weight must be 1..=1000, got {}", self.weight));
        }
        Ok(())
    }
}

/// `[agi]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgiConfig {
    /// Address the FastAGI server listens on.
    pub listen: SocketAddr,
    /// URL Asterisk's dialplan connects to, handed over in the channel
    /// variable `VOICE_OTP_AGI`. Empty: `agi://<listen>/otp`.
    pub url: String,
    /// FastAGI URLs the dialplan tries in turn when no daemon took the call
    /// at `url` (another daemon's, say): sent as `VOICE_OTP_AGI_2`,
    /// `VOICE_OTP_AGI_3`, ... At most [`MAX_AGI_FALLBACKS`].
    pub fallback_urls: Vec<String>,
    /// Most FastAGI sessions (answered calls) at once; connections above it
    /// are closed and Asterisk goes on with the dialplan.
    pub max_sessions: usize,
    /// The only addresses FastAGI connections are accepted from (Asterisk's).
    /// A FastAGI peer drives live calls and reads codes, so the list may not
    /// be empty; the default is loopback, where the sandbox Asterisk runs.
    pub allowed_peers: Vec<IpAddr>,
}

impl Default for AgiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4573)),
            url: String::new(),
            fallback_urls: Vec::new(),
            max_sessions: crate::agi::DEFAULT_MAX_SESSIONS,
            allowed_peers: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)],
        }
    }
}

/// Most `[agi] fallback_urls`: each is one more channel variable on every
/// Originate, and a dialplan that tries more addresses than this keeps the
/// callee in silence too long anyway.
pub const MAX_AGI_FALLBACKS: usize = 4;

impl AgiConfig {
    /// The URL to give the dialplan, given the address actually bound (which
    /// differs from `listen` when that asks for port 0).
    pub fn url_for(&self, bound: SocketAddr) -> String {
        if self.url.is_empty() { format!("agi://{bound}/otp") } else { self.url.clone() }
    }
}

/// `[database]`: SQLite (`path`, the default) or PostgreSQL (`url`).
#[derive(Clone, Deserialize)]
#[serde(from = "RawDatabaseConfig")]
pub struct DatabaseConfig {
    /// SQLite file. A relative path is taken from the config file's folder
    /// (or the working directory when there is no config file).
    pub path: PathBuf,
    /// `postgres://user:password@host:port/database?sslmode=disable` (or
    /// `sslmode=verify-full&sslrootcert=ca.pem`): PostgreSQL instead of
    /// SQLite. `None` (absent or `""`): SQLite. A
    /// secret (it carries the password): `Debug` shows `<redacted>`.
    pub url: Option<Secret>,
    /// PostgreSQL connections, each on a database thread of its own.
    pub pool_size: usize,
    /// On PostgreSQL, how long this daemon's lease lasts without renewal
    /// (renewed every sixth of it): once it runs out, another daemon on the
    /// database takes over its calls in flight.
    pub lease_secs: u64,
    /// Whether the file named `path` itself, so that `path` and `url`
    /// together can be refused rather than one silently ignored.
    path_given: bool,
}

/// `[database]` as written, before the defaults say which keys were given.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabaseConfig {
    path: Option<PathBuf>,
    #[serde(default)]
    url: Secret,
    pool_size: Option<usize>,
    lease_secs: Option<u64>,
}

impl From<RawDatabaseConfig> for DatabaseConfig {
    fn from(raw: RawDatabaseConfig) -> Self {
        let default = DatabaseConfig::default();
        DatabaseConfig {
            path_given: raw.path.is_some(),
            path: raw.path.unwrap_or(default.path),
            url: (!raw.url.is_empty()).then_some(raw.url),
            pool_size: raw.pool_size.unwrap_or(default.pool_size),
            lease_secs: raw.lease_secs.unwrap_or(default.lease_secs),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("voice-otp.db"), url: None, pool_size: 4, lease_secs: 30, path_given: false }
    }
}

/// Leaves out whether `path` was written, so a file that spells out the
/// defaults shows as the defaults.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("path", &self.path)
            .field("url", &self.url)
            .field("pool_size", &self.pool_size)
            .field("lease_secs", &self.lease_secs)
            .finish()
    }
}

impl DatabaseConfig {
    /// What the database is, for messages: the SQLite file, or the
    /// PostgreSQL server and database (never the URL's password).
    pub fn describe(&self) -> String {
        match &self.url {
            Some(url) => crate::store::postgres_target(url.expose()),
            None => self.path.display().to_string(),
        }
    }

    /// `path` and `url` are one or the other; the URL must be one we can use.
    fn check(&self) -> Result<(), String> {
        let Some(url) = &self.url else { return Ok(()) };
        if self.path_given {
            return Err("database.path and database.url are both set: path is SQLite's file, url a PostgreSQL \
                        server; keep one"
                .into());
        }
        crate::store::check_postgres_url(url.expose()).map_err(|e| format!("database.url: {e}"))?;
        if !(1..=64).contains(&self.pool_size) {
            return Err(format!("database.pool_size must be 1..=64, got {}", self.pool_size));
        }
        if !(2..=3600).contains(&self.lease_secs) {
            return Err(format!("database.lease_secs must be 2..=3600, got {}", self.lease_secs));
        }
        Ok(())
    }
}

/// `[dial]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialConfig {
    /// Channel to dial; `{e164}`, `{digits}` and `{national}` are replaced by
    /// the destination number.
    pub channel: NumberTemplate,
    /// Dialplan context the answered call enters.
    pub context: String,
    /// Extension in that context.
    pub exten: String,
    /// Caller ID shown to the callee, e.g. `"Acme" <0211234567>`. Empty: none set.
    pub caller_id: String,
    /// How long the phone may ring before the call counts as not answered.
    pub ring_timeout_secs: u32,
    /// A call not dialled within this many seconds of its request is
    /// `expired` instead (a late code is useless and confusing).
    pub deadline_secs: u32,
    /// SIP header that carries the call id on the outgoing INVITE of a
    /// `PJSIP/` channel (`PJSIP_HEADER(add,...)`), so the far side, SIP
    /// traces and the sandbox's recordings can name the call. Empty: none.
    pub call_id_header: String,
}

impl Default for DialConfig {
    fn default() -> Self {
        Self {
            channel: NumberTemplate::parse("PJSIP/{national}@carrier").expect("default template is valid"),
            context: "voice-otp".into(),
            exten: "s".into(),
            caller_id: String::new(),
            ring_timeout_secs: 30,
            deadline_secs: 300,
            call_id_header: "X-Voice-OTP-Call".into(),
        }
    }
}

/// `[phone]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhoneConfig {
    /// ISO 3166 country whose national numbers (`03001234567`) are accepted
    /// without a country code.
    pub default_country: Country,
    /// Toll-fraud guard: countries calls may go to. `None` (the key absent):
    /// the default country only.
    pub allowed_countries: Option<Vec<Country>>,
    /// Toll-fraud guard: E.164 prefixes (`"+4420"`) calls may go to besides
    /// the allowed countries. `"+"` allows every destination.
    pub allowed_prefixes: Vec<String>,
    /// Toll-fraud guard: kinds of line never called, even in an allowed
    /// country or prefix (libphonenumber's types, in snake_case).
    pub refused_number_types: Vec<NumberType>,
}

impl Default for PhoneConfig {
    fn default() -> Self {
        Self {
            default_country: Country::parse("PK").expect("PK is a country"),
            allowed_countries: None,
            allowed_prefixes: Vec::new(),
            refused_number_types: vec![
                NumberType::PremiumRate,
                NumberType::SharedCost,
                NumberType::Uan,
                NumberType::PersonalNumber,
            ],
        }
    }
}

impl PhoneConfig {
    /// The countries calls may go to, the default applied.
    pub fn allowed_countries(&self) -> Vec<Country> {
        self.allowed_countries.clone().unwrap_or_else(|| vec![self.default_country])
    }
}

/// `[limits]`: abuse limits. A count of 0 switches that limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests one API user may make per minute (counted after a
    /// successful login).
    pub user_requests_per_minute: u32,
    /// Calls to one destination number per `number_window_secs`.
    pub number_calls_per_window: u32,
    /// The window of `number_calls_per_window`, in seconds (1..=86400).
    pub number_window_secs: u64,
    /// Calls to one destination number per 24 hours (counted from the
    /// stored calls, so a restart does not reset it).
    pub number_calls_per_day: u32,
    /// Calls one API user may place per 24 hours (counted in the database,
    /// in hourly buckets): what a leaked credential can cost in a day.
    pub user_calls_per_day: u32,
    /// Failed logins per user name (from every address) per
    /// `login_failure_window_secs`; beyond it the name is not locked, but
    /// its password checks are rationed to `login_verifies_per_user_per_minute`.
    pub login_failures_per_user: u32,
    /// Failed logins per client address per `login_failure_window_secs`,
    /// whatever the name; beyond it the address is refused (429) without a
    /// password check.
    pub login_failures_per_ip: u32,
    /// Failed logins per (user name, client address) per
    /// `login_failure_window_secs`; beyond it that address is refused for
    /// that name without a password check.
    pub login_failures_per_user_ip: u32,
    /// Password checks (bcrypt verifies) per minute for a name over
    /// `login_failures_per_user`; a login that finds none free gets 429 with
    /// a Retry-After of seconds. Credentials the cache vouches for need none.
    pub login_verifies_per_user_per_minute: u32,
    /// The window of the failed-login counts (and so the longest an address
    /// stays refused).
    pub login_failure_window_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            user_requests_per_minute: 60,
            number_calls_per_window: 3,
            number_window_secs: 600,
            number_calls_per_day: 10,
            user_calls_per_day: 1000,
            login_failures_per_user: 5,
            login_failures_per_ip: 20,
            login_failures_per_user_ip: 5,
            login_verifies_per_user_per_minute: 2,
            login_failure_window_secs: 900,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// bcrypt cost for passwords set with the CLI (4..=31).
    pub bcrypt_cost: u32,
    /// How long a verified (user, password) is accepted from memory without
    /// another bcrypt verify, in seconds. 0: verify every request.
    pub cache_ttl_secs: u64,
    /// Most users whose credentials are remembered at once.
    pub cache_max_users: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { bcrypt_cost: 12, cache_ttl_secs: 300, cache_max_users: 10_000 }
    }
}

/// `[call]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallConfig {
    /// Silence after answer before the first word (carriers often clip the
    /// first syllables of audio played at once).
    pub answer_pause_ms: u32,
    /// Silence between two digits.
    pub digit_pause_ms: u32,
    /// Silence between two readings of the code.
    pub reading_pause_ms: u32,
    /// How many times the code is read ("I repeat" between readings).
    pub readings: u32,
    /// Readings a callee may add by pressing 1 (mid-reading or after "press
    /// 1 to hear the code again"); 0 never offers a replay.
    pub max_extra_readings: u32,
    /// How long to wait for a key after "press 1 to hear the code again".
    pub replay_wait_ms: u32,
    /// Languages calls may ask for; each needs its sounds in Asterisk's
    /// `sounds/<language>/` (`voice-otp sounds check`).
    pub languages: Vec<Language>,
    /// Language of calls that name none (and whose user has no default).
    pub default_language: Language,
    /// Voicemail-safe mode for calls and users that do not say: read the
    /// code only after the callee presses a key.
    pub require_keypress: bool,
    /// Voicemail-safe mode: how many times "press any key to hear your
    /// verification code" is played before giving up (`no_keypress`).
    pub keypress_prompts: u32,
    /// Voicemail-safe mode: how long to wait for a key after each prompt.
    pub keypress_wait_ms: u32,
    /// Mode of calls and users that do not say: `read` the code to the
    /// callee, or have them `enter` it on the keypad.
    pub mode: crate::call::options::CallMode,
    /// Enter mode: codes the callee may type before the call ends
    /// `wrong_code`.
    pub entry_attempts: u32,
    /// Enter mode: how long to wait for a key, after the prompt and between
    /// keys, before an entry ends.
    pub entry_timeout_ms: u32,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            answer_pause_ms: 1000,
            digit_pause_ms: 400,
            reading_pause_ms: 600,
            readings: 2,
            max_extra_readings: 3,
            replay_wait_ms: 5000,
            languages: ["en", "ur"].iter().filter_map(|l| Language::parse(l)).collect(),
            default_language: Language::parse("en").expect("en is a language name"),
            require_keypress: false,
            keypress_prompts: 3,
            keypress_wait_ms: 5000,
            mode: crate::call::options::CallMode::Read,
            entry_attempts: 3,
            entry_timeout_ms: 6000,
        }
    }
}

/// `[webhooks]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Host names (exact, case-insensitive) webhooks may go to. Empty: any.
    pub allow_hosts: Vec<String>,
    /// Refuse destinations that resolve to loopback, private, link-local,
    /// shared (CGNAT), unique-local or other non-public addresses (SSRF guard).
    pub deny_private: bool,
    /// Time limit of one delivery attempt (connect + TLS + response head).
    pub timeout_secs: u32,
    /// Attempts before a delivery is given up.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles with each failure...
    pub retry_initial_secs: u32,
    /// ...up to this cap.
    pub retry_max_secs: u32,
    /// Delivery attempts in progress at once, all destinations together.
    pub max_concurrent: u32,
    /// Attempts in progress at once to one destination host (as named in
    /// the URL).
    pub max_concurrent_per_host: u32,
    /// Attempts in progress at once for one user's calls. Below the per-host
    /// cap, so one user whose receiver hangs cannot fill a shared host's slots.
    pub max_concurrent_per_user: u32,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            deny_private: true,
            timeout_secs: 10,
            max_attempts: 15,
            retry_initial_secs: 5,
            retry_max_secs: 900,
            max_concurrent: 64,
            max_concurrent_per_host: 8,
            max_concurrent_per_user: 4,
        }
    }
}

/// `[retention]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Final calls older than this many days are deleted (with their
    /// webhook records). 0 keeps them forever.
    pub days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { days: 30 }
    }
}
impl CallConfig {
    /// The `[call]` rules `Config::load` enforces; the message names the key.
    fn check(&self) -> Result<(), String> {
        if self.readings == 0 || self.readings > 10 {
            return Err(format!("call.readings must be 1..=10, got {}", self.readings));
        }
        if self.max_extra_readings > 10 {
            return Err(format!("call.max_extra_readings must be 0..=10, got {}", self.max_extra_readings));
        }
        if self.keypress_prompts == 0 || self.keypress_prompts > 10 {
            return Err(format!("call.keypress_prompts must be 1..=10, got {}", self.keypress_prompts));
        }
        if self.entry_attempts == 0 || self.entry_attempts > 10 {
            return Err(format!("call.entry_attempts must be 1..=10, got {}", self.entry_attempts));
        }
        // 0 would hand Asterisk's GET DATA its own defaults (6 s, then 2 s).
        if self.entry_timeout_ms == 0 {
            return Err("call.entry_timeout_ms must be at least 1".into());
        }
        for (key, ms) in [
            ("answer_pause_ms", self.answer_pause_ms),
            ("digit_pause_ms", self.digit_pause_ms),
            ("reading_pause_ms", self.reading_pause_ms),
            ("replay_wait_ms", self.replay_wait_ms),
            ("keypress_wait_ms", self.keypress_wait_ms),
            ("entry_timeout_ms", self.entry_timeout_ms),
        ] {
            if ms > MAX_CALL_WAIT_MS {
                return Err(format!("call.{key} must be at most {MAX_CALL_WAIT_MS}, got {ms}"));
            }
        }
        if self.languages.is_empty() {
            return Err("call.languages must name at least one language".into());
        }
        for (i, lang) in self.languages.iter().enumerate() {
            if self.languages[..i].contains(lang) {
                return Err(format!("call.languages names `{lang}` twice"));
            }
        }
        if !self.languages.contains(&self.default_language) {
            return Err(format!(
                "call.default_language `{}` is not one of call.languages ({})",
                self.default_language,
                crate::call::options::languages_list(self)
            ));
        }
        Ok(())
    }
}

/// Longest pause or wait in `[call]`: a minute of silence is already far
/// beyond what a callee waits through.
pub const MAX_CALL_WAIT_MS: u32 = 60_000;

/// `[queue]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Single-server form: calls in flight (dialing, ringing or answered)
    /// at most on the `[ami]` server, its trunk's capacity (10 when not
    /// set). Further calls wait in the queue, oldest first. With
    /// `[[asterisk]]` entries each sets its own, and this is an error.
    pub max_concurrent_calls: Option<u32>,
    /// Calls waiting to be dialled at most; beyond it requests get 503 with
    /// Retry-After (e.g. while Asterisk is down).
    pub max_queued: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { max_concurrent_calls: None, max_queued: 1000 }
    }
}

/// `[verify]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// A verification not approved this many seconds after it was created
    /// is `expired`; its code can no longer be checked.
    pub ttl_secs: u32,
    /// Wrong codes a verification may be checked with; the last one ends it
    /// as `max_attempts_reached`.
    pub max_checks: u32,
    /// Calls one verification may place (the first and the re-sends).
    pub max_sends: u32,
    /// File of the key that codes are derived from (32 random bytes, made
    /// on first start, mode 0600). Empty: next to the database, as
    /// `<database path>.key`. Daemons sharing a database share this key.
    pub key_file: PathBuf,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self { ttl_secs: 600, max_checks: 5, max_sends: 5, key_file: PathBuf::new() }
    }
}

impl VerifyConfig {
    /// The key file, the default applied for a database at `database`.
    pub fn key_path(&self, database: &Path) -> PathBuf {
        if self.key_file.as_os_str().is_empty() {
            let mut name = database.as_os_str().to_owned();
            name.push(".key");
            PathBuf::from(name)
        } else {
            self.key_file.clone()
        }
    }
}

/// A configuration that could not be loaded; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a bad value.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the key and line.
        message: String,
    },
}

impl Config {
    /// Loads `path`, or the defaults when `path` is `None`. Relative paths in
    /// the file are resolved against the file's folder.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            let config = Config::default();
            return config.checked(Path::new("<defaults>"));
        };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config =
            Config::from_toml(&text).map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        if config.database.path.is_relative()
            && let Some(dir) = path.parent()
        {
            config.database.path = dir.join(&config.database.path);
        }
        if !config.verify.key_file.as_os_str().is_empty()
            && config.verify.key_file.is_relative()
            && let Some(dir) = path.parent()
        {
            config.verify.key_file = dir.join(&config.verify.key_file);
        }
        config.checked(path)
    }

    /// Parses TOML text (no path resolution); the error is toml's message.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.message().trim().to_owned() + &line_hint(text, &e))
    }

    fn checked(self, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: path.to_owned(), message };
        if !(4..=31).contains(&self.auth.bcrypt_cost) {
            return Err(invalid(format!("auth.bcrypt_cost must be 4..=31, got {}", self.auth.bcrypt_cost)));
        }
        if self.agi.max_sessions == 0 {
            return Err(invalid("agi.max_sessions must be at least 1".into()));
        }
        let v = &self.verify;
        if !(60..=86_400).contains(&v.ttl_secs) {
            return Err(invalid(format!("verify.ttl_secs must be 60..=86400, got {}", v.ttl_secs)));
        }
        if !(1..=20).contains(&v.max_checks) {
            return Err(invalid(format!("verify.max_checks must be 1..=20, got {}", v.max_checks)));
        }
        if !(1..=20).contains(&v.max_sends) {
            return Err(invalid(format!("verify.max_sends must be 1..=20, got {}", v.max_sends)));
        }
        self.call.check().map_err(invalid)?;
        self.database.check().map_err(invalid)?;
        for (key, value) in [
            ("dial.context", &self.dial.context),
            ("dial.exten", &self.dial.exten),
            ("dial.caller_id", &self.dial.caller_id),
            ("agi.url", &self.agi.url),
        ] {
            if value.chars().any(|c| c.is_control()) {
                return Err(invalid(format!("{key} must not contain control characters")));
            }
        }
        self.check_agi_fallbacks().map_err(invalid)?;
        self.check_servers().map_err(invalid)?;
        let header = &self.dial.call_id_header;
        if header.len() > 64 || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(invalid(format!(
                "dial.call_id_header must be a SIP header name (at most 64 of A-Z a-z 0-9 -), got {:?}",
                header
            )));
        }
        if self.dial.context.is_empty() || self.dial.exten.is_empty() {
            return Err(invalid("dial.context and dial.exten must not be empty".into()));
        }
        for prefix in &self.phone.allowed_prefixes {
            let is_prefix = prefix.strip_prefix('+').is_some_and(|digits| {
                digits.bytes().all(|b| b.is_ascii_digit()) && digits.len() <= crate::phone::MAX_E164_DIGITS
            });
            if !is_prefix {
                return Err(invalid(format!(
                    "phone.allowed_prefixes: `{prefix}` is not an E.164 prefix (\"+\" and up to 15 digits)"
                )));
            }
        }
        self.check_national_dialling().map_err(invalid)?;
        if self.agi.allowed_peers.is_empty() {
            return Err(invalid("agi.allowed_peers must list at least Asterisk's address".into()));
        }
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections must be at least 1".into()));
        }
        // 0 would answer every POST 413.
        if self.http.max_body_bytes == 0 {
            return Err(invalid("http.max_body_bytes must be at least 1".into()));
        }
        for (key, secs) in [
            ("http.header_timeout_secs", self.http.header_timeout_secs),
            ("http.body_timeout_secs", self.http.body_timeout_secs),
            ("http.write_timeout_secs", self.http.write_timeout_secs),
            ("limits.login_failure_window_secs", self.limits.login_failure_window_secs),
            ("limits.number_window_secs", self.limits.number_window_secs),
        ] {
            if secs == 0 || secs > 86_400 {
                return Err(invalid(format!("{key} must be 1..=86400, got {secs}")));
            }
        }
        if self.dial.ring_timeout_secs == 0 || self.dial.ring_timeout_secs > 300 {
            return Err(invalid(format!(
                "dial.ring_timeout_secs must be 1..=300, got {}",
                self.dial.ring_timeout_secs
            )));
        }
        if self.queue.max_queued == 0 {
            return Err(invalid("queue.max_queued must be at least 1".into()));
        }
        if self.dial.deadline_secs == 0 || self.dial.deadline_secs > 86_400 {
            return Err(invalid(format!("dial.deadline_secs must be 1..=86400, got {}", self.dial.deadline_secs)));
        }
        let w = &self.webhooks;
        if !(1..=300).contains(&w.timeout_secs) {
            return Err(invalid(format!("webhooks.timeout_secs must be 1..=300, got {}", w.timeout_secs)));
        }
        if !(1..=100).contains(&w.max_attempts) {
            return Err(invalid(format!("webhooks.max_attempts must be 1..=100, got {}", w.max_attempts)));
        }
        if w.retry_initial_secs == 0 || w.retry_max_secs < w.retry_initial_secs {
            return Err(invalid("webhooks.retry_initial_secs must be >= 1 and <= webhooks.retry_max_secs".into()));
        }
        for (key, n) in [
            ("webhooks.max_concurrent", w.max_concurrent),
            ("webhooks.max_concurrent_per_host", w.max_concurrent_per_host),
            ("webhooks.max_concurrent_per_user", w.max_concurrent_per_user),
        ] {
            if !(1..=1024).contains(&n) {
                return Err(invalid(format!("{key} must be 1..=1024, got {n}")));
            }
        }
        if let Some(bad) = w.allow_hosts.iter().find(|h| h.is_empty() || h.contains(['/', ':', '@', ' '])) {
            return Err(invalid(format!("webhooks.allow_hosts: {bad:?} is not a host name")));
        }
        Ok(self)
    }
}

impl Config {
    /// The Asterisk servers to dial through: the `[[asterisk]]` entries or,
    /// without any, the single-server form - `[ami]` (or the sandbox's AMI
    /// user) named [`DEFAULT_SERVER`], with `[queue] max_concurrent_calls`
    /// (or 10) and no pacing, as before there were several.
    pub fn servers(&self) -> Vec<AsteriskConfig> {
        if !self.asterisk.is_empty() {
            return self.asterisk.clone();
        }
        let ami = self.ami.clone().unwrap_or_default();
        vec![AsteriskConfig {
            name: DEFAULT_SERVER.to_owned(),
            host: ami.host,
            port: ami.port,
            username: ami.username,
            secret: ami.secret,
            max_concurrent_calls: self.queue.max_concurrent_calls.unwrap_or(10),
            max_calls_per_second: 0,
            weight: 1,
        }]
    }

    /// The same configuration with the servers spelled as `[[asterisk]]`
    /// entries ([`Config::servers`]) and the single-server keys unset: two
    /// configurations that dial alike compare alike (by `Debug`; secrets
    /// print redacted, so compare [`Config::servers`]' secrets apart).
    pub fn canonical(&self) -> Config {
        let mut c = self.clone();
        c.asterisk = c.servers();
        c.ami = None;
        c.queue.max_concurrent_calls = None;
        c
    }

    /// One form or the other, every entry valid, names unique.
    fn check_servers(&self) -> Result<(), String> {
        if !self.asterisk.is_empty() {
            if self.ami.is_some() {
                return Err("[ami] and [[asterisk]] are both set: use [[asterisk]] entries alone (the [ami] section \
                            is the single-server form)"
                    .into());
            }
            if self.queue.max_concurrent_calls.is_some() {
                return Err("queue.max_concurrent_calls and [[asterisk]] are both set: with [[asterisk]] entries \
                            each sets its own max_concurrent_calls"
                    .into());
            }
        }
        let single = self.asterisk.is_empty();
        let servers = self.servers();
        for (i, server) in servers.iter().enumerate() {
            let key = if single { "ami".to_owned() } else { format!("asterisk[{}]", i + 1) };
            let concurrent =
                if single { "queue.max_concurrent_calls".to_owned() } else { format!("{key}.max_concurrent_calls") };
            server.check(&key, &concurrent)?;
            if let Some(first) = servers[..i].iter().position(|s| s.name == server.name) {
                return Err(format!("{key}.name {:?} is already the name of asterisk[{}]", server.name, first + 1));
            }
        }
        Ok(())
    }

    /// `[agi] fallback_urls`: few, and each fit for a channel variable.
    fn check_agi_fallbacks(&self) -> Result<(), String> {
        let urls = &self.agi.fallback_urls;
        if urls.len() > MAX_AGI_FALLBACKS {
            return Err(format!("agi.fallback_urls lists {} URLs, at most {MAX_AGI_FALLBACKS}", urls.len()));
        }
        for url in urls {
            if url.is_empty() || url.chars().any(|c| c.is_control() || c == ' ') {
                return Err(format!("agi.fallback_urls: {url:?} is not a FastAGI URL like agi://host:4573/otp"));
            }
        }
        Ok(())
    }

    /// `{national}` is the number as dialled inside its own country: on the
    /// home trunk, +44 20... would go out as 020..., someone else's number.
    /// So a template with it may only serve destinations that share
    /// `phone.default_country`'s calling code.
    fn check_national_dialling(&self) -> Result<(), String> {
        if !self.dial.channel.uses_national() {
            return Ok(());
        }
        let home = self.phone.default_country;
        let home_code = home.calling_code();
        let abroad = |why: String| {
            Err(format!(
                "dial.channel uses {{national}}, the number as dialled inside its own country, but {why}, outside \
                 phone.default_country {}: such calls would reach another number on the home trunk. Use {{e164}} or \
                 {{digits}} in dial.channel, or allow only the default country",
                home.code()
            ))
        };
        for country in self.phone.allowed_countries() {
            if country.calling_code() != home_code {
                return abroad(format!("phone.allowed_countries allows {}", country.code()));
            }
        }
        let home_prefix = home_code.map(|c| format!("+{c}")).unwrap_or_default();
        for prefix in &self.phone.allowed_prefixes {
            if home_prefix.is_empty() || !prefix.starts_with(&home_prefix) {
                return abroad(format!("phone.allowed_prefixes allows \"{prefix}\""));
            }
        }
        Ok(())
    }
}

fn line_hint(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        let servers = c.servers();
        assert_eq!(servers.len(), 1);
        assert_eq!((servers[0].name.as_str(), servers[0].port, servers[0].max_concurrent_calls), ("default", 5038, 10));
        assert_eq!(servers[0].max_calls_per_second, 0, "the single-server form is unpaced, as it always was");
        assert_eq!(c.agi.listen.to_string(), "127.0.0.1:4573");
        assert_eq!(c.dial.context, "voice-otp");
        assert_eq!(c.dial.ring_timeout_secs, 30);
        assert_eq!(c.auth.bcrypt_cost, 12);
        assert_eq!(c.phone.default_country.code(), "PK");
        assert_eq!(c.dial.deadline_secs, 300);
        assert_eq!(c.retention.days, 30);
        assert!(c.webhooks.deny_private && c.webhooks.allow_hosts.is_empty());
    }

    #[test]
    fn database_is_sqlite_by_default_postgres_by_url_never_both() {
        let c = Config::from_toml("").unwrap();
        assert_eq!((c.database.url.is_none(), c.database.pool_size), (true, 4));
        let url = "postgres://otp:hunter2-pw@db.example:5433/otp?sslmode=disable";
        let c = Config::from_toml(&format!("[database]\nurl = \"{url}\"\npool_size = 8\n")).unwrap();
        assert_eq!(c.database.url.as_ref().map(|u| u.expose()), Some(url));
        assert_eq!(c.database.pool_size, 8);
        c.clone().checked(Path::new("t.toml")).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"), "the URL's password is redacted: {c:?}");
        assert_eq!(c.database.describe(), "PostgreSQL db.example:5433/otp");
        let checked = |toml: &str| Config::from_toml(toml).unwrap().checked(Path::new("t.toml")).map(|_| ());
        let both = checked(&format!("[database]\npath = \"x.db\"\nurl = \"{url}\"\n")).unwrap_err();
        assert!(both.to_string().contains("database.path and database.url are both set"), "{both}");
        for (bad, says) in [
            ("mysql://a@b/c", "must start with postgres://"),
            ("postgres://a:hunter2-pw@b:5432/c?sslmode=verify-ca", "verify-ca is not supported"),
            ("postgres://a:hunter2-pw@b:5432/c?sslmode=verify-full&sslrootcert=/none.pem", "sslrootcert /none.pem"),
            ("postgres://a:hunter2-pw@b:5432", "names no database"),
        ] {
            let err = checked(&format!("[database]\nurl = \"{bad}\"\n")).unwrap_err().to_string();
            assert!(err.contains("database.url") && err.contains(says), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        checked("[database]\nurl = \"postgres://a:b@db.example/c?sslmode=verify-full\"\n").unwrap();
        let err = checked(&format!("[database]\nurl = \"{url}\"\npool_size = 0\n")).unwrap_err();
        assert!(err.to_string().contains("database.pool_size must be 1..=64"), "{err}");
        let err = checked(&format!("[database]\nurl = \"{url}\"\nlease_secs = 1\n")).unwrap_err();
        assert!(err.to_string().contains("database.lease_secs must be 2..=3600"), "{err}");
        assert_eq!(Config::from_toml("").unwrap().database.lease_secs, 30);
        // `url = ""` is SQLite, as the example file shows it.
        assert!(Config::from_toml("[database]\nurl = \"\"\n").unwrap().database.url.is_none());
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = Config::from_toml("[http]\nlisten = \"127.0.0.1:1\"\nlisten_addr = 3\n").unwrap_err();
        assert!(err.contains("listen_addr"), "{err}");
        let err = Config::from_toml("[htp]\n").unwrap_err();
        assert!(err.contains("htp"), "{err}");
    }

    #[test]
    fn bad_template_placeholder_is_an_error() {
        let err = Config::from_toml("[dial]\nchannel = \"PJSIP/{number}@x\"\n").unwrap_err();
        assert!(err.contains("{number}"), "{err}");
    }

    #[test]
    fn refused_number_types_are_named_in_snake_case() {
        let c = Config::from_toml("[phone]\nrefused_number_types = [\"premium_rate\", \"toll_free\"]\n").unwrap();
        assert_eq!(c.phone.refused_number_types, [NumberType::PremiumRate, NumberType::TollFree]);
        let err = Config::from_toml("[phone]\nrefused_number_types = [\"premium\"]\n").unwrap_err();
        assert!(err.contains("`premium`") && err.contains("premium_rate"), "{err}");
        let c = Config::from_toml("[phone]\nrefused_number_types = []\n").unwrap();
        assert!(c.phone.refused_number_types.is_empty());
    }

    #[test]
    fn bad_country_is_an_error() {
        let err = Config::from_toml("[phone]\ndefault_country = \"XX\"\n").unwrap_err();
        assert!(err.contains("XX"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let c = Config::from_toml("[auth]\nbcrypt_cost = 3\n").unwrap();
        assert!(c.checked(Path::new("x")).unwrap_err().to_string().contains("bcrypt_cost"));
        let c = Config::from_toml("[agi]\nmax_sessions = 0\n").unwrap();
        assert!(c.checked(Path::new("x")).unwrap_err().to_string().contains("max_sessions"));
        let c = Config::from_toml("[dial]\ncaller_id = \"a\\r\\nAction: Logoff\"\n").unwrap();
        assert!(c.checked(Path::new("x")).unwrap_err().to_string().contains("caller_id"));
    }

    #[test]
    fn call_section_is_checked() {
        let refused = [
            ("[call]\nreadings = 0\n", "call.readings"),
            ("[call]\nmax_extra_readings = 11\n", "call.max_extra_readings"),
            ("[call]\nkeypress_prompts = 0\n", "call.keypress_prompts"),
            ("[call]\nreplay_wait_ms = 600000\n", "call.replay_wait_ms"),
            ("[call]\nlanguages = []\n", "call.languages"),
            ("[call]\nlanguages = [\"en\", \"en\"]\n", "twice"),
            ("[call]\ndefault_language = \"fr\"\n", "call.default_language"),
            ("[call]\nentry_attempts = 0\n", "call.entry_attempts"),
            ("[call]\nentry_attempts = 11\n", "call.entry_attempts"),
            ("[call]\nentry_timeout_ms = 0\n", "call.entry_timeout_ms"),
            ("[call]\nentry_timeout_ms = 60001\n", "call.entry_timeout_ms"),
        ];
        for (toml, needle) in refused {
            let c = Config::from_toml(toml).unwrap();
            let err = c.checked(Path::new("x")).unwrap_err().to_string();
            assert!(err.contains(needle), "{toml}: {err}");
        }
        let c =
            Config::from_toml("[call]\nlanguages = [\"en\", \"ur\", \"pt_BR\"]\ndefault_language = \"ur\"\n").unwrap();
        assert!(c.checked(Path::new("x")).is_ok());
        let c = Config::from_toml("[call]\nmode = \"enter\"\n").unwrap();
        assert_eq!(c.call.mode, crate::call::options::CallMode::Enter);
        let err = Config::from_toml("[call]\nmode = \"type\"\n").unwrap_err();
        assert!(err.contains("read") && err.contains("enter"), "{err}");
        // A name that could not be a sounds folder is refused as the file is read.
        let err = Config::from_toml("[call]\nlanguages = [\"en\", \"../x\"]\n").unwrap_err();
        assert!(err.contains("../x") && err.contains("not a language name") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn webhook_caps_are_checked() {
        for (toml, needle) in [
            ("[webhooks]\nmax_concurrent = 0\n", "webhooks.max_concurrent must be 1..=1024, got 0"),
            ("[webhooks]\nmax_concurrent_per_host = 1025\n", "webhooks.max_concurrent_per_host"),
            ("[webhooks]\nmax_concurrent_per_user = 0\n", "webhooks.max_concurrent_per_user"),
        ] {
            let c = Config::from_toml(toml).unwrap();
            let err = c.checked(Path::new("x")).unwrap_err().to_string();
            assert!(err.contains(needle), "{toml}: {err}");
        }
        let c = Config::default();
        let w = &c.webhooks;
        assert_eq!((w.max_concurrent, w.max_concurrent_per_host, w.max_concurrent_per_user), (64, 8, 4));
        assert!(c.checked(Path::new("x")).is_ok());
    }

    #[test]
    fn national_dialling_is_refused_for_destinations_abroad() {
        let check = |toml: &str| Config::from_toml(toml).unwrap().checked(Path::new("x")).map(|_| ());
        for (toml, named) in [
            ("[phone]\nallowed_prefixes = [\"+4420\"]\n", "\"+4420\""),
            ("[phone]\nallowed_prefixes = [\"+\"]\n", "\"+\""),
            ("[phone]\nallowed_prefixes = [\"+9\"]\n", "\"+9\""),
            ("[phone]\nallowed_countries = [\"PK\", \"GB\"]\n", "allows GB"),
        ] {
            let err = check(toml).unwrap_err().to_string();
            assert!(err.contains("dial.channel") && err.contains("{national}"), "{toml}: {err}");
            assert!(err.contains("phone.allowed_") && err.contains(named), "{toml}: {err}");
            assert!(err.contains("phone.default_country PK"), "{toml}: {err}");
        }
        // The home country, prefixes inside it, or a template without {national}.
        check("").unwrap();
        check("[phone]\nallowed_prefixes = [\"+92\", \"+9230\"]\n").unwrap();
        check("[dial]\nchannel = \"PJSIP/{e164}@carrier\"\n[phone]\nallowed_prefixes = [\"+\"]\n").unwrap();
        // Countries that share the calling code share the numbering plan.
        check("[phone]\ndefault_country = \"US\"\nallowed_countries = [\"US\", \"CA\"]\n").unwrap();
    }

    #[test]
    fn secret_is_not_in_debug_output() {
        let c = Config::default();
        assert!(!format!("{c:?}").contains("voice-otp-sandbox"));
    }

    #[test]
    fn asterisk_entries_take_their_defaults_and_are_named() {
        let c = Config::from_toml(
            "[[asterisk]]\nname = \"pbx-a\"\n\n[[asterisk]]\nname = \"pbx_b\"\nhost = \"10.0.0.2\"\nport = 5039\n\
             max_concurrent_calls = 30\nmax_calls_per_second = 0\nweight = 3\n",
        )
        .unwrap()
        .checked(Path::new("x"))
        .unwrap();
        let servers = c.servers();
        assert_eq!(servers.len(), 2);
        let a = &servers[0];
        assert_eq!((a.name.as_str(), a.host.as_str(), a.port), ("pbx-a", "127.0.0.1", 5038));
        assert_eq!((a.username.as_str(), a.secret.expose()), ("voice-otp", "voice-otp-sandbox"));
        assert_eq!((a.max_concurrent_calls, a.max_calls_per_second, a.weight), (10, 5, 1));
        let b = &servers[1];
        assert_eq!((b.name.as_str(), b.host.as_str(), b.port), ("pbx_b", "10.0.0.2", 5039));
        assert_eq!((b.max_concurrent_calls, b.max_calls_per_second, b.weight), (30, 0, 3));
    }

    #[test]
    fn the_single_server_form_is_one_server_named_default() {
        let c = Config::from_toml(
            "[ami]\nhost = \"pbx.example\"\nport = 6000\nsecret = \"s3\"\n[queue]\nmax_concurrent_calls = 4\n",
        )
        .unwrap()
        .checked(Path::new("x"))
        .unwrap();
        let servers = c.servers();
        assert_eq!(servers.len(), 1);
        let s = &servers[0];
        assert_eq!(
            (s.name.as_str(), s.host.as_str(), s.port, s.secret.expose()),
            ("default", "pbx.example", 6000, "s3")
        );
        assert_eq!((s.max_concurrent_calls, s.max_calls_per_second, s.weight), (4, 0, 1));
    }

    #[test]
    fn asterisk_entries_are_checked_and_named_in_errors() {
        let two = |second: &str| format!("[[asterisk]]\nname = \"a\"\n[[asterisk]]\n{second}\n");
        for (toml, needle) in [
            ("[ami]\nport = 1\n[[asterisk]]\nname = \"a\"\n".to_owned(), "[ami] and [[asterisk]] are both set"),
            (
                "[queue]\nmax_concurrent_calls = 3\n[[asterisk]]\nname = \"a\"\n".to_owned(),
                "queue.max_concurrent_calls and [[asterisk]] are both set",
            ),
            (two("name = \"a\""), "asterisk[2].name \"a\" is already the name of asterisk[1]"),
            (two("port = 5039"), "asterisk[2].name must be 1 to 32"),
            (two("name = \"a b\""), "asterisk[2].name must be"),
            (two(&format!("name = \"{}\"", "x".repeat(33))), "asterisk[2].name must be"),
            (two("name = \"b\"\nhost = \"\""), "asterisk[2].host must not be empty"),
            (two("name = \"b\"\nusername = \"u\\r\\nAction: Logoff\""), "asterisk[2].username"),
            (two("name = \"b\"\nsecret = \"s\\n\""), "asterisk[2].secret"),
            (two("name = \"b\"\nmax_concurrent_calls = 0"), "asterisk[2].max_concurrent_calls must be at least 1"),
            (two("name = \"b\"\nmax_calls_per_second = 1001"), "asterisk[2].max_calls_per_second"),
            (two("name = \"b\"\nweight = 0"), "asterisk[2].weight must be 1..=1000"),
            ("[queue]\nmax_concurrent_calls = 0\n".to_owned(), "queue.max_concurrent_calls must be at least 1"),
            ("[ami]\nhost = \"a\\nb\"\n".to_owned(), "ami.host must not contain control characters"),
            ("[ami]\nsecret = \"a\\nb\"\n".to_owned(), "ami.secret must not contain control characters"),
        ] {
            let c = Config::from_toml(&toml).unwrap();
            let err = c.checked(Path::new("x")).unwrap_err().to_string();
            assert!(err.contains(needle), "{toml}: {err}");
            assert!(!err.contains("voice-otp-sandbox"), "no secret in errors: {err}");
        }
        let err = Config::from_toml("[[asterisk]]\nname = \"a\"\nhostname = \"x\"\n").unwrap_err();
        assert!(err.contains("hostname"), "{err}");
    }

    #[test]
    fn agi_fallbacks_are_few_and_urls() {
        let check = |toml: &str| Config::from_toml(toml).unwrap().checked(Path::new("x")).map(|_| ());
        check("[agi]\nfallback_urls = [\"agi://10.0.0.2:4573/otp\"]\n").unwrap();
        let err = check("[agi]\nfallback_urls = [\"a\", \"b\", \"c\", \"d\", \"e\"]\n").unwrap_err().to_string();
        assert!(err.contains("agi.fallback_urls lists 5 URLs, at most 4"), "{err}");
        let err = check("[agi]\nfallback_urls = [\"agi://x/otp\\nAction: Logoff\"]\n").unwrap_err().to_string();
        assert!(err.contains("agi.fallback_urls"), "{err}");
    }

    #[test]
    fn agi_url_defaults_to_bound_address() {
        let c = AgiConfig::default();
        assert_eq!(c.url_for("127.0.0.1:4999".parse().unwrap()), "agi://127.0.0.1:4999/otp");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The shipped example must load and must equal the defaults, so the
    /// documented defaults cannot drift from the code.
    #[test]
    fn example_equals_defaults() {
        let text = include_str!("../voice-otp.example.toml");
        let parsed = Config::from_toml(text).unwrap();
        // The example spells the single-server form out ([ami], [queue]
        // max_concurrent_calls); the defaults leave both unset: the same
        // servers either way.
        assert_eq!(format!("{:?}", parsed.canonical()), format!("{:?}", Config::default().canonical()));
        let (servers, defaults) = (parsed.servers(), Config::default().servers());
        assert_eq!(servers[0].secret, defaults[0].secret);
    }

    /// The README's config for several daemons ("Running several") loads:
    /// two servers, PostgreSQL, the other daemon as the FastAGI fallback.
    #[test]
    fn readme_running_several_config_loads() {
        let readme = include_str!("../README.md");
        let section = readme.split("### Running several").nth(1).expect("the section");
        let toml = section.split("```toml\n").nth(1).and_then(|t| t.split("```").next()).expect("its TOML");
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let names: Vec<String> = config.servers().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["pbx1", "pbx2"]);
        assert!(config.database.url.is_some());
        assert_eq!(config.agi.fallback_urls.len(), 1);
    }

    /// The example's `[[asterisk]]` entry is commented out (giving one
    /// leaves the single-server form); uncommented, it must still show an
    /// entry's defaults.
    #[test]
    fn example_asterisk_entry_shows_the_defaults() {
        let text = include_str!("../voice-otp.example.toml");
        let entry: String = text
            .lines()
            .skip_while(|l| *l != "# [[asterisk]]")
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(entry.starts_with("[[asterisk]]\nname = \"default\"\n"), "{entry}");
        let parsed = Config::from_toml(&entry).unwrap();
        let defaults = AsteriskConfig { name: "default".into(), ..AsteriskConfig::default() };
        assert_eq!(format!("{:?}", parsed.asterisk), format!("{:?}", std::slice::from_ref(&defaults)));
        assert_eq!(parsed.asterisk[0].secret, defaults.secret);
        assert!(parsed.checked(Path::new("x")).is_ok());
    }
}
