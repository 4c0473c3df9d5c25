//! The seed API over real HTTP against the real binary, with a scripted AMI
//! server standing in for Asterisk so the test can see every action that
//! reaches it: bad requests must place no call at all.

mod support;

use std::time::Duration;

use support::daemon::Daemon;
use support::fake_ami::{FakeAmi, FakeScript};
use support::harness::{Home, NO_NUMBER_QUOTAS, PASSWORD, Setup};
use support::http;

/// A daemon on a fake AMI with users `acme1` and `off1` (disabled). These
/// tests dial one number many times; its quotas are tests/abuse_limits.rs's subject.
async fn setup(name: &str) -> (Home, FakeAmi, Daemon) {
    let (home, fake, daemon) =
        Setup::new(name).user("off1", PASSWORD).config(NO_NUMBER_QUOTAS).fake(FakeScript::for_daemon()).await;
    home.cli(&["user", "disable", "off1"]);
    (home, fake, daemon)
}

fn seed(number: &str, code: &str, user: &str, password: &str) -> String {
    format!("/outbound.cgi?number={number}&code={code}&username={user}&password={password}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_precise_error_and_dial_nobody() {
    let (_home, fake, daemon) = setup("bad").await;
    let addr = daemon.http;
    let ok_rest = format!("&username=acme1&password={PASSWORD}");
    // (target, status, detail: "" for none)
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("/outbound.cgi?code=482915{ok_rest}"), 400, "number is required"),
        (format!("/outbound.cgi?number=&code=482915{ok_rest}"), 400, "number is empty"),
        (format!("/outbound.cgi?number=03001234567{ok_rest}"), 400, "code is required"),
        (format!("/outbound.cgi?number=03001234567&code={ok_rest}"), 400, "code is empty"),
        (format!("/outbound.cgi?number=03001234567&code=1234&code=5678{ok_rest}"), 400, "code is given more than once"),
        (
            format!("/outbound.cgi?number=03001234567&number=03001234568&code=1234{ok_rest}"),
            400,
            "number is given more than once",
        ),
        (format!("/outbound.cgi?number=03001234567&code=1234&password={PASSWORD}"), 400, "username is required"),
        ("/outbound.cgi?number=03001234567&code=1234&username=acme1".into(), 400, "password is required"),
        (
            format!("/outbound.cgi?number=03001234567&code=1234&username=acme1&username=acme1&password={PASSWORD}"),
            400,
            "username is given more than once",
        ),
        (format!("/outbound.cgi?number=03001234567&code=123{ok_rest}"), 400, "code must be 4 to 20 digits long"),
        (
            format!("/outbound.cgi?number=03001234567&code=123456789012345678901{ok_rest}"),
            400,
            "code must be 4 to 20 digits long",
        ),
        (format!("/outbound.cgi?number=03001234567&code=12a4{ok_rest}"), 400, "code must contain only digits 0-9"),
        (
            format!("/outbound.cgi?number=03001234567&code=1234%0D%0AAction:%20Logoff{ok_rest}"),
            400,
            "code must contain only digits 0-9",
        ),
        (
            format!("/outbound.cgi?number=0300%201234567&code=1234{ok_rest}"),
            400,
            "number must contain only digits, optionally prefixed by + or 00",
        ),
        (
            format!("/outbound.cgi?number=0300+1234567&code=1234{ok_rest}"),
            400,
            "number must contain only digits, optionally prefixed by + or 00",
        ),
        (
            format!("/outbound.cgi?number=0300123456a&code=1234{ok_rest}"),
            400,
            "number must contain only digits, optionally prefixed by + or 00",
        ),
        (
            format!("/outbound.cgi?number=03001234567%0D%0AAction:%20Originate&code=1234{ok_rest}"),
            400,
            "number must contain only digits, optionally prefixed by + or 00",
        ),
        (
            format!("/outbound.cgi?number=%0A03001234567&code=1234{ok_rest}"),
            400,
            "number must contain only digits, optionally prefixed by + or 00",
        ),
        (format!("/outbound.cgi?number=%2B9230012345678901&code=1234{ok_rest}"), 400, "number has more than 15 digits"),
        (format!("/outbound.cgi?number=0300123&code=1234{ok_rest}"), 400, "number is not a valid phone number"),
        (format!("/outbound.cgi?number=%2B920001234567&code=1234{ok_rest}"), 400, "number is not a valid phone number"),
        (
            format!("/outbound.cgi?number=%FF%FE&code=1234{ok_rest}"),
            400,
            "number must contain only digits, optionally prefixed by + or 00",
        ),
        ("/outbound.cgi".into(), 400, "number is required"),
        (
            format!("/outbound.cgi?number=03001234567&code=1234{ok_rest}&language=fr"),
            400,
            "language must be one of: en, ur",
        ),
        (
            format!("/outbound.cgi?number=03001234567&code=1234{ok_rest}&language=UR"),
            400,
            "language must be one of: en, ur",
        ),
        (
            format!("/outbound.cgi?number=03001234567&code=1234{ok_rest}&language=../en"),
            400,
            "language must be one of: en, ur",
        ),
        (format!("/outbound.cgi?number=03001234567&code=1234{ok_rest}&language="), 400, "language is empty"),
        (
            format!("/outbound.cgi?number=03001234567&code=1234{ok_rest}&language=en&language=ur"),
            400,
            "language is given more than once",
        ),
        (
            format!("/outbound.cgi?number=03001234567&code=1234{ok_rest}&require_keypress=yes"),
            400,
            "require_keypress must be one of: 1, 0, true, false",
        ),
        (
            format!("/outbound.cgi?number=03001234567&code=1234{ok_rest}&require_keypress="),
            400,
            "require_keypress is empty",
        ),
        // Field checks come before credentials: a bad option with a bad password is a 400.
        (
            "/outbound.cgi?number=03001234567&code=1234&username=acme1&password=wrong&language=fr".to_string(),
            400,
            "language must be one of: en, ur",
        ),
        (seed("03001234567", "482915", "nobody", PASSWORD), 401, ""),
        (seed("03001234567", "482915", "acme1", "wrong-password"), 401, ""),
        (seed("03001234567", "482915", "off1", PASSWORD), 401, ""),
        (seed("03001234567", "482915", "acme1", &"x".repeat(100)), 401, ""),
        ("/nothing-here".into(), 404, ""),
        ("/outbound.cgi/extra".into(), 404, ""),
    ];
    let mut unauthorized_bodies = Vec::new();
    for (target, status, detail) in &cases {
        let resp = tokio::task::block_in_place(|| http::get(addr, target));
        assert_eq!(resp.status, *status, "{target}: {}", resp.body);
        assert_eq!(resp.json_field("response_code").as_deref(), Some(status.to_string().as_str()), "{target}");
        // The seed's table pairs each code with a fixed description, which
        // clients may compare verbatim; what exactly is wrong is `detail`,
        // and the field at fault `field` (each message starts with its name).
        let phrase = match status {
            400 => "Bad Request",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        assert_eq!(resp.json_field("response_description").as_deref(), Some(phrase), "{target}");
        let expected_detail = (!detail.is_empty()).then_some(*detail);
        assert_eq!(resp.json_field("detail").as_deref(), expected_detail, "{target}");
        let expected_field = expected_detail.and_then(|d| d.split(' ').next());
        assert_eq!(resp.json_field("field").as_deref(), expected_field, "{target}");
        assert_eq!(resp.header("content-type"), Some("application/json"), "{target}");
        assert!(resp.json_field("call_id").is_none(), "{target}: no call id on errors");
        if *status == 401 {
            unauthorized_bodies.push(resp.body);
        }
    }
    assert!(unauthorized_bodies.windows(2).all(|w| w[0] == w[1]), "401 bodies differ: {unauthorized_bodies:?}");

    // Methods, media types and sizes.
    let resp = tokio::task::block_in_place(|| http::send(addr, "DELETE", "/outbound.cgi", "text/plain", b""));
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET, POST"));
    assert_eq!(resp.json_field("response_code").as_deref(), Some("405"));
    let body = format!("number=03001234567&code=1234&username=acme1&password={PASSWORD}");
    let resp =
        tokio::task::block_in_place(|| http::send(addr, "POST", "/outbound.cgi", "application/json", body.as_bytes()));
    assert_eq!(resp.status, 415);
    assert_eq!(resp.json_field("response_code").as_deref(), Some("415"));
    assert_eq!(resp.json_field("response_description").as_deref(), Some("Unsupported Media Type"));
    let big = format!("{body}&pad={}", "x".repeat(9000));
    let resp = tokio::task::block_in_place(|| http::post_form(addr, "/outbound.cgi", &big));
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json_field("response_code").as_deref(), Some("413"));
    assert_eq!(resp.json_field("response_description").as_deref(), Some("Payload Too Large"));
    assert_eq!(resp.json_field("detail").as_deref(), Some("the body may be at most 8192 bytes"));
    // The same field in the query and in the body is a repeat.
    let resp = tokio::task::block_in_place(|| http::post_form(addr, "/outbound.cgi?code=1111", &body));
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json_field("response_description").as_deref(), Some("Bad Request"));
    assert_eq!(resp.json_field("detail").as_deref(), Some("code is given more than once"));
    assert_eq!(resp.json_field("field").as_deref(), Some("code"));
    // A request head far over the limit is refused, not buffered.
    let huge = format!("/outbound.cgi?number={}", "1".repeat(40_000));
    let resp = tokio::task::block_in_place(|| http::get(addr, &huge));
    assert!(resp.status == 431 || resp.status == 414 || resp.status == 400, "{}", resp.status);

    // Nothing above reached Asterisk. A good call placed last is dialled
    // after anything queued before it: once its Originate is in, the one
    // Originate must be its own.
    assert!(daemon.stored_calls().is_empty(), "no call may be stored: {:?}", daemon.stored_calls());
    let good = daemon.seed_call("03001234567", "482915");
    assert!(fake.wait_for_originate(&good, Duration::from_secs(10)).await.is_some(), "{:?}", fake.actions());
    assert_eq!(fake.originated(), [good], "actions: {:?}", fake.actions());
    let others: Vec<_> =
        fake.actions().into_iter().filter(|a| !(a.is("Login") || a.is("Ping") || a.is("Originate"))).collect();
    assert!(others.is_empty(), "{others:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_request_is_stored_then_originated_without_the_code() {
    let (_home, fake, daemon) = setup("good").await;
    let addr = daemon.http;
    let resp = tokio::task::block_in_place(|| http::get(addr, &seed("03001234567", "482915", "acme1", PASSWORD)));
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json_field("response_code").as_deref(), Some("200"));
    assert_eq!(resp.json_field("response_description").as_deref(), Some("OK"));
    let call_id = resp.json_field("call_id").expect("call_id");
    assert_eq!(call_id.len(), 32);
    assert!(call_id.bytes().all(|b| b.is_ascii_hexdigit()));

    let originate = fake.wait_for_action("Originate", Duration::from_secs(10)).await.expect("an Originate");
    assert_eq!(originate.get("ChannelId"), Some(call_id.as_str()));
    assert_eq!(originate.get("Channel"), Some("PJSIP/03001234567@carrier"));
    assert_eq!(originate.get("Context"), Some("voice-otp"));
    assert_eq!(originate.get("Exten"), Some("s"));
    assert_eq!(originate.get("Priority"), Some("1"));
    assert_eq!(originate.get("Timeout"), Some("30000"));
    assert!(originate.get("Async").is_some_and(|v| v.eq_ignore_ascii_case("true")));
    assert!(originate.get("ActionID").is_some());
    let agi_var = format!("VOICE_OTP_AGI=agi://{}/otp", daemon.agi);
    // The call id also rides on the INVITE ([dial] call_id_header), for the
    // far end's logs - and the sandbox phone's recording names.
    let header_var = format!("PJSIP_HEADER(add,X-Voice-OTP-Call)={call_id}");
    // The FastAGI token: fresh random hex, different for every dial.
    let token = originate.variable("VOICE_OTP_TOKEN").expect("a FastAGI token");
    assert!(token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    let token_var = format!("VOICE_OTP_TOKEN={token}");
    assert_eq!(originate.get_all("Variable"), vec![agi_var.as_str(), token_var.as_str(), header_var.as_str()]);

    // POST form works the same; other number forms normalise to one number.
    for number in ["%2B923001234567", "00923001234567", "923001234567", "3001234567"] {
        let body = format!("number={number}&code=1234&username=acme1&password={PASSWORD}");
        let resp = tokio::task::block_in_place(|| http::post_form(addr, "/outbound.cgi", &body));
        assert_eq!(resp.status, 200, "{number}: {}", resp.body);
    }
    assert!(fake.wait_for_count("Originate", 5, Duration::from_secs(10)).await);
    let mut tokens = std::collections::HashSet::new();
    for action in fake.actions().iter().filter(|a| a.is("Originate")) {
        assert_eq!(action.get("Channel"), Some("PJSIP/03001234567@carrier"));
        tokens.insert(action.variable("VOICE_OTP_TOKEN").expect("token").to_owned());
    }
    assert_eq!(tokens.len(), 5, "one token per dial");

    // The code and the password are in no AMI header and no log line.
    for action in fake.actions() {
        for (k, v) in &action.headers {
            assert!(!v.contains("482915") && !v.contains(PASSWORD), "{k}: {v}");
        }
    }
    // Read by another thread: wait for the line, not just look.
    assert!(daemon.logged(&call_id, 1, Duration::from_secs(10)) >= 1, "the call id is logged");
    let logs = daemon.logs();
    assert!(!logs.contains("482915"), "code in logs:\n{logs}");
    assert!(!logs.contains(PASSWORD), "password in logs:\n{logs}");
    assert!(!logs.contains("voice-otp-sandbox"), "AMI secret in logs:\n{logs}");
}
