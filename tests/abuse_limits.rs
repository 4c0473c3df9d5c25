//! Abuse limits and the toll-fraud guard over real HTTP against the real
//! binary, with a scripted AMI server counting every Originate: a refused
//! request answers 429 (with Retry-After) or 403, names the rule, and dials
//! nobody.

mod support;

use std::net::IpAddr;

use support::daemon::Daemon;
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome};
use support::harness::{Home, PASSWORD, Setup, assert_each_dialled_once};
use support::http::{self, Response};

/// Every call the fake sees ends at once (busy), so a test can wait for all
/// of them to end and then count the Originates - nothing is still on its way.
async fn setup(name: &str, extra: &str) -> (Home, FakeAmi, Daemon) {
    Setup::new(name).user("acme2", PASSWORD).config(extra).fake(FakeScript::outcome(OriginateOutcome::busy())).await
}

fn seed(daemon: &Daemon, number: &str, user: &str, password: &str) -> Response {
    seed_from(daemon, number, user, password, None)
}

/// The seed request, optionally as relayed by a proxy for `forwarded_for`.
fn seed_from(daemon: &Daemon, number: &str, user: &str, password: &str, forwarded_for: Option<&str>) -> Response {
    let forwarded = forwarded_for.map(|ip| format!("X-Forwarded-For: {ip}\r\n")).unwrap_or_default();
    let request = format!(
        "GET /outbound.cgi?number={number}&code=482915&username={user}&password={password} HTTP/1.1\r\n\
         Host: test\r\nConnection: close\r\n{forwarded}\r\n"
    );
    support::blocking(|| http::raw(daemon.http, request.as_bytes()))
}

/// The seed request from the client address `source` (a 127.x address:
/// the TCP peer the daemon sees).
fn seed_at(daemon: &Daemon, source: &str, number: &str, user: &str, password: &str) -> Response {
    let source: IpAddr = source.parse().unwrap();
    let target = format!("/outbound.cgi?number={number}&code=482915&username={user}&password={password}");
    support::blocking(|| http::get_from(Some(source), daemon.http, &target))
}

/// A 429 naming `limit`, with a Retry-After of 1..=`max_secs` seconds.
fn assert_limited(resp: &Response, limit: &str, max_secs: u64) {
    assert_eq!(resp.status, 429, "{}", resp.body);
    assert_eq!(resp.json_field("response_code").as_deref(), Some("429"));
    assert_eq!(resp.json_field("response_description").as_deref(), Some("Too Many Requests"));
    let detail = resp.json_field("detail").unwrap_or_default();
    assert!(detail.contains(limit), "{detail} should name {limit}");
    assert!(resp.json_field("call_id").is_none());
    let retry: u64 = resp.header("retry-after").expect("Retry-After").parse().expect("Retry-After in seconds");
    assert!((1..=max_secs).contains(&retry), "Retry-After {retry}");
}

