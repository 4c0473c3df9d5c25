//! Configuration: one TOML file, every key optional.
//!
//! With no file at all the defaults talk to the sandbox Asterisk brought up by
//! `scripts/sandbox up`, so `voice-otp serve` works out of the box. Unknown keys
//! are rejected (serde's `deny_unknown_fields` names them), because a typo that
//! silently falls back to a default is worse than an error at start-up.
//! `voice-otp.example.toml` documents every key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::phone::{Country, NumberTemplate};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP front end.
    pub http: HttpConfig,
    /// Asterisk Manager Interface connection.
    pub ami: AmiConfigSection,
    /// FastAGI server Asterisk connects to when a call is answered.
    pub agi: AgiConfig,
    /// SQLite database.
    pub database: DatabaseConfig,
    /// How calls are placed (Originate parameters).
    pub dial: DialConfig,
    /// Phone number interpretation.
    pub phone: PhoneConfig,
    /// API user authentication.
    pub auth: AuthConfig,
    /// What the callee hears and how fast.
    pub call: CallConfig,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Largest accepted request body (POST form), in bytes.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 8080)), max_body_bytes: 8192 }
    }
}

/// `[ami]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmiConfigSection {
    /// Asterisk host running the manager interface.
    pub host: String,
    /// Manager TCP port.
    pub port: u16,
    /// Manager user (manager.conf section name).
    pub username: String,
    /// Manager secret. Never logged.
    pub secret: String,
}

impl Default for AmiConfigSection {
    fn default() -> Self {
        // The sandbox's AMI user (asterisk-conf/sandbox/manager.conf).
        Self {
            host: "127.0.0.1".into(),
            port: 5038,
            username: "voice-otp".into(),
            secret: "voice-otp-sandbox".into(),
        }
    }
}

impl std::fmt::Debug for AmiConfigSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmiConfigSection")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
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
    /// Most FastAGI sessions (answered calls) at once; connections above it
    /// are closed and Asterisk goes on with the dialplan.
    pub max_sessions: usize,
}

impl Default for AgiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4573)),
            url: String::new(),
            max_sessions: crate::agi::DEFAULT_MAX_SESSIONS,
        }
    }
}

impl AgiConfig {
    /// The URL to give the dialplan, given the address actually bound (which
    /// differs from `listen` when that asks for port 0).
    pub fn url_for(&self, bound: SocketAddr) -> String {
        if self.url.is_empty() { format!("agi://{bound}/otp") } else { self.url.clone() }
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// SQLite file. A relative path is taken from the config file's folder
    /// (or the working directory when there is no config file).
    pub path: PathBuf,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("voice-otp.db") }
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
}

impl Default for DialConfig {
    fn default() -> Self {
        Self {
            channel: NumberTemplate::parse("PJSIP/{national}@carrier").expect("default template is valid"),
            context: "voice-otp".into(),
            exten: "s".into(),
            caller_id: String::new(),
            ring_timeout_secs: 30,
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
}

impl Default for PhoneConfig {
    fn default() -> Self {
        Self { default_country: Country::parse("PK").expect("PK is a country") }
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
}

impl Default for CallConfig {
    fn default() -> Self {
        Self { answer_pause_ms: 1000, digit_pause_ms: 400, reading_pause_ms: 600, readings: 2 }
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
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config = Config::from_toml(&text)
            .map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        if config.database.path.is_relative() {
            if let Some(dir) = path.parent() {
                config.database.path = dir.join(&config.database.path);
            }
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
        if self.call.readings == 0 || self.call.readings > 10 {
            return Err(invalid(format!("call.readings must be 1..=10, got {}", self.call.readings)));
        }
        for (key, value) in [
            ("dial.context", &self.dial.context),
            ("dial.exten", &self.dial.exten),
            ("dial.caller_id", &self.dial.caller_id),
            ("agi.url", &self.agi.url),
            ("ami.username", &self.ami.username),
            ("ami.host", &self.ami.host),
        ] {
            if value.chars().any(|c| c.is_control()) {
                return Err(invalid(format!("{key} must not contain control characters")));
            }
        }
        if self.ami.secret.chars().any(|c| c.is_control()) {
            return Err(invalid("ami.secret must not contain control characters".into()));
        }
        if self.dial.context.is_empty() || self.dial.exten.is_empty() {
            return Err(invalid("dial.context and dial.exten must not be empty".into()));
        }
        if self.dial.ring_timeout_secs == 0 || self.dial.ring_timeout_secs > 300 {
            return Err(invalid(format!(
                "dial.ring_timeout_secs must be 1..=300, got {}",
                self.dial.ring_timeout_secs
            )));
        }
        Ok(self)
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
        assert_eq!(c.ami.port, 5038);
        assert_eq!(c.agi.listen.to_string(), "127.0.0.1:4573");
        assert_eq!(c.dial.context, "voice-otp");
        assert_eq!(c.dial.ring_timeout_secs, 30);
        assert_eq!(c.auth.bcrypt_cost, 12);
        assert_eq!(c.phone.default_country.code(), "PK");
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
    fn secret_is_not_in_debug_output() {
        let c = Config::default();
        assert!(!format!("{c:?}").contains("voice-otp-sandbox"));
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
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
        assert_eq!(parsed.ami.secret, Config::default().ami.secret);
    }
}
