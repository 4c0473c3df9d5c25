//! The dispatcher and the FastAGI flow against a scripted Asterisk: a fake
//! AMI server for call outcomes, and a scripted FastAGI client playing the
//! answered channel. These cover what a real Asterisk won't do on demand;
//! `tests/sandbox.rs` does the same things for real.

mod support;

use std::time::Duration;

use support::daemon::{Daemon, TempDir, add_user, cli, write_config};
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome};
use support::http;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const PASSWORD: &str = "correct-horse-9";

async fn setup(name: &str, script: FakeScript) -> (TempDir, FakeAmi, Daemon) {
    let fake =
        FakeAmi::start(FakeScript { username: "voice-otp".into(), secret: "voice-otp-sandbox".into(), ..script }).await;
    let dir = TempDir::new(name);
    // Short pauses: these tests look at the order of commands, not at pacing.
    // These tests dial one number many times; its quotas are tests/abuse_limits.rs's subject.
    let config = write_config(
        &dir.0,
        fake.addr(),
        "[call]\nanswer_pause_ms = 10\ndigit_pause_ms = 10\nreading_pause_ms = 10\n\n\
         [limits]\nnumber_calls_per_window = 0\nnumber_calls_per_day = 0\n",
    );
    let daemon = tokio::task::block_in_place(|| {
        add_user(&config, "acme1", PASSWORD);
        Daemon::start(&config)
    });
    assert!(fake.wait_for_count("Login", 1, Duration::from_secs(10)).await, "daemon never logged in to AMI");
    (dir, fake, daemon)
}

fn place_call(daemon: &Daemon, number: &str, code: &str) -> String {
    let target = format!("/outbound.cgi?number={number}&code={code}&username=acme1&password={PASSWORD}");
    let resp = tokio::task::block_in_place(|| http::get(daemon.http, &target));
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.json_field("call_id").expect("call_id")
}

fn final_call(daemon: &Daemon, id: &str) -> std::collections::HashMap<String, String> {
    tokio::task::block_in_place(|| daemon.wait_final(id, Duration::from_secs(20)))
}

fn stored_code(daemon: &Daemon, id: &str) -> Option<String> {
    let db = daemon.config.parent().unwrap().join("test.db");
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT code FROM calls WHERE id = ?1", [id], |r| r.get(0)).unwrap()
}

/// Plays Asterisk's side of a FastAGI session: sends the request block for
/// `uniqueid`, answers every command with `200 result=0`, and after
/// `hang_up_after` commands sends `HANGUP` instead. Returns the commands.
async fn agi_session(agi: std::net::SocketAddr, uniqueid: &str, hang_up_after: Option<usize>) -> Vec<String> {
    agi_session_pressing(agi, uniqueid, hang_up_after, None).await
}

/// [`agi_session`], where the callee presses `key` in reply to the first
/// command starting with `prefix` (Asterisk answers the key's ASCII code).
async fn agi_session_pressing(
    agi: std::net::SocketAddr,
    uniqueid: &str,
    hang_up_after: Option<usize>,
    press: Option<(&str, char)>,
) -> Vec<String> {
    let mut press = press;
    let stream = TcpStream::connect(agi).await.expect("connect FastAGI");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let block = format!(
        "agi_network: yes\nagi_network_script: otp\nagi_request: agi://{agi}/otp\nagi_channel: PJSIP/carrier-00000001\n\
         agi_language: en\nagi_uniqueid: {uniqueid}\nagi_callerid: unknown\n\n"
    );
    write.write_all(block.as_bytes()).await.unwrap();
    let mut commands = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        let Ok(Ok(Some(line))) = next else { break };
        commands.push(line.clone());
        if hang_up_after.is_some_and(|n| commands.len() > n) {
            // The channel is gone: Asterisk says HANGUP, then 511 to the command.
            let _ =
                write.write_all(b"HANGUP\n511 Command Not Permitted on a dead channel or intercept routine\n").await;
            continue;
        }
        let reply = match press {
            Some((prefix, key)) if line.starts_with(prefix) => {
                press = None;
                format!("200 result={} endpos=2000\n", key as u32)
            }
            _ if line.starts_with("STREAM FILE") => "200 result=0 endpos=4000\n".to_owned(),
            _ => "200 result=0\n".to_owned(),
        };
        if write.write_all(reply.as_bytes()).await.is_err() {
            break;
        }
        if line == "HANGUP" {
            let _ = write.write_all(b"HANGUP\n").await;
            break;
        }
    }
    commands
}

