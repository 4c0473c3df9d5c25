//! Command line: `serve`, `user ...`, `call ...` and `sounds check`. Every
//! command takes `--config PATH` and works on that config's database.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::auth::hash_password;
use crate::call::CallId;
use crate::call::language::Language;
use crate::call::options::{
    CallMode, MODE_VALUES, REQUIRE_KEYPRESS_VALUES, check_language, languages_list, parse_mode, parse_require_keypress,
};
use crate::config::{CallConfig, Config};
use crate::sounds::{self, DEFAULT_SOUNDS_DIR};
use crate::store::{Store, StoreError, UserDefaultsChange};
use crate::time::format_ms;
use crate::verify::VerificationId;

/// Voice OTP: delivers one-time passwords by phone call through Asterisk.
#[derive(Debug, Parser)]
#[command(name = "voice-otp", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file (see voice-otp.example.toml). Without one,
    /// every default applies: the sandbox Asterisk on 127.0.0.1 and
    /// ./voice-otp.db.
    #[arg(long, global = true, value_name = "PATH", env = "VOICE_OTP_CONFIG")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: HTTP API, AMI client and FastAGI server.
    Serve,
    /// Manage API users (the username/password of /outbound.cgi and /v1), their webhooks.
    #[command(subcommand)]
    User(UserCommand),
    /// Look at calls.
    #[command(subcommand)]
    Call(CallCommand),
    /// Check Asterisk's sounds folder for what calls will play.
    #[command(subcommand)]
    Sounds(SoundsCommand),
    /// Look at verifications (`/v1/verifications`).
    #[command(subcommand)]
    Verification(VerificationCommand),
}

/// `voice-otp verification ...`
#[derive(Debug, Subcommand)]
pub enum VerificationCommand {
    /// Show one verification as key=value lines (never the code).
    Show {
        /// The verification id from the API response.
        id: String,
    },
}

/// `voice-otp sounds ...`
#[derive(Debug, Subcommand)]
pub enum SoundsCommand {
    /// List every sound each language of `[call] languages` needs (our prompts
    /// and digits 0-9) and whether Asterisk has it; exit status 1 if any is
    /// missing.
    Check {
        /// Asterisk's sounds folder (astdatadir/sounds).
        #[arg(long, value_name = "ASTERISK_SOUNDS_DIR", default_value = DEFAULT_SOUNDS_DIR)]
        dir: PathBuf,
    },
}

/// `voice-otp user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; asks for the password twice (no echo) unless --password-stdin.
    Add {
        /// Login name: 1-64 characters of A-Z a-z 0-9 . _ @ -
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users: name, enabled, call defaults, created, default webhook URL.
    List,
    /// Set a user's call defaults, used when a request does not say.
    Set {
        /// Login name.
        name: String,
        /// Default language: one of `[call] languages`, or `default`
        /// for `[call] default_language`.
        #[arg(long, value_name = "LANG")]
        language: Option<String>,
        /// Default voicemail-safe mode: true, false, 1, 0, or `default`
        /// for `[call] require_keypress`.
        #[arg(long, value_name = "BOOL")]
        require_keypress: Option<String>,
        /// Default mode: `read` (the code is read to the callee), `enter`
        /// (they type it), or `default` for `[call] mode`.
        #[arg(long, value_name = "MODE")]
        mode: Option<String>,
    },
    /// Set a new password.
    Passwd {
        /// Login name.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Refuse a user's requests (401) without deleting them.
    Disable {
        /// Login name.
        name: String,
    },
    /// Accept a disabled user's requests again.
    Enable {
        /// Login name.
        name: String,
    },
    /// Delete a user. Their past calls stay on record.
    Remove {
        /// Login name.
        name: String,
    },
    /// Show or set a user's webhook settings: the default URL their calls'
    /// status changes are POSTed to, and the signing secret.
    Webhook {
        /// Login name.
        name: String,
        /// Set the default webhook URL (http:// or https://).
        #[arg(long, value_name = "URL", conflicts_with = "clear_url")]
        url: Option<String>,
        /// Remove the default webhook URL.
        #[arg(long)]
        clear_url: bool,
        /// Make a new signing secret and print it (shown this once).
        #[arg(long)]
        rotate_secret: bool,
    },
}

/// `voice-otp call ...`
#[derive(Debug, Subcommand)]
pub enum CallCommand {
    /// Show one call as key=value lines (never the code).
    Show {
        /// The call id from the API response.
        id: String,
    },
    /// The newest calls, one line each.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// A call's webhook deliveries and every attempt.
    Webhooks {
        /// The call id.
        id: String,
    },
}

/// A command failure: printed as `error: ...`, exit status 1.
pub type CliResult = Result<(), String>;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> CliResult {
    let config = Config::load(cli.config.as_deref()).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve => {
            let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("cannot start runtime: {e}"))?;
            runtime.block_on(crate::daemon::run(config)).map_err(|e| e.to_string())
        }
        Command::User(cmd) => user(&config, cmd),
        Command::Call(cmd) => call(&config, cmd),
        Command::Sounds(SoundsCommand::Check { dir }) => sounds_check(&config.call, &dir),
        Command::Verification(VerificationCommand::Show { id }) => verification_show(&config, &id),
    }
}

