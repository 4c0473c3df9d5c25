//! The OpenAPI document (`openapi/openapi.json`) against the real binary
//! over real HTTP: every operation it names is driven to every status it
//! gives that operation, each exchange judged both ways by
//! `tests/support/openapi.rs` (the request is what the document allows - or, where
//! the test sends something wrong on purpose, what it forbids - and the
//! answer's status, headers and body are what it promises), every webhook
//! it names is received and judged too, and the run fails if the document
//! names anything the test never saw. A scripted AMI plays Asterisk and a
//! scripted FastAGI client the callee, so every outcome is the test's
//! choice, not the network's.
//!
//! The document is also checked by an independent OpenAPI 3.1 validator
//! (`openapi-spec-validator` from PyPI, in a venv under `target/`), and a
//! document changed on purpose is shown to fail the judging.

#[path = "support/openapi.rs"]
mod judge;
mod support;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use judge::{DOCUMENT, Request, Spec};
use support::daemon::Daemon;
use support::fake_agi::{self, Callee};
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome};
use support::harness::{FAST_FLOW, Home, PASSWORD, Setup};
use support::http::Response;
use support::webhook_receiver::Receiver;

/// Limits this test takes out of its way, and why: it checks shapes, not
/// limits (tests/abuse_limits.rs does those). One user places every call of
/// the run and several go to one number, so the per-user request rate and
/// the per-number quotas would refuse the run depending on how many steps it
/// has; it provokes its `429`s with the failed-login limits from an address
/// of its own, and with `verify.max_sends`, kept low for that.
const LIMITS: &str = "[limits]\nuser_requests_per_minute = 0\nnumber_calls_per_window = 0\nnumber_calls_per_day = 0\n";

/// Small verification limits, so that `max_sends` and `max_checks` are
/// reached in a few requests.
const VERIFY: &str = "[verify]\nmax_sends = 2\nmax_checks = 2\n";

/// Loopback receivers allowed, quick retries.
const WEBHOOKS: &str = "[webhooks]\ndeny_private = false\nretry_initial_secs = 1\nretry_max_secs = 2\n";

/// The `408`s wait this long (the default 10 s would make the run slow).
const BODY_TIMEOUT: &str = "body_timeout_secs = 1";

/// A client address of its own for failed logins, whose limit it reaches.
const GUESSER: [u8; 4] = [127, 0, 0, 9];

/// Statuses the document gives that this test cannot provoke.
const UNPROVOKED: [(&str, &str, u16, &str); 6] = [
    ("/v1/calls", "GET", 503, DATABASE_DOWN),
    ("/v1/calls/{id}", "GET", 503, DATABASE_DOWN),
    ("/v1/calls/{id}/cancel", "POST", 503, DATABASE_DOWN),
    ("/v1/verifications/{id}", "GET", 503, DATABASE_DOWN),
    ("/v1/verifications/{id}/check", "POST", 503, DATABASE_DOWN),
    ("/v1/verifications/{id}/cancel", "POST", 503, DATABASE_DOWN),
];

/// Why those are not provoked.
const DATABASE_DOWN: &str = "only a failing database (or a credential check that cannot conclude) answers it; \
     where a call is placed, the full queue gives the same 503 and is tested";

fn ip(octets: [u8; 4]) -> IpAddr {
    IpAddr::from(octets)
}

/// The test's view of one daemon: its address, its first user, the document.
struct Api<'a> {
    spec: &'a Spec,
    daemon: &'a Daemon,
}

