//! The dispatcher and the FastAGI flow against a scripted Asterisk: a fake
//! AMI server for call outcomes, and a scripted FastAGI client playing the
//! answered channel. These cover what a real Asterisk won't do on demand;
//! `tests/sandbox.rs` does the same things for real.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::daemon::Daemon;
use support::fake_agi::{self, Callee};
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome, StatusReply};
use support::harness::{FAST_FLOW, Home, NO_NUMBER_QUOTAS, PASSWORD, Setup};

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

/// A FastAGI session on the channel the daemon originated for call
/// `uniqueid`, whose callee listens, and hangs up after `hang_up_after` of
/// the flow's commands if given. Returns the flow's commands.
async fn agi_session(fake: &FakeAmi, agi: SocketAddr, uniqueid: &str, hang_up_after: Option<usize>) -> Vec<String> {
    flow_session(fake, agi, uniqueid, Callee { hang_up_after, ..Callee::default() }).await
}

/// A session with `callee` on the channel the daemon originated for call
/// `uniqueid`: it carries that Originate's token (`callee.token` is
/// ignored) and `hang_up_after` counts the flow's commands. Checks that the
/// token question came first and returns the commands after it, without
/// the mark that the call was taken ([`without_mark`]).
async fn flow_session(fake: &FakeAmi, agi: SocketAddr, uniqueid: &str, callee: Callee<'_>) -> Vec<String> {
    let token = fake.wait_agi_token(uniqueid, Duration::from_secs(10)).await;
    assert!(token.is_some(), "no Originate for {uniqueid}");
    let callee = Callee { token: token.as_deref(), hang_up_after: callee.hang_up_after.map(|n| n + 2), ..callee };
    let commands = fake_agi::session(agi, uniqueid, callee).await;
    assert_eq!(commands.first().map(String::as_str), Some(fake_agi::ASK_TOKEN), "the token comes first: {commands:?}");
    without_mark(&commands[1..])
}

/// The commands after the token question without the mark that the call
/// was taken, which must come first if it comes at all (a refused session
/// has none: the dialplan may then try another daemon).
fn without_mark(commands: &[String]) -> Vec<String> {
    let rest = match commands.first() {
        Some(first) if first == fake_agi::MARK_TAKEN => &commands[1..],
        _ => commands,
    };
    assert!(!rest.iter().any(|c| c == fake_agi::MARK_TAKEN), "the mark comes first, once: {commands:?}");
    rest.to_vec()
}

