//! The sandbox Asterisk (scripts/sandbox): brought up once per test binary
//! (the script is idempotent and locked), and its status read back. Tests
//! that need it fail - never skip - when it cannot start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What `scripts/sandbox status` reports.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// AMI address.
    pub ami: SocketAddr,
    /// Folder of the callee's recordings.
    pub recordings: PathBuf,
    /// Asterisk's messages log.
    pub asterisk_log: PathBuf,
    /// All status keys.
    pub status: HashMap<String, String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sandbox")
}

/// Brings the sandbox up (once per process) and returns its status.
///
/// The process then holds a shared lock on the sandbox for its lifetime, so
/// a test that stops or restarts Asterisk ([`exclusive`]) waits until no
/// other test process is using it (other checkouts' test runs included).
pub fn up() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            let lock = lock_file();
            lock.lock_shared().expect("shared lock on the sandbox");
            std::mem::forget(lock); // held until the process exits
            start()
        })
        .clone()
}

/// For tests that stop, kill or restart the sandbox's Asterisk: waits for
/// every other test process to let go of the sandbox, then holds it alone
/// until this process exits. Such tests live in their own test binary and
/// never call [`up`] (a shared lock held by the same process would deadlock).
pub fn exclusive() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            let lock = lock_file();
            lock.lock().expect("exclusive lock on the sandbox");
            std::mem::forget(lock);
            start()
        })
        .clone()
}

/// Runs `scripts/sandbox VERB` (e.g. `down`, `up`), asserting success.
pub fn run(verb: &str) {
    let out = Command::new(script()).arg(verb).output().expect("run scripts/sandbox");
    assert!(
        out.status.success(),
        "scripts/sandbox {verb} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lock_file() -> std::fs::File {
    let cache = std::env::var("VOICE_OTP_SANDBOX_CACHE").unwrap_or_else(|_| "/var/cache/voice-otp-sandbox".into());
    std::fs::create_dir_all(&cache).expect("sandbox cache dir");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(&cache).join("tests.lock"))
        .expect("sandbox tests lock file")
}

fn start() -> Sandbox {
    let out = Command::new(script()).arg("up").output().expect("run scripts/sandbox up");
    assert!(
        out.status.success(),
        "scripts/sandbox up failed - the Asterisk tests cannot run:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    status()
}

/// Reads `scripts/sandbox status`.
pub fn status() -> Sandbox {
    let out = Command::new(script()).arg("status").output().expect("run scripts/sandbox status");
    let status: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let get = |k: &str| status.get(k).cloned().unwrap_or_else(|| panic!("sandbox status lacks {k}: {status:?}"));
    Sandbox {
        ami: get("ami").parse().expect("ami address"),
        recordings: PathBuf::from(get("recordings")),
        asterisk_log: PathBuf::from(get("asterisk_log")),
        status,
    }
}

/// A random valid Pakistani mobile number no other test uses, so each
/// test finds its own recording.
pub fn unique_number() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seven = (nanos / 1000 + n * 7919 + std::process::id() * 31) % 10_000_000;
    format!("0345{seven:07}")
}

/// Waits for the callee's recording of `number` to exist and stop growing.
pub fn wait_recording(sandbox: &Sandbox, number: &str, timeout: Duration) -> PathBuf {
    let deadline = Instant::now() + timeout;
    let mut last: Option<(PathBuf, u64)> = None;
    loop {
        let found = recordings_of(sandbox, number).into_iter().next();
        if let Some(path) = found {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if let Some((p, s)) = &last
                && *p == path
                && *s == size
                && size > 44
            {
                return path;
            }
            last = Some((path, size));
        }
        assert!(Instant::now() < deadline, "no complete recording for {number} in {:?}", sandbox.recordings);
        std::thread::sleep(Duration::from_millis(700));
    }
}

/// Waits for the newest recording of `number` that was written after
/// `since` (numbers with a fixed behaviour, like 03000000049, collect one
/// recording per call across runs) and returns it once complete.
pub fn wait_recording_since(
    sandbox: &Sandbox,
    number: &str,
    since: std::time::SystemTime,
    timeout: Duration,
) -> PathBuf {
    let deadline = Instant::now() + timeout;
    loop {
        let newest = recordings_of(sandbox, number)
            .into_iter()
            .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
            .filter(|(modified, _)| *modified >= since)
            .max();
        // Files appear in the folder only once closed (MixMonitor's move).
        if let Some((_, path)) = newest
            && std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > 44
        {
            return path;
        }
        assert!(Instant::now() < deadline, "no recording for {number} since {since:?} in {:?}", sandbox.recordings);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The lines of Asterisk's log about the channel of call `call_id` (found
/// through the dialplan's `NoOp(voice-otp: <channel> uniqueid=<id>)`; only
/// lines after it, as channel names repeat after an Asterisk restart).
pub fn channel_log(sandbox: &Sandbox, call_id: &str) -> Vec<String> {
    let log = std::fs::read_to_string(&sandbox.asterisk_log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let marker = format!("uniqueid={call_id}");
    let Some(start) = lines.iter().position(|l| l.contains(&marker)) else {
        return Vec::new();
    };
    let Some(channel) = lines[start].split("voice-otp: ").nth(1).and_then(|rest| rest.split_whitespace().next()) else {
        return Vec::new();
    };
    let tag = format!("<{channel}>");
    lines[start..].iter().filter(|l| l.contains(&tag)).map(|l| (*l).to_owned()).collect()
}

/// The callee's recordings of `number` (`<number>-<uniqueid>.wav`), in no order.
fn recordings_of(sandbox: &Sandbox, number: &str) -> Vec<PathBuf> {
    let prefix = format!("{number}-");
    std::fs::read_dir(&sandbox.recordings)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)))
        .collect()
}