impl Api<'_> {
    /// Sends `req` and judges it.
    fn call(&self, req: Request) -> Response {
        self.spec.call(self.daemon.http, &req)
    }

    /// `req` as it is, judged, and answered `status`.
    fn expect(&self, status: u16, req: Request) -> Response {
        let resp = self.call(req.clone());
        assert_eq!(resp.status, status, "{} {}: {}", req.method, req.target, resp.body);
        resp
    }

    /// `req` with the first user's credentials, answered `status`.
    fn user(&self, status: u16, req: Request) -> Response {
        self.expect(status, req.basic("acme1", PASSWORD))
    }

    /// Creates a call; returns its id.
    fn create_call(&self, number: &str) -> String {
        let body = format!(r#"{{"number":"{number}","code":"482915"}}"#);
        let call = self.user(202, Request::post("/v1/calls").json(&body)).json();
        call["id"].as_str().expect("id").to_owned()
    }

    /// Polls `GET /v1/calls/{id}` (each answer judged) until it is `status`.
    fn wait_call(&self, id: &str, status: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let call = self.user(200, Request::get(&format!("/v1/calls/{id}"))).json();
            if call["status"] == status {
                return call;
            }
            assert!(Instant::now() < deadline, "call {id} never {status}: {call}\n{}", self.daemon.logs());
            support::blocking(|| std::thread::sleep(Duration::from_millis(50)));
        }
    }

    /// Polls `/metrics` (judged) until no webhook delivery is pending.
    fn wait_webhooks_delivered(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.expect(200, Request::get("/metrics")).body;
            if text.lines().any(|l| l == "voice_otp_webhooks_pending 0") {
                return;
            }
            assert!(Instant::now() < deadline, "webhooks still pending:\n{text}");
            support::blocking(|| std::thread::sleep(Duration::from_millis(100)));
        }
    }
}

/// Answers call `id` on the scripted FastAGI like a callee who listens;
/// returns the digits of its first reading (`length` of them).
async fn answer(fake: &FakeAmi, daemon: &Daemon, id: &str, length: usize) -> String {
    let (digits, commands) = fake_agi::hear_digits(fake, daemon.agi, id).await;
    assert!(digits.len() >= length, "the code was read: {commands:?}");
    digits[..length].to_owned()
}

/// The AMI event of call `id`'s callee being busy.
fn busy(fake: &FakeAmi, id: &str) {
    fake.emit_event(&[
        ("Event", "Hangup"),
        ("Privilege", "call,all"),
        ("Uniqueid", id),
        ("Cause", "17"),
        ("Cause-txt", "User busy"),
    ]);
}

/// The seed API's four fields, form-encoded (`+` of a number as `%2B`).
fn seed_query(number: &str, user: &str, password: &str) -> String {
    let number = number.replace('+', "%2B");
    format!("number={number}&code=482915&username={user}&password={password}")
}

/// Sets `home`'s first user's default webhook URL: every call and
/// verification of the run reports to `receiver`.
fn hooks_to(home: &Home, receiver: &Receiver) {
    home.cli(&["user", "webhook", "acme1", "--url", &receiver.url("hook")]);
}