fn verification_show(config: &Config, id: &str) -> CliResult {
    let store = open(config)?;
    let vid = VerificationId::parse(id).ok_or_else(|| format!("`{}` is not a verification id", id.escape_debug()))?;
    let v = store.verification(&vid).map_err(db)?.ok_or_else(|| format!("no verification {id}"))?;
    let now = crate::time::now_ms();
    let status = v.status_at(now);
    let when = |t: Option<i64>| t.map(format_ms).unwrap_or_default();
    println!("id={}", v.id);
    println!("number={}", v.number);
    println!("status={status}");
    println!("code_length={}", v.code_length.get());
    println!("language={}", v.language);
    println!("sends={}", v.sends);
    println!("failed_checks={}", v.failed_checks);
    let left = if status.is_final() { 0 } else { config.verify.max_checks.saturating_sub(v.failed_checks) };
    println!("attempts_left={left}");
    println!("call_id={}", v.last_call_id.as_deref().unwrap_or_default());
    println!("created_at={}", format_ms(v.created_at));
    println!("updated_at={}", format_ms(v.updated_at));
    println!("expires_at={}", format_ms(v.expires_at));
    println!("ended_at={}", when(v.ended_at));
    println!("callback_url={}", v.callback_url.as_deref().unwrap_or_default());
    Ok(())
}

fn open(config: &Config) -> Result<Store, String> {
    let opened = match &config.database.url {
        Some(url) => Store::open_postgres(url),
        None => Store::open(&config.database.path),
    };
    opened.map_err(|e| format!("database {}: {e}", config.database.describe()))
}

fn user(config: &Config, cmd: UserCommand) -> CliResult {
    let mut store = open(config)?;
    let cost = config.auth.bcrypt_cost;
    match cmd {
        UserCommand::Add { name, password_stdin } => {
            check_name(&name)?;
            if store.user(&name).map_err(db)?.is_some() {
                return Err(format!("user `{name}` already exists"));
            }
            let hash = hash_password(&read_password(password_stdin)?, cost)?;
            // One transaction: no user is left whose secret was never shown.
            let secret = store
                .atomically(|s| {
                    s.add_user(&name, &hash)?;
                    s.rotate_webhook_secret(&name)
                })
                .map_err(db)?;
            println!("added user {name}");
            println!("webhook_secret={}", secret.expose());
            eprintln!(
                "note: the webhook signing secret is shown only now; `user webhook {name} --rotate-secret` makes a new one"
            );
        }
        UserCommand::List => {
            println!(
                "{:<32} {:<8} {:<10} {:<17} {:<8} {:<24} webhook_url",
                "name", "enabled", "language", "require_keypress", "mode", "created"
            );
            for u in store.users().map_err(db)? {
                let defaults = store.user_call_defaults(u.id).map_err(db)?;
                let webhook_url = store.webhook_url(&u.name).map_err(db)?;
                println!(
                    "{:<32} {:<8} {:<10} {:<17} {:<8} {:<24} {}",
                    u.name,
                    if u.enabled { "yes" } else { "no" },
                    defaults.language.as_ref().map_or("default", Language::as_str),
                    defaults.require_keypress.map_or("default", |k| if k { "true" } else { "false" }),
                    defaults.mode.map_or("default", CallMode::as_str),
                    format_ms(u.created_at),
                    webhook_url.as_deref().unwrap_or("-")
                );
            }
        }
        UserCommand::Set { name, language, require_keypress, mode } => {
            let change =
                defaults_change(&config.call, language.as_deref(), require_keypress.as_deref(), mode.as_deref())?;
            store.set_user_call_defaults(&name, &change).map_err(db)?;
            println!("call defaults set for {name}");
        }
        UserCommand::Passwd { name, password_stdin } => {
            if store.user(&name).map_err(db)?.is_none() {
                return Err(StoreError::NoSuchUser(name).to_string());
            }
            let hash = hash_password(&read_password(password_stdin)?, cost)?;
            store.set_password(&name, &hash).map_err(db)?;
            println!("password changed for {name}");
        }
        UserCommand::Disable { name } => {
            store.set_enabled(&name, false).map_err(db)?;
            println!("disabled {name}");
        }
        UserCommand::Enable { name } => {
            store.set_enabled(&name, true).map_err(db)?;
            println!("enabled {name}");
        }
        UserCommand::Remove { name } => {
            store.remove_user(&name).map_err(db)?;
            println!("removed {name}");
        }
        UserCommand::Webhook { name, url, clear_url, rotate_secret } => {
            if let Some(url) = &url {
                crate::webhook::check_url(url, &config.webhooks).map_err(|e| format!("--url {e}"))?;
                store.set_webhook_url(&name, Some(url)).map_err(db)?;
            } else if clear_url {
                store.set_webhook_url(&name, None).map_err(db)?;
            }
            println!("url={}", store.webhook_url(&name).map_err(db)?.unwrap_or_default());
            if rotate_secret {
                println!("webhook_secret={}", store.rotate_webhook_secret(&name).map_err(db)?.expose());
            }
        }
    }
    Ok(())
}