/// How every session that ends normally ends.
const HANG_UP: &str = "EXEC Hangup \"16\"";

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
    let (_home, fake, daemon) = setup("answered", FakeScript::for_daemon()).await;
    let id = daemon.seed_call("03001234567", "482915");
    // While the call is live the code is stored, for the FastAGI session.
    assert_eq!(stored_code(&daemon, &id).as_deref(), Some("482915"));
    let commands = agi_session(&fake, daemon.agi, &id, None).await;
    assert_eq!(commands[0], "SET VARIABLE CHANNEL(language) \"en\"");
    assert_eq!(commands[1], "WAIT FOR DIGIT 10");
    let mut expected = vec!["voice-otp/intro"];
    let digits = ["digits/4", "digits/8", "digits/2", "digits/9", "digits/1", "digits/5"];
    expected.extend(digits);
    expected.push("voice-otp/repeat");
    expected.extend(digits);
    expected.extend(["voice-otp/press1", "voice-otp/goodbye"]);
    assert_eq!(played(&commands), expected);
    assert_eq!(commands.last().map(String::as_str), Some(HANG_UP));
    let call = final_call(&daemon, &id);
    assert_eq!(call["status"], "completed", "{call:?}");
    assert_eq!(call["readings"], "2");
    assert_eq!(stored_code(&daemon, &id), None);
    assert!(!daemon.logs().contains("482915"), "the code must not be logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_finished_calls_are_hung_up_with_nothing_played() {
    let (_home, fake, daemon) = setup("unknown", FakeScript::for_daemon()).await;
    let forged = Callee { token: Some("0123456789abcdef0123456789abcdef"), ..Callee::default() };
    // Not a call id of ours: hung up at once, not even asked for a token.
    for uniqueid in ["1700000000.42", ""] {
        let commands = fake_agi::session(daemon.agi, uniqueid, forged).await;
        assert_eq!(commands, [HANG_UP], "uniqueid {uniqueid:?}");
    }
    // A well-formed id of no call: asked for its token, then hung up.
    let commands = fake_agi::session(daemon.agi, "0123456789abcdef0123456789abcdef", forged).await;
    assert_eq!(commands, [fake_agi::ASK_TOKEN, HANG_UP]);
    // A call that already ended: a second session with its very token gets
    // nothing either.
    let id = daemon.seed_call("03001234567", "482915");
    let first = agi_session(&fake, daemon.agi, &id, None).await;
    assert_eq!(played(&first).len(), 16);
    final_call(&daemon, &id);
    let again = agi_session(&fake, daemon.agi, &id, None).await;
    assert_eq!(again, [HANG_UP]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_up_before_one_full_reading_fails_the_call() {
    let (_home, fake, daemon) = setup("early-hangup", FakeScript::for_daemon()).await;
    let id = daemon.seed_call("03001234567", "482915");
    // Language, pause, intro, pause, then at the first digit the callee hangs up.
    let commands = agi_session(&fake, daemon.agi, &id, Some(4)).await;
    assert_eq!(commands.len(), 5, "nothing after the hang-up but its reply: {commands:?}");
    let call = final_call(&daemon, &id);
    assert_eq!(call["status"], "failed", "{call:?}");
    assert_eq!(call["reason"], "hangup_before_code");
    assert_eq!(call["readings"], "0");

    // After one full reading, a hang-up still counts as delivered.
    let id = daemon.seed_call("03001234567", "482915");
    // Language, pause, intro, 6 x (pause, digit), pause: hang-up at "I repeat".
    let commands = agi_session(&fake, daemon.agi, &id, Some(3 + 2 * 6 + 1)).await;
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
    let (home, fake, daemon) = setup("options", FakeScript::for_daemon()).await;
    // Urdu, and a 1 pressed at "press 1 to hear the code again": a third reading.
    let id = daemon.seed_call_with("03001234567", "4821", "&language=ur&require_keypress=0");
    let press = Callee { press: Some(("STREAM FILE voice-otp/press1", '1')), ..Callee::default() };
    let commands = flow_session(&fake, daemon.agi, &id, press).await;
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
    let commands = agi_session(&fake, daemon.agi, &id, None).await;
    assert!(played(&commands).iter().all(|p| !p.starts_with("digits/")), "{commands:?}");
    assert_eq!(played(&commands).iter().filter(|p| **p == "voice-otp/press_any_key").count(), 3);
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "no_keypress"), "{call:?}");
    assert_eq!((call["readings"].as_str(), call["require_keypress"].as_str()), ("0", "true"));
    assert_eq!(stored_code(&daemon, &id), None, "the code is erased");

    // A key at the first prompt: the code is read.
    let id = daemon.seed_call("03001234567", "4821");
    let press = Callee { press: Some(("STREAM FILE voice-otp/press_any_key", '#')), ..Callee::default() };
    let commands = flow_session(&fake, daemon.agi, &id, press).await;
    assert_eq!(played(&commands).iter().filter(|p| p.starts_with("digits/")).count(), 8);
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["keys"].as_str()), ("completed", "#"), "{call:?}");
}

