//! Runs the real `voice-otp` binary for a test: its own temp dir, config
//! file, database and ports (0 = any free one, read back from the
//! daemon's `ready` line), users created through the CLI. Tests set all of
//! that up through [`super::harness::Setup`]; this module is the process and
//! what can be asked of it (seed calls, a call's fields, its final status).
//!
//! Every blocking helper here runs through [`super::blocking`], so the
//! multi-threaded tokio tests (with a fake AMI on the runtime) call them
//! as they are.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::blocking;
use super::http;

/// The statuses a call never leaves.
pub const FINAL: [&str; 4] = ["completed", "failed", "expired", "canceled"];

/// Path of the binary cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_voice-otp")
}

/// A fresh temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/voice-otp-test-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("voice-otp-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config for tests: ports 0, a temp SQLite database (or the PostgreSQL
/// one at `postgres`), bcrypt cost 4 (fast), AMI at `ami`, with `http_keys`
/// and `agi_keys` (lines) added to those sections and `extra` TOML appended
/// (sections must not repeat the ones given here).
pub fn write_config(
    dir: &Path,
    ami: SocketAddr,
    http_keys: &str,
    agi_keys: &str,
    extra: &str,
    postgres: Option<&str>,
) -> PathBuf {
    let ami = format!("[ami]\nhost = \"{}\"\nport = {}\n\n", ami.ip(), ami.port());
    write_with(dir, &ami, http_keys, agi_keys, extra, postgres)
}

/// [`write_config`] with `[[asterisk]]` entries (each the TOML keys of one,
/// `name` and `port` included) in place of the `[ami]` section.
pub fn write_config_servers(
    dir: &Path,
    servers: &[String],
    http_keys: &str,
    agi_keys: &str,
    extra: &str,
    postgres: Option<&str>,
) -> PathBuf {
    let entries: String = servers.iter().map(|keys| format!("[[asterisk]]\n{keys}\n\n")).collect();
    write_with(dir, &entries, http_keys, agi_keys, extra, postgres)
}

