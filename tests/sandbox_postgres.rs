//! Several daemons on one PostgreSQL, dialling through the sandbox's two
//! real Asterisk (`scripts/sandbox up --asterisks 2`) to its real phone:
//! 40 calls posted to two daemons in turn all complete, each number rung
//! exactly once, both servers and both daemons carrying calls; and a daemon
//! `kill -9`ed right after it dialled leaves its calls to the other, which
//! reads the code of those already ringing (the dialplan's next FastAGI
//! address is the survivor's) and dials the rest - none rung twice.
//!
//! Needs the test PostgreSQL (`scripts/test` gives it); without it each test
//! passes after saying on stderr that it did not run.

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::harness::{Home, NO_NUMBER_QUOTAS, PASSWORD, Setup};
use support::postgres::TestDatabase;
use support::relay::Relay;
use support::sandbox::{self, Sandbox, dials, dials_of, log_mark, unique_number, wait_recording};
use support::wav::{read_wav, speech_segments};

const CALL_WAIT: Duration = Duration::from_secs(150);
const RECORDING_WAIT: Duration = Duration::from_secs(20);

/// The sandbox phone answers after 6 s of ringing and records.
const RINGS_SIX_SECONDS: &str = "03000000015";

/// One test at a time: each puts up to 20 calls on the one sandbox phone.
static SERIAL: Mutex<()> = Mutex::new(());

/// A daemon on `db` and both sandbox servers, at most 5 calls in flight on
/// each (two daemons: 20 at once on the sandbox), with `agi` keys. The
/// first daemon adds the API user; the others use it from the database.
fn daemon(sandbox: &Sandbox, db: &TestDatabase, name: &str, first: bool, agi: &str) -> (Home, Daemon) {
    let keys = "max_calls_per_second = 0\nmax_concurrent_calls = 5";
    let mut setup = Setup::new(name)
        .postgres(db)
        .config(NO_NUMBER_QUOTAS)
        .agi_keys(agi)
        .server("pbx1", sandbox.ami_of(1), keys)
        .server("pbx2", sandbox.ami_of(2), keys);
    if !first {
        setup = setup.no_users();
    }
    let (home, daemon) = setup.start_servers();
    daemon.wait_servers(&[("pbx1", "up"), ("pbx2", "up")]);
    (home, if first { daemon } else { daemon.calling_as("acme1", PASSWORD) })
}

/// The lease id of the one daemon registered in `db` so far.
fn only_daemon_id(db: &TestDatabase) -> String {
    let rows = db.rows("SELECT id FROM daemons");
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0][0].clone().expect("a daemon id")
}

/// How many stored calls `daemon` (a lease id) dialled.
fn dialled_by(db: &TestDatabase, daemon: &str) -> usize {
    db.rows(&format!("SELECT id FROM calls WHERE owner = '{daemon}'")).len()
}

#[test]
fn forty_calls_posted_to_two_daemons_all_complete_each_rung_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(db) = TestDatabase::create("sandbox_two") else { return };
    let sandbox = sandbox::up_asterisks(2);
    let (_home_a, a) = daemon(&sandbox, &db, "pg-sandbox-a", true, "");
    let id_a = only_daemon_id(&db);
    let (_home_b, b) = daemon(&sandbox, &db, "pg-sandbox-b", false, "");
    let mark = log_mark(&sandbox);
    let calls: Vec<(String, String)> = (0..40)
        .map(|i| {
            let number = unique_number();
            let id = if i % 2 == 0 { &a } else { &b }.seed_call(&number, "4821");
            (number, id)
        })
        .collect();
    let mut servers = Vec::new();
    for (number, id) in &calls {
        let call = a.wait_final(id, CALL_WAIT);
        assert_eq!(call["status"], "completed", "{call:?}\n{}\n{}", a.logs(), b.logs());
        assert_eq!(call["readings"], "2", "{call:?}");
        let recording = wait_recording(&sandbox, number, id, RECORDING_WAIT);
        let speech = speech_segments(&read_wav(&recording).expect("readable recording"));
        assert!(speech.len() >= 8, "{recording:?}: only {} speech segments", speech.len());
        assert_eq!(dials(&sandbox, number, mark), 1, "{number} rung once (call {id})");
        servers.push(call["asterisk"].clone());
    }
    let on = |name: &str| servers.iter().filter(|s| *s == name).count();
    assert!(on("pbx1") > 0 && on("pbx2") > 0, "both servers carry calls: {servers:?}");
    let mut stored: Vec<String> = a.stored_calls().into_iter().map(|(id, _)| id).collect();
    let mut placed: Vec<String> = calls.iter().map(|(_, id)| id.clone()).collect();
    stored.sort();
    placed.sort();
    assert_eq!(stored, placed, "one stored call per request");
    let by_a = dialled_by(&db, &id_a);
    assert!(by_a > 0 && by_a < 40, "both daemons dialled: {by_a} of 40 by the first");
}