fn call(config: &Config, cmd: CallCommand) -> CliResult {
    let store = open(config)?;
    match cmd {
        CallCommand::Show { id } => {
            let parsed = CallId::parse(&id).ok_or_else(|| format!("`{id}` is not a call id (32 hex digits)"))?;
            let c = store.call(&parsed).map_err(db)?.ok_or_else(|| format!("no call {id}"))?;
            let (ring_ms, talk_ms) = (c.ring_ms(), c.talk_ms());
            let opt = |v: Option<String>| v.unwrap_or_default();
            let when = |v: Option<i64>| v.map(format_ms).unwrap_or_default();
            println!("id={}", c.id);
            println!("number={}", c.number);
            println!("status={}", c.status);
            println!("asterisk={}", opt(c.asterisk));
            println!("reason={}", opt(c.reason));
            println!("detail={}", opt(c.detail));
            println!("cause={}", c.cause.map(|c| c.to_string()).unwrap_or_default());
            println!("cause_text={}", opt(c.cause_text));
            println!("readings={}", c.readings);
            println!("language={}", c.options.language);
            println!("require_keypress={}", c.options.require_keypress);
            println!("mode={}", c.options.mode);
            // Empty in read mode, as `null` in the JSON.
            let entered = c.options.mode == CallMode::Enter;
            println!("verified={}", if entered { c.verified.to_string() } else { String::new() });
            println!("attempts={}", if entered { c.attempts.to_string() } else { String::new() });
            println!("keys={}", c.keys);
            println!("created_at={}", format_ms(c.created_at));
            println!("dialed_at={}", when(c.dialed_at));
            println!("ringing_at={}", when(c.ringing_at));
            println!("answered_at={}", when(c.answered_at));
            println!("ended_at={}", when(c.ended_at));
            println!("deadline_at={}", when(c.deadline_at));
            println!("ring_duration_ms={}", ring_ms.map(|d| d.to_string()).unwrap_or_default());
            println!("talk_duration_ms={}", talk_ms.map(|d| d.to_string()).unwrap_or_default());
            println!("callback_url={}", opt(c.callback_url));
        }
        CallCommand::List { limit } => {
            for c in store.recent_calls(limit).map_err(db)? {
                println!(
                    "{} {} {:<16} {:<9} {}",
                    format_ms(c.created_at),
                    c.id,
                    c.number,
                    c.status,
                    c.reason.unwrap_or_default()
                );
            }
        }
        CallCommand::Webhooks { id } => {
            let parsed = CallId::parse(&id).ok_or_else(|| format!("`{id}` is not a call id (32 hex digits)"))?;
            for d in store.call_deliveries(&parsed).map_err(db)? {
                let state = match (d.delivered_at, d.gave_up_at) {
                    (Some(at), _) => format!("delivered {}", format_ms(at)),
                    (None, Some(at)) => format!("gave up {}", format_ms(at)),
                    (None, None) => "pending".to_owned(),
                };
                println!("delivery {} status={} url={} attempts={} {state}", d.id, d.status, d.url, d.attempts);
                for (at, http, error) in d.tries {
                    let http = http.map(|h| h.to_string()).unwrap_or_else(|| "-".into());
                    println!("  {} http={http} {}", format_ms(at), error.unwrap_or_default());
                }
            }
        }
    }
    Ok(())
}

