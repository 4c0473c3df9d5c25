//! The real binary on PostgreSQL (`[database] url`): the CLI adds users,
//! the daemon places a call through a scripted AMI and reads its code over
//! FastAGI, `call show` tells it, a verification is approved, webhooks are
//! delivered, and a daemon killed with calls queued leaves them to the next
//! one, which dials each once. Each test has a database of its own on the
//! server `scripts/postgres up` runs (see `support::postgres`).

mod support;

use std::time::Duration;

use support::daemon::Daemon;
use support::fake_agi::{self, Callee};
use support::fake_ami::{DAEMON_SECRET, FakeAmi, FakeScript, OriginateOutcome};
use support::harness::{FAST_FLOW, Home, NO_NUMBER_QUOTAS, PASSWORD, Setup};
use support::http;
use support::postgres::TestDatabase;
use support::webhook_receiver::Receiver;

const WAIT: Duration = Duration::from_secs(20);
/// Enough for the daemon's AMI reconnect backoff to come round again.
const RECONNECT_WAIT: Duration = Duration::from_secs(40);

/// Answers call `call_id` like a callee who listens; returns the code as
/// the first reading said it.
async fn hear_code(fake: &FakeAmi, daemon: &Daemon, call_id: &str) -> String {
    let token = fake.wait_agi_token(call_id, Duration::from_secs(10)).await.expect("an Originate");
    let commands = fake_agi::session(daemon.agi, call_id, Callee { token: Some(&token), ..Callee::default() }).await;
    let digits: String = commands
        .iter()
        .filter_map(|c| c.strip_prefix("STREAM FILE digits/"))
        .filter_map(|rest| rest.chars().next())
        .collect();
    let (first, second) = digits.split_at(digits.len() / 2);
    assert_eq!(first, second, "two readings of one code: {commands:?}");
    first.to_owned()
}

fn api(daemon: &Daemon, method: &str, target: &str, json: Option<&str>) -> http::Response {
    support::blocking(|| http::with_basic_headers(daemon.http, method, target, "acme1", PASSWORD, &[], json))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_and_the_cli_run_on_postgres() {
    let Some(db) = TestDatabase::create("daemon") else { return };
    let config = format!("{FAST_FLOW}\n{NO_NUMBER_QUOTAS}\n[webhooks]\ndeny_private = false\n");
    let (home, fake, daemon) = Setup::new("pg-daemon")
        .postgres(&db)
        .user("other1", PASSWORD)
        .config(&config)
        .fake(FakeScript::for_daemon())
        .await;
    // The users the CLI added are in PostgreSQL, not in a file beside the config.
    let users = home.cli(&["user", "list"]);
    assert!(users.contains("acme1") && users.contains("other1"), "{users}");
    let names = db.rows("SELECT name FROM users ORDER BY name");
    assert_eq!(names, [[Some("acme1".to_owned())], [Some("other1".to_owned())]]);
    assert!(!home.db().exists(), "no SQLite file was made");

    // A call placed, its code read over FastAGI, shown by `call show`, its
    // webhooks delivered and signed.
    let receiver = Receiver::start(&[]);
    home.cli(&["user", "webhook", "acme1", "--url", &receiver.url("calls")]);
    let id = daemon.seed_call("03001234567", "482915");
    assert_eq!(hear_code(&fake, &daemon, &id).await, "482915");
    let call = daemon.wait_final(&id, WAIT);
    assert_eq!((call["status"].as_str(), call["readings"].as_str()), ("completed", "2"), "{call:?}");
    let completed = support::blocking(|| {
        receiver.wait_for(WAIT, |r| r.json()["id"] == id.as_str() && r.json()["status"] == "completed")
    });
    assert!(completed.signed_with(&home.user("acme1").webhook_secret));
    let hooks = home.cli(&["call", "webhooks", &id]);
    assert!(hooks.contains("completed"), "{hooks}");
    // The code went with the call's end, in PostgreSQL too.
    assert_eq!(db.rows(&format!("SELECT code FROM calls WHERE id = '{id}'")), [[None]]);

    // A verification: the code read, checked once.
    let resp = api(&daemon, "POST", "/v1/verifications", Some(r#"{"number":"03001234568","code_length":6}"#));
    assert_eq!(resp.status, 201, "{}", resp.body);
    let (vid, call_id) = {
        let v = resp.json();
        (v["id"].as_str().unwrap().to_owned(), v["call_id"].as_str().unwrap().to_owned())
    };
    let code = hear_code(&fake, &daemon, &call_id).await;
    let check = |code: &str| {
        api(&daemon, "POST", &format!("/v1/verifications/{vid}/check"), Some(&format!(r#"{{"code":"{code}"}}"#)))
    };
    let approved = check(&code);
    assert_eq!((approved.status, approved.json()["status"].as_str()), (200, Some("approved")), "{}", approved.body);
    assert_eq!(check(&code).status, 409, "a code serves once");
    let shown = home.cli(&["verification", "show", &vid]);
    assert!(shown.contains("status=approved"), "{shown}");

    // /metrics counts from the trigger-kept tables.
    let metrics = support::blocking(|| http::get(daemon.http, "/metrics"));
    assert!(metrics.body.contains(r#"status="completed""#), "{}", metrics.body);
}

/// A daemon killed (`kill -9`) with calls queued - Asterisk refusing it -
/// leaves them in PostgreSQL; the next daemon dials each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_resumes_the_queue() {
    let Some(db) = TestDatabase::create("restart") else { return };
    let refusing = FakeScript { secret: "changed".into(), ..FakeScript::outcome(OriginateOutcome::busy()) };
    let (home, fake, daemon): (Home, FakeAmi, Daemon) =
        Setup::new("pg-restart").postgres(&db).config(NO_NUMBER_QUOTAS).fake(refusing).await;
    let ids: Vec<String> = (0..3).map(|_| daemon.seed_call("03001234567", "482915")).collect();
    for id in &ids {
        assert_eq!(daemon.show(id)["status"], "queued");
    }
    drop(daemon); // SIGKILL
    fake.update_script(|s| s.secret = DAEMON_SECRET.into());
    let daemon = home.start();
    assert_eq!(daemon.settle(RECONNECT_WAIT), ids, "every queued call ended, in order");
    assert_eq!(fake.originated(), ids, "each dialled once, in order");
    for id in &ids {
        assert_eq!(daemon.show(id)["reason"], "busy");
    }
}
