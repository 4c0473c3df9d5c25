//! The dispatcher and the FastAGI flow against a scripted Asterisk: a fake
//! AMI server for call outcomes, and a scripted FastAGI client playing the
//! answered channel. These cover what a real Asterisk won't do on demand;
//! `tests/sandbox.rs` does the same things for real.

mod support;

use std::time::Duration;

use support::daemon::Daemon;
use support::fake_agi::{self, Callee};
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome};
use support::harness::{FAST_FLOW, Home, NO_NUMBER_QUOTAS, Setup};

/// A daemon on a fake AMI: short pauses (these tests look at the order of
/// commands, not at pacing) and no quotas (they dial one number many times).
async fn setup(name: &str, script: FakeScript) -> (Home, FakeAmi, Daemon) {
    Setup::new(name).config(FAST_FLOW).config(NO_NUMBER_QUOTAS).fake(script).await
}

fn final_call(daemon: &Daemon, id: &str) -> std::collections::HashMap<String, String> {
    daemon.wait_final(id, Duration::from_secs(20))
}

fn stored_code(daemon: &Daemon, id: &str) -> Option<String> {
    let conn = rusqlite::Connection::open(daemon.db_path()).unwrap();
    conn.query_row("SELECT code FROM calls WHERE id = ?1", [id], |r| r.get(0)).unwrap()
}

/// A FastAGI session whose callee listens, and hangs up after
/// `hang_up_after` commands if given. Returns the commands.
async fn agi_session(agi: std::net::SocketAddr, uniqueid: &str, hang_up_after: Option<usize>) -> Vec<String> {
    fake_agi::session(agi, uniqueid, Callee { hang_up_after, press: None }).await
}

