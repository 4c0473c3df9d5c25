//! End to end on the sandbox: a real Asterisk 22 (scripts/sandbox) over real
//! AMI, SIP/RTP and FastAGI, the real binary over real HTTP, and the callee's
//! recording as the judge of what a person would hear.

mod support;

use std::path::Path;
use std::time::Duration;

use support::daemon::{Daemon, TempDir, cli, start_with_user, write_config};
use support::http;
use support::sandbox::{self, Sandbox, unique_number, wait_recording};
use support::wav::{Segment, read_wav, speech_segments};
use support::webhook_receiver::Receiver;

const PASSWORD: &str = "correct-horse-9";

fn start(sandbox: &Sandbox, name: &str, extra: &str) -> (TempDir, Daemon) {
    start_with_user(sandbox.ami, name, extra, PASSWORD)
}

fn seed_call(daemon: &Daemon, number: &str, code: &str) -> String {
    let target = format!("/outbound.cgi?number={number}&code={code}&username=acme1&password={PASSWORD}");
    let resp = http::get(daemon.http, &target);
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.json_field("call_id").expect("call_id")
}

fn describe(segments: &[Segment]) -> String {
    segments.iter().map(|s| format!("{}-{}ms", s.start_ms, s.end_ms)).collect::<Vec<_>>().join(" ")
}

/// The seed URL, default pacing: the callee hears the intro, the code,
/// "I repeat", the code again and goodbye - checked on the recording.
/// (No replay offer here, to keep the shape simple; tests/sandbox_call.rs
/// covers it.)
#[test]
fn the_seed_url_makes_the_phone_hear_the_code_twice() {
    let sandbox = sandbox::up();
    let (_dir, daemon) = start(&sandbox, "seed-call", "[call]\nmax_extra_readings = 0\n");
    let number = unique_number();
    let code = "482915";
    let id = seed_call(&daemon, &number, code);
    let call = daemon.wait_final(&id, Duration::from_secs(90));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
    assert_eq!(call["readings"], "2", "{call:?}");
    assert_eq!(call["number"], format!("+92{}", &number[1..]));

    let recording = wait_recording(&sandbox, &number, Duration::from_secs(20));
    let wav = read_wav(&recording).expect("readable recording");
    let segments = speech_segments(&wav);
    let n = code.len();
    // intro (1-2 pieces) + n digits + "I repeat" + n digits + goodbye.
    assert!(
        (2 * n + 3..=2 * n + 4).contains(&segments.len()),
        "{} speech segments in {recording:?}: {}",
        segments.len(),
        describe(&segments)
    );
    let tail = &segments[segments.len() - (2 * n + 2)..];
    let (first, rest) = tail.split_at(n);
    let (repeat, rest) = rest.split_at(1);
    let (second, goodbye) = rest.split_at(n);
    assert_eq!(goodbye.len(), 1);
    // The same digits, read the same way twice: each digit's length matches
    // its twin in the other reading, and every digit is real speech.
    for (a, b) in first.iter().zip(second) {
        assert!(a.len_ms().abs_diff(b.len_ms()) <= 60, "readings differ: {}", describe(tail));
        assert!((200..=1200).contains(&a.len_ms()), "not a spoken digit: {a:?}");
    }
    // Pauses between digits: a clearly separate word each time.
    for pair in first.windows(2).chain(second.windows(2)) {
        assert!(pair[1].start_ms - pair[0].end_ms >= 250, "digits run together: {}", describe(tail));
    }
    assert!(repeat[0].start_ms >= first[n - 1].end_ms);
    // Silence after answer before the first word. The recording starts when
    // media starts to flow, a little after the answer, so the exact 1 s is
    // checked on the command sequence (tests/fake_asterisk.rs), not here.
    assert!(segments[0].start_ms >= 300, "speech starts at once: {}", describe(&segments));
}

/// Every callee behaviour of the sandbox's table ends in its true status.
#[test]
fn each_sandbox_callee_ends_in_its_true_outcome() {
    let sandbox = sandbox::up();
    let (_dir, daemon) = start(&sandbox, "outcomes", "[dial]\nring_timeout_secs = 6\n");
    let cases = [
        ("03000000017", "failed", "busy"),
        ("03000000019", "failed", "no_answer"),
        ("03000000021", "failed", "rejected"),
        ("03000000001", "failed", "invalid_number"),
        ("03000000034", "failed", "congestion"),
        ("03000000016", "failed", "hangup_before_code"),
    ];
    let ids: Vec<_> = cases.iter().map(|(number, _, _)| seed_call(&daemon, number, "4321")).collect();
    let answered = unique_number();
    let answered_id = seed_call(&daemon, &answered, "4321");
    for ((number, status, reason), id) in cases.iter().zip(&ids) {
        let call = daemon.wait_final(id, Duration::from_secs(90));
        assert_eq!((call["status"].as_str(), call["reason"].as_str()), (*status, *reason), "{number}: {call:?}");
    }
    let call = daemon.wait_final(&answered_id, Duration::from_secs(90));
    assert_eq!(call["status"], "completed", "{call:?}");
}