/// Writes the test config with `asterisk` (the `[ami]` section or the
/// `[[asterisk]]` entries) between `[auth]` and `extra`.
fn write_with(
    dir: &Path,
    asterisk: &str,
    http_keys: &str,
    agi_keys: &str,
    extra: &str,
    postgres: Option<&str>,
) -> PathBuf {
    let path = dir.join("voice-otp.toml");
    let database = database_keys(postgres);
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n{http_keys}\n[agi]\nlisten = \"127.0.0.1:0\"\n{agi_keys}\n[database]\n{database}\n\n\
         [auth]\nbcrypt_cost = 4\n\n{asterisk}{extra}"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The `[database]` keys: a SQLite file in the test's folder, or the
/// PostgreSQL database at `postgres` - with a short lease, as tests of a
/// daemon that dies wait it out.
fn database_keys(postgres: Option<&str>) -> String {
    match postgres {
        Some(url) => format!("url = \"{url}\"\npool_size = 3\nlease_secs = 3"),
        None => "path = \"test.db\"".to_owned(),
    }
}

/// Runs `voice-otp --config CONFIG ARGS...` with `stdin`; returns (status ok, stdout, stderr).
pub fn cli(config: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    blocking(|| cli_blocking(config, args, stdin))
}

fn cli_blocking(config: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn voice-otp");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("wait voice-otp");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Adds an API user through the CLI; returns its webhook signing secret.
pub fn add_user(config: &Path, name: &str, password: &str) -> String {
    let (ok, out, err) = cli(config, &["user", "add", name, "--password-stdin"], &format!("{password}\n"));
    assert!(ok, "user add {name} failed: {out} {err}");
    out.lines().find_map(|l| l.strip_prefix("webhook_secret=")).expect("user add shows the webhook secret").to_owned()
}

/// `voice-otp call show ID` as key/value pairs.
pub fn call_show(config: &Path, id: &str) -> std::collections::HashMap<String, String> {
    let (ok, out, err) = cli(config, &["call", "show", id], "");
    assert!(ok, "call show {id} failed: {out} {err}");
    out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// A running daemon; killed on drop. Its stderr (logs) is collected.
pub struct Daemon {
    child: Child,
    /// HTTP address.
    pub http: SocketAddr,
    /// FastAGI address.
    pub agi: SocketAddr,
    /// `/healthz` and `/metrics`, when the config puts them on `http.ops_listen`.
    pub ops: Option<SocketAddr>,
    /// The config file it runs with.
    pub config: PathBuf,
    logs: Arc<Mutex<String>>,
    /// The API user (name, password) [`Daemon::seed_call`] calls as.
    caller: Option<(String, String)>,
    /// Its PostgreSQL database's URL, when it runs on one.
    postgres: Option<String>,
}

impl Daemon {
    /// Starts `voice-otp --config CONFIG serve` and waits for its ready line.
    pub fn start(config: &Path) -> Daemon {
        blocking(|| Daemon::start_blocking(config))
    }

    fn start_blocking(config: &Path) -> Daemon {
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("VOICE_OTP_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn voice-otp serve");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read ready line");
        let Some(rest) = line.trim().strip_prefix("ready ") else {
            let _ = child.kill();
            std::thread::sleep(Duration::from_millis(200));
            panic!("daemon did not start: {line:?}\nlogs:\n{}", logs.lock().unwrap());
        };
        let mut http = None;
        let mut agi = None;
        let mut ops = None;
        for kv in rest.split_whitespace() {
            match kv.split_once('=') {
                Some(("http", a)) => http = a.parse().ok(),
                Some(("agi", a)) => agi = a.parse().ok(),
                Some(("ops", a)) => ops = a.parse().ok(),
                _ => {}
            }
        }
        Daemon {
            child,
            http: http.expect("http address in ready line"),
            agi: agi.expect("agi address in ready line"),
            ops,
            config: config.to_owned(),
            logs,
            caller: None,
            postgres: None,
        }
    }

    /// The same daemon, known to run on the PostgreSQL database at `url`.
    pub fn on_postgres(mut self, url: Option<&str>) -> Daemon {
        self.postgres = url.map(str::to_owned);
        self
    }

    /// The same daemon, placing its seed calls as user `name`.
    pub fn calling_as(mut self, name: &str, password: &str) -> Daemon {
        self.caller = Some((name.to_owned(), password.to_owned()));
        self
    }

    /// Its database file.
    pub fn db_path(&self) -> PathBuf {
        self.config.parent().expect("config in a folder").join("test.db")
    }

    /// The seed request for `number` and `code` as the caller, with
    /// `params` (`&language=ur...`) appended.
    pub fn seed(&self, number: &str, code: &str, params: &str) -> http::Response {
        let (user, password) = self.caller.as_ref().expect("a daemon started by the harness, with a user");
        let target = format!("/outbound.cgi?number={number}&code={code}&username={user}&password={password}{params}");
        blocking(|| http::get(self.http, &target))
    }

    /// Places a call through the seed API (answered 200); returns its id.
    pub fn seed_call(&self, number: &str, code: &str) -> String {
        self.seed_call_with(number, code, "")
    }

    /// [`Daemon::seed_call`] with extra parameters (`&require_keypress=1`).
    pub fn seed_call_with(&self, number: &str, code: &str, params: &str) -> String {
        let resp = self.seed(number, code, params);
        assert_eq!(resp.status, 200, "{}", resp.body);
        resp.json_field("call_id").expect("call_id")
    }

    /// `voice-otp call show ID`: the call's fields.
    pub fn show(&self, id: &str) -> std::collections::HashMap<String, String> {
        call_show(&self.config, id)
    }

    /// Every stored call as (id, status) in the order they were stored
    /// (rowid: a wall clock may step back), read from the database (the
    /// daemon's own - no other test's calls are in it).
    pub fn stored_calls(&self) -> Vec<(String, String)> {
        if let Some(url) = &self.postgres {
            let url = url.clone();
            return std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("the daemon's database");
                let rows = c.query("SELECT id, status FROM calls ORDER BY seq", &[]).expect("read the calls");
                rows.iter().map(|r| (r.get(0), r.get(1))).collect()
            })
            .join()
            .expect("read the calls");
        }
        let conn = rusqlite::Connection::open_with_flags(self.db_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the daemon's database");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut stmt = conn.prepare("SELECT id, status FROM calls ORDER BY rowid").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// Polls `/healthz` until every (server, state) in `want` holds
    /// (`checks.asterisk`: "up" or "down"); returns that health report.
    pub fn wait_servers(&self, want: &[(&str, &str)]) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let health = blocking(|| http::get(self.http, "/healthz")).json();
            if want.iter().all(|(name, state)| health["checks"]["asterisk"][*name] == *state) {
                return health;
            }
            assert!(Instant::now() < deadline, "servers not {want:?}: {health}\n{}", self.logs());
            blocking(|| std::thread::sleep(Duration::from_millis(50)));
        }
    }

    /// Waits until every stored call has reached a final status; returns
    /// their ids in the order they were stored. After this the dialler has nothing left to
    /// send, so "exactly these were dialled" can be asserted without a
    /// sleep.
    pub fn settle(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.stored_calls();
            if calls.iter().all(|(_, status)| FINAL.contains(&status.as_str())) {
                return calls.into_iter().map(|(id, _)| id).collect();
            }
            assert!(Instant::now() < deadline, "calls still live after {timeout:?}: {calls:?}\nlogs:\n{}", self.logs());
            blocking(|| std::thread::sleep(Duration::from_millis(100)));
        }
    }

    /// Waits until call `id` has status `want`; fails at once if it reached
    /// another final status instead.
    pub fn wait_status(&self, id: &str, want: &str, timeout: Duration) -> std::collections::HashMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let call = self.show(id);
            let status = call.get("status").cloned().unwrap_or_default();
            if status == want {
                return call;
            }
            assert!(!FINAL.contains(&status.as_str()), "call {id} ended {status}, never {want}: {call:?}");
            assert!(
                Instant::now() < deadline,
                "call {id} still {status}, not {want}, after {timeout:?}\nlogs:\n{}",
                self.logs()
            );
            blocking(|| std::thread::sleep(Duration::from_millis(100)));
        }
    }

    /// Everything the daemon logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// How often the daemon has logged `needle`, once at least `expected`
    /// such lines have arrived or `timeout` has passed: its stderr is read by
    /// another thread, so a line logged before an answer may still be on its
    /// way when the answer is.
    pub fn logged(&self, needle: &str, expected: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.logs().matches(needle).count();
            if n >= expected || Instant::now() > deadline {
                return n;
            }
            blocking(|| std::thread::sleep(Duration::from_millis(20)));
        }
    }

    /// Polls `call show` until the call's status is final; returns its fields.
    pub fn wait_final(&self, id: &str, timeout: Duration) -> std::collections::HashMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let call = self.show(id);
            let status = call.get("status").cloned().unwrap_or_default();
            if FINAL.contains(&status.as_str()) {
                return call;
            }
            assert!(Instant::now() < deadline, "call {id} still {status} after {timeout:?}\nlogs:\n{}", self.logs());
            blocking(|| std::thread::sleep(Duration::from_millis(250)));
        }
    }

    /// Polls `call show` until `field` of call `id` is set (not empty);
    /// returns the call's fields. For what arrives after the status does:
    /// a completed call's cause comes with the channel's `Hangup` event,
    /// just after the FastAGI session ended the call.
    pub fn wait_field(&self, id: &str, field: &str, timeout: Duration) -> std::collections::HashMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let call = self.show(id);
            if call.get(field).is_some_and(|v| !v.is_empty()) {
                return call;
            }
            assert!(
                Instant::now() < deadline,
                "call {id} has no {field} after {timeout:?}: {call:?}\nlogs:\n{}",
                self.logs()
            );
            blocking(|| std::thread::sleep(Duration::from_millis(100)));
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.sigterm();
        self.wait_exit()
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
    }

    /// Waits (at most 40 s, beyond the daemon's 30 s drain) for the process to exit.
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        blocking(|| self.wait_exit_blocking())
    }

    fn wait_exit_blocking(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