/// Issue 10, attack 1, with a scripted Asterisk: a local process that knows
/// the call id but not the token gets nothing played, leaves the call as it
/// was, and the real channel's session then reads the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_the_calls_token_gets_nothing_and_changes_nothing() {
    // The channel exists: a periodic reconciliation leaves the call alone.
    let script = FakeScript { status_reply: StatusReply::Exists, ..FakeScript::for_daemon() };
    let (_home, fake, daemon) = setup("impostor", script).await;
    let id = daemon.seed_call("03001234567", "482915");
    let real = fake.wait_agi_token(&id, Duration::from_secs(10)).await.expect("the Originate carries a token");
    assert_eq!(real.len(), 32, "128 random bits in hex");
    // The scripted Asterisk answers at once: wait until the daemon has
    // recorded that, or the snapshot races the OriginateResponse.
    let before = daemon.wait_status(&id, "answered", Duration::from_secs(10));
    let forged = "0".repeat(32);
    for token in [None, Some(""), Some(forged.as_str()), Some(&real[..31])] {
        let commands = fake_agi::session(daemon.agi, &id, Callee { token, ..Callee::default() }).await;
        assert_eq!(commands, [fake_agi::ASK_TOKEN, HANG_UP], "token {token:?}");
    }
    let refused = daemon.logged("FastAGI session refused", 4, Duration::from_secs(10));
    assert_eq!(refused, 4, "each impostor is logged:\n{}", daemon.logs());
    let logs = daemon.logs();
    assert!(logs.contains("peer=127.0.0.1"), "with the peer address:\n{logs}");
    assert!(!logs.contains(&real), "the token is never logged");
    assert_eq!(before, daemon.show(&id), "the impostors changed nothing");
    assert_eq!(stored_code(&daemon, &id).as_deref(), Some("482915"), "the code is still there");
    let metrics = support::http::get(daemon.http, "/metrics").body;
    assert!(metrics.contains("voice_otp_agi_sessions_refused_total{reason=\"wrong_token\"} 2"), "{metrics}");
    assert!(metrics.contains("voice_otp_agi_sessions_refused_total{reason=\"no_token\"} 2"), "{metrics}");

    // The real channel, answered now, hears the whole code.
    let commands = agi_session(&fake, daemon.agi, &id, None).await;
    assert_eq!(played(&commands).iter().filter(|p| p.starts_with("digits/")).count(), 12, "{commands:?}");
    assert_eq!(final_call(&daemon, &id)["status"], "completed");
}

/// A call never dialled (still queued: here the AMI refuses the daemon's
/// login, so nothing is ever dialled) cannot be read, whatever the peer says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_is_never_served() {
    let (_home, _fake, daemon) =
        Setup::new("queued-impostor").fake(FakeScript::with_credentials("someone-else", "not-ours")).await;
    let id = daemon.seed_call("03001234567", "482915");
    assert_eq!(daemon.show(&id)["status"], "queued");
    for token in [None, Some("0123456789abcdef0123456789abcdef")] {
        let commands = fake_agi::session(daemon.agi, &id, Callee { token, ..Callee::default() }).await;
        assert_eq!(commands, [fake_agi::ASK_TOKEN, HANG_UP], "token {token:?}");
    }
    assert_eq!(daemon.show(&id)["status"], "queued");
    assert_eq!(stored_code(&daemon, &id).as_deref(), Some("482915"));
}

/// Review item 5: a call that shows `ringing` when its FastAGI session
/// arrives is marked answered (with its time): it can no longer be
/// canceled mid-reading, and the channel's later Hangup does not fail it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ringing_call_answered_over_fastagi_is_answered() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let script = FakeScript { originate_outcome: OriginateOutcome::Silent, ..FakeScript::for_daemon() };
    let (_home, fake, daemon) = setup("ringing-answer", script).await;
    let id = daemon.seed_call("03001234567", "482915");
    let token = fake.wait_agi_token(&id, Duration::from_secs(10)).await.expect("an Originate");
    fake.emit_ringing(&id);
    daemon.wait_status(&id, "ringing", Duration::from_secs(10));
    // The session starts (no OriginateResponse yet: Asterisk sends it late)
    // and holds at its first flow command, as during a long playback.
    let stream = tokio::net::TcpStream::connect(daemon.agi).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(fake_agi::request_block(daemon.agi, &id).as_bytes()).await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some(fake_agi::ASK_TOKEN));
    write.write_all(fake_agi::token_reply(Some(&token)).as_bytes()).await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some(fake_agi::MARK_TAKEN));
    write.write_all(b"200 result=1\n").await.unwrap();
    let first = lines.next_line().await.unwrap().unwrap();
    assert!(first.starts_with("SET VARIABLE CHANNEL(language)"), "{first}");
    let call = daemon.show(&id);
    assert_eq!(call["status"], "answered", "{call:?}");
    assert!(!call["answered_at"].is_empty(), "{call:?}");
    let cancel = support::blocking(|| {
        support::http::with_basic(daemon.http, "POST", &format!("/v1/calls/{id}/cancel"), "acme1", PASSWORD, None)
    });
    assert_eq!(cancel.status, 409, "no cancel mid-reading: {}", cancel.body);
    // The rest of the flow, then Asterisk's Hangup of the channel.
    write.write_all(b"200 result=1\n").await.unwrap();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
        let reply = if line.starts_with("STREAM FILE") { "200 result=0 endpos=4000\n" } else { "200 result=0\n" };
        write.write_all(reply.as_bytes()).await.unwrap();
        if fake_agi::is_hangup(&line) {
            break;
        }
    }
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["readings"].as_str()), ("completed", "2"), "{call:?}");
    fake.emit_event(&[
        ("Event", "Hangup"),
        ("Privilege", "call,all"),
        ("Uniqueid", &id),
        ("Cause", "16"),
        ("Cause-txt", "Normal Clearing"),
    ]);
    // The event is handled once its cause is on record; it leaves the call completed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let call = loop {
        let call = daemon.show(&id);
        if call["cause"] == "16" {
            break call;
        }
        assert!(std::time::Instant::now() < deadline, "the Hangup's cause never recorded: {call:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((call["status"].as_str(), call["cause_text"].as_str()), ("completed", "Normal Clearing"), "{call:?}");
}

