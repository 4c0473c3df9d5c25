//! The call flow as a person hears it, on the sandbox (real Asterisk, SIP,
//! RTP, FastAGI): replay on 1, Urdu digits, voicemail-safe mode. The judge is
//! the callee's recording; the database and Asterisk's log come second.

mod support;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use support::daemon::{Daemon, TempDir, start_with_user};
use support::http;
use support::sandbox::{self, Sandbox, channel_log, unique_number, wait_recording, wait_recording_since};
use support::wav::{Segment, read_wav, speech_segments};

const PASSWORD: &str = "correct-horse-9";

/// The callee that presses 1 after 8 s; its recordings share one name
/// prefix, so its calls run one at a time.
const PRESSES_ONE: &str = "03000000049";
static PRESSES_ONE_LOCK: Mutex<()> = Mutex::new(());

fn start(sandbox: &Sandbox, name: &str, extra: &str) -> (TempDir, Daemon) {
    start_with_user(sandbox.ami, name, extra, PASSWORD)
}

fn seed_call(daemon: &Daemon, number: &str, code: &str, options: &str) -> String {
    let target = format!("/outbound.cgi?number={number}&code={code}&username=acme1&password={PASSWORD}{options}");
    let resp = http::get(daemon.http, &target);
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.json_field("call_id").expect("call_id")
}

fn recorded_segments(path: &Path) -> Vec<Segment> {
    speech_segments(&read_wav(path).expect("readable recording"))
}

fn describe(segments: &[Segment]) -> String {
    segments.iter().map(|s| format!("{}-{}ms", s.start_ms, s.end_ms)).collect::<Vec<_>>().join(" ")
}

fn same_length(a: &Segment, b: &Segment) -> bool {
    a.len_ms().abs_diff(b.len_ms()) <= 40
}

/// A segment of the most common length: the repeated digit.
fn repeated_digit(segments: &[Segment]) -> Option<Segment> {
    segments.iter().copied().max_by_key(|s| segments.iter().filter(|o| same_length(s, o)).count())
}

/// Full readings of a code made of one digit repeated `n` times: the
/// digit's segments are the largest group of equally long ones (within
/// 40 ms; prompts are a handful of different phrases, the digit is heard
/// 4 times per reading), and each run of such segments holds
/// `run / n` whole readings (a reading cut short by 1 and started over
/// forms one run with its restart).
fn readings_of_repeated_digit(segments: &[Segment], n: usize) -> usize {
    let Some(digit) = repeated_digit(segments) else {
        return 0;
    };
    let mut readings = 0;
    let mut run = 0;
    for s in segments {
        if same_length(s, &digit) {
            run += 1;
        } else {
            readings += run / n;
            run = 0;
        }
    }
    readings + run / n
}

/// 03000000049 presses 1 eight seconds after answering. Without
/// voicemail-safe mode that lands in the readings (or at the offer), and
/// each 1 adds a reading: at least three in all. With it, the 1 is the key
/// that starts the code.
#[test]
fn a_callee_pressing_one_hears_the_code_again_and_passes_the_voicemail_check() {
    let _serial = PRESSES_ONE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let sandbox = sandbox::up();
    let (_dir, daemon) = start(&sandbox, "press-one", "");
    let code = "7777";

    let since = SystemTime::now() - Duration::from_secs(1);
    let id = seed_call(&daemon, PRESSES_ONE, code, "");
    let call = daemon.wait_final(&id, Duration::from_secs(120));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
    assert_eq!(call["keys"], "1", "{call:?}");
    let recording = wait_recording_since(&sandbox, PRESSES_ONE, since, Duration::from_secs(20));
    let segments = recorded_segments(&recording);
    let heard = readings_of_repeated_digit(&segments, code.len());
    assert!(heard >= 3, "heard the code {heard} times in {recording:?}: {}", describe(&segments));
    assert_eq!(call["readings"], heard.to_string(), "the recording and the database agree: {call:?}");

    let since = SystemTime::now() - Duration::from_secs(1);
    let id = seed_call(&daemon, PRESSES_ONE, code, "&require_keypress=1");
    let call = daemon.wait_final(&id, Duration::from_secs(120));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
    assert_eq!((call["require_keypress"].as_str(), call["keys"].as_str()), ("true", "1"), "{call:?}");
    let recording = wait_recording_since(&sandbox, PRESSES_ONE, since, Duration::from_secs(20));
    let segments = recorded_segments(&recording);
    let heard = readings_of_repeated_digit(&segments, code.len());
    assert_eq!(heard, 2, "after the key, the code twice: {recording:?}: {}", describe(&segments));
    // The digits come only after the 8 s it took to press the key.
    let digit = repeated_digit(&segments).unwrap();
    let first_digit = segments.iter().find(|s| same_length(s, &digit)).unwrap();
    assert!(first_digit.start_ms >= 7000, "digits before the key: {}", describe(&segments));
}

/// The speech length of each of our Urdu digit files.
fn urdu_digit_lengths() -> Vec<u32> {
    (0..=9)
        .map(|d| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("sounds/ur/digits/{d}.wav"));
            let segments = speech_segments(&read_wav(&path).expect("Urdu digit file"));
            assert_eq!(segments.len(), 1, "{path:?} is one word");
            segments[0].len_ms()
        })
        .collect()
}

