//! The real binary on PostgreSQL (`[database] url`): the CLI adds users,
//! the daemon places a call through a scripted AMI and reads its code over
//! FastAGI, `call show` tells it, a verification is approved, webhooks are
//! delivered, and a daemon killed with calls queued leaves them to the next
//! one, which dials each once. Then two daemons on one database and one
//! scripted Asterisk: calls posted to both are each dialled exactly once,
//! and when one is `kill -9`ed right after taking calls the other finishes
//! every one. Each test has a database of its own on the server
//! `scripts/postgres up` runs (see `support::postgres`).

mod support;

use std::time::Duration;

use support::daemon::Daemon;
use support::fake_agi;
use support::fake_ami::{DAEMON_SECRET, FakeAmi, FakeScript, OriginateOutcome, StatusReply};
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
    let (digits, commands) = fake_agi::hear_digits(fake, daemon.agi, call_id).await;
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

    let health = support::blocking(|| http::get(daemon.http, "/healthz"));
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["checks"]["database"], "up", "{}", health.body);

    // /metrics counts from the trigger-kept tables.
    let metrics = support::blocking(|| http::get(daemon.http, "/metrics"));
    assert!(metrics.body.contains(r#"status="completed""#), "{}", metrics.body);
}

/// A daemon killed (`kill -9`) with calls queued - Asterisk refusing it -
/// leaves them in PostgreSQL; the next daemon dials each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_resumes_the_queue() {
    let Some(db) = TestDatabase::create("restart") else { return };
    // Asterisk knows the channels it was asked to make (`Status` finds
    // them), as a real one does: a reconciliation that comes right after
    // a dial must not be what ends these calls.
    let refusing = FakeScript {
        secret: "changed".into(),
        status_reply: StatusReply::Exists,
        ..FakeScript::outcome(OriginateOutcome::busy())
    };
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
        let call = daemon.show(id);
        assert_eq!(call["reason"], "busy", "{call:?}\n{}", daemon.logs());
    }
}

/// Two daemons on one database, both logged in to one scripted Asterisk;
/// the second has no users of its own (they are in the shared database).
async fn two_daemons(db: &TestDatabase, script: FakeScript) -> (FakeAmi, (Home, Daemon), (Home, Daemon)) {
    let fake = FakeAmi::start(script).await;
    let config = format!("{NO_NUMBER_QUOTAS}\n[webhooks]\ndeny_private = false\n");
    let a = Setup::new("pg-a").postgres(db).config(&config).start(fake.addr());
    let (home_b, daemon_b) = Setup::new("pg-b").postgres(db).no_users().config(&config).start(fake.addr());
    let b = (home_b, daemon_b.calling_as("acme1", PASSWORD));
    assert!(fake.wait_for_logins(2, WAIT).await, "both daemons log in: {:?}", fake.actions());
    (fake, a, b)
}

/// The ids in `ids`, sorted, and whether none repeats.
fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// 40 calls posted alternately to two daemons sharing one PostgreSQL: all
/// end, and each was originated exactly once - by whichever daemon claimed
/// it first, recorded as its owner. Both daemons' outboxes see every
/// webhook delivery; each is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_dial_each_call_exactly_once() {
    let Some(db) = TestDatabase::create("two") else { return };
    let (fake, (home_a, a), (_home_b, b)) = two_daemons(&db, FakeScript::outcome(OriginateOutcome::busy())).await;
    let receiver = Receiver::start(&[]);
    home_a.cli(&["user", "webhook", "acme1", "--url", &receiver.url("calls")]);
    let posted: Vec<String> =
        (0..40).map(|i| if i % 2 == 0 { &a } else { &b }.seed_call("03001234567", "482915")).collect();
    let stored = a.settle(Duration::from_secs(60));
    assert_eq!(sorted(stored.clone()), sorted(posted.clone()), "every posted call is stored once");
    assert_eq!(sorted(fake.originated()), sorted(posted), "each call originated exactly once");
    for id in &stored {
        assert_eq!(b.show(id)["reason"], "busy", "{id}");
    }
    // Every call names the daemon that dialled it, one of the two leases.
    let daemons = db.rows("SELECT id FROM daemons");
    assert_eq!(daemons.len(), 2, "{daemons:?}");
    let owners = db.rows("SELECT DISTINCT owner FROM calls");
    assert!(owners.iter().all(|o| daemons.contains(o)), "{owners:?} vs {daemons:?}");
    // Two changes per call (dialing, failed): 80 deliveries, each sent
    // once - judged once the database has every one delivered. Both
    // daemons' outboxes see every row, and each leaves those the other
    // claimed: the wait stays under the outboxes' 30 s full rescan, which
    // would hide rows a daemon passed over (a delivery the other claimed
    // once held one of its slots, and the rest of the user's backlog
    // waited for that rescan).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let pending = "SELECT id::text FROM webhook_deliveries WHERE delivered_at IS NULL AND gave_up_at IS NULL";
    while !db.rows(pending).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "deliveries still pending: {:?}\n{}\n{}",
            db.rows("SELECT id::text, attempts::text, next_attempt_at::text FROM webhook_deliveries WHERE delivered_at IS NULL"),
            a.logs(),
            b.logs()
        );
        support::blocking(|| std::thread::sleep(Duration::from_millis(200)));
    }
    assert_eq!(db.rows("SELECT id::text FROM webhook_deliveries").len(), 80);
    let mut sent: Vec<String> =
        receiver.received().iter().map(|r| r.header("x-voice-otp-delivery").unwrap_or_default().to_owned()).collect();
    assert_eq!(sent.len(), 80, "{sent:?}");
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), 80, "no delivery sent twice");
}

