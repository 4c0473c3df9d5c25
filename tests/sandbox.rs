//! End to end on the sandbox: a real Asterisk 22 (scripts/sandbox) over real
//! AMI, SIP/RTP and FastAGI, the real binary over real HTTP, and the callee's
//! recording as the judge of what a person would hear.

mod support;

use std::time::Duration;

use support::harness::{PASSWORD, Setup};
use support::http;
use support::sandbox::{self, channel_log, recordings_of, unique_number, wait_recording};
use support::wav::{Segment, read_wav, speech_segments};
use support::webhook_receiver::Receiver;

/// How long the phone's recording may take to appear once the call is final.
const RECORDING_WAIT: Duration = Duration::from_secs(20);

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
    let (_home, daemon) = Setup::new("seed-call").config("[call]\nmax_extra_readings = 0").sandbox(&sandbox);
    let number = unique_number();
    let code = "482915";
    let id = daemon.seed_call(&number, code);
    let call = daemon.wait_final(&id, Duration::from_secs(90));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
    assert_eq!(call["readings"], "2", "{call:?}");
    assert_eq!(call["number"], format!("+92{}", &number[1..]));

    let recording = wait_recording(&sandbox, &number, &id, RECORDING_WAIT);
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
    let (_home, daemon) = Setup::new("outcomes").config("[dial]\nring_timeout_secs = 6").sandbox(&sandbox);
    let cases = [
        ("03000000017", "failed", "busy"),
        ("03000000019", "failed", "no_answer"),
        ("03000000021", "failed", "rejected"),
        ("03000000001", "failed", "invalid_number"),
        ("03000000034", "failed", "congestion"),
        ("03000000016", "failed", "hangup_before_code"),
    ];
    let ids: Vec<_> = cases.iter().map(|(number, _, _)| daemon.seed_call(number, "4321")).collect();
    let answered = unique_number();
    let answered_id = daemon.seed_call(&answered, "4321");
    for ((number, status, reason), id) in cases.iter().zip(&ids) {
        let call = daemon.wait_final(id, Duration::from_secs(90));
        assert_eq!((call["status"].as_str(), call["reason"].as_str()), (*status, *reason), "{number}: {call:?}");
    }
    let call = daemon.wait_final(&answered_id, Duration::from_secs(90));
    assert_eq!(call["status"], "completed", "{call:?}");
    // The two that answered left recordings; nobody else may have them.
    wait_recording(&sandbox, "03000000016", &ids[5], RECORDING_WAIT).discard();
    wait_recording(&sandbox, &answered, &answered_id, RECORDING_WAIT).discard();
}

/// 400 and 401 requests reach no phone: nothing in Asterisk's log and no
/// recording for their number.
#[test]
fn refused_requests_dial_nobody() {
    let sandbox = sandbox::up();
    let mark = sandbox::log_mark(&sandbox);
    let (_home, daemon) = Setup::new("refused").sandbox(&sandbox);
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
    // A good call to another number, placed after them, proves the path
    // works; had a refused one been queued, it would have been dialled first.
    let other = unique_number();
    let id = daemon.seed_call(&other, "4321");
    let call = daemon.wait_final(&id, Duration::from_secs(90));
    assert_eq!(call["status"], "completed", "{call:?}");
    wait_recording(&sandbox, &other, &id, RECORDING_WAIT).discard();
    assert!(!channel_log(&sandbox, &id).is_empty(), "the good call shows in Asterisk's log");
    assert_eq!(daemon.stored_calls().len(), 1, "only the good call is stored");
    // Only this test's own numbers are looked for, in what was logged since it began.
    assert_eq!(sandbox::dials(&sandbox, &other, mark), 1, "the good call rang the phone once");
    assert!(!sandbox::log_since(&sandbox, mark).contains(&number), "a refused request reached Asterisk");
    assert_eq!(recordings_of(&sandbox, &number), Vec::<std::path::PathBuf>::new());
}

/// The seven outcomes again, through the JSON API: each call is read back
/// with `GET /v1/calls/{id}`, and a webhook receiver gets every final status
/// with a valid signature.
#[test]
fn each_outcome_reads_right_over_the_json_api_and_arrives_signed() {
    let sandbox = sandbox::up();
    let extra =
        "[dial]\nring_timeout_secs = 6\n\n[webhooks]\ndeny_private = false\nretry_initial_secs = 1\nretry_max_secs = 2";
    let (home, daemon) = Setup::new("v1-outcomes").config(extra).sandbox(&sandbox);
    let secret = home.user("acme1").webhook_secret.clone();
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
    wait_recording(&sandbox, &answered, &ids[0], RECORDING_WAIT).discard();
    wait_recording(&sandbox, "03000000016", &ids[6], RECORDING_WAIT).discard();
}