/// 400 and 401 requests reach no phone: nothing in Asterisk's log and no
/// recording for their number.
#[test]
fn refused_requests_dial_nobody() {
    let sandbox = sandbox::up();
    let (_dir, daemon) = start(&sandbox, "refused", "");
    let number = unique_number();
    let bad = [
        format!("/outbound.cgi?number={number}&code=12&username=acme1&password={PASSWORD}"),
        format!("/outbound.cgi?number={number}&code=1234&code=1234&username=acme1&password={PASSWORD}"),
        format!("/outbound.cgi?number={number}%0D%0A&code=1234&username=acme1&password={PASSWORD}"),
        format!("/outbound.cgi?number={number}&code=1234&username=acme1&password=wrong"),
        format!("/outbound.cgi?number={number}&code=1234&username=ghost&password={PASSWORD}"),
    ];
    for target in &bad {
        let resp = http::get(daemon.http, target);
        assert!(resp.status == 400 || resp.status == 401, "{target}: {}", resp.status);
    }
    // A good call to another number proves the path works and gives the
    // refused ones time to have shown up, had they been dialled.
    let other = unique_number();
    let id = seed_call(&daemon, &other, "4321");
    let call = daemon.wait_final(&id, Duration::from_secs(90));
    assert_eq!(call["status"], "completed", "{call:?}");
    let log = std::fs::read_to_string(&sandbox.asterisk_log).unwrap_or_default();
    assert!(log.contains(&other), "the good call shows in Asterisk's log");
    assert!(!log.contains(&number), "a refused request reached Asterisk");
    assert!(!has_recording(&sandbox.recordings, &number));
}

fn has_recording(dir: &Path, number: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with(&format!("{number}-")))
}

/// The seven outcomes again, through the JSON API: each call is read back
/// with `GET /v1/calls/{id}`, and a webhook receiver gets every final status
/// with a valid signature.
#[test]
fn each_outcome_reads_right_over_the_json_api_and_arrives_signed() {
    let sandbox = sandbox::up();
    let dir = TempDir::new("v1-outcomes");
    let extra = "[dial]\nring_timeout_secs = 6\n\n[webhooks]\ndeny_private = false\nretry_initial_secs = 1\nretry_max_secs = 2\n";
    let config = write_config(&dir.0, sandbox.ami, extra);
    let (ok, out, err) = cli(&config, &["user", "add", "acme1", "--password-stdin"], &format!("{PASSWORD}\n"));
    assert!(ok, "{err}");
    let secret = out.lines().find_map(|l| l.strip_prefix("webhook_secret=")).expect("secret shown").to_owned();
    let daemon = Daemon::start(&config);
    let receiver = Receiver::start(&[]);
    let answered = unique_number();
    let cases = [
        (answered.as_str(), "completed", None),
        ("03000000017", "failed", Some("busy")),
        ("03000000019", "failed", Some("no_answer")),
        ("03000000021", "failed", Some("rejected")),
        ("03000000001", "failed", Some("invalid_number")),
        ("03000000034", "failed", Some("congestion")),
        ("03000000016", "failed", Some("hangup_before_code")),
    ];
    let ids: Vec<String> = cases
        .iter()
        .map(|(number, _, _)| {
            let body = format!(r#"{{"number":"{number}","code":"4321","callback_url":"{}"}}"#, receiver.url("otp"));
            let resp = http::with_basic(daemon.http, "POST", "/v1/calls", "acme1", PASSWORD, Some(&body));
            assert_eq!(resp.status, 202, "{}", resp.body);
            resp.json()["id"].as_str().expect("id").to_owned()
        })
        .collect();
    for ((number, status, reason), id) in cases.iter().zip(&ids) {
        daemon.wait_final(id, Duration::from_secs(90));
        let call = http::with_basic(daemon.http, "GET", &format!("/v1/calls/{id}"), "acme1", PASSWORD, None).json();
        assert_eq!((call["status"].as_str(), call["reason"].as_str()), (Some(*status), *reason), "{number}: {call}");
        let hook = receiver
            .wait_for(Duration::from_secs(30), |r| r.json()["id"] == id.as_str() && r.json()["status"] == *status);
        assert!(hook.signed_with(&secret), "{number}: bad signature {hook:?}");
        assert_eq!(hook.json()["reason"].as_str(), *reason, "{number}: {}", hook.body);
    }
    // The details Asterisk gave are kept: the answered call was read and
    // talked; the unanswered one rang (Newstate Ringing) until the timeout.
    let done = http::with_basic(daemon.http, "GET", &format!("/v1/calls/{}", ids[0]), "acme1", PASSWORD, None).json();
    assert!(done["readings"].as_u64() >= Some(1) && done["talk_duration_ms"].as_i64() > Some(0), "{done}");
    let rang = http::with_basic(daemon.http, "GET", &format!("/v1/calls/{}", ids[2]), "acme1", PASSWORD, None).json();
    assert_eq!(rang["cause"], 19, "{rang}");
    assert!(rang["ring_duration_ms"].as_i64() > Some(0), "{rang}");
    let statuses: Vec<String> = receiver
        .received()
        .iter()
        .filter(|r| r.json()["id"] == ids[2].as_str())
        .map(|r| r.json()["status"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(statuses, ["dialing", "ringing", "failed"], "every change of the unanswered call, in order");
}