/// `user set`'s flags as a change; `default` clears a field.
fn defaults_change(
    cfg: &CallConfig,
    language: Option<&str>,
    require_keypress: Option<&str>,
    mode: Option<&str>,
) -> Result<UserDefaultsChange, String> {
    if language.is_none() && require_keypress.is_none() && mode.is_none() {
        return Err("nothing to set: give --language, --require-keypress and/or --mode".into());
    }
    let language = language
        .map(|l| match l {
            "default" => Ok(None),
            l => check_language(l, cfg)
                .map(Some)
                .map_err(|_| format!("--language must be one of: {}, default", languages_list(cfg))),
        })
        .transpose()?;
    let require_keypress = require_keypress
        .map(|k| match k {
            "default" => Ok(None),
            k => parse_require_keypress(k)
                .map(Some)
                .map_err(|_| format!("--require-keypress must be one of: {REQUIRE_KEYPRESS_VALUES}, default")),
        })
        .transpose()?;
    let mode = mode
        .map(|m| match m {
            "default" => Ok(None),
            m => parse_mode(m).map(Some).map_err(|_| format!("--mode must be one of: {MODE_VALUES}, default")),
        })
        .transpose()?;
    Ok(UserDefaultsChange { mode, language, require_keypress })
}

fn sounds_check(cfg: &CallConfig, dir: &std::path::Path) -> CliResult {
    if !dir.is_dir() {
        return Err(format!("{} is not a folder (give Asterisk's sounds folder with --dir)", dir.display()));
    }
    let report = sounds::check(dir, cfg);
    for s in &report {
        match &s.found {
            Some(path) => println!("ok      {:<6} {:<24} {}", s.language, s.name, path.display()),
            None => {
                println!("MISSING {:<6} {:<24} {}", s.language, s.name, dir.join(&s.language).join(&s.name).display())
            }
        }
    }
    let missing = report.iter().filter(|s| s.found.is_none()).count();
    if missing > 0 {
        return Err(format!(
            "{missing} of {} sounds missing in {} (see sounds/README.md)",
            report.len(),
            dir.display()
        ));
    }
    println!("all {} sounds present for {}", report.len(), languages_list(cfg));
    Ok(())
}

fn db(e: StoreError) -> String {
    e.to_string()
}

/// Names end up in logs and tables: keep them plain.
fn check_name(name: &str) -> CliResult {
    if crate::auth::is_possible_name(name) {
        Ok(())
    } else {
        Err(format!("invalid user name `{name}`: use 1-64 of A-Z a-z 0-9 . _ @ -"))
    }
}

fn read_password(from_stdin: bool) -> Result<String, String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("cannot read password: {e}"))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = rpassword::prompt_password("Password: ").map_err(|e| format!("cannot read password: {e}"))?;
    let second = rpassword::prompt_password("Repeat password: ").map_err(|e| format!("cannot read password: {e}"))?;
    if first != second {
        return Err("passwords do not match".into());
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("acme1").is_ok());
        assert!(check_name("a.b_c@d-e").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn user_set_flags() {
        let cfg = CallConfig::default();
        let change = defaults_change(&cfg, Some("ur"), Some("1"), None).unwrap();
        assert_eq!(
            change,
            UserDefaultsChange { mode: None, language: Some(Some("ur".into())), require_keypress: Some(Some(true)) }
        );
        let change = defaults_change(&cfg, Some("default"), None, None).unwrap();
        assert_eq!(change, UserDefaultsChange { language: Some(None), ..UserDefaultsChange::default() });
        let change = defaults_change(&cfg, None, None, Some("enter")).unwrap();
        assert_eq!(change, UserDefaultsChange { mode: Some(Some(CallMode::Enter)), ..UserDefaultsChange::default() });
        let change = defaults_change(&cfg, None, None, Some("default")).unwrap();
        assert_eq!(change, UserDefaultsChange { mode: Some(None), ..UserDefaultsChange::default() });
        assert_eq!(
            defaults_change(&cfg, Some("fr"), None, None).unwrap_err(),
            "--language must be one of: en, ur, default"
        );
        assert!(defaults_change(&cfg, None, Some("yes"), None).unwrap_err().contains("--require-keypress"));
        assert_eq!(
            defaults_change(&cfg, None, None, Some("type")).unwrap_err(),
            "--mode must be one of: read, enter, default"
        );
        assert!(defaults_change(&cfg, None, None, None).is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