/// Exactly `n` calls were stored, and each - nothing else - was dialled once.
fn assert_originates(daemon: &Daemon, fake: &FakeAmi, n: usize) {
    let stored = assert_each_dialled_once(daemon, fake);
    assert_eq!(stored.len(), n, "calls stored: {stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_gets_three_calls_per_window_even_across_a_restart() {
    let (home, fake, daemon) = setup("number-quota", "").await;
    for user in ["acme1", "acme2", "acme1"] {
        let resp = seed(&daemon, "03001234567", user, PASSWORD);
        assert_eq!(resp.status, 200, "{}", resp.body);
    }
    // Any user, any form of the same number: one quota.
    for number in ["03001234567", "%2B923001234567"] {
        let resp = seed(&daemon, number, "acme2", PASSWORD);
        assert_limited(&resp, "limits.number_calls_per_window", 600);
        assert!(resp.body.contains("3 calls per 600 s"), "{}", resp.body);
    }
    assert_eq!(seed(&daemon, "03001234568", "acme1", PASSWORD).status, 200, "another number is free");
    assert_originates(&daemon, &fake, 4);

    // The count comes from the stored calls: a restart does not reset it.
    drop(daemon);
    let daemon = home.start();
    assert_limited(&seed(&daemon, "03001234567", "acme1", PASSWORD), "limits.number_calls_per_window", 600);
    assert_eq!(daemon.stored_calls().len(), 4, "refused requests store no call: {:?}", daemon.stored_calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_gets_its_daily_quota() {
    let extra = "[limits]\nnumber_calls_per_window = 0\nnumber_calls_per_day = 2\n";
    let (_home, fake, daemon) = setup("number-day", extra).await;
    for _ in 0..2 {
        assert_eq!(seed(&daemon, "03001234567", "acme1", PASSWORD).status, 200);
    }
    let resp = seed(&daemon, "03001234567", "acme1", PASSWORD);
    assert_limited(&resp, "limits.number_calls_per_day", 86_400);
    assert!(resp.body.contains("2 calls per day"), "{}", resp.body);
    assert_originates(&daemon, &fake, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_gets_a_number_of_requests_per_minute() {
    let extra = "[limits]\nuser_requests_per_minute = 3\nnumber_calls_per_window = 0\nnumber_calls_per_day = 0\n";
    let (_home, fake, daemon) = setup("user-rate", extra).await;
    for _ in 0..3 {
        assert_eq!(seed(&daemon, "03001234567", "acme1", PASSWORD).status, 200);
    }
    let resp = seed(&daemon, "03001234567", "acme1", PASSWORD);
    assert_limited(&resp, "limits.user_requests_per_minute", 60);
    assert!(resp.body.contains("3 requests per minute"), "{}", resp.body);
    assert_eq!(seed(&daemon, "03001234567", "acme2", PASSWORD).status, 200, "other users are not slowed");
    assert_originates(&daemon, &fake, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_toll_fraud_guard_refuses_other_countries() {
    // Calls abroad need the international form in the channel ({national}
    // with a foreign prefix is refused at start).
    let extra = "[phone]\nallowed_prefixes = [\"+4420\"]\n\n[dial]\nchannel = \"PJSIP/{e164}@carrier\"\n";
    let (_home, fake, daemon) = setup("fraud", extra).await;
    // Premium-rate and foreign destinations, well-formed and valid.
    for (number, country) in [("%2B441612345678", "GB"), ("00881612345678", ""), ("%2B12125550123", "US")] {
        let resp = seed(&daemon, number, "acme1", PASSWORD);
        assert_eq!(resp.status, 403, "{number}: {}", resp.body);
        assert_eq!(resp.json_field("response_code").as_deref(), Some("403"));
        assert_eq!(resp.json_field("response_description").as_deref(), Some("Forbidden"));
        let detail = resp.json_field("detail").unwrap_or_default();
        assert!(detail.contains("phone.allowed_countries"), "{detail}");
        assert!(detail.contains(country), "{detail}");
        assert!(resp.header("retry-after").is_none());
    }
    // The default country and the listed prefix go through.
    assert_eq!(seed(&daemon, "03001234567", "acme1", PASSWORD).status, 200);
    assert_eq!(seed(&daemon, "%2B442079460123", "acme1", PASSWORD).status, 200);
    assert_originates(&daemon, &fake, 2);
    assert!(fake.actions().iter().filter(|a| a.is("Originate")).all(|a| !a.get("Channel").unwrap().contains("1612")));
}

/// Issue 10, attack 2: a stranger who knows a user name must not keep the
/// customer's calls off. Eight wrong passwords from 127.0.0.2 refuse that
/// address; the right password from 127.0.0.3 is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_from_a_stranger_do_not_lock_the_customer_out() {
    let (_home, fake, daemon) = setup("no-lockout", "").await;
    let statuses: Vec<u16> =
        (0..8).map(|_| seed_at(&daemon, "127.0.0.2", "03001234567", "acme1", "wrong-one").status).collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    let resp = seed_at(&daemon, "127.0.0.3", "03001234567", "acme1", PASSWORD);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(resp.json_field("call_id").is_some());
    // The stranger's address stays refused for that name, right password or not.
    let resp = seed_at(&daemon, "127.0.0.2", "03001234568", "acme1", PASSWORD);
    assert_limited(&resp, "limits.login_failures_per_user_ip", 900);
    assert_originates(&daemon, &fake, 1);
}

/// Guesses from many addresses: the name is slowed to a rationed verify
/// rate (429, a Retry-After of seconds), never locked; credentials the
/// cache vouches for pass regardless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_many_addresses_ration_the_name_and_cached_credentials_pass() {
    let extra = "[limits]\nlogin_failures_per_user = 2\nlogin_verifies_per_user_per_minute = 2\n";
    let (_home, fake, daemon) = setup("rationed", extra).await;
    assert_eq!(seed_at(&daemon, "127.0.0.3", "03001234567", "acme1", PASSWORD).status, 200);
    // Two failures fill the name's count, the third guess takes the
    // rationed verify, the fourth must wait.
    for source in ["127.0.0.4", "127.0.0.5", "127.0.0.6"] {
        assert_eq!(seed_at(&daemon, source, "03001234567", "acme1", "wrong-one").status, 401, "{source}");
    }
    let resp = seed_at(&daemon, "127.0.0.7", "03001234567", "acme1", "wrong-one");
    assert_limited(&resp, "limits.login_verifies_per_user_per_minute", 30);
    // The customer's credentials are in the cache: served, from anywhere.
    assert_eq!(seed_at(&daemon, "127.0.0.8", "03001234568", "acme1", PASSWORD).status, 200);
    assert_originates(&daemon, &fake, 2);
}

/// Behind a trusted proxy the client is the `X-Forwarded-For` address:
/// failures refuse that address for the name, then for every name; other
/// addresses are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_refuse_the_forwarded_address_not_the_name() {
    let (_home, fake, daemon) = Setup::new("lockout")
        .http_keys("trusted_proxies = [\"127.0.0.1\"]\n")
        .config("[limits]\nlogin_failures_per_user_ip = 3\nlogin_failures_per_ip = 5\n")
        .fake(FakeScript::outcome(OriginateOutcome::busy()))
        .await;

    let client = Some("198.51.100.7");
    for _ in 0..3 {
        assert_eq!(seed_from(&daemon, "03001234567", "acme1", "wrong-one", client).status, 401);
    }
    // Refused for that name from that address, even with the right password...
    let resp = seed_from(&daemon, "03001234567", "acme1", PASSWORD, client);
    assert_limited(&resp, "limits.login_failures_per_user_ip", 900);
    // ...served from another.
    assert_eq!(seed_from(&daemon, "03001234567", "acme1", PASSWORD, Some("203.0.113.9")).status, 200);
    // The address has 3 failures; two more at other names fill its quota.
    assert_eq!(seed_from(&daemon, "03001234567", "nobody1", "x", client).status, 401);
    assert_eq!(seed_from(&daemon, "03001234567", "nobody2", "x", client).status, 401);
    let resp = seed_from(&daemon, "03001234567", "nobody3", "x", client);
    assert_limited(&resp, "limits.login_failures_per_ip", 900);
    // Another address is not refused.
    assert_eq!(seed_from(&daemon, "03001234567", "nobody3", "x", Some("203.0.113.9")).status, 401);
    assert_originates(&daemon, &fake, 1);
    let logs = daemon.logs();
    assert!(!logs.contains(PASSWORD) && !logs.contains("wrong-one"), "passwords in logs:\n{logs}");
}

/// Review item 8: toll fraud inside an allowed country. A premium-rate UK
/// number (Ofcom's drama range) with the UK allowed is refused 403 naming
/// its type, and dialled never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn premium_rate_numbers_are_refused_even_in_an_allowed_country() {
    let extra = "[phone]\nallowed_countries = [\"PK\", \"GB\"]\n\n[dial]\nchannel = \"PJSIP/{e164}@carrier\"\n";
    let (_home, fake, daemon) = setup("premium", extra).await;
    let resp = seed(&daemon, "%2B449098790000", "acme1", PASSWORD);
    assert_eq!(resp.status, 403, "{}", resp.body);
    assert_eq!(resp.json_field("response_description").as_deref(), Some("Forbidden"));
    let detail = resp.json_field("detail").unwrap_or_default();
    assert!(detail.contains("premium_rate") && detail.contains("phone.refused_number_types"), "{detail}");
    // The same country's ordinary numbers go through.
    assert_eq!(seed(&daemon, "%2B442079460123", "acme1", PASSWORD).status, 200);
    assert_originates(&daemon, &fake, 1);
    assert!(fake.actions().iter().filter(|a| a.is("Originate")).all(|a| !a.get("Channel").unwrap().contains("909")));
}

/// Review item 8: a leaked credential may place `limits.user_calls_per_day`
/// calls a day, not 60 a minute all day; the count is in the database, so
/// a restart does not reset it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_gets_a_number_of_calls_per_day_even_across_a_restart() {
    let extra = "[limits]\nuser_calls_per_day = 2\nnumber_calls_per_window = 0\nnumber_calls_per_day = 0\n";
    let (home, fake, daemon) = setup("user-day", extra).await;
    for number in ["03001234567", "03001234568"] {
        assert_eq!(seed(&daemon, number, "acme1", PASSWORD).status, 200);
    }
    let resp = seed(&daemon, "03001234569", "acme1", PASSWORD);
    assert_limited(&resp, "limits.user_calls_per_day", 86_400);
    assert!(resp.body.contains("2 calls per day"), "{}", resp.body);
    assert_eq!(seed(&daemon, "03001234569", "acme2", PASSWORD).status, 200, "other users are not capped");
    assert_originates(&daemon, &fake, 3);

    drop(daemon);
    let daemon = home.start();
    assert_limited(&seed(&daemon, "03001234569", "acme1", PASSWORD), "limits.user_calls_per_day", 86_400);
    assert_originates(&daemon, &fake, 3);
}

/// Names no user can have (a NUL, a line break, 4 KiB, a space) are
/// answered 401 at once - over the seed API and Basic auth alike - and cost
/// nothing: no failed-login slot of the address (so more of them
/// than `login_failures_per_ip` still leave it the right password), no
/// 503 from a database that refuses the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_no_user_can_have_get_401_and_cost_nothing() {
    let (_home, _fake, daemon) = setup("impossible-names", "[limits]\nlogin_failures_per_ip = 3\n").await;
    let long = "a".repeat(4 * 1024);
    for name in ["%00", "acme1%0d%0aX", long.as_str(), "a%20b", "%c3%a9"] {
        let resp = seed(&daemon, "03001234567", name, "wrong");
        assert_eq!(resp.status, 401, "{name:.20}: {}", resp.body);
    }
    for name in ["\0", "acme1\n", "a b"] {
        let resp =
            support::blocking(|| http::with_basic_headers(daemon.http, "GET", "/v1/calls", name, "x", &[], None));
        assert_eq!(resp.status, 401, "{name:?}: {}", resp.body);
    }
    let ok = seed(&daemon, "03001234567", "acme1", PASSWORD);
    assert_eq!(ok.status, 200, "the address kept its failed-login budget: {}", ok.body);
}