/// A FastAGI session for call `uniqueid` whose replies come from `answer`
/// (given each command line; `None`: `200 result=0`, with `endpos=` for a
/// playback). `Some("HANGUP")` hangs up instead of answering. Returns the
/// commands after the token question.
async fn agi_session_answering(
    fake: &FakeAmi,
    agi: SocketAddr,
    uniqueid: &str,
    mut answer: impl FnMut(&str) -> Option<String>,
) -> Vec<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let token = fake.wait_agi_token(uniqueid, Duration::from_secs(10)).await.expect("an Originate");
    let stream = tokio::net::TcpStream::connect(agi).await.expect("connect FastAGI");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(fake_agi::request_block(agi, uniqueid).as_bytes()).await.unwrap();
    let mut commands = Vec::new();
    let mut hung_up = false;
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
        commands.push(line.clone());
        let reply = match answer(&line) {
            _ if line == fake_agi::ASK_TOKEN => fake_agi::token_reply(Some(&token)),
            _ if hung_up => "511 Command Not Permitted on a dead channel or intercept routine\n".to_owned(),
            Some(hangup) if hangup == "HANGUP" => {
                hung_up = true;
                "HANGUP\n511 Command Not Permitted on a dead channel or intercept routine\n".to_owned()
            }
            Some(reply) => format!("{reply}\n"),
            None if line.starts_with("STREAM FILE") => "200 result=0 endpos=4000\n".to_owned(),
            None => "200 result=0\n".to_owned(),
        };
        if write.write_all(reply.as_bytes()).await.is_err() || fake_agi::is_hangup(&line) {
            break;
        }
    }
    assert_eq!(commands.first().map(String::as_str), Some(fake_agi::ASK_TOKEN), "the token comes first: {commands:?}");
    without_mark(&commands[1..])
}

/// Answers the `GET DATA`s of a session in turn with `results` (what
/// Asterisk puts after `200 `), then with silence.
fn typing(results: &[&str]) -> impl FnMut(&str) -> Option<String> {
    let mut results: std::collections::VecDeque<String> = results.iter().map(|r| format!("200 {r}")).collect();
    move |line| {
        if line.starts_with("GET DATA") {
            Some(results.pop_front().unwrap_or_else(|| "200 result= (timeout)".to_owned()))
        } else {
            None
        }
    }
}

const ENTRY_KEYS: &str = "entry_timeout_ms = 3000\n";

/// [`setup`] with more `[call]` keys and more sections in the config.
async fn setup_with(name: &str, call_keys: &str, sections: &str) -> (Home, FakeAmi, Daemon) {
    let config = format!("{FAST_FLOW}{call_keys}\n{NO_NUMBER_QUOTAS}\n{sections}");
    Setup::new(name).config(&config).fake(FakeScript::for_daemon()).await
}
const LOOPBACK_WEBHOOKS: &str = "[webhooks]\ndeny_private = false\n";

