//! Verifications on the sandbox (issue 11's real-sandbox tests): the daemon
//! makes a code and calls a recording phone; the test reads the code off
//! that call's recording - which digit each spoken word is, by matching it
//! against the Urdu digit files the call plays - and checks it through the
//! API. And `Idempotency-Key` across a real call: a retried POST gets the
//! same verification and places no second call (one recording).

mod support;

use std::path::Path;
use std::time::Duration;

use support::daemon::Daemon;
use support::harness::{NO_NUMBER_QUOTAS, PASSWORD, Setup};
use support::http::{self, Response};
use support::sandbox::{self, recordings_of, unique_number, wait_recording};
use support::wav::{heard_digits, read_wav, urdu_digit_files};

/// Busy: its calls fail at once, leaving the verification pending.
const BUSY: &str = "03000000017";

fn api(daemon: &Daemon, method: &str, target: &str, headers: &[(&str, &str)], json: Option<&str>) -> Response {
    http::with_basic_headers(daemon.http, method, target, "acme1", PASSWORD, headers, json)
}

fn check(daemon: &Daemon, id: &str, code: &str) -> Response {
    api(daemon, "POST", &format!("/v1/verifications/{id}/check"), &[], Some(&format!(r#"{{"code":"{code}"}}"#)))
}

/// The code as the phone heard it: each spoken word matched against the
/// ten Urdu digit files; the digits are the words that match one clearly
/// (the prompts match none), in order. Both readings must say the same.
fn heard_code(recording: &Path, length: usize) -> String {
    let wav = read_wav(recording).expect("readable recording");
    let (heard, scores) = heard_digits(&wav, &urdu_digit_files());
    assert_eq!(heard.len(), 2 * length, "two readings of {length} digits in {recording:?}: {scores:#?}");
    let (first, second) = heard.split_at(length);
    assert_eq!(first, second, "both readings say the same code: {scores:#?}");
    first.to_owned()
}

#[test]
fn a_verification_is_checked_with_the_code_its_call_read() {
    let sandbox = sandbox::up();
    let (_home, daemon) = Setup::new("sb-verify")
        .config(&format!("{NO_NUMBER_QUOTAS}\n[call]\nmax_extra_readings = 0\n"))
        .sandbox(&sandbox);
    let number = unique_number();
    let key = [("Idempotency-Key", "sb-verify-1")];
    let body = format!(r#"{{"number":"{number}","language":"ur"}}"#);
    let created = api(&daemon, "POST", "/v1/verifications", &key, Some(&body));
    assert_eq!(created.status, 201, "{}", created.body);
    let v = created.json();
    let (id, call_id) = (v["id"].as_str().unwrap().to_owned(), v["call_id"].as_str().unwrap().to_owned());
    // The client retries (a timeout, say): the same answer, no second call.
    let retried = api(&daemon, "POST", "/v1/verifications", &key, Some(&body));
    assert_eq!((retried.status, retried.body.as_str()), (201, created.body.as_str()));
    let other =
        api(&daemon, "POST", "/v1/verifications", &key, Some(&format!(r#"{{"number":"{}"}}"#, unique_number())));
    assert_eq!(other.status, 422, "{}", other.body);

    let call = daemon.wait_final(&call_id, Duration::from_secs(90));
    assert_eq!((call["status"].as_str(), call["readings"].as_str()), ("completed", "2"), "{call:?}\n{}", daemon.logs());
    let recording = wait_recording(&sandbox, &number, &call_id, Duration::from_secs(20));
    let code = heard_code(&recording, 6);
    assert_eq!(recordings_of(&sandbox, &number).len(), 1, "one call, one recording");

    let wrong: String = code.chars().map(|c| if c == '9' { '0' } else { char::from(c as u8 + 1) }).collect();
    let miss = check(&daemon, &id, &wrong);
    assert_eq!((miss.json()["status"].as_str(), miss.json()["attempts_left"].as_u64()), (Some("pending"), Some(4)));
    let hit = check(&daemon, &id, &code);
    assert_eq!((hit.status, hit.json()["status"].as_str()), (200, Some("approved")), "{}", hit.body);
    let again = check(&daemon, &id, &code);
    assert_eq!(again.status, 409, "approved once, never again: {}", again.body);
    assert!(!daemon.logs().contains(&code), "the code is in the daemon's log");

    // A verification whose call finds the line busy stays pending; five
    // wrong codes end it.
    let busy = api(&daemon, "POST", "/v1/verifications", &[], Some(&format!(r#"{{"number":"{BUSY}"}}"#))).json();
    let busy_id = busy["id"].as_str().unwrap().to_owned();
    let call = daemon.wait_final(busy["call_id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(call["reason"], "busy", "{call:?}");
    for left in (1..5).rev() {
        assert_eq!(check(&daemon, &busy_id, "000000").json()["attempts_left"].as_u64(), Some(left));
    }
    assert_eq!(check(&daemon, &busy_id, "000000").json()["status"], "max_attempts_reached");

    // Past its time a verification is expired, and its webhook-worthy end
    // is written by housekeeping (here: forced by moving its expiry back).
    let late = api(&daemon, "POST", "/v1/verifications", &[], Some(&format!(r#"{{"number":"{BUSY}"}}"#))).json();
    let late_id = late["id"].as_str().unwrap().to_owned();
    assert_ne!(late_id, busy_id, "a final verification is not re-used");
    let conn = rusqlite::Connection::open(daemon.db_path()).unwrap();
    conn.execute("UPDATE verifications SET expires_at = 0 WHERE id = ?1", [&late_id]).unwrap();
    assert_eq!(check(&daemon, &late_id, "000000").json()["status"], "expired");
}
