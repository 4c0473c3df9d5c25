//! The sandbox Asterisk (scripts/sandbox): brought up once per test binary
//! (the script is idempotent and locked), and its status read back. Tests
//! that need it fail - never skip - when it cannot start.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
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

impl Sandbox {
    /// The AMI address of instance `k` (1-based; `up --asterisks N`).
    pub fn ami_of(&self, k: usize) -> SocketAddr {
        let key = format!("ami.{k}");
        self.status
            .get(&key)
            .unwrap_or_else(|| panic!("sandbox status lacks {key}: {:?}", self.status))
            .parse()
            .expect("ami address")
    }
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
    SANDBOX.get_or_init(|| locked_start(false, &["up"])).clone()
}

/// [`up`] with `n` Asterisk instances (`scripts/sandbox up --asterisks N`),
/// under the same shared lock.
pub fn up_asterisks(n: usize) -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| locked_start(false, &["up", "--asterisks", &n.to_string()])).clone()
}

/// [`exclusive`] with `n` Asterisk instances, for tests that stop one.
pub fn exclusive_asterisks(n: usize) -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| locked_start(true, &["up", "--asterisks", &n.to_string()])).clone()
}

/// Runs `scripts/sandbox ARGS...` (e.g. `down 2`), asserting success.
pub fn run_args(args: &[&str]) {
    let out = Command::new(script()).args(args).output().expect("run scripts/sandbox");
    assert!(
        out.status.success(),
        "scripts/sandbox {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// For tests that stop, kill or restart the sandbox's Asterisk: waits for
/// every other test process to let go of the sandbox, then holds it alone
/// until this process exits. Such tests live in their own test binary and
/// never call [`up`] (a shared lock held by the same process would deadlock).
pub fn exclusive() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| locked_start(true, &["up"])).clone()
}

/// Runs `scripts/sandbox VERB` (e.g. `down`, `up`), asserting success.
pub fn run(verb: &str) {
    run_args(&[verb]);
}