fn played(commands: &[String]) -> Vec<&str> {
    commands.iter().filter_map(|c| c.strip_prefix("STREAM FILE ")).map(|c| c.split(' ').next().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_end_with_the_reason_the_hangup_cause_gives() {
    let (_dir, fake, daemon) = setup("outcomes", FakeScript::default()).await;
    let cases = [
        (OriginateOutcome::busy(), "busy", "17"),
        (OriginateOutcome::no_answer(), "no_answer", "19"),
        (OriginateOutcome::rejected(), "rejected", "21"),
        (OriginateOutcome::unallocated(), "invalid_number", "1"),
        (OriginateOutcome::congestion(), "congestion", "34"),
    ];
    for (outcome, reason, cause) in cases {
        fake.update_script(|s| s.originate_outcome = outcome.clone());
        let id = place_call(&daemon, "03001234567", "482915");
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
    let (_dir, _fake, daemon) = setup("answered", FakeScript::default()).await;
    let id = place_call(&daemon, "03001234567", "482915");
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
    let (_dir, _fake, daemon) = setup("unknown", FakeScript::default()).await;
    for uniqueid in ["1700000000.42", "0123456789abcdef0123456789abcdef", ""] {
        let commands = agi_session(daemon.agi, uniqueid, None).await;
        assert_eq!(commands, ["HANGUP"], "uniqueid {uniqueid:?}");
    }
    // A call that already ended: a second session gets nothing either.
    let id = place_call(&daemon, "03001234567", "482915");
    let first = agi_session(daemon.agi, &id, None).await;
    assert_eq!(played(&first).len(), 16);
    final_call(&daemon, &id);
    let again = agi_session(daemon.agi, &id, None).await;
    assert_eq!(again, ["HANGUP"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_up_before_one_full_reading_fails_the_call() {
    let (_dir, _fake, daemon) = setup("early-hangup", FakeScript::default()).await;
    let id = place_call(&daemon, "03001234567", "482915");
    // Language, pause, intro, pause, then at the first digit the callee hangs up.
    let commands = agi_session(daemon.agi, &id, Some(4)).await;
    assert_eq!(commands.len(), 5, "nothing after the hang-up but its reply: {commands:?}");
    let call = final_call(&daemon, &id);
    assert_eq!(call["status"], "failed", "{call:?}");
    assert_eq!(call["reason"], "hangup_before_code");
    assert_eq!(call["readings"], "0");

    // After one full reading, a hang-up still counts as delivered.
    let id = place_call(&daemon, "03001234567", "482915");
    // Language, pause, intro, 6 x (pause, digit), pause: hang-up at "I repeat".
    let commands = agi_session(daemon.agi, &id, Some(3 + 2 * 6 + 1)).await;
    assert!(played(&commands).contains(&"voice-otp/repeat"));
    let call = final_call(&daemon, &id);
    assert_eq!(call["status"], "completed", "{call:?}");
    assert_eq!(call["readings"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_but_no_fastagi_session_is_a_system_error() {
    let script = FakeScript { hangup_after_answer: Some(Duration::from_millis(200)), ..FakeScript::default() };
    let (_dir, _fake, daemon) = setup("no-agi", script).await;
    let id = place_call(&daemon, "03001234567", "482915");
    let call = final_call(&daemon, &id);
    assert_eq!(call["status"], "failed", "{call:?}");
    assert_eq!(call["reason"], "system_error");
    assert!(call["detail"].contains("FastAGI"), "{call:?}");
    assert!(!call["answered_at"].is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_options_reach_the_channel_and_keys_are_kept() {
    let (_dir, _fake, daemon) = setup("options", FakeScript::default()).await;
    // Urdu, and a 1 pressed at "press 1 to hear the code again": a third reading.
    let target = format!(
        "/outbound.cgi?number=03001234567&code=4821&username=acme1&password={PASSWORD}&language=ur&require_keypress=0"
    );
    let resp = tokio::task::block_in_place(|| http::get(daemon.http, &target));
    assert_eq!(resp.status, 200, "{}", resp.body);
    let id = resp.json_field("call_id").unwrap();
    let commands = agi_session_pressing(daemon.agi, &id, None, Some(("STREAM FILE voice-otp/press1", '1'))).await;
    assert_eq!(commands[0], "SET VARIABLE CHANNEL(language) \"ur\"");
    assert_eq!(played(&commands).iter().filter(|p| p.starts_with("digits/")).count(), 12);
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["readings"].as_str()), ("completed", "3"), "{call:?}");
    assert_eq!((call["language"].as_str(), call["require_keypress"].as_str()), ("ur", "false"));
    assert_eq!(call["keys"], "1");

    // The user's default turns voicemail-safe mode on; nobody presses a key.
    let (ok, out, err) = tokio::task::block_in_place(|| {
        cli(&daemon.config, &["user", "set", "acme1", "--require-keypress", "true"], "")
    });
    assert!(ok, "{out} {err}");
    let (_, list, _) = tokio::task::block_in_place(|| cli(&daemon.config, &["user", "list"], ""));
    let row: Vec<&str> = list.lines().find(|l| l.starts_with("acme1 ")).unwrap().split_whitespace().collect();
    assert_eq!(row[1..4], ["yes", "default", "true"], "{list}");
    let id = place_call(&daemon, "03001234567", "4821");
    let commands = agi_session(daemon.agi, &id, None).await;
    assert!(played(&commands).iter().all(|p| !p.starts_with("digits/")), "{commands:?}");
    assert_eq!(played(&commands).iter().filter(|p| **p == "voice-otp/press_any_key").count(), 3);
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "no_keypress"), "{call:?}");
    assert_eq!((call["readings"].as_str(), call["require_keypress"].as_str()), ("0", "true"));
    assert_eq!(stored_code(&daemon, &id), None, "the code is erased");

    // A key at the first prompt: the code is read.
    let id = place_call(&daemon, "03001234567", "4821");
    let commands =
        agi_session_pressing(daemon.agi, &id, None, Some(("STREAM FILE voice-otp/press_any_key", '#'))).await;
    assert_eq!(played(&commands).iter().filter(|p| p.starts_with("digits/")).count(), 8);
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["keys"].as_str()), ("completed", "#"), "{call:?}");
}