/// An `Idempotency-Key` claim left in progress, as a daemon sharing the
/// database leaves it while it carries the request out (or when it died
/// mid-request): the stored answer of `key` taken back.
fn leave_in_progress(daemon: &Daemon, key: &str) {
    let conn = rusqlite::Connection::open(daemon.db_path()).expect("open the daemon's database");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let n = conn
        .execute("UPDATE idempotency_keys SET status = NULL, body = NULL, location = NULL WHERE key = ?1", [key])
        .unwrap();
    assert_eq!(n, 1, "the key {key} was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_the_document_says() {
    let spec = Spec::load();
    let receiver = Receiver::start(&[]);
    // Silent: nothing happens after an Originate unless the test says so
    // (an AMI event, a FastAGI session), so every outcome is chosen here.
    let config = format!("{FAST_FLOW}\n{LIMITS}\n{VERIFY}\n{WEBHOOKS}");
    let (home, fake, daemon) = Setup::new("openapi")
        .http_keys(BODY_TIMEOUT)
        .config(&config)
        .fake(FakeScript::outcome(OriginateOutcome::Silent))
        .await;
    hooks_to(&home, &receiver);
    let api = Api { spec: &spec, daemon: &daemon };

    // The document itself, as served: the committed bytes.
    let served = api.expect(200, Request::get("/v1/openapi.json"));
    assert_eq!(served.body, DOCUMENT, "the daemon serves openapi/openapi.json as committed");
    api.expect(405, Request::post("/v1/openapi.json"));

    // Operations endpoints.
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.call(Request::get("/healthz")).status != 200 {
        assert!(Instant::now() < deadline, "the daemon never got healthy\n{}", daemon.logs());
        support::blocking(|| std::thread::sleep(Duration::from_millis(50)));
    }
    api.expect(405, Request::post("/healthz"));
    api.expect(200, Request::get("/metrics"));
    api.expect(405, Request::new("DELETE", "/metrics"));

    seed_api(&api).await;
    let calls = calls_api(&api, &fake).await;
    verifications_api(&api, &fake).await;
    logins_refused(&api, &calls.done);
    bodies_refused(&api);

    // Every call still live is canceled, so that every change has been
    // announced once the outbox is empty.
    for status in ["queued", "dialing", "ringing"] {
        let page = api.user(200, Request::get(&format!("/v1/calls?status={status}&limit=100"))).json();
        for call in page["calls"].as_array().expect("calls") {
            api.user(200, Request::post(&format!("/v1/calls/{}/cancel", call["id"].as_str().unwrap())));
        }
    }
    daemon.settle(Duration::from_secs(30));
    api.wait_webhooks_delivered();

    // The daemon that cannot reach Asterisk: health down, the queue full,
    // and calls and verifications that expire.
    let b = unreachable_asterisk(&spec, &receiver).await;

    for hook in receiver.received() {
        if let Err(e) = spec.webhook(&hook) {
            panic!("{e}\n{hook:?}");
        }
        let secret = if hook.body.contains(&b.id_marker) { &b.secret } else { &home.users[0].webhook_secret };
        assert!(hook.signed_with(secret), "a webhook signed with its user's secret: {hook:?}");
    }
    spec.assert_covered(&UNPROVOKED, &[]);
}

/// The seed API: accepted, refused for each reason, another method, another path.
async fn seed_api(api: &Api<'_>) {
    let q = |number: &str| seed_query(number, "acme1", PASSWORD);
    api.expect(200, Request::get(&format!("/outbound.cgi?{}", q("03001230001"))));
    api.expect(
        200,
        Request::get(&format!("/outbound.cgi?{}&language=ur&require_keypress=1&mode=enter", q("03001230002"))),
    );
    api.expect(200, Request::post("/outbound.cgi").form(&q("+923001230003")));
    // Refused fields: ones the document forbids too, and ones beyond what a
    // schema can say.
    api.expect(
        400,
        Request::get(&format!("/outbound.cgi?number=03001230004&username=acme1&password={PASSWORD}")).violating(),
    );
    api.expect(400, Request::get(&format!("/outbound.cgi?{}&mode=shout", q("03001230004"))).violating());
    api.expect(400, Request::get(&format!("/outbound.cgi?{}", q("0300123000a"))).violating());
    api.expect(400, Request::get(&format!("/outbound.cgi?{}", q("12"))).unjudged());
    api.expect(400, Request::get(&format!("/outbound.cgi?{}&language=fr", q("03001230004"))).unjudged());
    api.expect(400, Request::post("/outbound.cgi").form(&format!("{}&code=1234", q("03001230004"))).violating());
    // A stranger's name: the same 401 as a wrong password (from an address
    // of its own, whose failed logins nothing else counts).
    let stranger = ip([127, 0, 0, 8]);
    api.expect(
        401,
        Request::get(&format!("/outbound.cgi?{}", seed_query("03001230004", "nobody", "x"))).from(stranger),
    );
    api.expect(401, Request::post("/outbound.cgi").form(&seed_query("03001230004", "acme1", "wrong")).from(stranger));
    // The toll-fraud guard: a UK number, the UK not allowed.
    api.expect(403, Request::get(&format!("/outbound.cgi?{}", q("+442079460000"))));
    api.expect(403, Request::post("/outbound.cgi").form(&q("+442079460000")));
    api.expect(415, Request::post("/outbound.cgi").json(&q("03001230004")).violating());
    api.expect(405, Request::new("PUT", "/outbound.cgi"));
    api.expect(404, Request::get("/nowhere.cgi"));
}

/// What [`calls_api`] leaves for later steps.
struct Calls {
    /// A final call.
    done: String,
}

/// `/v1/calls`: create (with `Idempotency-Key`), list, show, cancel, and
/// each way they refuse; the flows behind the call webhooks.
async fn calls_api(api: &Api<'_>, fake: &FakeAmi) -> Calls {
    // Created, then the same request again under its key: the first answer.
    let body = r#"{"number":"03001230011","code":"482915","language":"en","require_keypress":false,"mode":"read"}"#;
    let first = api.user(202, Request::post("/v1/calls").header("Idempotency-Key", "openapi-1").json(body));
    let again = api.user(202, Request::post("/v1/calls").header("Idempotency-Key", "openapi-1").json(body));
    assert_eq!((again.header("idempotent-replayed"), &again.body), (Some("true"), &first.body));
    api.user(
        422,
        Request::post("/v1/calls")
            .header("Idempotency-Key", "openapi-1")
            .json(r#"{"number":"03001230012","code":"1234"}"#),
    );
    api.user(
        202,
        Request::post("/v1/calls")
            .header("Idempotency-Key", "openapi-2")
            .json(r#"{"number":"03001230013","code":"1234","callback_url":null}"#),
    );
    leave_in_progress(api.daemon, "openapi-2");
    api.user(
        409,
        Request::post("/v1/calls")
            .header("Idempotency-Key", "openapi-2")
            .json(r#"{"number":"03001230013","code":"1234","callback_url":null}"#),
    );
    // A refusal is kept under its key too.
    let bad = r#"{"number":"03001230014","code":"12"}"#;
    api.user(400, Request::post("/v1/calls").header("Idempotency-Key", "openapi-3").json(bad).violating());
    let replayed =
        api.user(400, Request::post("/v1/calls").header("Idempotency-Key", "openapi-3").json(bad).violating());
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    // Fields refused: the document forbids them too, or cannot tell.
    for body in [
        r#"{"code":"1234"}"#,
        r#"{"number":"03001230014","code":"1234","color":"red"}"#,
        r#"{"number":3001230014,"code":"1234"}"#,
        r#"{"number":"03001230014","code":"1234","mode":"shout"}"#,
        r#"{"number":"03001230014","code":"1234","callback_url":"ftp://example.com/"}"#,
        "not json",
        "[1]",
    ] {
        api.user(400, Request::post("/v1/calls").json(body).violating());
    }
    api.user(400, Request::post("/v1/calls").json(r#"{"number":"12","code":"1234"}"#).unjudged());
    api.user(
        400,
        Request::post("/v1/calls")
            .json(r#"{"number":"03001230014","code":"1234","callback_url":"http://"}"#)
            .unjudged(),
    );
    api.user(
        400,
        Request::post("/v1/calls")
            .header("Idempotency-Key", "two words")
            .json(r#"{"number":"03001230014","code":"1234"}"#)
            .violating(),
    );
    api.user(403, Request::post("/v1/calls").json(r#"{"number":"+442079460000","code":"1234"}"#));
    api.user(415, Request::post("/v1/calls").body("text/plain", b"number=03001230014").violating());
    api.expect(401, Request::post("/v1/calls").json(r#"{"number":"03001230014","code":"1234"}"#).violating());
    api.expect(405, Request::new("DELETE", "/v1/calls"));

    // A call that rings and is canceled; a second cancel is too late.
    let canceled = api.create_call("03001230021");
    api.wait_call(&canceled, "dialing");
    fake.emit_ringing(&canceled);
    api.wait_call(&canceled, "ringing");
    api.user(200, Request::post(&format!("/v1/calls/{canceled}/cancel")));
    api.user(409, Request::post(&format!("/v1/calls/{canceled}/cancel")));
    // A call the callee hears to the end; one that is busy.
    let heard = api.create_call("03001230022");
    answer(fake, api.daemon, &heard, 6).await;
    api.wait_call(&heard, "completed");
    let refused = api.create_call("03001230023");
    api.wait_call(&refused, "dialing");
    busy(fake, &refused);
    let failed = api.wait_call(&refused, "failed");
    assert_eq!(failed["reason"], "busy");
    // An enter-mode call whose callee hangs up at once.
    let entered = api
        .user(202, Request::post("/v1/calls").json(r#"{"number":"03001230024","code":"482915","mode":"enter"}"#))
        .json();
    let id = entered["id"].as_str().unwrap().to_owned();
    let token = fake.wait_agi_token(&id, Duration::from_secs(10)).await.expect("an Originate");
    fake_agi::session(api.daemon.agi, &id, Callee { token: Some(&token), hang_up_after: Some(1), ..Callee::default() })
        .await;
    api.wait_call(&id, "failed");

    // Show, list and page.
    api.user(200, Request::get(&format!("/v1/calls/{heard}")));
    api.user(404, Request::get("/v1/calls/0123456789abcdef0123456789abcdef"));
    api.user(404, Request::get("/v1/calls/not-an-id").violating());
    api.expect(401, Request::get(&format!("/v1/calls/{heard}")).violating());
    api.user(405, Request::new("PUT", &format!("/v1/calls/{heard}")));
    let page = api.user(200, Request::get("/v1/calls?limit=2")).json();
    let cursor = page["next_cursor"].as_str().expect("a next page").to_owned();
    api.user(200, Request::get(&format!("/v1/calls?limit=2&cursor={cursor}")));
    api.user(200, Request::get("/v1/calls?status=failed"));
    api.user(400, Request::get("/v1/calls?limit=0").violating());
    api.user(400, Request::get("/v1/calls?limit=many").violating());
    api.user(400, Request::get("/v1/calls?status=lost").violating());
    api.user(400, Request::get("/v1/calls?cursor=forged").unjudged());
    api.expect(401, Request::get("/v1/calls").violating());
    api.user(404, Request::post("/v1/calls/0123456789abcdef0123456789abcdef/cancel"));
    api.expect(401, Request::post(&format!("/v1/calls/{heard}/cancel")).violating());
    api.user(405, Request::get(&format!("/v1/calls/{heard}/cancel")));
    api.user(404, Request::get("/v1/nowhere"));
    Calls { done: heard }
}

/// `/v1/verifications`: created, called again, checked (wrong, right, too
/// late, used up), canceled, and each way they refuse.
async fn verifications_api(api: &Api<'_>, fake: &FakeAmi) {
    // Approved with the code the callee heard; a code serves once.
    let v = api
        .user(
            201,
            Request::post("/v1/verifications")
                .header("Idempotency-Key", "openapi-v1")
                .json(r#"{"number":"03001230031","code_length":4,"language":"en"}"#),
        )
        .json();
    let (id, call) = (v["id"].as_str().unwrap().to_owned(), v["call_id"].as_str().unwrap().to_owned());
    let replay = api.user(
        201,
        Request::post("/v1/verifications")
            .header("Idempotency-Key", "openapi-v1")
            .json(r#"{"number":"03001230031","code_length":4,"language":"en"}"#),
    );
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    api.user(
        422,
        Request::post("/v1/verifications").header("Idempotency-Key", "openapi-v1").json(r#"{"number":"03001230032"}"#),
    );
    let code = answer(fake, api.daemon, &call, 4).await;
    let wrong: String = code.chars().map(|c| if c == '9' { '0' } else { char::from(c as u8 + 1) }).collect();
    let check = format!("/v1/verifications/{id}/check");
    let pending = api.user(200, Request::post(&check).json(&format!(r#"{{"code":"{wrong}"}}"#))).json();
    assert_eq!((pending["status"].as_str(), pending["attempts_left"].as_u64()), (Some("pending"), Some(1)));
    let approved = api.user(200, Request::post(&check).json(&format!(r#"{{"code":"{code}"}}"#))).json();
    assert_eq!(approved["status"], "approved");
    api.user(409, Request::post(&check).json(&format!(r#"{{"code":"{code}"}}"#)));
    api.user(409, Request::post(&format!("/v1/verifications/{id}/cancel")));
    api.user(200, Request::get(&format!("/v1/verifications/{id}")));

    // Called again while pending, up to max_sends; then used up by wrong codes.
    let body = r#"{"number":"03001230033","require_keypress":true,"callback_url":null}"#;
    let v = api.user(201, Request::post("/v1/verifications").json(body)).json();
    let id = v["id"].as_str().unwrap().to_owned();
    let resent = api.user(200, Request::post("/v1/verifications").json(body)).json();
    assert_eq!((resent["id"].as_str(), resent["sends"].as_u64()), (Some(id.as_str()), Some(2)));
    api.user(429, Request::post("/v1/verifications").json(body));
    let check = format!("/v1/verifications/{id}/check");
    api.user(200, Request::post(&check).json(r#"{"code":"1"}"#));
    let spent = api.user(200, Request::post(&check).json(r#"{"code":"2"}"#)).json();
    assert_eq!(spent["status"], "max_attempts_reached");

    // Canceled; then too late to cancel.
    let v = api.user(201, Request::post("/v1/verifications").json(r#"{"number":"03001230034"}"#)).json();
    let cancel = format!("/v1/verifications/{}/cancel", v["id"].as_str().unwrap());
    api.user(200, Request::post(&cancel));
    api.user(409, Request::post(&cancel));

    // The same key in progress elsewhere.
    let body = r#"{"number":"03001230035"}"#;
    api.user(201, Request::post("/v1/verifications").header("Idempotency-Key", "openapi-v2").json(body));
    leave_in_progress(api.daemon, "openapi-v2");
    api.user(409, Request::post("/v1/verifications").header("Idempotency-Key", "openapi-v2").json(body));

    // Refusals.
    for body in [
        r#"{}"#,
        r#"{"number":"03001230036","code_length":3}"#,
        r#"{"number":"03001230036","code_length":"6"}"#,
        r#"{"number":"03001230036","code":"123456"}"#,
        r#"{"number":"03001230036","language":"a b"}"#,
    ] {
        api.user(400, Request::post("/v1/verifications").json(body).violating());
    }
    api.user(400, Request::post("/v1/verifications").json(r#"{"number":"03001230036","language":"fr"}"#).unjudged());
    api.user(403, Request::post("/v1/verifications").json(r#"{"number":"+442079460000"}"#));
    api.user(415, Request::post("/v1/verifications").body("text/plain", b"03001230036").violating());
    api.expect(401, Request::post("/v1/verifications").json(r#"{"number":"03001230036"}"#).violating());
    api.user(405, Request::get("/v1/verifications"));
    for body in [r#"{"code":"12ab"}"#, r#"{"code":"12345678901"}"#, r#"{}"#, r#"{"code":"1","extra":1}"#, "1234"] {
        api.user(400, Request::post(&check).json(body).violating());
    }
    let unknown = "/v1/verifications/0123456789abcdef0123456789abcdef";
    api.user(404, Request::get(unknown));
    api.user(404, Request::post(&format!("{unknown}/check")).json(r#"{"code":"1234"}"#));
    api.user(404, Request::post(&format!("{unknown}/cancel")));
    api.user(415, Request::post(&check).body("text/plain", b"1234").violating());
    api.expect(401, Request::get(&format!("/v1/verifications/{id}")).violating());
    api.expect(401, Request::post(&check).json(r#"{"code":"1"}"#).violating());
    api.expect(401, Request::post(&cancel).violating());
    api.user(405, Request::new("PUT", &format!("/v1/verifications/{id}")));
    api.user(405, Request::get(&check));
    api.user(405, Request::get(&cancel));
}

/// The failed-login limits: five wrong passwords from one address for one
/// name, then every operation that logs in is refused `429` there.
fn logins_refused(api: &Api<'_>, call: &str) {
    let guess = |req: Request| req.basic("mallory", "guess").from(ip(GUESSER));
    for _ in 0..5 {
        api.expect(401, guess(Request::get("/v1/calls")));
    }
    let seed = seed_query("03001230041", "mallory", "guess");
    api.expect(429, Request::get(&format!("/outbound.cgi?{seed}")).from(ip(GUESSER)));
    api.expect(429, Request::post("/outbound.cgi").form(&seed).from(ip(GUESSER)));
    let v = "/v1/verifications/0123456789abcdef0123456789abcdef";
    for req in [
        Request::post("/v1/calls").json(r#"{"number":"03001230041","code":"1234"}"#),
        Request::get("/v1/calls"),
        Request::get(&format!("/v1/calls/{call}")),
        Request::post(&format!("/v1/calls/{call}/cancel")),
        Request::post("/v1/verifications").json(r#"{"number":"03001230041"}"#),
        Request::get(v),
        Request::post(&format!("{v}/check")).json(r#"{"code":"1234"}"#),
        Request::post(&format!("{v}/cancel")),
    ] {
        api.expect(429, guess(req));
    }
}

/// Bodies over `max_body_bytes`, and bodies that never arrive.
fn bodies_refused(api: &Api<'_>) {
    let pad = "9".repeat(9000);
    let big_form = format!("{}&pad={pad}", seed_query("03001230051", "acme1", PASSWORD));
    let big_json = format!(r#"{{"number":"03001230051","code":"{pad}"}}"#);
    let check = "/v1/verifications/0123456789abcdef0123456789abcdef/check";
    api.expect(413, Request::post("/outbound.cgi").form(&big_form).unjudged());
    api.user(413, Request::post("/v1/calls").json(&big_json).unjudged());
    api.user(413, Request::post("/v1/verifications").json(&big_json).unjudged());
    api.user(413, Request::post(check).json(&big_json).unjudged());
    let short = r#"{"number":"03001230051""#;
    api.expect(408, Request::post("/outbound.cgi").form("number=0300").withhold(10).unjudged());
    api.user(408, Request::post("/v1/calls").json(short).withhold(10).unjudged());
    api.user(408, Request::post("/v1/verifications").json(short).withhold(10).unjudged());
    api.user(408, Request::post(check).json(short).withhold(10).unjudged());
}

/// What [`unreachable_asterisk`] leaves for judging its webhooks.
struct Unreachable {
    /// Its first user's webhook secret.
    secret: String,
    /// Text only that daemon's webhook bodies hold (a number of its own).
    id_marker: String,
}

/// A daemon whose Asterisk is gone: `/healthz` 503, a full queue (one call)
/// answers 503 to every request that would place a call, a queued call is
/// canceled, and a queued call and a verification pass their deadlines -
/// expired by the housekeeping of the restarted daemon, with their webhooks.
async fn unreachable_asterisk(spec: &Spec, receiver: &Receiver) -> Unreachable {
    let fake = FakeAmi::start(FakeScript::for_daemon()).await;
    fake.stop();
    let home = Setup::new("openapi-down").config(&format!("[queue]\nmax_queued = 1\n\n{WEBHOOKS}")).home(fake.addr());
    hooks_to(&home, receiver);
    let daemon = home.start();
    let api = Api { spec, daemon: &daemon };
    let health = api.expect(503, Request::get("/healthz")).json();
    assert_eq!(health["down"], serde_json::json!(["ami"]));

    let marker = "+923001239";
    let queued = api.create_call("03001239001");
    let full = seed_query("03001239002", "acme1", PASSWORD);
    api.expect(503, Request::get(&format!("/outbound.cgi?{full}")));
    api.expect(503, Request::post("/outbound.cgi").form(&full));
    api.user(503, Request::post("/v1/calls").json(r#"{"number":"03001239002","code":"1234"}"#));
    api.user(503, Request::post("/v1/verifications").json(r#"{"number":"03001239002"}"#));
    api.user(200, Request::post(&format!("/v1/calls/{queued}/cancel")));

    // Past their deadlines, as if an hour went by.
    let v = api.user(201, Request::post("/v1/verifications").json(r#"{"number":"03001239003"}"#)).json();
    let (vid, call) = (v["id"].as_str().unwrap().to_owned(), v["call_id"].as_str().unwrap().to_owned());
    {
        let conn = rusqlite::Connection::open(daemon.db_path()).expect("open the daemon's database");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute("UPDATE verifications SET expires_at = 1 WHERE id = ?1", [&vid]).unwrap();
        conn.execute("UPDATE calls SET deadline_at = 1 WHERE id = ?1", [&call]).unwrap();
    }
    // Expired at once as the API shows it, ended by housekeeping later.
    let shown = api.user(200, Request::get(&format!("/v1/verifications/{vid}"))).json();
    assert_eq!((shown["status"].as_str(), shown["ended_at"].is_null()), (Some("expired"), true));
    // Killed and started again: housekeeping runs at start.
    drop(daemon);
    let daemon = home.start();
    let api = Api { spec, daemon: &daemon };
    api.wait_call(&call, "expired");
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.user(200, Request::get(&format!("/v1/verifications/{vid}"))).json()["ended_at"].is_null() {
        assert!(Instant::now() < deadline, "verification {vid} never ended\n{}", daemon.logs());
        support::blocking(|| std::thread::sleep(Duration::from_millis(50)));
    }
    api.wait_webhooks_delivered();
    Unreachable { secret: home.users[0].webhook_secret.clone(), id_marker: marker.to_owned() }
}

/// A document that says other than the daemon does fails the judging: a
/// field of an answer renamed, a field of a request renamed, a status
/// dropped. Judged on real exchanges with a daemon, not on made-up ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_that_drifts_from_the_daemon_fails() {
    let (_home, _fake, daemon) =
        Setup::new("openapi-drift").config(LIMITS).fake(FakeScript::outcome(OriginateOutcome::Silent)).await;
    let spec = Spec::load();
    let seed = Request::get(&format!("/outbound.cgi?{}", seed_query("03001230061", "acme1", PASSWORD)));
    let seed_resp = spec.call(daemon.http, &seed);
    let create = Request::post("/v1/calls").basic("acme1", PASSWORD).json(r#"{"number":"03001230062","code":"1234"}"#);
    let create_resp = spec.call(daemon.http, &create);
    assert_eq!((seed_resp.status, create_resp.status), (200, 202));

    let drifted = |from: &str, to: &str| {
        assert_eq!(DOCUMENT.matches(from).count(), 1, "{from:?} is in the document once");
        Spec::parse(&DOCUMENT.replace(from, to))
    };
    // The seed answer's `call_id` renamed in the document.
    let doc = drifted(r#""required": ["call_id"],"#, r#""required": ["callid"],"#);
    let e = doc.judge(&seed, &seed_resp).expect_err("a renamed answer field fails");
    assert!(e.contains("callid"), "{e}");
    let doc = drifted(
        r##""call_id": { "$ref": "#/components/schemas/Id" }"##,
        r##""callid": { "$ref": "#/components/schemas/Id" }"##,
    );
    let e = doc.judge(&seed, &seed_resp).expect_err("an answer field the document lacks fails");
    assert!(e.contains("call_id"), "{e}");
    // A request field renamed: what the daemon takes, the document refuses.
    let doc = drifted(r#""required": ["number", "code"],"#, r#""required": ["phone", "code"],"#);
    let e = doc.judge(&create, &create_resp).expect_err("a renamed request field fails");
    assert!(e.contains("does not allow this request"), "{e}");
    // A status the operation gives, dropped from the document.
    let doc = drifted(r#""202": {"#, r#""299": {"#);
    let e = doc.judge(&create, &create_resp).expect_err("an undocumented status fails");
    assert!(e.contains("202"), "{e}");
    // A type changed.
    let doc = drifted(r#""readings": { "type": "integer""#, r#""readings": { "type": "string""#);
    let e = doc.judge(&create, &create_resp).expect_err("a field of another type fails");
    assert!(e.contains("readings"), "{e}");
}

/// `openapi-spec-validator` and everything it needs, pinned (the `pip
/// freeze` of a working venv), so that a run does not depend on the day's
/// releases on PyPI.
const VALIDATOR: [&str; 20] = [
    "annotated-types==0.8.0",
    "attrs==26.1.0",
    "jsonschema==4.26.0",
    "jsonschema-path==0.5.0",
    "jsonschema-specifications==2025.9.1",
    "lazy-object-proxy==1.13.0",
    "openapi-schema-validator==0.9.0",
    "openapi-spec-validator==0.9.0",
    "pathable==0.6.0",
    "pydantic==2.14.4",
    "pydantic-settings==2.16.3",
    "pydantic_core==2.50.5",
    "python-dotenv==1.2.4",
    "PyYAML==6.0.4",
    "referencing==0.37.0",
    "rfc3339-validator==0.1.4",
    "rpds-py==2026.9.1",
    "six==1.17.0",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
];

/// The document passes `openapi-spec-validator`, an OpenAPI 3.1 validator
/// of its own (installed from PyPI into a venv under `target/tmp/` on first
/// use; needs `python3` with `venv`, which scripts/test installs).
#[test]
fn the_document_is_valid_openapi_3_1() {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openapi-tools");
    let python = venv.join("bin/python");
    let stamp = venv.join("installed");
    let wanted = VALIDATOR.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let _ = std::fs::remove_dir_all(&venv);
        let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("run python3 -m venv");
        assert!(made.success(), "python3 -m venv failed (Debian: apt-get install python3-venv)");
        let pip = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"])
            .args(VALIDATOR)
            .status()
            .expect("run pip");
        assert!(pip.success(), "pip install openapi-spec-validator failed");
        std::fs::write(&stamp, &wanted).unwrap();
    }
    let document = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let out = Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&document)
        .output()
        .expect("run the validator");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("OK"), "openapi-spec-validator:\n{}", &text[..text.len().min(4000)]);
}
