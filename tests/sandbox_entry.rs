//! Keypad entry (`mode=enter`, issue 11 item 1) on the sandbox: real
//! Asterisk, SIP, RTP and DTMF (RFC 4733). The sandbox's callees type on
//! their own: 03000000058 types `246810#` 7 s after answering,
//! 03000000057 `135790#` then, 6 s later, `246810#`, 03000000059 nothing.
//! The verdict comes from the daemon; what the callee heard from the
//! recording of that very call (`recordings/<number>-<call id>.wav`) and
//! from Asterisk's log of its channel.

mod support;

use std::path::Path;
use std::time::Duration;

use support::daemon::Daemon;
use support::harness::{Home, Setup};
use support::sandbox::{self, Recording, Sandbox, channel_log};
use support::wav::{Segment, read_wav, speech_segments};

const TYPES_THE_CODE: &str = "03000000058";
const TYPES_WRONG_THEN_RIGHT: &str = "03000000057";
const TYPES_NOTHING: &str = "03000000059";
/// What 03000000058 types (and 03000000057 the second time).
const CODE: &str = "246810";

fn start(sandbox: &Sandbox, name: &str) -> (Home, Daemon) {
    Setup::new(name).sandbox(sandbox)
}

fn enter_call(daemon: &Daemon, number: &str, code: &str, options: &str) -> String {
    daemon.seed_call_with(number, code, &format!("&mode=enter{options}"))
}

/// The callee's recording of call `id`, once complete.
fn recording_of(sandbox: &Sandbox, number: &str, id: &str) -> Recording {
    sandbox::wait_recording(sandbox, number, id, Duration::from_secs(20))
}

/// Stretches of speech the callee heard, as (start, end) ms: words closer
/// than 500 ms are one utterance (a prompt's own pauses are at most 360
/// ms; the flow pauses 600 ms before goodbye and waits seconds for keys).
fn utterances(path: &Path) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for s in speech_segments(&read_wav(path).expect("readable recording")) {
        match out.last_mut() {
            Some(last) if s.start_ms - last.1 < 500 => last.1 = s.end_ms,
            _ => out.push((s.start_ms, s.end_ms)),
        }
    }
    out
}

/// The speech span of one of our prompt files.
fn prompt_ms(language: &str, name: &str) -> u32 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("sounds/{language}/voice-otp/{name}.wav"));
    let segments: Vec<Segment> = speech_segments(&read_wav(&path).expect("prompt file"));
    segments.last().unwrap().end_ms - segments[0].start_ms
}

/// "That code is not correct." with "Please try again." straight after it:
/// they are heard as one utterance (the files' 50 ms pads apart).
fn wrong_then_try_again_ms(language: &str) -> u32 {
    prompt_ms(language, "wrong_code") + 100 + prompt_ms(language, "try_again")
}

/// Asserts the callee heard utterances as long as `expected` (ms, each
/// within `slack`), in order and nothing else.
fn heard(path: &Path, expected: &[u32], slack: u32) {
    let got = utterances(path);
    let spans: Vec<u32> = got.iter().map(|(a, b)| b - a).collect();
    let fits = spans.len() == expected.len() && spans.iter().zip(expected).all(|(h, w)| h.abs_diff(*w) <= slack);
    assert!(fits, "{path:?}: heard {spans:?} ms ({got:?}), expected {expected:?}");
}

/// The prompts Asterisk played on call `id`'s channel, in order.
fn prompts_played(sandbox: &Sandbox, id: &str) -> Vec<String> {
    channel_log(sandbox, id)
        .iter()
        .filter_map(|l| l.split("Playing 'voice-otp/").nth(1))
        .filter_map(|rest| rest.split('.').next())
        .map(str::to_owned)
        .collect()
}

fn check_final(daemon: &Daemon, id: &str, status: &str, reason: &str, verified: &str, attempts: &str) {
    let call = daemon.wait_final(id, Duration::from_secs(120));
    let got = (call["status"].as_str(), call["reason"].as_str(), call["verified"].as_str(), call["attempts"].as_str());
    assert_eq!(got, (status, reason, verified, attempts), "{call:?}\n{}", daemon.logs());
    assert_eq!((call["mode"].as_str(), call["keys"].as_str(), call["readings"].as_str()), ("enter", "", "0"));
}

/// 03000000058 types the code once: verified at the first attempt. It
/// heard the instructions, "thank you, you are verified" and goodbye.
#[test]
fn a_callee_typing_the_code_is_verified() {
    let sandbox = sandbox::up();
    let (_dir, daemon) = start(&sandbox, "entry-right");
    let id = enter_call(&daemon, TYPES_THE_CODE, CODE, "");
    check_final(&daemon, &id, "completed", "", "true", "1");
    let recording = recording_of(&sandbox, TYPES_THE_CODE, &id);
    heard(&recording, &[prompt_ms("en", "enter_code"), prompt_ms("en", "verified"), prompt_ms("en", "goodbye")], 200);
    assert_eq!(prompts_played(&sandbox, &id), ["enter_code", "verified", "goodbye"]);
    assert!(!daemon.logs().contains(CODE), "the code or the typed digits in the log");
}

