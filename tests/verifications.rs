//! Verifications (`/v1/verifications`, issue 11 item 2) and
//! `Idempotency-Key` (item 3) against the real binary over real HTTP, with
//! a scripted AMI and a scripted FastAGI callee who writes down the digits
//! the daemon reads - the only way anyone outside learns the code.

mod support;

use std::time::Duration;

use support::daemon::Daemon;
use support::fake_agi;
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome, StatusReply};
use support::harness::{FAST_FLOW, Home, NO_NUMBER_QUOTAS, PASSWORD, Setup};
use support::http::{self, Response};
use support::webhook_receiver::Receiver;

async fn setup(name: &str, extra: &str) -> (Home, FakeAmi, Daemon) {
    let config = format!("{FAST_FLOW}\n{NO_NUMBER_QUOTAS}\n[webhooks]\ndeny_private = false\n\n{extra}");
    Setup::new(name).user("other1", PASSWORD).config(&config).fake(FakeScript::for_daemon()).await
}

fn api(daemon: &Daemon, method: &str, target: &str, json: Option<&str>) -> Response {
    api_as(daemon, "acme1", method, target, &[], json)
}

fn api_as(
    daemon: &Daemon,
    user: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    json: Option<&str>,
) -> Response {
    support::blocking(|| http::with_basic_headers(daemon.http, method, target, user, PASSWORD, headers, json))
}

/// Answers the daemon's call `call_id` like a callee who listens; returns
/// the code as read in the first reading.
async fn hear_code(fake: &FakeAmi, daemon: &Daemon, call_id: &str, length: usize) -> String {
    let (digits, commands) = fake_agi::hear_digits(fake, daemon.agi, call_id).await;
    assert_eq!(digits.len(), 2 * length, "two readings of the code: {commands:?}");
    let (first, second) = digits.split_at(length);
    assert_eq!(first, second, "both readings say the same code");
    first.to_owned()
}

