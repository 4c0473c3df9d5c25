//! The JSON API, webhooks, retention, health and metrics over real HTTP
//! against the real binary, with a scripted AMI server standing in for
//! Asterisk (tests/sandbox.rs does the outcomes against the real one).

mod support;

use std::time::Duration;

use support::daemon::{Daemon, cli};
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome};
use support::harness::{Home, NO_NUMBER_QUOTAS, PASSWORD, Setup, assert_each_dialled_once};
use support::http::{self, Response};
use support::webhook_receiver::Receiver;

/// Test config: fast webhook retries, loopback receivers allowed.
const WEBHOOKS: &str =
    "[webhooks]\ndeny_private = false\nretry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\n";

/// A daemon on a fake AMI with users `acme1` and `other1`; also returns
/// `acme1`'s webhook secret.
async fn setup(name: &str, script: FakeScript, extra: &str) -> (Home, FakeAmi, Daemon, String) {
    let (home, fake, daemon) =
        Setup::new(name).user("other1", PASSWORD).config(WEBHOOKS).config(extra).fake(script).await;
    let secret = home.user("acme1").webhook_secret.clone();
    (home, fake, daemon, secret)
}

fn api(daemon: &Daemon, method: &str, target: &str, json: Option<&str>) -> Response {
    api_as(daemon, "acme1", method, target, json)
}

fn api_as(daemon: &Daemon, user: &str, method: &str, target: &str, json: Option<&str>) -> Response {
    tokio::task::block_in_place(|| http::with_basic(daemon.http, method, target, user, PASSWORD, json))
}

fn create(daemon: &Daemon, body: &str) -> serde_json::Value {
    let resp = api(daemon, "POST", "/v1/calls", Some(body));
    assert_eq!(resp.status, 202, "{}", resp.body);
    resp.json()
}