/// 03000000057 types a wrong code, then the right one: "that code is not
/// correct, please try again", then verified at the second attempt.
#[test]
fn a_wrong_code_then_the_right_one_is_verified_in_two_attempts() {
    let sandbox = sandbox::up();
    let (_dir, daemon) = start(&sandbox, "entry-second");
    let id = enter_call(&daemon, TYPES_WRONG_THEN_RIGHT, CODE, "");
    check_final(&daemon, &id, "completed", "", "true", "2");
    let recording = recording_of(&sandbox, TYPES_WRONG_THEN_RIGHT, &id);
    let expected = [
        prompt_ms("en", "enter_code"),
        wrong_then_try_again_ms("en"),
        prompt_ms("en", "verified"),
        prompt_ms("en", "goodbye"),
    ];
    heard(&recording, &expected, 250);
    assert_eq!(prompts_played(&sandbox, &id), ["enter_code", "wrong_code", "try_again", "verified", "goodbye"]);
    let logs = daemon.logs();
    assert!(!logs.contains("135790") && !logs.contains(CODE), "typed digits in the log:\n{logs}");
}

/// 03000000059 types nothing: the instructions three times
/// (`entry_attempts`), goodbye, `no_input`.
#[test]
fn a_callee_typing_nothing_ends_no_input() {
    let sandbox = sandbox::up();
    let (_dir, daemon) = start(&sandbox, "entry-nothing");
    let id = enter_call(&daemon, TYPES_NOTHING, CODE, "");
    check_final(&daemon, &id, "failed", "no_input", "false", "0");
    let recording = recording_of(&sandbox, TYPES_NOTHING, &id);
    let enter = prompt_ms("en", "enter_code");
    heard(&recording, &[enter, enter, enter, prompt_ms("en", "goodbye")], 200);
    assert_eq!(prompts_played(&sandbox, &id), ["enter_code", "enter_code", "enter_code", "goodbye"]);
}

/// 03000000058 typing 246810 against the code 111111: told it is wrong,
/// asked again twice, nothing more typed: `wrong_code` after one attempt.
#[test]
fn a_callee_typing_another_code_ends_wrong_code() {
    let sandbox = sandbox::up();
    let (_dir, daemon) = start(&sandbox, "entry-wrong");
    let id = enter_call(&daemon, TYPES_THE_CODE, "111111", "");
    check_final(&daemon, &id, "failed", "wrong_code", "false", "1");
    let recording = recording_of(&sandbox, TYPES_THE_CODE, &id);
    let expected = [
        prompt_ms("en", "enter_code"),
        wrong_then_try_again_ms("en"),
        prompt_ms("en", "enter_code"),
        prompt_ms("en", "goodbye"),
    ];
    heard(&recording, &expected, 250);
    assert_eq!(prompts_played(&sandbox, &id), ["enter_code", "wrong_code", "try_again", "enter_code", "goodbye"]);
}

/// An Urdu enter-mode call: Asterisk plays our Urdu prompts, and
/// 03000000058's keys, typed 7 s after answering while the 7 s Urdu
/// instructions still play, cut them short and count.
#[test]
fn an_urdu_enter_mode_call_accepts_keys_during_the_prompt() {
    let sandbox = sandbox::up();
    let (_dir, daemon) = start(&sandbox, "entry-urdu");
    let id = enter_call(&daemon, TYPES_THE_CODE, CODE, "&language=ur");
    check_final(&daemon, &id, "completed", "", "true", "1");
    let log = channel_log(&sandbox, &id);
    for prompt in ["enter_code", "verified", "goodbye"] {
        let playing = format!("Playing 'voice-otp/{prompt}.");
        assert!(
            log.iter().any(|l| l.contains(&playing) && l.ends_with("(language 'ur')")),
            "no Urdu {prompt} in Asterisk's log:\n{}",
            log.join("\n")
        );
    }
    let recording = recording_of(&sandbox, TYPES_THE_CODE, &id);
    let got = utterances(&recording);
    let spans: Vec<u32> = got.iter().map(|(a, b)| b - a).collect();
    assert_eq!(spans.len(), 3, "heard {spans:?} ms ({got:?})");
    // The instructions start after the 1 s answer pause (and however long
    // the FastAGI session took to start) and stop at the first key, 7 s
    // after the callee answered: before their end, after more than half.
    let instructions = prompt_ms("ur", "enter_code");
    assert!(
        spans[0] + 250 < instructions && spans[0] > instructions / 2,
        "the instructions ({instructions} ms) were not cut short by the keys: heard {spans:?} ms ({got:?})"
    );
    for (heard, want) in spans[1..].iter().zip([prompt_ms("ur", "verified"), prompt_ms("ur", "goodbye")]) {
        assert!(heard.abs_diff(want) <= 200, "heard {spans:?} ms, expected Urdu prompts {want} ms");
    }
    // The lengths tell the languages apart.
    assert!(prompt_ms("ur", "verified").abs_diff(prompt_ms("en", "verified")) > 400);
}