#[test]
fn a_daemon_killed_after_dialling_leaves_every_call_to_the_other_none_rung_twice() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(db) = TestDatabase::create("sandbox_kill") else { return };
    let sandbox = sandbox::up_asterisks(2);
    // Each daemon's dialplan fallback is the other's FastAGI port (through
    // a relay, whose address is known before the daemon it leads to).
    let (to_a, to_b) = (Relay::start(), Relay::start());
    let fallback = |relay: &Relay| format!("fallback_urls = [\"{}\"]", relay.agi_url());
    let (_home_a, a) = daemon(&sandbox, &db, "pg-kill-a", true, &fallback(&to_b));
    let id_a = only_daemon_id(&db);
    let (_home_b, b) = daemon(&sandbox, &db, "pg-kill-b", false, &fallback(&to_a));
    to_a.point_at(a.agi);
    to_b.point_at(b.agi);

    let mark = log_mark(&sandbox);
    let posted: Vec<String> = (0..6).map(|_| a.seed_call(RINGS_SIX_SECONDS, "4821")).collect();
    // Killed once a call it dialled rings (its calls ring 6 s: none is
    // answered yet, and a ringing call's Originate was surely sent).
    let ringing = format!("SELECT id FROM calls WHERE owner = '{id_a}' AND status = 'ringing'");
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.rows(&ringing).is_empty() {
        assert!(Instant::now() < deadline, "no call of the first daemon rang\n{}", a.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(a); // SIGKILL
    let rang: Vec<String> = db.rows(&ringing).into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert!(!rang.is_empty(), "its ringing calls are still ringing");

    let mut completed = Vec::new();
    for id in &posted {
        let call = b.wait_final(id, CALL_WAIT);
        match (call["status"].as_str(), call["reason"].as_str()) {
            ("completed", _) => {
                assert_eq!(call["readings"], "2", "{call:?}");
                wait_recording(&sandbox, RINGS_SIX_SECONDS, id, RECORDING_WAIT).discard();
                completed.push(id);
            }
            // Marked dialing by the dead daemon but its Originate never
            // sent: no channel once its lease ran out - not dialled again.
            ("failed", "system_error") => assert!(call["detail"].contains("not dialled again"), "{call:?}"),
            other => panic!("{id} ended {other:?}: {call:?}\n{}", b.logs()),
        }
    }
    // The calls the dead daemon had ringing were answered and read by the
    // survivor, over the dialplan's next FastAGI address.
    for id in &rang {
        assert_eq!(b.show(id)["status"], "completed", "{id}, ringing when its daemon died\n{}", b.logs());
    }
    assert!(to_b.accepted() >= rang.len(), "the survivor's address took them: {}", to_b.accepted());
    // Every call rang the phone once at most, each completed one once.
    for id in &posted {
        let rang = dials_of(&sandbox, RINGS_SIX_SECONDS, id, mark);
        let want = usize::from(completed.contains(&id));
        assert_eq!(rang, want, "{id} rang {rang} times (completed: {completed:?})");
    }
}