/// Issue 11 item 1 at the wire: `mode: "enter"` on the JSON API. A wrong
/// code, then the right one, typed into `GET DATA`s: verified in two
/// attempts, in the call, `call show` and the webhook; nothing typed in
/// the log or in `keys`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enter_mode_call_takes_the_code_over_get_data() {
    let (_home, fake, daemon) = setup_with("enter", ENTRY_KEYS, LOOPBACK_WEBHOOKS).await;
    for (mode, detail) in [(r#""type""#, "mode must be one of: read, enter"), ("true", "mode must be a string")] {
        let body = format!(r#"{{"number":"03001234567","code":"246810","mode":{mode}}}"#);
        let resp = support::blocking(|| {
            support::http::with_basic(daemon.http, "POST", "/v1/calls", "acme1", PASSWORD, Some(&body))
        });
        assert_eq!(resp.status, 400, "{}", resp.body);
        let problem = resp.json();
        assert_eq!((problem["field"].as_str(), problem["detail"].as_str()), (Some("mode"), Some(detail)), "{problem}");
    }
    let receiver = support::webhook_receiver::Receiver::start(&[]);
    let body = format!(
        r#"{{"number":"03001234567","code":"246810","mode":"enter","callback_url":"{}"}}"#,
        receiver.url("hook")
    );
    let resp = support::blocking(|| {
        support::http::with_basic(daemon.http, "POST", "/v1/calls", "acme1", PASSWORD, Some(&body))
    });
    assert_eq!(resp.status, 202, "{}", resp.body);
    let created = resp.json();
    assert_eq!((created["mode"].as_str(), created["verified"].as_bool()), (Some("enter"), Some(false)), "{created}");
    assert_eq!(created["attempts"], 0);
    let id = created["id"].as_str().unwrap().to_owned();

    let commands = agi_session_answering(&fake, daemon.agi, &id, typing(&["result=135790", "result=246810"])).await;
    assert_eq!(
        commands,
        [
            "SET VARIABLE CHANNEL(language) \"en\"",
            "WAIT FOR DIGIT 10",
            "GET DATA voice-otp/enter_code 3000 6",
            "STREAM FILE voice-otp/wrong_code \"\"",
            "GET DATA voice-otp/try_again 3000 6",
            "STREAM FILE voice-otp/verified \"\"",
            "WAIT FOR DIGIT 10",
            "STREAM FILE voice-otp/goodbye \"\"",
            "EXEC Hangup \"16\"",
        ]
    );
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("completed", ""), "{call:?}");
    assert_eq!((call["mode"].as_str(), call["verified"].as_str(), call["attempts"].as_str()), ("enter", "true", "2"));
    assert_eq!((call["keys"].as_str(), call["readings"].as_str()), ("", "0"), "nothing typed is kept: {call:?}");
    let json = support::blocking(|| {
        support::http::with_basic(daemon.http, "GET", &format!("/v1/calls/{id}"), "acme1", PASSWORD, None)
    })
    .json();
    assert_eq!((json["verified"].as_bool(), json["attempts"].as_u64()), (Some(true), Some(2)), "{json}");
    let hook = support::blocking(|| receiver.wait_for(Duration::from_secs(20), |r| r.json()["status"] == "completed"));
    let hook = hook.json();
    assert_eq!(
        (hook["verified"].as_bool(), hook["attempts"].as_u64(), hook["mode"].as_str()),
        (Some(true), Some(2), Some("enter"))
    );
    let answered = receiver.received().into_iter().map(|r| r.json()).find(|j| j["status"] == "answered").unwrap();
    assert_eq!(answered["verified"], false, "not verified before the code is typed: {answered}");
    assert_eq!(stored_code(&daemon, &id), None);
    let logs = daemon.logs();
    assert!(!logs.contains("135790") && !logs.contains("246810"), "typed digits or the code in the log:\n{logs}");
}