async fn wait_status(daemon: &Daemon, id: &str, status: &str) -> serde_json::Value {
    for _ in 0..200 {
        let call = api(daemon, "GET", &format!("/v1/calls/{id}"), None).json();
        if call["status"] == status {
            return call;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("call {id} never {status}\n{}", daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_show_list_and_errors_name_the_field() {
    // Five calls to one number: its quotas (3 per 10 min) are off here and
    // tested on their own below.
    let (_home, fake, daemon, _) =
        setup("v1-basics", FakeScript::outcome(OriginateOutcome::busy()), NO_NUMBER_QUOTAS).await;
    let resp = api(
        &daemon,
        "POST",
        "/v1/calls",
        Some(r#"{"number":"03001234567","code":"482915","language":"ur","require_keypress":true}"#),
    );
    assert_eq!(resp.status, 202, "{}", resp.body);
    let call = resp.json();
    let id = call["id"].as_str().unwrap().to_owned();
    assert_eq!(resp.header("location"), Some(format!("/v1/calls/{id}").as_str()));
    assert_eq!(call["status"], "queued");
    assert_eq!(call["number"], "+923001234567");
    assert_eq!((call["language"].as_str(), call["require_keypress"].as_bool()), (Some("ur"), Some(true)));
    assert_eq!(call["links"]["self"], format!("/v1/calls/{id}"));
    assert_eq!(call["links"]["cancel"], format!("/v1/calls/{id}/cancel"));
    assert!(call.get("code").is_none() && !resp.body.contains("482915"), "never the code: {}", resp.body);

    let done = wait_status(&daemon, &id, "failed").await;
    assert_eq!((done["reason"].as_str(), done["cause"].as_u64()), (Some("busy"), Some(17)), "{done}");
    assert_eq!(done["cause_text"], "User busy");
    assert!(done["dialed_at"].is_string() && done["ended_at"].is_string() && done["answered_at"].is_null());
    assert!(!done.to_string().contains("482915"));
    // Another user sees nothing of it.
    let other = api_as(&daemon, "other1", "GET", &format!("/v1/calls/{id}"), None);
    assert_eq!((other.status, other.header("content-type")), (404, Some("application/problem+json")));
    assert_eq!(api(&daemon, "GET", "/v1/calls/not-an-id", None).status, 404);

    // Listing: newest first, paginated, filtered, per user.
    let mut ids = vec![id.clone()];
    for _ in 0..4 {
        ids.push(create(&daemon, r#"{"number":"03001234567","code":"1234"}"#)["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut target = "/v1/calls?limit=2".to_owned();
    loop {
        let page = api(&daemon, "GET", &target, None).json();
        seen.extend(page["calls"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => target = format!("/v1/calls?limit=2&cursor={c}"),
            None => break,
        }
    }
    // Newest first by creation time, ties (the same millisecond) by id -
    // the order of the stored times, not of the requests: no test can
    // make the clock tick between two requests.
    let conn = rusqlite::Connection::open(daemon.db_path()).unwrap();
    let mut newest_first: Vec<(i64, String)> = ids
        .iter()
        .map(|id| {
            (conn.query_row("SELECT created_at FROM calls WHERE id = ?1", [id], |r| r.get(0)).unwrap(), id.clone())
        })
        .collect();
    newest_first.sort_by(|a, b| b.cmp(a));
    let newest_first: Vec<String> = newest_first.into_iter().map(|(_, id)| id).collect();
    assert_eq!(seen, newest_first, "newest first, each once");
    let empty = api_as(&daemon, "other1", "GET", "/v1/calls", None).json();
    assert_eq!(empty["calls"].as_array().unwrap().len(), 0);
    for later in &ids[1..] {
        wait_status(&daemon, later, "failed").await;
    }
    let failed = api(&daemon, "GET", "/v1/calls?status=failed&limit=100", None).json();
    assert_eq!(failed["calls"].as_array().unwrap().len(), 5);

    // Errors: problem+json naming the field.
    let cases: [(&str, &str, u16, Option<&str>); 11] = [
        ("POST", r#"{"code":"1234"}"#, 400, Some("number")),
        ("POST", r#"{"number":"0300123","code":"1234"}"#, 400, Some("number")),
        ("POST", r#"{"number":"03001234567","code":"12"}"#, 400, Some("code")),
        ("POST", r#"{"number":"03001234567","code":1234}"#, 400, Some("code")),
        (
            "POST",
            r#"{"number":"03001234567","code":"1234","callback_url":"ftp://x.example/"}"#,
            400,
            Some("callback_url"),
        ),
        ("POST", r#"{"number":"03001234567","code":"1234","require_keypress":"yes"}"#, 400, Some("require_keypress")),
        ("POST", r#"{"number":"03001234567","code":"1234","colour":"red"}"#, 400, Some("colour")),
        ("POST", r#"["number"]"#, 400, None),
        ("POST", "{", 400, None),
        ("GET /v1/calls?limit=0", "", 400, Some("limit")),
        ("GET /v1/calls?status=done", "", 400, Some("status")),
    ];
    for (what, body, status, field) in cases {
        let resp = match what.split_once(' ') {
            Some((method, target)) => api(&daemon, method, target, None),
            None => api(&daemon, what, "/v1/calls", Some(body)),
        };
        assert_eq!(resp.status, status, "{what} {body}: {}", resp.body);
        assert_eq!(resp.header("content-type"), Some("application/problem+json"), "{body}");
        let p = resp.json();
        assert_eq!(p["status"], status);
        assert_eq!(p["field"].as_str(), field, "{body}: {p}");
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    // Option errors name the field and the values that would do.
    for (body, field, detail) in [
        (r#"{"number":"03001234567","code":"1234","language":"fr"}"#, "language", "language must be one of: en, ur"),
        (
            r#"{"number":"03001234567","code":"1234","require_keypress":1}"#,
            "require_keypress",
            "require_keypress must be one of: true, false",
        ),
    ] {
        let p = api(&daemon, "POST", "/v1/calls", Some(body)).json();
        assert_eq!(
            (p["status"].as_u64(), p["field"].as_str(), p["detail"].as_str()),
            (Some(400), Some(field), Some(detail)),
            "{p}"
        );
    }
    let resp = api(&daemon, "GET", "/v1/calls?cursor=garbage", None);
    assert_eq!(resp.json()["field"], "cursor");

    // Credentials: missing, wrong, unknown - 401 with the challenge.
    for (user, password) in [("acme1", "wrong"), ("ghost", PASSWORD)] {
        let resp =
            tokio::task::block_in_place(|| http::with_basic(daemon.http, "GET", "/v1/calls", user, password, None));
        assert_eq!(resp.status, 401);
        assert_eq!(resp.header("www-authenticate"), Some("Basic realm=\"voice-otp\""));
        assert_eq!(resp.header("content-type"), Some("application/problem+json"));
    }
    let resp = tokio::task::block_in_place(|| http::get(daemon.http, "/v1/calls"));
    assert_eq!(resp.status, 401);
    let resp = tokio::task::block_in_place(|| http::send(daemon.http, "POST", "/v1/calls", "text/plain", b"x"));
    assert_eq!(resp.status, 401, "credentials come before the body");
    let resp =
        tokio::task::block_in_place(|| http::with_basic(daemon.http, "DELETE", "/v1/calls", "acme1", PASSWORD, None));
    assert_eq!((resp.status, resp.header("allow")), (405, Some("GET, POST")));
    // The refused requests above placed no call: five good ones, all ended,
    // and each of them - no other - was dialled once.
    assert_eq!(assert_each_dialled_once(&daemon, &fake), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringing_then_cancel_hangs_up_and_the_call_stays_canceled() {
    let (_home, fake, daemon, _) = setup("v1-cancel", FakeScript::outcome(OriginateOutcome::Silent), "").await;
    let id = create(&daemon, r#"{"number":"03001234567","code":"482915"}"#)["id"].as_str().unwrap().to_owned();
    wait_status(&daemon, &id, "dialing").await;
    fake.emit_ringing(&id);
    let ringing = wait_status(&daemon, &id, "ringing").await;
    assert!(ringing["ringing_at"].is_string());
    let other = api_as(&daemon, "other1", "POST", &format!("/v1/calls/{id}/cancel"), None);
    assert_eq!(other.status, 404, "not someone else's call");
    let resp = api(&daemon, "POST", &format!("/v1/calls/{id}/cancel"), None);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["status"], "canceled");
    let hangup = fake.wait_for_action("Hangup", Duration::from_secs(10)).await.expect("a Hangup action");
    assert_eq!(hangup.get("Channel"), Some(id.as_str()));
    // Asterisk's late events do not revive it, and a second cancel is a conflict.
    let barrier = create(&daemon, r#"{"number":"03001234567","code":"482915"}"#)["id"].as_str().unwrap().to_owned();
    wait_status(&daemon, &barrier, "dialing").await;
    fake.emit_event(&[
        ("Event", "Hangup"),
        ("Privilege", "call,all"),
        ("Uniqueid", &id),
        ("Cause", "16"),
        ("Cause-txt", "Normal Clearing"),
    ]);
    let again = api(&daemon, "POST", &format!("/v1/calls/{id}/cancel"), None);
    assert_eq!((again.status, again.header("content-type")), (409, Some("application/problem+json")));
    // The daemon follows events one at a time, in order: once the next
    // event (another call ringing) has shown, the Hangup has been dealt with.
    fake.emit_event(&[
        ("Event", "Newstate"),
        ("Privilege", "call,all"),
        ("Channel", "PJSIP/carrier-00000002"),
        ("ChannelState", "5"),
        ("ChannelStateDesc", "Ringing"),
        ("Uniqueid", &barrier),
    ]);
    wait_status(&daemon, &barrier, "ringing").await;
    let call = api(&daemon, "GET", &format!("/v1/calls/{id}"), None).json();
    assert_eq!(call["status"], "canceled");
    assert!(call["ring_duration_ms"].as_i64().is_some_and(|d| d >= 0), "{call}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_not_dialled_before_its_deadline_expires() {
    let (_home, fake, daemon, _) = setup("v1-expire", FakeScript::for_daemon(), "[dial]\ndeadline_secs = 1\n").await;
    // Asterisk unreachable (and seen to be by the daemon, or the first call
    // could go out on the closing link): calls wait in the queue, then
    // expire undialled.
    fake.stop();
    daemon.wait_servers(&[("default", "down")]);
    for _ in 0..2 {
        let id = create(&daemon, r#"{"number":"03001234567","code":"1234"}"#)["id"].as_str().unwrap().to_owned();
        let call = wait_status(&daemon, &id, "expired").await;
        assert!(call["dialed_at"].is_null() && call["ended_at"].is_string(), "{call}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_in_order_and_retried_after_failures() {
    let (_home, _fake, daemon, secret) = setup("v1-hooks", FakeScript::outcome(OriginateOutcome::busy()), "").await;
    // The receiver fails the first two attempts.
    let receiver = Receiver::start(&[500, 503]);
    let call = create(
        &daemon,
        &format!(r#"{{"number":"03001234567","code":"482915","callback_url":"{}"}}"#, receiver.url("hook")),
    );
    let id = call["id"].as_str().unwrap().to_owned();
    let last = tokio::task::block_in_place(|| {
        receiver.wait_for(Duration::from_secs(30), |r| r.answered == 200 && r.json()["status"] == "failed")
    });
    assert_eq!(last.json()["reason"], "busy");
    let all = receiver.received();
    let statuses: Vec<(String, u16)> =
        all.iter().map(|r| (r.json()["status"].as_str().unwrap().to_owned(), r.answered)).collect();
    assert_eq!(
        statuses,
        [
            ("dialing".to_owned(), 500),
            ("dialing".to_owned(), 503),
            ("dialing".to_owned(), 200),
            ("failed".to_owned(), 200)
        ],
        "retried, in order, the later change held back"
    );
    for r in &all {
        assert!(r.signed_with(&secret), "bad signature: {r:?}");
        assert!(!r.signed_with("not-the-secret"));
        assert_eq!(r.path, "/hook");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json()["id"], id.as_str());
        assert!(!r.body.contains("482915"));
    }
    assert_eq!(all[0].header("x-voice-otp-delivery"), all[2].header("x-voice-otp-delivery"), "one delivery, retried");
    assert_eq!(all[3].header("x-voice-otp-event"), Some("call.failed"));
    // Every attempt is on record - the last once the daemon has read its
    // answer, a moment after the receiver saw it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let out = loop {
        let (ok, out, err) = tokio::task::block_in_place(|| cli(&daemon.config, &["call", "webhooks", &id], ""));
        assert!(ok, "{err}");
        if out.matches("http=200").count() >= 2 || std::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(out.matches("http=500").count(), 1, "{out}");
    assert_eq!(out.matches("http=503").count(), 1, "{out}");
    assert_eq!(out.matches("http=200").count(), 2, "{out}");
    assert!(!out.contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_webhooks_survive_a_restart_and_defaults_come_from_the_user() {
    let (home, _fake, mut daemon, secret) =
        setup("v1-restart", FakeScript::outcome(OriginateOutcome::busy()), "").await;
    // The receiver is "down" (503 to everything) until the restart; it keeps
    // its port meanwhile, so no other process can take it.
    let receiver = Receiver::start(&[]);
    receiver.answer_all(Some(503));
    let url = receiver.url("default");
    let (ok, out, err) =
        tokio::task::block_in_place(|| cli(&daemon.config, &["user", "webhook", "acme1", "--url", &url], ""));
    assert!(ok && out.contains(&url), "{out} {err}");
    let id = create(&daemon, r#"{"number":"03001234567","code":"1234"}"#)["id"].as_str().unwrap().to_owned();
    wait_status(&daemon, &id, "failed").await;
    tokio::task::block_in_place(|| {
        let status = daemon.terminate().expect("daemon stops on SIGTERM");
        assert!(status.success(), "{status:?}");
    });
    let before = receiver.received();
    assert!(before.iter().all(|r| r.answered == 503), "delivered before the restart: {before:?}");
    receiver.answer_all(None);
    let _restarted = home.start();
    let failed = tokio::task::block_in_place(|| {
        receiver.wait_for(Duration::from_secs(30), |r| r.answered == 200 && r.json()["status"] == "failed")
    });
    assert!(failed.signed_with(&secret));
    let delivered: Vec<String> = receiver
        .received()
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.json()["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, ["dialing", "failed"], "each change delivered once, in order, by the restarted daemon");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_calls_are_purged_and_healthz_and_metrics_answer() {
    let (home, _fake, mut first, _) = setup("v1-ops", FakeScript::outcome(OriginateOutcome::busy()), "").await;
    // A call that ended 40 days ago, put there while the daemon is down:
    // housekeeping runs at start (then every minute) and must remove it.
    tokio::task::block_in_place(|| first.terminate());
    let db = home.db();
    let old = "0123456789abcdef0123456789abcdef";
    let forty_days_ago = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
        as i64)
        - 40 * 86_400_000;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO calls (id, number, status, reason, created_at, updated_at, ended_at) VALUES (?1, '+923001234567', 'failed', 'busy', ?2, ?2, ?2)",
            rusqlite::params![old, forty_days_ago],
        )
        .unwrap();
    let daemon = home.start();
    let fresh = create(&daemon, r#"{"number":"03001234567","code":"1234"}"#)["id"].as_str().unwrap().to_owned();
    wait_status(&daemon, &fresh, "failed").await;

    let health = tokio::task::block_in_place(|| http::get(daemon.http, "/healthz"));
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(
        health.json()["checks"],
        serde_json::json!({"ami": "up", "fastagi": "up", "database": "up", "asterisk": {"default": "up"}})
    );
    let metrics = tokio::task::block_in_place(|| http::get(daemon.http, "/metrics"));
    assert_eq!(metrics.status, 200);
    for name in [
        "voice_otp_calls{status=\"failed\",reason=\"busy\"}",
        "voice_otp_ami_connected 1",
        "voice_otp_ami_reconnects_total 0",
        "voice_otp_agi_sessions_active 0",
        "voice_otp_webhooks_pending 0",
        "voice_otp_http_requests_total{method=\"POST\",route=\"/v1/calls\",status=\"202\"} 1",
        "voice_otp_http_request_duration_seconds_bucket{le=",
    ] {
        assert!(metrics.body.contains(name), "{name} missing:\n{}", metrics.body);
    }

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut gone = false;
    for _ in 0..100 {
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM calls WHERE id = ?1", [old], |r| r.get(0)).unwrap();
        if n == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "the 40-day-old call was not purged\n{}", daemon.logs());
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM calls WHERE id = ?1", [&fresh], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "a fresh call stays");
}

/// The JSON API passes the seed API's limits, answered as problem+json:
/// the per-number quota is one count for both front ends, the toll-fraud
/// guard says 403, the user's request rate and the failed-login limits
/// 429 with Retry-After, and no refused request dials anybody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_apis_limits_apply_as_problems() {
    let extra = "[limits]\nuser_requests_per_minute = 6\nlogin_failures_per_user_ip = 2\n";
    let busy = FakeScript::outcome(OriginateOutcome::busy());
    let (_home, fake, daemon, _) = setup("v1-limits", busy, extra).await;
    let limited = |resp: &Response, rule: &str| {
        assert_eq!(
            (resp.status, resp.header("content-type")),
            (429, Some("application/problem+json")),
            "{}",
            resp.body
        );
        let p = resp.json();
        assert_eq!(p["title"], "Too Many Requests");
        assert!(p["detail"].as_str().is_some_and(|d| d.contains(rule) && !d.starts_with("Too Many")), "{p}");
        let retry: u64 = resp.header("retry-after").expect("Retry-After").parse().expect("seconds");
        assert!(retry >= 1, "{retry}");
    };
    // Requests 1-3 of the user: the number's three calls per window.
    for _ in 0..3 {
        create(&daemon, r#"{"number":"03001234567","code":"1234"}"#);
    }
    // 4: the number's quota, whichever front end asks.
    let resp = api(&daemon, "POST", "/v1/calls", Some(r#"{"number":"+923001234567","code":"1234"}"#));
    limited(&resp, "limits.number_calls_per_window");
    // 5: the seed API counts the same calls, and the same user's requests.
    let seed = tokio::task::block_in_place(|| {
        http::get(
            daemon.http,
            &format!("/outbound.cgi?number=03001234567&code=1234&username=acme1&password={PASSWORD}"),
        )
    });
    assert_eq!(seed.status, 429, "{}", seed.body);
    assert!(seed.body.contains("limits.number_calls_per_window"), "{}", seed.body);
    // 6: the toll-fraud guard.
    let resp = api(&daemon, "POST", "/v1/calls", Some(r#"{"number":"+441612345678","code":"1234"}"#));
    assert_eq!((resp.status, resp.header("content-type")), (403, Some("application/problem+json")), "{}", resp.body);
    assert!(resp.json()["detail"].as_str().is_some_and(|d| d.contains("phone.allowed_countries")), "{}", resp.body);
    assert!(resp.header("retry-after").is_none());
    // 7: over the user's six requests per minute, even to a fresh number.
    let resp = api(&daemon, "POST", "/v1/calls", Some(r#"{"number":"03001234568","code":"1234"}"#));
    limited(&resp, "limits.user_requests_per_minute");
    // Another user is not slowed; reading calls is not a request to place one.
    let resp = api_as(&daemon, "other1", "POST", "/v1/calls", Some(r#"{"number":"03001234568","code":"1234"}"#));
    assert_eq!(resp.status, 202, "{}", resp.body);
    assert_eq!(api(&daemon, "GET", "/v1/calls", None).status, 200);

    // Two wrong passwords refuse this address for the name: then even the
    // right one gets 429 without a password check.
    for _ in 0..2 {
        let resp =
            tokio::task::block_in_place(|| http::with_basic(daemon.http, "GET", "/v1/calls", "other1", "wrong", None));
        assert_eq!(resp.status, 401);
    }
    limited(&api_as(&daemon, "other1", "GET", "/v1/calls", None), "limits.login_failures_per_user_ip");

    // Once every stored call has ended (busy), nothing is on its way: the
    // four stored - three of acme1, one of other1 - are all that was dialled.
    let stored = assert_each_dialled_once(&daemon, &fake);
    assert_eq!(stored.len(), 4, "three calls of acme1, one of other1: {stored:?}");
}

/// With `http.ops_listen`, `/healthz` and `/metrics` answer on their own
/// address only, and the API's port answers 404 for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_listen_moves_health_and_metrics_off_the_api_port() {
    let (_home, _fake, daemon) =
        Setup::new("ops-listen").http_keys("ops_listen = \"127.0.0.1:0\"\n").fake(FakeScript::for_daemon()).await;
    let ops = daemon.ops.expect("ops address in the ready line");
    assert_ne!(ops, daemon.http);
    support::blocking(|| {
        for path in ["/healthz", "/metrics"] {
            assert_eq!(http::get(daemon.http, path).status, 404, "{path} on the API port");
        }
        // Healthy once the AMI login's answer is in (the fake saw the Login).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let health = loop {
            let health = http::get(ops, "/healthz");
            if health.status == 200 || std::time::Instant::now() > deadline {
                break health;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(health.status, 200, "{}", health.body);
        let metrics = http::get(ops, "/metrics");
        assert_eq!(metrics.status, 200);
        assert!(metrics.body.contains("voice_otp_ami_connected 1"), "{}", metrics.body);
        assert_eq!(http::get(ops, "/v1/calls").status, 404, "the APIs stay on their port");
        assert_eq!(http::with_basic(daemon.http, "GET", "/v1/calls", "acme1", PASSWORD, None).status, 200);
    });
}
