//! Abuse limits and the toll-fraud guard over real HTTP against the real
//! binary, with a scripted AMI server counting every Originate: a refused
//! request answers 429 (with Retry-After) or 403, names the rule, and dials
//! nobody.

mod support;

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

/// A 429 naming `limit`, with a Retry-After of 1..=`max_secs` seconds.
fn assert_limited(resp: &Response, limit: &str, max_secs: u64) {
    assert_eq!(resp.status, 429, "{}", resp.body);
    assert_eq!(resp.json_field("response_code").as_deref(), Some("429"));
    let description = resp.json_field("response_description").unwrap_or_default();
    assert!(description.starts_with("Too Many Requests: "), "{description}");
    assert!(description.contains(limit), "{description} should name {limit}");
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
    let extra = "[phone]\nallowed_prefixes = [\"+4420\"]\n";
    let (_home, fake, daemon) = setup("fraud", extra).await;
    // Premium-rate and foreign destinations, well-formed and valid.
    for (number, country) in [("%2B441612345678", "GB"), ("00881612345678", ""), ("%2B12125550123", "US")] {
        let resp = seed(&daemon, number, "acme1", PASSWORD);
        assert_eq!(resp.status, 403, "{number}: {}", resp.body);
        assert_eq!(resp.json_field("response_code").as_deref(), Some("403"));
        let description = resp.json_field("response_description").unwrap_or_default();
        assert!(description.starts_with("Forbidden: "), "{description}");
        assert!(description.contains("phone.allowed_countries"), "{description}");
        assert!(description.contains(country), "{description}");
        assert!(resp.header("retry-after").is_none());
    }
    // The default country and the listed prefix go through.
    assert_eq!(seed(&daemon, "03001234567", "acme1", PASSWORD).status, 200);
    assert_eq!(seed(&daemon, "%2B442079460123", "acme1", PASSWORD).status, 200);
    assert_originates(&daemon, &fake, 2);
    assert!(fake.actions().iter().filter(|a| a.is("Originate")).all(|a| !a.get("Channel").unwrap().contains("1612")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_the_name_then_the_address() {
    let (_home, fake, daemon) = Setup::new("lockout")
        .user("acme2", PASSWORD)
        .http_keys("trusted_proxies = [\"127.0.0.1\"]\n")
        .config("[limits]\nlogin_failures_per_user = 3\nlogin_failures_per_ip = 5")
        .fake(FakeScript::outcome(OriginateOutcome::busy()))
        .await;

    let client = Some("198.51.100.7");
    for _ in 0..3 {
        assert_eq!(seed_from(&daemon, "03001234567", "acme1", "wrong-one", client).status, 401);
    }
    // Locked: even the right password gets 429, and from anywhere.
    for from in [client, Some("203.0.113.9"), None] {
        let resp = seed_from(&daemon, "03001234567", "acme1", PASSWORD, from);
        assert_limited(&resp, "limits.login_failures_per_user", 900);
    }
    // The address has 3 failures; two more at other names fill its quota.
    assert_eq!(seed_from(&daemon, "03001234567", "nobody1", "x", client).status, 401);
    assert_eq!(seed_from(&daemon, "03001234567", "nobody2", "x", client).status, 401);
    let resp = seed_from(&daemon, "03001234567", "nobody3", "x", client);
    assert_limited(&resp, "limits.login_failures_per_ip", 900);
    // Another address is not locked.
    assert_eq!(seed_from(&daemon, "03001234567", "nobody3", "x", Some("203.0.113.9")).status, 401);
    // Another user from another address gets through: the one call placed.
    let resp = seed_from(&daemon, "03001234567", "acme2", PASSWORD, Some("192.0.2.44"));
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_originates(&daemon, &fake, 1);
    let logs = daemon.logs();
    assert!(!logs.contains(PASSWORD) && !logs.contains("wrong-one"), "passwords in logs:\n{logs}");
}
