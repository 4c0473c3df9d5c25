//! Crashes and outages on the real sandbox: the daemon killed with calls
//! queued or in progress, Asterisk killed mid-call. Each number is dialled
//! exactly once, whatever happens. These tests stop and kill the sandbox's
//! Asterisk, so they hold it exclusively and run one at a time.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use support::daemon::Daemon;
use support::harness::{Home, Setup};
use support::sandbox::{self, LogMark, Sandbox, unique_number, wait_playing, wait_recording};

/// One scenario at a time: they all take Asterisk away.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long the phone's recording may take to appear once the call is final.
const RECORDING_WAIT: Duration = Duration::from_secs(20);

/// Brings the sandbox back up however a test ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        sandbox::run("up");
    }
}

/// A call the dialler takes after every call placed before it, and that
/// ends at once (busy): once it is final, the daemon has dialled everything
/// it was ever going to, so dial counts can be read without a sleep.
fn dial_barrier(daemon: &Daemon) {
    let id = daemon.seed_call("03000000017", "4821");
    let call = daemon.wait_final(&id, Duration::from_secs(60));
    assert_eq!(call["reason"], "busy", "{call:?}");
}

/// Each of `numbers` rang exactly once at the phone since `mark`.
fn assert_dialled_once(sandbox: &Sandbox, numbers: &[String], mark: LogMark) {
    for number in numbers {
        assert_eq!(sandbox::dials(sandbox, number, mark), 1, "{number} must be dialled exactly once");
    }
}

fn home(sandbox: &Sandbox, name: &str) -> Home {
    Setup::new(name).home(sandbox.ami)
}

/// A code and a pause between its digits that make one reading last some
/// 15 s: "in the middle of the reading" is a wide window, not a race with
/// the first reading's end (after which the call counts as completed).
const LONG_READING: &str = "[call]\ndigit_pause_ms = 1500\n";
const LONG_CODE: &str = "48213579";

/// The sandbox Asterisk's pid, looked up before the moment to kill it.
fn asterisk_pid() -> String {
    let pid = sandbox::status().status.get("pid").cloned().unwrap_or_default();
    assert!(!pid.is_empty(), "sandbox Asterisk has no pid");
    pid
}

fn kill_9(pid: &str) {
    let ok = std::process::Command::new("kill").args(["-9", pid]).status().expect("kill").success();
    assert!(ok, "kill -9 {pid}");
}

#[test]
fn queued_calls_survive_a_kill_9_and_each_number_is_dialled_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sandbox = sandbox::exclusive();
    let _restore = Restore;
    let mark = sandbox::log_mark(&sandbox);
    let home = home(&sandbox, "kill9-queued");
    sandbox::run("down");
    let first = home.start();
    let numbers: Vec<String> = (0..3).map(|_| unique_number()).collect();
    let ids: Vec<String> = numbers.iter().map(|n| first.seed_call(n, "4821")).collect();
    for id in &ids {
        assert_eq!(first.show(id)["status"], "queued");
    }
    drop(first); // SIGKILL: no shutdown, no goodbye
    sandbox::run("up");
    let second = home.start();
    for (id, number) in ids.iter().zip(&numbers) {
        let call = second.wait_final(id, Duration::from_secs(120));
        assert_eq!(call["status"], "completed", "{call:?}\n{}", second.logs());
        wait_recording(&sandbox, number, id, RECORDING_WAIT).discard();
    }
    dial_barrier(&second);
    assert_dialled_once(&sandbox, &numbers, mark);
}

#[test]
fn asterisk_killed_mid_call_fails_that_call_and_the_next_one_succeeds() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sandbox = sandbox::exclusive();
    let _restore = Restore;
    let home = Setup::new("asterisk-killed").config(LONG_READING).home(sandbox.ami);
    let daemon = home.start();
    let pid = asterisk_pid();
    let id = daemon.seed_call(&unique_number(), LONG_CODE);
    // In the middle of the reading. (Killed, Asterisk never closes that
    // recording; `scripts/sandbox up` clears such half-written files.)
    wait_playing(&sandbox, &id, "digits/", Duration::from_secs(60));
    kill_9(&pid);
    let call = daemon.wait_final(&id, Duration::from_secs(60));
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "system_error"), "{call:?}");
    sandbox::run("up");
    let number = unique_number();
    let next = daemon.seed_call(&number, "4821");
    let call = daemon.wait_final(&next, Duration::from_secs(120));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
    wait_recording(&sandbox, &number, &next, RECORDING_WAIT).discard();
}

#[test]
fn a_daemon_killed_mid_call_settles_the_call_after_restart_without_redialling() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sandbox = sandbox::exclusive();
    let _restore = Restore;
    let mark = sandbox::log_mark(&sandbox);
    let home = Setup::new("daemon-killed").config(LONG_READING).home(sandbox.ami);
    let first = home.start();
    let number = unique_number();
    let id = first.seed_call(&number, LONG_CODE);
    wait_playing(&sandbox, &id, "digits/", Duration::from_secs(60));
    drop(first);
    let second = home.start();
    let call = second.wait_final(&id, Duration::from_secs(60));
    // Settled by the restart's reconciliation ("no channel") or, if the
    // channel was still hanging up then, by its Hangup with no FastAGI session.
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "system_error"), "{call:?}");
    // The phone hung up when the daemon's FastAGI connection died.
    wait_recording(&sandbox, &number, &id, RECORDING_WAIT).discard();
    dial_barrier(&second);
    assert_dialled_once(&sandbox, &[number], mark);
}
