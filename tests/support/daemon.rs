//! Runs the real `voice-otp` binary for a test: its own temp dir, config
//! file, database and ports (0 = any free one, read back from the
//! daemon's `ready` line), users created through the CLI.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A config for tests: ports 0, a temp database, bcrypt cost 4 (fast),
/// plus `extra` TOML appended (sections must not repeat the ones given here).
pub fn write_config(dir: &Path, ami: SocketAddr, extra: &str) -> PathBuf {
    write_config_with_http(dir, ami, "", extra)
}

/// [`write_config`] with `http_keys` (lines) added to its `[http]` section.
pub fn write_config_with_http(dir: &Path, ami: SocketAddr, http_keys: &str, extra: &str) -> PathBuf {
    let path = dir.join("voice-otp.toml");
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n{http_keys}\n[agi]\nlisten = \"127.0.0.1:0\"\n\n[database]\npath = \"test.db\"\n\n\
         [auth]\nbcrypt_cost = 4\n\n[ami]\nhost = \"{}\"\nport = {}\n\n{extra}",
        ami.ip(),
        ami.port()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs `voice-otp --config CONFIG ARGS...` with `stdin`; returns (status ok, stdout, stderr).
pub fn cli(config: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
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

/// Adds an API user through the CLI.
pub fn add_user(config: &Path, name: &str, password: &str) {
    let (ok, out, err) = cli(config, &["user", "add", name, "--password-stdin"], &format!("{password}\n"));
    assert!(ok, "user add {name} failed: {out} {err}");
}

/// A daemon on its own temp dir and config (`extra` appended, see
/// [`write_config`]) talking to AMI at `ami`, with API user `acme1`
/// whose password is `password`.
pub fn start_with_user(ami: SocketAddr, name: &str, extra: &str, password: &str) -> (TempDir, Daemon) {
    let dir = TempDir::new(name);
    let config = write_config(&dir.0, ami, extra);
    add_user(&config, "acme1", password);
    let daemon = Daemon::start(&config);
    (dir, daemon)
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
}

impl Daemon {
    /// Starts `voice-otp --config CONFIG serve` and waits for its ready line.
    pub fn start(config: &Path) -> Daemon {
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
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `call show` until the call's status is final; returns its fields.
    pub fn wait_final(&self, id: &str, timeout: Duration) -> std::collections::HashMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let call = call_show(&self.config, id);
            let status = call.get("status").cloned().unwrap_or_default();
            if ["completed", "failed", "expired", "canceled"].contains(&status.as_str()) {
                return call;
            }
            assert!(Instant::now() < deadline, "call {id} still {status} after {timeout:?}\nlogs:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(250));
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
