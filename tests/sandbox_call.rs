//! The call flow as a person hears it, on the sandbox (real Asterisk, SIP,
//! RTP, FastAGI): replay on 1, Urdu digits, voicemail-safe mode. The judge is
//! the callee's recording; the database and Asterisk's log come second.

mod support;

use std::path::Path;
use std::time::Duration;

use support::harness::Setup;
use support::sandbox::{self, channel_log, unique_number, wait_recording};
use support::wav::{Segment, heard_digits, read_wav, speech_segments, urdu_digit_files};

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
    let sandbox = sandbox::up();
    let (_home, daemon) = Setup::new("press-one").sandbox(&sandbox);
    let code = "7777";

    let id = daemon.seed_call(PRESSES_ONE, code);
    let call = daemon.wait_final(&id, Duration::from_secs(120));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
    assert_eq!(call["keys"], "1", "{call:?}");
    let recording = wait_recording(&sandbox, PRESSES_ONE, &id, RECORDING_WAIT);
    let segments = recorded_segments(&recording);
    let heard = readings_of_repeated_digit(&segments, code.len());
    assert!(heard >= 3, "heard the code {heard} times in {recording:?}: {}", describe(&segments));
    assert_eq!(call["readings"], heard.to_string(), "the recording and the database agree: {call:?}");

    let id = daemon.seed_call_with(PRESSES_ONE, code, "&require_keypress=1");
    let call = daemon.wait_final(&id, Duration::from_secs(120));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
    assert_eq!((call["require_keypress"].as_str(), call["keys"].as_str()), ("true", "1"), "{call:?}");
    let recording = wait_recording(&sandbox, PRESSES_ONE, &id, RECORDING_WAIT);
    let segments = recorded_segments(&recording);
    let heard = readings_of_repeated_digit(&segments, code.len());
    assert_eq!(heard, 2, "after the key, the code twice: {recording:?}: {}", describe(&segments));
    // The digits come only after the 8 s it took to press the key.
    let digit = repeated_digit(&segments).unwrap();
    let first_digit = segments.iter().find(|s| same_length(s, &digit)).unwrap();
    assert!(first_digit.start_ms >= 7000, "digits before the key: {}", describe(&segments));
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
