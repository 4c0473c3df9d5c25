//! The call flow as a person hears it, on the sandbox (real Asterisk, SIP,
//! RTP, FastAGI): replay on 1, Urdu digits, voicemail-safe mode. The judge is
//! the callee's recording; the database and Asterisk's log come second.

mod support;

use std::path::Path;
use std::time::Duration;

use support::harness::Setup;
use support::sandbox::{self, channel_log, unique_number, wait_recording};
use support::wav::{Segment, heard_digits, heard_words, read_wav, speech_segments, urdu_digit_files};

/// The callee that presses 1 after 8 s. Other tests (and other checkouts'
/// runs) may call it at the same time: each call's recording is found by
/// its call id.
const PRESSES_ONE: &str = "03000000049";

/// How long the phone's recording may take to appear once the call is final.
const RECORDING_WAIT: Duration = Duration::from_secs(20);

fn recorded_segments(path: &Path) -> Vec<Segment> {
    speech_segments(&read_wav(path).expect("readable recording"))
}

fn describe(segments: &[Segment]) -> String {
    segments.iter().map(|s| format!("{}-{}ms", s.start_ms, s.end_ms)).collect::<Vec<_>>().join(" ")
}

/// Each word the callee heard on `recording`, with the Urdu digit it is.
fn heard(recording: &Path) -> Vec<(Segment, Option<char>, String)> {
    heard_words(&read_wav(recording).expect("readable recording"), &urdu_digit_files())
}

fn describe_words(words: &[(Segment, Option<char>, String)]) -> String {
    words.iter().map(|(_, _, score)| score.as_str()).collect::<Vec<_>>().join("\n")
}

/// Full readings of `code` in `words`: each run of digits without a prompt
/// between them holds `run / len` whole readings (a reading cut short by 1
/// and started over forms one run with its restart). Every digit heard must
/// be the code's: anything else fails the test.
fn readings(words: &[(Segment, Option<char>, String)], code: &str) -> usize {
    let digit = code.chars().next().unwrap();
    assert!(code.chars().all(|c| c == digit), "the count assumes one digit repeated");
    let mut readings = 0;
    let mut run = 0;
    for (_, heard, _) in words {
        match heard {
            Some(d) => {
                assert_eq!(*d, digit, "a digit not in the code:\n{}", describe_words(words));
                run += 1;
            }
            None => {
                readings += run / code.len();
                run = 0;
            }
        }
    }
    readings + run / code.len()
}

/// 03000000049 presses 1 eight seconds after answering. Without
/// voicemail-safe mode that lands in the readings (or at the offer), and
/// each 1 adds a reading: at least three in all. With it, the 1 is the key
/// that starts the code. In Urdu, whose digit files the recording is
/// matched against word by word (by waveform, not by length).
#[test]
fn a_callee_pressing_one_hears_the_code_again_and_passes_the_voicemail_check() {
    let sandbox = sandbox::up();
    let (_home, daemon) = Setup::new("press-one").sandbox(&sandbox);
    let code = "7777";

    let id = daemon.seed_call_with(PRESSES_ONE, code, "&language=ur");
    let call = daemon.wait_final(&id, Duration::from_secs(120));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
    assert_eq!(call["keys"], "1", "{call:?}");
    let recording = wait_recording(&sandbox, PRESSES_ONE, &id, RECORDING_WAIT);
    let words = heard(&recording.path);
    let n = readings(&words, code);
    assert!(n >= 3, "heard the code {n} times in {recording:?}:\n{}", describe_words(&words));
    assert_eq!(call["readings"], n.to_string(), "the recording and the database agree: {call:?}");

    let id = daemon.seed_call_with(PRESSES_ONE, code, "&language=ur&require_keypress=1");
    let call = daemon.wait_final(&id, Duration::from_secs(120));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
    assert_eq!((call["require_keypress"].as_str(), call["keys"].as_str()), ("true", "1"), "{call:?}");
    let recording = wait_recording(&sandbox, PRESSES_ONE, &id, RECORDING_WAIT);
    let words = heard(&recording.path);
    assert_eq!(readings(&words, code), 2, "after the key, the code twice: {recording:?}:\n{}", describe_words(&words));
    // The digits come only after the 8 s it took to press the key.
    let (first_digit, _, _) = words.iter().find(|(_, d, _)| d.is_some()).unwrap();
    assert!(first_digit.start_ms >= 7000, "digits before the key:\n{}", describe_words(&words));
}

/// `language=ur`: the callee hears our Urdu digit recordings twice - each
/// spoken word matched to its file in sounds/ur/digits by the waveform
/// (cross-correlation), not by its length, which a busy machine's late RTP
/// packets could shorten. The same code in English matches them nowhere,
/// which shows the matching tells the two apart.
#[test]
fn an_urdu_call_plays_the_urdu_digit_files() {
    let sandbox = sandbox::up();
    let (_home, daemon) = Setup::new("urdu").config("[call]\nmax_extra_readings = 0").sandbox(&sandbox);
    let code = "9051";
    let urdu = unique_number();
    let english = unique_number();
    let urdu_id = daemon.seed_call_with(&urdu, code, "&language=ur");
    let english_id = daemon.seed_call_with(&english, code, "&language=en");
    for id in [&urdu_id, &english_id] {
        let call = daemon.wait_final(id, Duration::from_secs(90));
        assert_eq!((call["status"].as_str(), call["readings"].as_str()), ("completed", "2"), "{call:?}");
    }

    let digits = urdu_digit_files();
    let recording = wait_recording(&sandbox, &urdu, &urdu_id, RECORDING_WAIT);
    let (heard, scores) = heard_digits(&read_wav(&recording.path).expect("readable recording"), &digits);
    assert_eq!(heard, code.repeat(2), "Urdu digits in {recording:?}: {scores:#?}");
    let recording = wait_recording(&sandbox, &english, &english_id, RECORDING_WAIT);
    let (heard, scores) = heard_digits(&read_wav(&recording.path).expect("readable recording"), &digits);
    assert_eq!(heard, "", "no Urdu digit in the English call {recording:?}: {scores:#?}");

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
    let extra = "[call]\nkeypress_prompts = 2\nkeypress_wait_ms = 2500";
    let (_home, daemon) = Setup::new("no-keypress").config(extra).sandbox(&sandbox);
    let number = unique_number();
    let id = daemon.seed_call_with(&number, "4821", "&require_keypress=true");
    let call = daemon.wait_final(&id, Duration::from_secs(90));
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "no_keypress"), "{call:?}");
    assert_eq!((call["readings"].as_str(), call["keys"].as_str()), ("0", ""), "{call:?}");

    let recording = wait_recording(&sandbox, &number, &id, RECORDING_WAIT);
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
