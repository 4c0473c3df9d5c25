//! Self-tests of [`super::sandbox`]'s evidence finders, on a made-up
//! recordings folder and log (no Asterisk needed): a test must get its own
//! call's recording and nobody else's, and read only what was logged after
//! its mark, across a log rotation too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::sandbox::*;

/// A fake sandbox in a fresh folder: `recordings/` and `messages.log`.
fn fake_sandbox(name: &str) -> (PathBuf, Sandbox) {
    let root = std::env::temp_dir().join(format!("voice-otp-sandbox-selftest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("recordings")).unwrap();
    let sandbox = Sandbox {
        ami: "127.0.0.1:1".parse().unwrap(),
        recordings: root.join("recordings"),
        asterisk_log: root.join("messages.log"),
        status: Default::default(),
    };
    (root, sandbox)
}

fn write_wav(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0u8; bytes]).unwrap();
}

#[test]
fn a_call_gets_its_own_recording_and_it_is_gone_once_judged() {
    let (root, sandbox) = fake_sandbox("own");
    let number = "03000000049";
    // Another call to the same number, newer and bigger: never ours.
    write_wav(&sandbox.recordings.join(format!("{number}-{}.wav", "b".repeat(32))), 9000);
    let ours = sandbox.recordings.join(format!("{number}-{}.wav", "a".repeat(32)));
    write_wav(&ours, 1000);
    let recording = wait_recording(&sandbox, number, &"a".repeat(32), Duration::from_secs(1));
    assert_eq!(recording.path, ours);
    drop(recording);
    assert!(!ours.exists(), "a judged recording is deleted");
    assert_eq!(recordings_of(&sandbox, number).len(), 1, "the other call's stays");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_failing_test_keeps_the_recording_and_an_empty_one_fails_at_once() {
    let (root, sandbox) = fake_sandbox("keep");
    let path = sandbox.recordings.join(format!("0341-{}.wav", "c".repeat(32)));
    write_wav(&path, 1000);
    let judged = std::panic::catch_unwind(|| {
        let _recording = wait_recording(&sandbox, "0341", &"c".repeat(32), Duration::from_secs(1));
        panic!("the test fails while judging it");
    });
    assert!(judged.is_err());
    assert!(path.exists(), "kept for a look at the failure");

    let empty = sandbox.recordings.join(format!("0342-{}.wav", "d".repeat(32)));
    write_wav(&empty, 44);
    let started = std::time::Instant::now();
    let waited =
        std::panic::catch_unwind(|| wait_recording(&sandbox, "0342", &"d".repeat(32), Duration::from_secs(30)));
    assert!(waited.is_err() && started.elapsed() < Duration::from_secs(5), "an empty WAV is an error, not a wait");
    let missing =
        std::panic::catch_unwind(|| wait_recording(&sandbox, "0343", &"e".repeat(32), Duration::from_millis(300)));
    assert!(missing.is_err());
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn the_log_is_read_from_the_mark_across_a_rotation() {
    let (root, sandbox) = fake_sandbox("log");
    let entry = |n: &str| {
        format!("VERBOSE[1] pbx.c: Executing [{n}@callee:1] Set(\"PJSIP/phones-1\", \"CALLEE_NUMBER={n}\")\n")
    };
    std::fs::write(&sandbox.asterisk_log, entry("03411111111")).unwrap();
    let mark = log_mark(&sandbox);
    std::fs::write(&sandbox.asterisk_log, format!("{}{}", entry("03411111111"), entry("03422222222"))).unwrap();
    assert_eq!(dials(&sandbox, "03411111111", mark), 0, "before the mark");
    assert_eq!(dials(&sandbox, "03422222222", mark), 1);
    // `scripts/sandbox up` moved the log aside; more was logged after.
    std::fs::rename(&sandbox.asterisk_log, root.join("messages.log.1")).unwrap();
    // The new file is as long as the mark's offset: only its inode tells.
    std::fs::write(&sandbox.asterisk_log, entry("03422222222")).unwrap();
    assert_eq!(dials(&sandbox, "03422222222", mark), 2);
    assert_eq!(dials(&sandbox, "03411111111", mark), 0);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn unique_numbers_are_valid_mobiles_and_differ() {
    let numbers: std::collections::HashSet<String> = (0..1000).map(|_| unique_number()).collect();
    assert!(numbers.len() >= 999, "{} distinct of 1000", numbers.len());
    for n in &numbers {
        assert!(n.len() == 11 && n.starts_with("034") && n.bytes().all(|b| b.is_ascii_digit()), "{n}");
    }
}