fn check(daemon: &Daemon, id: &str, code: &str) -> Response {
    api(daemon, "POST", &format!("/v1/verifications/{id}/check"), Some(&format!(r#"{{"code":"{code}"}}"#)))
}

fn wrong(code: &str) -> String {
    code.chars().map(|c| if c == '9' { '0' } else { char::from(c as u8 + 1) }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_reads_its_code_and_approves_it_once() {
    let (home, fake, daemon) = setup("verify-approve", "").await;
    let receiver = Receiver::start(&[]);
    let body = format!(r#"{{"number":"03001234567","code_length":8,"callback_url":"{}"}}"#, receiver.url("v"));
    let resp = api(&daemon, "POST", "/v1/verifications", Some(&body));
    assert_eq!(resp.status, 201, "{}", resp.body);
    let v = resp.json();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(resp.header("location"), Some(format!("/v1/verifications/{id}").as_str()));
    assert_eq!(
        (v["status"].as_str(), v["code_length"].as_u64(), v["sends"].as_u64()),
        (Some("pending"), Some(8), Some(1))
    );
    assert_eq!(v["attempts_left"], 5);
    assert!(v.get("code").is_none(), "never the code: {v}");
    let call_id = v["call_id"].as_str().unwrap().to_owned();

    let code = hear_code(&fake, &daemon, &call_id, 8).await;
    // The call is an ordinary call that names its verification.
    let call = daemon.wait_final(&call_id, Duration::from_secs(20));
    assert_eq!(call["status"], "completed", "{call:?}");

    // A wrong code counts; letters are refused without counting.
    let resp = check(&daemon, &id, &wrong(&code));
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!((resp.json()["status"].as_str(), resp.json()["attempts_left"].as_u64()), (Some("pending"), Some(4)));
    let resp = check(&daemon, &id, "12ab");
    assert_eq!((resp.status, resp.json()["field"].as_str()), (400, Some("code")), "{}", resp.body);
    let resp = check(&daemon, &id, &code);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!((resp.json()["status"].as_str(), resp.json()["failed_checks"].as_u64()), (Some("approved"), Some(1)));
    // A code serves once.
    let again = check(&daemon, &id, &code);
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(api(&daemon, "GET", &format!("/v1/verifications/{id}"), None).json()["status"], "approved");
    // Another user sees nothing of it.
    let other = api_as(&daemon, "other1", "GET", &format!("/v1/verifications/{id}"), &[], None);
    assert_eq!(other.status, 404);
    assert_eq!(
        api_as(
            &daemon,
            "other1",
            "POST",
            &format!("/v1/verifications/{id}/check"),
            &[],
            Some(&format!(r#"{{"code":"{code}"}}"#))
        )
        .status,
        404
    );

    // The webhook, signed, named as a verification event.
    let hook = support::blocking(|| receiver.wait_for(Duration::from_secs(20), |r| r.json()["id"] == id.as_str()));
    assert_eq!(hook.header("x-voice-otp-event"), Some("verification.approved"));
    assert_eq!(hook.json()["status"], "approved");
    assert!(hook.signed_with(&home.user("acme1").webhook_secret));
    let shown = home.cli(&["verification", "show", &id]);
    assert!(shown.contains("status=approved") && shown.contains("failed_checks=1"), "{shown}");
    assert!(!shown.contains(&code), "{shown}");
    let logs = daemon.logs();
    assert!(!logs.contains(&code), "the code is in the log:\n{logs}");
    // The database holds no trace of the code, only a salt (erased now).
    let conn = rusqlite::Connection::open(daemon.db_path()).unwrap();
    let salt: Option<Vec<u8>> =
        conn.query_row("SELECT salt FROM verifications WHERE id = ?1", [&id], |r| r.get(0)).unwrap();
    assert_eq!(salt, None, "a final verification keeps no salt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_calls_again_with_the_same_code_up_to_max_sends() {
    let (_home, fake, daemon) = setup("verify-resend", "[verify]\nmax_sends = 2\n").await;
    let own_url = "http://127.0.0.1:9/verification";
    let body = format!(r#"{{"number":"03001234567","callback_url":"{own_url}"}}"#);
    let first = api(&daemon, "POST", "/v1/verifications", Some(&body));
    assert_eq!(first.status, 201, "{}", first.body);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let code = hear_code(&fake, &daemon, first.json()["call_id"].as_str().unwrap(), 6).await;
    // Same user, same number (another form of it), still pending: the same
    // verification, a new call, the same code - reporting to the
    // verification's URL, not to one the re-send names.
    let resend = r#"{"number":"+923001234567","code_length":9,"callback_url":"http://127.0.0.1:9/other"}"#;
    let second = api(&daemon, "POST", "/v1/verifications", Some(resend));
    assert_eq!(second.status, 200, "{}", second.body);
    let v = second.json();
    assert_eq!(
        (v["id"].as_str(), v["sends"].as_u64(), v["code_length"].as_u64()),
        (Some(id.as_str()), Some(2), Some(6))
    );
    let call_id = v["call_id"].as_str().unwrap().to_owned();
    assert_ne!(call_id, first.json()["call_id"].as_str().unwrap());
    assert_eq!(v["callback_url"], own_url, "{v}");
    let resent_call = api(&daemon, "GET", &format!("/v1/calls/{call_id}"), None).json();
    assert_eq!(resent_call["callback_url"], own_url, "{resent_call}");
    assert_eq!(hear_code(&fake, &daemon, &call_id, 6).await, code, "a re-send reads the same code");
    let third = api(&daemon, "POST", "/v1/verifications", Some(r#"{"number":"03001234567"}"#));
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(third.json()["detail"].as_str().unwrap().contains("verify.max_sends"), "{}", third.body);
    assert!(third.header("retry-after").is_some());
    // Another user's request for the number is a verification of its own.
    let other = api_as(&daemon, "other1", "POST", "/v1/verifications", &[], Some(r#"{"number":"03001234567"}"#));
    assert_eq!(other.status, 201, "{}", other.body);
    assert_ne!(other.json()["id"].as_str(), Some(id.as_str()));
    assert_eq!(check(&daemon, &id, &code).json()["status"], "approved");
    // Approved: the next request for the number starts afresh.
    let fresh = api(&daemon, "POST", "/v1/verifications", Some(r#"{"number":"03001234567"}"#));
    assert_eq!(fresh.status, 201, "{}", fresh.body);
    assert_ne!(fresh.json()["id"].as_str(), Some(id.as_str()));
    // Every stored call was dialled once.
    assert!(fake.wait_for_count("Originate", 4, Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_use_up_the_checks_and_expiry_and_cancel_end_it() {
    let (_home, fake, daemon) = setup("verify-ends", "").await;
    let resp = api(&daemon, "POST", "/v1/verifications", Some(r#"{"number":"03001234567"}"#));
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    let code = hear_code(&fake, &daemon, resp.json()["call_id"].as_str().unwrap(), 6).await;
    for left in (1..5).rev() {
        let r = check(&daemon, &id, &wrong(&code));
        assert_eq!(r.json()["attempts_left"].as_u64(), Some(left), "{}", r.body);
    }
    let last = check(&daemon, &id, "000000");
    assert_eq!(last.json()["status"], "max_attempts_reached", "{}", last.body);
    let after = check(&daemon, &id, &code);
    assert_eq!(
        (after.status, after.json()["status"].as_str()),
        (200, Some("max_attempts_reached")),
        "the right code no longer helps"
    );
    assert_eq!(api(&daemon, "POST", &format!("/v1/verifications/{id}/cancel"), None).status, 409);

    // Expired: past its time the right code gets `expired`.
    let resp = api(&daemon, "POST", "/v1/verifications", Some(r#"{"number":"03001234568"}"#));
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    let code = hear_code(&fake, &daemon, resp.json()["call_id"].as_str().unwrap(), 6).await;
    let conn = rusqlite::Connection::open(daemon.db_path()).unwrap();
    conn.execute("UPDATE verifications SET expires_at = 0 WHERE id = ?1", [&id]).unwrap();
    let r = check(&daemon, &id, &code);
    assert_eq!(
        (r.status, r.json()["status"].as_str(), r.json()["attempts_left"].as_u64()),
        (200, Some("expired"), Some(0))
    );

    // Canceled, its unanswered call with it.
    let resp = api(&daemon, "POST", "/v1/verifications", Some(r#"{"number":"03001234569"}"#));
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    let canceled = api(&daemon, "POST", &format!("/v1/verifications/{id}/cancel"), None);
    assert_eq!((canceled.status, canceled.json()["status"].as_str()), (200, Some("canceled")), "{}", canceled.body);
    assert_eq!(check(&daemon, &id, "123456").json()["status"], "canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_verification_requests_name_their_field() {
    let (_home, fake, daemon) = setup("verify-fields", "").await;
    for (body, field) in [
        (r#"{}"#, "number"),
        (r#"{"number":"12"}"#, "number"),
        (r#"{"number":"03001234567","code_length":3}"#, "code_length"),
        (r#"{"number":"03001234567","code_length":11}"#, "code_length"),
        (r#"{"number":"03001234567","code_length":"6"}"#, "code_length"),
        (r#"{"number":"03001234567","language":"fr"}"#, "language"),
        (r#"{"number":"03001234567","callback_url":"ftp://x"}"#, "callback_url"),
        (r#"{"number":"03001234567","code":"123456"}"#, "code"),
    ] {
        let resp = api(&daemon, "POST", "/v1/verifications", Some(body));
        assert_eq!(resp.status, 400, "{body}: {}", resp.body);
        assert_eq!(resp.json()["field"].as_str(), Some(field), "{body}: {}", resp.body);
    }
    let unknown =
        api(&daemon, "POST", "/v1/verifications/0123456789abcdef0123456789abcdef/check", Some(r#"{"code":"1"}"#));
    assert_eq!(unknown.status, 404);
    let wrong_method = api(&daemon, "GET", "/v1/verifications", None);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(api(&daemon, "GET", "/v1/verifications/x/y", None).status, 404);
    assert_eq!(fake.count("Originate"), 0, "no call for a refused request");
}

/// Canceling a verification stops every call of it still unanswered - the
/// re-send's and the one before it - in one go, and hangs them up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_every_unanswered_call_of_the_verification() {
    // Calls ring on and on: the fake Asterisk never settles them.
    let script = FakeScript { status_reply: StatusReply::Exists, ..FakeScript::outcome(OriginateOutcome::Silent) };
    let config = format!("{FAST_FLOW}\n{NO_NUMBER_QUOTAS}\n[verify]\nmax_sends = 2\n");
    let (_home, fake, daemon) = Setup::new("verify-cancel-all").config(&config).fake(script).await;
    let body = r#"{"number":"03001234567"}"#;
    let first = api(&daemon, "POST", "/v1/verifications", Some(body)).json();
    let resent = api(&daemon, "POST", "/v1/verifications", Some(body)).json();
    let calls = [first["call_id"].as_str().unwrap().to_owned(), resent["call_id"].as_str().unwrap().to_owned()];
    for call in &calls {
        assert!(fake.wait_for_originate(call, Duration::from_secs(10)).await.is_some(), "{call} never dialled");
    }
    let id = first["id"].as_str().unwrap();
    let canceled = api(&daemon, "POST", &format!("/v1/verifications/{id}/cancel"), None);
    assert_eq!(canceled.status, 200, "{}", canceled.body);
    assert!(fake.wait_for_count("Hangup", 2, Duration::from_secs(10)).await, "{:?}", fake.actions());
    let hung_up: Vec<_> = fake.actions().into_iter().filter(|a| a.is("Hangup")).collect();
    for call in &calls {
        let shown = api(&daemon, "GET", &format!("/v1/calls/{call}"), None).json();
        assert_eq!(shown["status"], "canceled", "{shown}");
        assert!(hung_up.iter().any(|a| a.get("Channel") == Some(call.as_str())), "{call} not hung up: {hung_up:?}");
    }
}

/// A limit's 429 says "try again later": it is not kept under the key, so
/// the same request with the same key, once the limit no longer holds, is
/// carried out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limits_refusal_is_not_kept_under_the_key() {
    let (_home, _fake, daemon) = setup("idempotent-429", "[verify]\nmax_sends = 1\n").await;
    let body = r#"{"number":"03001234569"}"#;
    let first = api(&daemon, "POST", "/v1/verifications", Some(body));
    assert_eq!(first.status, 201, "{}", first.body);
    let key = [("Idempotency-Key", "login-100")];
    let limited = api_as(&daemon, "acme1", "POST", "/v1/verifications", &key, Some(body));
    assert_eq!(limited.status, 429, "verify.max_sends = 1: {}", limited.body);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(api(&daemon, "POST", &format!("/v1/verifications/{id}/cancel"), None).status, 200);
    let later = api_as(&daemon, "acme1", "POST", "/v1/verifications", &key, Some(body));
    assert_eq!((later.status, later.header("idempotent-replayed")), (201, None), "{}", later.body);
    let again = api_as(&daemon, "acme1", "POST", "/v1/verifications", &key, Some(body));
    assert_eq!((again.status, again.header("idempotent-replayed")), (201, Some("true")), "kept now: {}", again.body);
}

/// Issue 11 item 3: the same key and body within a day answer with the
/// first request's status, body and id, and place no second call; the same
/// key with another body is 422; keys are per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_places_one_call_whatever_the_retries() {
    let (_home, fake, daemon) = setup("idempotent", "").await;
    let body = r#"{"number":"03001234567","code":"482915"}"#;
    let key = [("Idempotency-Key", "order-4711-attempt")];
    let first = api_as(&daemon, "acme1", "POST", "/v1/calls", &key, Some(body));
    assert_eq!(first.status, 202, "{}", first.body);
    let again = api_as(&daemon, "acme1", "POST", "/v1/calls", &key, Some(body));
    assert_eq!((again.status, again.body.as_str()), (202, first.body.as_str()), "the first answer again");
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other_body =
        api_as(&daemon, "acme1", "POST", "/v1/calls", &key, Some(r#"{"number":"03001234568","code":"482915"}"#));
    assert_eq!(other_body.status, 422, "{}", other_body.body);
    assert_eq!(other_body.json()["field"], "Idempotency-Key");
    // Another user's same key is another request.
    let theirs = api_as(&daemon, "other1", "POST", "/v1/calls", &key, Some(body));
    assert_eq!(theirs.status, 202);
    assert_ne!(theirs.json()["id"], first.json()["id"]);
    // A refusal is kept too: the retry of a 400 is the same 400.
    let bad_key = [("Idempotency-Key", "bad-one")];
    let bad = api_as(&daemon, "acme1", "POST", "/v1/calls", &bad_key, Some(r#"{"number":"1"}"#));
    assert_eq!(bad.status, 400);
    assert_eq!(api_as(&daemon, "acme1", "POST", "/v1/calls", &bad_key, Some(r#"{"number":"1"}"#)).body, bad.body);
    let malformed = api_as(&daemon, "acme1", "POST", "/v1/calls", &[("Idempotency-Key", "")], Some(body));
    assert_eq!(
        (malformed.status, malformed.json()["field"].as_str()),
        (400, Some("Idempotency-Key")),
        "{}",
        malformed.body
    );

    // Verifications: one verification, one call, however often retried.
    let vkey = [("Idempotency-Key", "login-99")];
    let vbody = r#"{"number":"03001234569"}"#;
    let v1 = api_as(&daemon, "acme1", "POST", "/v1/verifications", &vkey, Some(vbody));
    let v2 = api_as(&daemon, "acme1", "POST", "/v1/verifications", &vkey, Some(vbody));
    assert_eq!((v1.status, v2.status), (201, 201), "{} / {}", v1.body, v2.body);
    assert_eq!(v1.json()["id"], v2.json()["id"]);
    assert_eq!(v2.json()["sends"], 1, "the retry placed no second call");

    // Three calls stored in all (two of acme1, one of other1); once each
    // has been dialled, there is no fourth Originate.
    let stored = daemon.stored_calls();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(fake.wait_for_count("Originate", 3, Duration::from_secs(10)).await);
    let ids: Vec<String> = stored.into_iter().map(|(id, _)| id).collect();
    for id in &ids {
        assert!(fake.wait_for_originate(id, Duration::from_secs(10)).await.is_some(), "{id} never dialled");
    }
    assert_eq!(fake.count("Originate"), 3, "{:?}", fake.originated());
}
