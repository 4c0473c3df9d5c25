//! Crashes and outages on the real sandbox: the daemon killed with calls
//! queued or in progress, Asterisk killed mid-call. Each number is dialled
//! exactly once, whatever happens. These tests stop and kill the sandbox's
//! Asterisk, so they hold it exclusively and run one at a time.

mod support;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::daemon::{Daemon, TempDir, add_user, call_show, write_config};
use support::http;
use support::sandbox::{self, Sandbox, unique_number};

const PASSWORD: &str = "correct-horse-9";

/// One scenario at a time: they all take Asterisk away.
static SERIAL: Mutex<()> = Mutex::new(());

/// Brings the sandbox back up however a test ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        sandbox::run("up");
    }
}

fn setup(sandbox: &Sandbox, name: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new(name);
    let config = write_config(&dir.0, sandbox.ami, "");
    add_user(&config, "acme1", PASSWORD);
    (dir, config)
}

fn seed_call(daemon: &Daemon, number: &str) -> String {
    let target = format!("/outbound.cgi?number={number}&code=4821&username=acme1&password={PASSWORD}");
    let resp = http::get(daemon.http, &target);
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.json_field("call_id").expect("call_id")
}

fn wait_status(config: &Path, id: &str, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let status = call_show(config, id)["status"].clone();
        if status == want {
            return;
        }
        assert!(Instant::now() < deadline, "call {id} is {status}, never {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn recordings_of(sandbox: &Sandbox, number: &str) -> usize {
    std::fs::read_dir(&sandbox.recordings)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{number}-")))
        .count()
}

fn kill_asterisk() {
    let pid = sandbox::status().status.get("pid").cloned().unwrap_or_default();
    assert!(!pid.is_empty(), "sandbox Asterisk has no pid");
    let ok = std::process::Command::new("kill").args(["-9", &pid]).status().expect("kill").success();
    assert!(ok, "kill -9 {pid}");
}

#[test]
fn queued_calls_survive_a_kill_9_and_each_number_is_dialled_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sandbox = sandbox::exclusive();
    let _restore = Restore;
    let (_dir, config) = setup(&sandbox, "kill9-queued");
    sandbox::run("down");
    let first = Daemon::start(&config);
    let numbers: Vec<String> = (0..3).map(|_| unique_number()).collect();
    let ids: Vec<String> = numbers.iter().map(|n| seed_call(&first, n)).collect();
    for id in &ids {
        assert_eq!(call_show(&config, id)["status"], "queued");
    }
    drop(first); // SIGKILL: no shutdown, no goodbye
    sandbox::run("up");
    let second = Daemon::start(&config);
    for id in &ids {
        let call = second.wait_final(id, Duration::from_secs(120));
        assert_eq!(call["status"], "completed", "{call:?}\n{}", second.logs());
    }
    // Give any stray second attempt time to show, then count what the phone got.
    std::thread::sleep(Duration::from_secs(3));
    for number in &numbers {
        assert_eq!(recordings_of(&sandbox, number), 1, "{number} must be dialled exactly once");
    }
}

#[test]
fn asterisk_killed_mid_call_fails_that_call_and_the_next_one_succeeds() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sandbox = sandbox::exclusive();
    let _restore = Restore;
    let (_dir, config) = setup(&sandbox, "asterisk-killed");
    let daemon = Daemon::start(&config);
    let id = seed_call(&daemon, &unique_number());
    wait_status(&config, &id, "answered", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500)); // into the reading
    kill_asterisk();
    let call = daemon.wait_final(&id, Duration::from_secs(60));
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "system_error"), "{call:?}");
    sandbox::run("up");
    let number = unique_number();
    let next = seed_call(&daemon, &number);
    let call = daemon.wait_final(&next, Duration::from_secs(120));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
}

#[test]
fn a_daemon_killed_mid_call_settles_the_call_after_restart_without_redialling() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sandbox = sandbox::exclusive();
    let _restore = Restore;
    let (_dir, config) = setup(&sandbox, "daemon-killed");
    let first = Daemon::start(&config);
    let number = unique_number();
    let id = seed_call(&first, &number);
    wait_status(&config, &id, "answered", Duration::from_secs(30));
    // Into the reading (the phone records from its answer's dialplan on,
    // a moment after the answer itself).
    std::thread::sleep(Duration::from_millis(1500));
    drop(first);
    let second = Daemon::start(&config);
    let call = second.wait_final(&id, Duration::from_secs(60));
    // Settled by the restart's reconciliation ("no channel") or, if the
    // channel was still hanging up then, by its Hangup with no FastAGI session.
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "system_error"), "{call:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(recordings_of(&sandbox, &number), 1, "dialled exactly once");
}
