//! `voice-otp sounds check` against the sandbox Asterisk's real sounds
//! folder (everything installed by `scripts/sandbox up`) and against a copy
//! of it with files taken away.

mod support;

use std::path::Path;

use support::daemon::{TempDir, cli};
use support::sandbox;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().map(Result::unwrap) {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn sounds_check_passes_on_the_sandbox_and_names_what_is_missing() {
    let sandbox = sandbox::up();
    let sounds = Path::new(&sandbox.status["sounds"]).to_owned();
    let dir = TempDir::new("sounds-check");
    let config = dir.0.join("voice-otp.toml");
    std::fs::write(&config, "[database]\npath = \"test.db\"\n").unwrap();

    let (ok, out, err) = cli(&config, &["sounds", "check", "--dir", sounds.to_str().unwrap()], "");
    assert!(ok, "{out}\n{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 38, "{out}");
    assert!(out.contains("ur/digits/4."), "Urdu digits come from sounds/ur/digits: {out}");
    for language in ["en", "ur"] {
        for prompt in ["enter_code", "wrong_code", "try_again", "verified"] {
            let listed = format!("{language}/voice-otp/{prompt}.");
            assert!(out.lines().any(|l| l.starts_with("ok ") && l.contains(&listed)), "keypad entry's {listed}: {out}");
        }
    }

    // A copy of what a call needs, then an Urdu digit and an English prompt gone.
    let copy = dir.0.join("sounds");
    for part in ["en/digits", "en/voice-otp", "ur"] {
        copy_tree(&sounds.join(part), &copy.join(part));
    }
    let (ok, out, err) = cli(&config, &["sounds", "check", "--dir", copy.to_str().unwrap()], "");
    assert!(ok, "the copy is complete: {out}\n{err}");
    std::fs::remove_file(copy.join("ur/digits/7.wav")).unwrap();
    for entry in std::fs::read_dir(copy.join("en/voice-otp")).unwrap().map(Result::unwrap) {
        if entry.file_name().to_string_lossy().starts_with("press1.") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let (ok, out, err) = cli(&config, &["sounds", "check", "--dir", copy.to_str().unwrap()], "");
    assert!(!ok, "missing sounds must fail the check: {out}");
    let missing: Vec<&str> = out.lines().filter(|l| l.starts_with("MISSING")).collect();
    assert_eq!(missing.len(), 2, "{out}");
    assert!(missing.iter().any(|l| l.contains("en") && l.contains("voice-otp/press1")), "{out}");
    assert!(missing.iter().any(|l| l.contains("ur") && l.contains("digits/7")), "{out}");
    assert!(err.contains("2 of 38 sounds missing"), "{err}");

    // A language added to the config without sounds: all 19 missing.
    std::fs::write(&config, "[database]\npath = \"test.db\"\n[call]\nlanguages = [\"en\", \"ur\", \"pa\"]\n").unwrap();
    let (ok, out, _) = cli(&config, &["sounds", "check", "--dir", sounds.to_str().unwrap()], "");
    assert!(!ok);
    assert_eq!(out.lines().filter(|l| l.starts_with("MISSING pa")).count(), 19, "{out}");

    let (ok, _, err) = cli(&config, &["sounds", "check", "--dir", "/nonexistent/sounds"], "");
    assert!(!ok && err.contains("not a folder"), "{err}");
}
