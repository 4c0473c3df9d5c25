//! The real `voice-otp` binary, run for a measurement: its own folder,
//! config, database and ports, users made with its CLI.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running daemon; killed on drop.
pub struct Daemon {
    child: Child,
    /// HTTP API address.
    pub http: SocketAddr,
    /// FastAGI address.
    pub agi: SocketAddr,
}

/// A fresh folder with a config: `[ami]` at `ami`, ports 0, at most
/// `agi_sessions` FastAGI sessions, and `extra` TOML sections; and the user
/// `bench` (password [`PASSWORD`]).
pub fn configure(binary: &Path, dir: &Path, ami: SocketAddr, agi_sessions: usize, extra: &str) -> PathBuf {
    configure_on(binary, dir, ami, agi_sessions, Database::File, extra)
}

/// Where a configured daemon keeps its data.
#[derive(Clone, Copy)]
pub enum Database<'a> {
    /// `bench.db` in its folder (SQLite).
    File,
    /// The PostgreSQL database at this URL, with the user `bench` already
    /// made (by another daemon's [`configure_on`]) or not.
    Postgres { url: &'a str, user_exists: bool },
}

/// [`configure`] with the database given.
pub fn configure_on(
    binary: &Path,
    dir: &Path,
    ami: SocketAddr,
    agi_sessions: usize,
    database: Database<'_>,
    extra: &str,
) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("bench folder");
    let config = dir.join("voice-otp.toml");
    let (section, add_user) = match database {
        Database::File => ("path = \"bench.db\"".to_owned(), true),
        Database::Postgres { url, user_exists } => (format!("url = \"{url}\""), !user_exists),
    };
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n{HTTP_OUT_OF_REACH}\n[agi]\nlisten = \"127.0.0.1:0\"\nmax_sessions = {agi_sessions}\n\n\
         [database]\n{section}\n\n[ami]\nhost = \"{}\"\nport = {}\n\n{LIMITS_OUT_OF_REACH}\n{extra}\n",
        ami.ip(),
        ami.port()
    );
    std::fs::write(&config, text).expect("write config");
    if !add_user {
        return config;
    }
    let mut child = Command::new(binary)
        .args(["--config"])
        .arg(&config)
        .args(["user", "add", "bench", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run voice-otp user add");
    child.stdin.take().expect("stdin").write_all(b"bench-password-1\n").expect("password");
    assert!(child.wait().expect("user add").success(), "voice-otp user add failed");
    config
}

/// The password of the user `configure` creates.
pub const PASSWORD: &str = "bench-password-1";

impl Daemon {
    /// Starts `voice-otp serve` and waits for its ready line. Logs go to
    /// `daemon.log` beside the config (at the default level, as deployed).
    pub fn start(binary: &Path, config: &Path) -> Daemon {
        let log = std::fs::File::create(config.with_file_name("daemon.log")).expect("daemon log");
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn voice-otp serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
        let addr = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("daemon did not start: {line:?}"))
        };
        let (http, agi) = (addr("http="), addr("agi="));
        Daemon { child, http, agi }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it as an operator would (SIGTERM) and waits for it to exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The seed-API request for `number` (as `bench`).
pub fn seed_target(number: &str) -> String {
    format!("/outbound.cgi?number={number}&code=482915&username=bench&password={PASSWORD}")
}

/// Seed-API requests, each to its own number, as traffic to many people
/// looks (and so the per-number quotas never refuse one).
pub fn seed_targets() -> crate::http_load::Target {
    seed_targets_from(0)
}

/// [`seed_targets`] to the numbers from `first` on.
pub fn seed_targets_from(first: u64) -> crate::http_load::Target {
    std::sync::Arc::new(move |n| {
        crate::http_load::get(&seed_target(&format!("0300{:07}", (first + n) % 10_000_000)), "")
    })
}

/// `POST /v1/calls` as `bench`, each to its own number from `first` on.
pub fn v1_post_targets(first: u64) -> crate::http_load::Target {
    let auth = basic_auth();
    std::sync::Arc::new(move |n| {
        let body = format!(r#"{{"number":"0300{:07}","code":"482915"}}"#, (first + n) % 10_000_000);
        crate::http_load::post_json("/v1/calls", &auth, &body)
    })
}

/// `GET target` as `bench` (HTTP Basic).
pub fn v1_get_targets(target: &'static str) -> crate::http_load::Target {
    let auth = basic_auth();
    std::sync::Arc::new(move |_| crate::http_load::get(target, &auth))
}

/// The `Authorization` header line of `bench`.
fn basic_auth() -> String {
    use base64::Engine;
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("bench:{PASSWORD}"));
    format!("Authorization: Basic {credentials}\r\n")
}

/// The `[http]` caps on one client's connections and requests per
/// connection, off: the load generator is one address with long-lived
/// keep-alive connections.
pub const HTTP_OUT_OF_REACH: &str = "max_connections_per_ip = 0\nmax_requests_per_connection = 0\n";

/// `[limits]` and `[queue]` that never refuse the benchmark but still count:
/// each limit is on (its bookkeeping runs on every request) with a bound out
/// of reach, and the trunk is as wide as the load generator's.
pub const LIMITS_OUT_OF_REACH: &str = "[limits]\nuser_requests_per_minute = 1000000000\n\
    number_calls_per_window = 1000000000\nnumber_calls_per_day = 1000000000\nuser_calls_per_day = 1000000000\n\
    login_failures_per_user = 1000000000\nlogin_failures_per_ip = 1000000000\n\
    login_failures_per_user_ip = 1000000000\n\n\
    [queue]\nmax_concurrent_calls = 1000000\nmax_queued = 1000000000\n";