/// Places in `segments` where `n` consecutive segments have the lengths of
/// the Urdu files of `code`'s digits (each within 50 ms), not overlapping.
fn urdu_readings(segments: &[Segment], code: &str) -> usize {
    let lengths = urdu_digit_lengths();
    let want: Vec<u32> = code.bytes().map(|b| lengths[usize::from(b - b'0')]).collect();
    let mut found = 0;
    let mut i = 0;
    while i + want.len() <= segments.len() {
        let fits = segments[i..i + want.len()].iter().zip(&want).all(|(s, w)| s.len_ms().abs_diff(*w) <= 50);
        if fits {
            found += 1;
            i += want.len();
        } else {
            i += 1;
        }
    }
    found
}

/// `language=ur`: the callee hears our Urdu digit recordings - each spoken
/// digit as long as its file in sounds/ur/digits - twice. The same code in
/// English matches them nowhere, which shows the lengths tell the two apart.
#[test]
fn an_urdu_call_plays_the_urdu_digit_files() {
    let sandbox = sandbox::up();
    let (_dir, daemon) = start(&sandbox, "urdu", "[call]\nmax_extra_readings = 0\n");
    let code = "9051";
    let urdu = unique_number();
    let english = unique_number();
    let urdu_id = seed_call(&daemon, &urdu, code, "&language=ur");
    let english_id = seed_call(&daemon, &english, code, "&language=en");
    for id in [&urdu_id, &english_id] {
        let call = daemon.wait_final(id, Duration::from_secs(90));
        assert_eq!((call["status"].as_str(), call["readings"].as_str()), ("completed", "2"), "{call:?}");
    }

    let recording = wait_recording(&sandbox, &urdu, Duration::from_secs(20));
    let segments = recorded_segments(&recording);
    assert_eq!(urdu_readings(&segments, code), 2, "Urdu digits in {recording:?}: {}", describe(&segments));
    let recording = wait_recording(&sandbox, &english, Duration::from_secs(20));
    let segments = recorded_segments(&recording);
    assert_eq!(urdu_readings(&segments, code), 0, "English call {recording:?}: {}", describe(&segments));

    // Second opinion, Asterisk's own word: the files it opened.
    let log = channel_log(&sandbox, &urdu_id);
    for digit in code.chars() {
        let playing = format!("Playing 'digits/{digit}.");
        assert!(
            log.iter().any(|l| l.contains(&playing) && l.ends_with("(language 'ur')")),
            "no Urdu digits/{digit} in Asterisk's log:\n{}",
            log.join("\n")
        );
    }
}

/// The speech span (first word's start to last word's end) of one of our
/// English prompt files.
fn prompt_span_ms(name: &str) -> u32 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("sounds/en/voice-otp/{name}.wav"));
    let segments = speech_segments(&read_wav(&path).expect("prompt file"));
    segments.last().unwrap().end_ms - segments[0].start_ms
}

/// Voicemail-safe mode and a callee that never presses: it hears "press any
/// key to hear your verification code" the configured number of times and
/// goodbye - nothing else, so no digit - and the call fails `no_keypress`.
#[test]
fn voicemail_safe_mode_reads_no_digit_to_a_callee_who_never_presses() {
    let sandbox = sandbox::up();
    let extra = "[call]\nkeypress_prompts = 2\nkeypress_wait_ms = 2500\n";
    let (_dir, daemon) = start(&sandbox, "no-keypress", extra);
    let number = unique_number();
    let id = seed_call(&daemon, &number, "4821", "&require_keypress=true");
    let call = daemon.wait_final(&id, Duration::from_secs(90));
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "no_keypress"), "{call:?}");
    assert_eq!((call["readings"].as_str(), call["keys"].as_str()), ("0", ""), "{call:?}");

    let recording = wait_recording(&sandbox, &number, Duration::from_secs(20));
    let segments = recorded_segments(&recording);
    // Group the speech into utterances: within a prompt words are closer
    // than 1 s; between prompts lie the 2.5 s waits.
    let mut utterances: Vec<(u32, u32)> = Vec::new();
    for s in &segments {
        match utterances.last_mut() {
            Some(last) if s.start_ms - last.1 < 1000 => last.1 = s.end_ms,
            _ => utterances.push((s.start_ms, s.end_ms)),
        }
    }
    let spans: Vec<u32> = utterances.iter().map(|(a, b)| b - a).collect();
    let expected = [prompt_span_ms("press_any_key"), prompt_span_ms("press_any_key"), prompt_span_ms("goodbye")];
    assert_eq!(spans.len(), 3, "heard {spans:?} ms, expected {expected:?}: {}", describe(&segments));
    for (heard, want) in spans.iter().zip(expected) {
        assert!(heard.abs_diff(want) <= 150, "heard {spans:?} ms, expected {expected:?}: {}", describe(&segments));
    }
    let log = channel_log(&sandbox, &id);
    assert!(log.iter().any(|l| l.contains("voice-otp/press_any_key")), "{}", log.join("\n"));
    assert!(!log.iter().any(|l| l.contains("Playing 'digits/")), "{}", log.join("\n"));
}