/// A daemon `kill -9`ed right after taking calls: the other dials those
/// still queued and, once the dead one's lease has run out, takes over
/// those it had in flight (Asterisk has no channel for them: they end
/// `system_error`). Every call ends; none is originated twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_daemon_dies_the_other_finishes_every_call() {
    let Some(db) = TestDatabase::create("die") else { return };
    // Each call's outcome comes 3 s after its Originate: those the first
    // daemon sent are still in flight when it dies.
    let script = FakeScript { outcome_delay: Duration::from_secs(3), ..FakeScript::outcome(OriginateOutcome::busy()) };
    let (fake, (_home_a, a), (_home_b, b)) = two_daemons(&db, script).await;
    let posted: Vec<String> = (0..10).map(|_| a.seed_call("03001234567", "482915")).collect();
    drop(a); // SIGKILL, right after posting
    // The lease (3 s) runs out, then the survivor's next reconciliation
    // (every 30 s) takes the dead one's calls in flight over.
    let stored = b.settle(Duration::from_secs(90));
    assert_eq!(sorted(stored.clone()), sorted(posted.clone()));
    let originated = fake.originated();
    let mut once = originated.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), originated.len(), "no call originated twice: {originated:?}");
    let mut taken_over = 0;
    for id in &stored {
        let call = b.show(id);
        match call["reason"].as_str() {
            "busy" => assert!(originated.contains(id), "{id} ended busy without an Originate"),
            "system_error" => {
                assert!(call["detail"].contains("not dialled again"), "{call:?}");
                taken_over += 1;
            }
            other => panic!("{id} ended {other}: {call:?}"),
        }
    }
    assert!(taken_over > 0, "the dead daemon had calls in flight, settled by the survivor\n{}", b.logs());
    assert!(b.logged("taken over from a daemon whose lease ran out", 1, WAIT) >= 1, "{}", b.logs());
}

/// Wrong passwords sent to one daemon count at the other: after
/// `limits.login_failures_per_user_ip` (5) of them at the first, the second
/// refuses that address for that name even the right password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_at_one_daemon_count_at_the_other() {
    let Some(db) = TestDatabase::create("logins") else { return };
    let (_fake, (_home_a, a), (_home_b, b)) = two_daemons(&db, FakeScript::for_daemon()).await;
    let wrong = "/outbound.cgi?number=03001234567&code=482915&username=acme1&password=wrong-one";
    for _ in 0..5 {
        assert_eq!(support::blocking(|| http::get(a.http, wrong)).status, 401);
    }
    let refused = b.seed("03001234567", "482915", "");
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("limits.login_failures_per_user_ip"), "{}", refused.body);
}

/// A client that gives up on a request while it waits on the database (the
/// test holds `idempotency_keys` locked, so the request's key waits) and
/// closes its side - which makes hyper drop the connection - does not cut
/// the request short: it is carried out to its end once the database
/// answers, its answer kept under its key, and the retry gets that answer.
/// Before, the handler went with the connection: the key stayed "in
/// progress" (409 for a minute), then a retry placed a second call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_went_away_is_carried_out_and_its_answer_kept() {
    use base64::Engine;
    use std::io::Write;
    let Some(db) = TestDatabase::create("client_gone") else { return };
    let (_home, _fake, daemon) =
        Setup::new("pg-gone").postgres(&db).config(NO_NUMBER_QUOTAS).fake(FakeScript::for_daemon()).await;
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let url = db.url.clone();
    let locker = std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        let mut tx = client.transaction().expect("BEGIN");
        tx.batch_execute("LOCK TABLE idempotency_keys IN ACCESS EXCLUSIVE MODE").expect("LOCK");
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv();
        tx.commit().expect("COMMIT");
    });
    locked_rx.recv().unwrap();

    let body = r#"{"number":"03001234567","code":"482915"}"#;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("acme1:{PASSWORD}"));
    let request = format!(
        "POST /v1/calls HTTP/1.1\r\nHost: test\r\nAuthorization: Basic {auth}\r\nIdempotency-Key: gone-1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut gone = std::net::TcpStream::connect(daemon.http).unwrap();
    gone.write_all(request.as_bytes()).unwrap();
    // The request waits on the lock: its body was read, its key is next.
    let waiting =
        "SELECT pid::text FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%idempotency_keys%'";
    let deadline = std::time::Instant::now() + WAIT;
    while db.rows(waiting).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the request never reached its key\n{}", daemon.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gone.shutdown(std::net::Shutdown::Write).unwrap();
    // Time for hyper to see the close and drop the connection before the
    // database answers - what lets the old behaviour show. Nothing is
    // judged by this wait: the checks below wait for what they look at.
    tokio::time::sleep(Duration::from_millis(300)).await;
    release_tx.send(()).unwrap();
    locker.join().unwrap();

    let key = [("Idempotency-Key", "gone-1")];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let retry = loop {
        let retry = support::blocking(|| {
            http::with_basic_headers(daemon.http, "POST", "/v1/calls", "acme1", PASSWORD, &key, Some(body))
        });
        if retry.status != 409 || std::time::Instant::now() > deadline {
            break retry;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (202, Some("true")), "{}", retry.body);
    assert_eq!(db.rows("SELECT id FROM calls").len(), 1, "one call");
    drop(gone);
}