/// Takes the sandbox's lock - shared, or alone when `exclusive` - for the
/// rest of the process's life, then runs `scripts/sandbox ARGS...`.
fn locked_start(exclusive: bool, args: &[&str]) -> Sandbox {
    let lock = lock_file();
    if exclusive {
        lock.lock().expect("exclusive lock on the sandbox");
    } else {
        lock.lock_shared().expect("shared lock on the sandbox");
    }
    std::mem::forget(lock); // held until the process exits
    start_with(args)
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

fn start_with(args: &[&str]) -> Sandbox {
    let out = Command::new(script()).args(args).output().expect("run scripts/sandbox up");
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

/// A random valid Pakistani mobile number (`034` and 8 random digits), so
/// that evidence found by number ("this number was never dialled") cannot
/// be another test's: a clash is one in 10^8 per pair of numbers. Evidence
/// of a call is found by its call id, never by its number alone.
pub fn unique_number() -> String {
    format!("034{:08}", rand::random_range(0..100_000_000u32))
}

/// The callee's recording of one call: `<number>-<call id>.wav`, complete.
/// Deleted when dropped, so the folder keeps no evidence another test could
/// take for its own - unless the test is failing, when it stays for a look.
#[derive(Debug)]
pub struct Recording {
    /// Where it is.
    pub path: PathBuf,
}

impl Recording {
    /// Deletes it now (a recording the test has no use for).
    pub fn discard(self) {}
}

impl std::ops::Deref for Recording {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Waits for the callee's recording of call `call_id` to `number` - exactly
/// `<number>-<call_id>.wav`, named by the call id our INVITE carries
/// (`[dial] call_id_header`). MixMonitor records into `.partial/` and
/// renames the file into the folder once it is closed, so a file that exists
/// is complete; one of 44 bytes or less is an empty WAV (no audio came).
pub fn wait_recording(sandbox: &Sandbox, number: &str, call_id: &str, timeout: Duration) -> Recording {
    let path = sandbox.recordings.join(format!("{number}-{call_id}.wav"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(meta) = std::fs::metadata(&path) {
            assert!(
                meta.len() > 44,
                "{path:?} is an empty recording ({} bytes): no audio reached the callee",
                meta.len()
            );
            return Recording { path };
        }
        assert!(Instant::now() < deadline, "no recording {path:?} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The callee's recordings of `number`, of any call (`<number>-*.wav`), in
/// no order: for a [`unique_number`] that must never have been dialled.
pub fn recordings_of(sandbox: &Sandbox, number: &str) -> Vec<PathBuf> {
    let prefix = format!("{number}-");
    std::fs::read_dir(&sandbox.recordings)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)))
        .collect()
}

/// A place in Asterisk's log: which file it is (its inode) and how long it
/// was, to read what was logged after it with [`log_since`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMark {
    inode: u64,
    offset: u64,
}

/// The end of Asterisk's log now.
pub fn log_mark(sandbox: &Sandbox) -> LogMark {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(&sandbox.asterisk_log)
        .map(|m| LogMark { inode: m.ino(), offset: m.len() })
        .unwrap_or(LogMark { inode: 0, offset: 0 })
}

/// What Asterisk logged after `mark`. The log is shared by every test on
/// the sandbox: look in it only for what is this test's alone (its call id,
/// its unique number, its code). `scripts/sandbox up` may have moved the
/// log aside since (to `messages.log.1`, a new file): then the rest of the
/// old one and all of the new one are read.
pub fn log_since(sandbox: &Sandbox, mark: LogMark) -> String {
    let read_from = |path: &Path, offset: u64| -> Vec<u8> {
        let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
        bytes
    };
    let bytes = if log_mark(sandbox).inode == mark.inode {
        read_from(&sandbox.asterisk_log, mark.offset)
    } else {
        let mut bytes = read_from(&sandbox.asterisk_log.with_extension("log.1"), mark.offset);
        bytes.extend(read_from(&sandbox.asterisk_log, 0));
        bytes
    };
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How often the sandbox phone was rung at `number` after `mark`: each call
/// reaching it starts its `[callee]` dialplan at priority 1, whatever it
/// then does (and a second dial of the same call would record under the
/// same name, so recordings cannot count dials).
pub fn dials(sandbox: &Sandbox, number: &str, mark: LogMark) -> usize {
    let entry = format!("Executing [{number}@callee:1]");
    log_since(sandbox, mark).lines().filter(|l| l.contains(&entry)).count()
}

/// How often call `call_id` rang `number` at the phone since `mark`: for
/// the callee numbers whose first dialplan line names the call (from the
/// INVITE's X-Voice-OTP-Call header; 03000000015), a count no other test's
/// calls to that number can disturb.
pub fn dials_of(sandbox: &Sandbox, number: &str, call_id: &str, mark: LogMark) -> usize {
    let entry = format!("Executing [{number}@callee:1]");
    let named = format!("call {call_id}");
    log_since(sandbox, mark).lines().filter(|l| l.contains(&entry) && l.contains(&named)).count()
}

/// Waits until Asterisk's log shows call `call_id` playing `sound` (e.g.
/// `digits/`), for tests that act in the middle of a call.
pub fn wait_playing(sandbox: &Sandbox, call_id: &str, sound: &str, timeout: Duration) {
    let playing = format!("Playing '{sound}");
    let deadline = Instant::now() + timeout;
    while !channel_log(sandbox, call_id).iter().any(|l| l.contains(&playing)) {
        assert!(Instant::now() < deadline, "call {call_id} never played {sound} in {timeout:?}");
        // Each look reads the whole log (it is rotated at 50 MB): not too often.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines of Asterisk's log about the channel of call `call_id` (found
/// through the dialplan's `NoOp(voice-otp: <channel> uniqueid=<id>)`; only
/// lines after it, as channel names repeat after an Asterisk restart).
pub fn channel_log(sandbox: &Sandbox, call_id: &str) -> Vec<String> {
    // Lossy: a caller id in another encoding must not hide the whole log.
    let log = String::from_utf8_lossy(&std::fs::read(&sandbox.asterisk_log).unwrap_or_default()).into_owned();
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