fn played(commands: &[String]) -> Vec<&str> {
    commands.iter().filter_map(|c| c.strip_prefix("STREAM FILE ")).map(|c| c.split(' ').next().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_end_with_the_reason_the_hangup_cause_gives() {
    let (_home, fake, daemon) = setup("outcomes", FakeScript::for_daemon()).await;
    let cases = [
        (OriginateOutcome::busy(), "busy", "17"),
        (OriginateOutcome::no_answer(), "no_answer", "19"),
        (OriginateOutcome::rejected(), "rejected", "21"),
        (OriginateOutcome::unallocated(), "invalid_number", "1"),
        (OriginateOutcome::congestion(), "congestion", "34"),
    ];
    for (outcome, reason, cause) in cases {
        fake.update_script(|s| s.originate_outcome = outcome.clone());
        let id = daemon.seed_call("03001234567", "482915");
        let call = final_call(&daemon, &id);
        assert_eq!(call["status"], "failed", "{reason}: {call:?}");
        assert_eq!(call["reason"], reason, "{call:?}");
        assert_eq!(call["cause"], cause, "{call:?}");
        assert!(!call["dialed_at"].is_empty() && call["answered_at"].is_empty(), "{call:?}");
        assert_eq!(stored_code(&daemon, &id), None, "the code is erased when the call ends");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_call_hears_the_code_twice_over_fastagi() {
    let (_home, _fake, daemon) = setup("answered", FakeScript::for_daemon()).await;
    let id = daemon.seed_call("03001234567", "482915");
    // While the call is live the code is stored, for the FastAGI session.
    assert_eq!(stored_code(&daemon, &id).as_deref(), Some("482915"));
    let commands = agi_session(daemon.agi, &id, None).await;
    assert_eq!(commands[0], "SET VARIABLE CHANNEL(language) \"en\"");
    assert_eq!(commands[1], "WAIT FOR DIGIT 10");
    let mut expected = vec!["voice-otp/intro"];
    let digits = ["digits/4", "digits/8", "digits/2", "digits/9", "digits/1", "digits/5"];
    expected.extend(digits);
    expected.push("voice-otp/repeat");
    expected.extend(digits);
    expected.extend(["voice-otp/press1", "voice-otp/goodbye"]);
    assert_eq!(played(&commands), expected);
    assert_eq!(commands.last().map(String::as_str), Some("HANGUP"));
    let call = final_call(&daemon, &id);
    assert_eq!(call["status"], "completed", "{call:?}");
    assert_eq!(call["readings"], "2");
    assert_eq!(stored_code(&daemon, &id), None);
    assert!(!daemon.logs().contains("482915"), "the code must not be logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_finished_calls_are_hung_up_with_nothing_played() {
    let (_home, _fake, daemon) = setup("unknown", FakeScript::for_daemon()).await;
    for uniqueid in ["1700000000.42", "0123456789abcdef0123456789abcdef", ""] {
        let commands = agi_session(daemon.agi, uniqueid, None).await;
        assert_eq!(commands, ["HANGUP"], "uniqueid {uniqueid:?}");
    }
    // A call that already ended: a second session gets nothing either.
    let id = daemon.seed_call("03001234567", "482915");
    let first = agi_session(daemon.agi, &id, None).await;
    assert_eq!(played(&first).len(), 16);
    final_call(&daemon, &id);
    let again = agi_session(daemon.agi, &id, None).await;
    assert_eq!(again, ["HANGUP"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_up_before_one_full_reading_fails_the_call() {
    let (_home, _fake, daemon) = setup("early-hangup", FakeScript::for_daemon()).await;
    let id = daemon.seed_call("03001234567", "482915");
    // Language, pause, intro, pause, then at the first digit the callee hangs up.
    let commands = agi_session(daemon.agi, &id, Some(4)).await;
    assert_eq!(commands.len(), 5, "nothing after the hang-up but its reply: {commands:?}");
    let call = final_call(&daemon, &id);
    assert_eq!(call["status"], "failed", "{call:?}");
    assert_eq!(call["reason"], "hangup_before_code");
    assert_eq!(call["readings"], "0");

    // After one full reading, a hang-up still counts as delivered.
    let id = daemon.seed_call("03001234567", "482915");
    // Language, pause, intro, 6 x (pause, digit), pause: hang-up at "I repeat".
    let commands = agi_session(daemon.agi, &id, Some(3 + 2 * 6 + 1)).await;
    assert!(played(&commands).contains(&"voice-otp/repeat"));
    let call = final_call(&daemon, &id);
    assert_eq!(call["status"], "completed", "{call:?}");
    assert_eq!(call["readings"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_but_no_fastagi_session_is_a_system_error() {
    let script = FakeScript { hangup_after_answer: Some(Duration::from_millis(200)), ..FakeScript::for_daemon() };
    let (_home, _fake, daemon) = setup("no-agi", script).await;
    let id = daemon.seed_call("03001234567", "482915");
    let call = final_call(&daemon, &id);
    assert_eq!(call["status"], "failed", "{call:?}");
    assert_eq!(call["reason"], "system_error");
    assert!(call["detail"].contains("FastAGI"), "{call:?}");
    assert!(!call["answered_at"].is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_options_reach_the_channel_and_keys_are_kept() {
    let (home, _fake, daemon) = setup("options", FakeScript::for_daemon()).await;
    // Urdu, and a 1 pressed at "press 1 to hear the code again": a third reading.
    let id = daemon.seed_call_with("03001234567", "4821", "&language=ur&require_keypress=0");
    let press = Callee { press: Some(("STREAM FILE voice-otp/press1", '1')), ..Callee::default() };
    let commands = fake_agi::session(daemon.agi, &id, press).await;
    assert_eq!(commands[0], "SET VARIABLE CHANNEL(language) \"ur\"");
    assert_eq!(played(&commands).iter().filter(|p| p.starts_with("digits/")).count(), 12);
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["readings"].as_str()), ("completed", "3"), "{call:?}");
    assert_eq!((call["language"].as_str(), call["require_keypress"].as_str()), ("ur", "false"));
    assert_eq!(call["keys"], "1");

    // The user's default turns voicemail-safe mode on; nobody presses a key.
    home.cli(&["user", "set", "acme1", "--require-keypress", "true"]);
    let list = home.cli(&["user", "list"]);
    let row: Vec<&str> = list.lines().find(|l| l.starts_with("acme1 ")).unwrap().split_whitespace().collect();
    assert_eq!(row[1..4], ["yes", "default", "true"], "{list}");
    let id = daemon.seed_call("03001234567", "4821");
    let commands = agi_session(daemon.agi, &id, None).await;
    assert!(played(&commands).iter().all(|p| !p.starts_with("digits/")), "{commands:?}");
    assert_eq!(played(&commands).iter().filter(|p| **p == "voice-otp/press_any_key").count(), 3);
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "no_keypress"), "{call:?}");
    assert_eq!((call["readings"].as_str(), call["require_keypress"].as_str()), ("0", "true"));
    assert_eq!(stored_code(&daemon, &id), None, "the code is erased");

    // A key at the first prompt: the code is read.
    let id = daemon.seed_call("03001234567", "4821");
    let press = Callee { press: Some(("STREAM FILE voice-otp/press_any_key", '#')), ..Callee::default() };
    let commands = fake_agi::session(daemon.agi, &id, press).await;
    assert_eq!(played(&commands).iter().filter(|p| p.starts_with("digits/")).count(), 8);
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["keys"].as_str()), ("completed", "#"), "{call:?}");
}