/// The seed API's `mode`, a user's default mode, and the other ends:
/// silence (`no_input`), every code wrong (`wrong_code`), a hang-up
/// mid-entry, a missing prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enter_mode_failures_and_the_users_default() {
    let (home, fake, daemon) = setup_with("enter-fail", ENTRY_KEYS, "").await;
    let seed = |code: &str, options: &str| {
        let target =
            format!("/outbound.cgi?number=03001234567&code={code}&username=acme1&password={PASSWORD}{options}");
        let resp = support::blocking(|| support::http::get(daemon.http, &target));
        assert_eq!(resp.status, 200, "{}", resp.body);
        resp.json_field("call_id").expect("call_id")
    };
    let bad = support::blocking(|| {
        support::http::get(
            daemon.http,
            &format!("/outbound.cgi?number=03001234567&code=1234&username=acme1&password={PASSWORD}&mode=type"),
        )
    });
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("mode must be one of: read, enter"), "{}", bad.body);

    // Nothing typed at any of the three prompts.
    let id = seed("246810", "&mode=enter");
    let commands = agi_session_answering(&fake, daemon.agi, &id, typing(&[])).await;
    let entries: Vec<&String> = commands.iter().filter(|c| c.starts_with("GET DATA")).collect();
    assert_eq!(entries, ["GET DATA voice-otp/enter_code 3000 6"; 3]);
    assert!(!commands.iter().any(|c| c.contains("wrong_code") || c.contains("verified")), "{commands:?}");
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "no_input"), "{call:?}");
    assert_eq!((call["verified"].as_str(), call["attempts"].as_str()), ("false", "0"));

    // The user's default makes it enter mode; every code is wrong (one
    // ended by the timeout).
    home.cli(&["user", "set", "acme1", "--mode", "enter"]);
    let list = home.cli(&["user", "list"]);
    let row: Vec<&str> = list.lines().find(|l| l.starts_with("acme1 ")).unwrap().split_whitespace().collect();
    assert_eq!(row[1..5], ["yes", "default", "default", "enter"], "{list}");
    let id = seed("246810", "");
    let typed = typing(&["result=111111", "result=2468 (timeout)", "result=975319"]);
    let commands = agi_session_answering(&fake, daemon.agi, &id, typed).await;
    assert_eq!(commands.iter().filter(|c| c.contains("wrong_code")).count(), 3, "{commands:?}");
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "wrong_code"), "{call:?}");
    assert_eq!((call["mode"].as_str(), call["verified"].as_str(), call["attempts"].as_str()), ("enter", "false", "3"));

    // The request wins over the user's default.
    let id = seed("4821", "&mode=read");
    let commands = agi_session(&fake, daemon.agi, &id, None).await;
    assert_eq!(played(&commands).iter().filter(|p| p.starts_with("digits/")).count(), 8);
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["mode"].as_str()), ("completed", "read"), "{call:?}");
    assert_eq!((call["verified"].as_str(), call["attempts"].as_str()), ("", ""), "no entry in read mode");

    // Hung up during the second entry: one code typed, no verdict.
    let id = seed("246810", "");
    let mut entries = 0;
    let commands = agi_session_answering(&fake, daemon.agi, &id, |line| {
        if !line.starts_with("GET DATA") {
            return None;
        }
        entries += 1;
        Some(if entries == 1 { "200 result=135790".to_owned() } else { "HANGUP".to_owned() })
    })
    .await;
    assert_eq!(
        commands.last().map(String::as_str),
        Some("GET DATA voice-otp/try_again 3000 6"),
        "nothing after the hang-up"
    );
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "hangup_before_code"), "{call:?}");
    assert_eq!(call["attempts"], "1");

    // Asterisk lacks the prompt: GET DATA -1 on a live channel.
    let id = seed("246810", "");
    let missing = |line: &str| line.starts_with("GET DATA").then(|| "200 result=-1".to_owned());
    let commands = agi_session_answering(&fake, daemon.agi, &id, missing).await;
    assert_eq!(commands[2..], ["GET DATA voice-otp/enter_code 3000 6", "WAIT FOR DIGIT 1", "EXEC Hangup \"16\""]);
    let call = final_call(&daemon, &id);
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "system_error"), "{call:?}");
    assert!(call["detail"].contains("voice-otp/enter_code is missing"), "{call:?}");
    let logs = daemon.logs();
    for typed in ["111111", "975319", "135790"] {
        assert!(!logs.contains(typed), "typed digits {typed} in the log:\n{logs}");
    }
}
