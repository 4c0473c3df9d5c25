//! One user's webhook receiver that accepts connections and never answers
//! must not hold up anyone else's deliveries: against the real binary over
//! real HTTP, with a scripted AMI server standing in for Asterisk.

mod support;

use std::time::Duration;

use support::daemon::{Daemon, TempDir, cli, write_config};
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome};
use support::http;
use support::webhook_receiver::{Receiver, SilentReceiver};

const PASSWORD: &str = "correct-horse-9";

/// Attempts may take the longest allowed (300 s), so a worker that waits for
/// a hung attempt before starting others cannot deliver within the test's
/// patience; two attempts per user at once.
const CONFIG: &str = "[webhooks]\ndeny_private = false\ntimeout_secs = 300\nmax_concurrent_per_user = 2\n";

/// Adds `name` through the CLI and returns its webhook secret.
fn add_user(config: &std::path::Path, name: &str) -> String {
    let (ok, out, err) = cli(config, &["user", "add", name, "--password-stdin"], &format!("{PASSWORD}\n"));
    assert!(ok, "user add {name}: {err}");
    out.lines().find_map(|l| l.strip_prefix("webhook_secret=")).expect("secret shown").to_owned()
}

/// Creates a call as `user` with `callback_url` and returns its id.
fn create(daemon: &Daemon, user: &str, number: &str, callback_url: &str) -> String {
    let body = format!(r#"{{"number":"{number}","code":"482915","callback_url":"{callback_url}"}}"#);
    let resp =
        tokio::task::block_in_place(|| http::with_basic(daemon.http, "POST", "/v1/calls", user, PASSWORD, Some(&body)));
    assert_eq!(resp.status, 202, "{}", resp.body);
    resp.json()["id"].as_str().expect("call id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_holds_up_only_its_own_user() {
    let fake = FakeAmi::start(FakeScript {
        originate_outcome: OriginateOutcome::busy(),
        ..FakeScript::with_credentials("voice-otp", "voice-otp-sandbox")
    })
    .await;
    let dir = TempDir::new("hook-isolation");
    let config = write_config(&dir.0, fake.addr(), CONFIG);
    let (daemon, secret_b) = tokio::task::block_in_place(|| {
        add_user(&config, "acme1");
        let secret_b = add_user(&config, "other1");
        (Daemon::start(&config), secret_b)
    });
    assert!(fake.wait_for_count("Login", 1, Duration::from_secs(10)).await, "daemon never logged in to AMI");

    // User A's server accepts and never answers. Three calls, so three
    // `dialing` deliveries are due at once: two may be attempted, the third
    // waits for a slot of A's.
    let silent = SilentReceiver::start();
    let a_calls: Vec<String> = ["03001234561", "03001234562", "03001234563"]
        .iter()
        .map(|number| create(&daemon, "acme1", number, &silent.url("a")))
        .collect();
    let hung = tokio::task::block_in_place(|| silent.wait_for_requests(2, Duration::from_secs(30)));

    // User B's webhooks arrive while A's attempts hang.
    let receiver = Receiver::start(&[]);
    let b_call = create(&daemon, "other1", "03001234564", &receiver.url("b"));
    let last = tokio::task::block_in_place(|| {
        receiver
            .wait_for(Duration::from_secs(60), |r| r.json()["id"] == b_call.as_str() && r.json()["status"] == "failed")
    });
    assert_eq!(last.json()["reason"], "busy");
    let b_statuses: Vec<String> = receiver
        .received()
        .iter()
        .filter(|r| r.json()["id"] == b_call.as_str())
        .map(|r| r.json()["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(b_statuses, ["dialing", "failed"], "B's changes in order");
    assert!(receiver.received().iter().all(|r| r.signed_with(&secret_b)));

    // Every hung request is one of A's, the first change of its call.
    let hung_now = silent.received();
    for r in &hung_now {
        assert!(a_calls.iter().any(|id| r.json()["id"] == id.as_str()), "not one of A's calls: {}", r.body);
        assert_eq!(r.json()["status"], "dialing", "a later change went ahead of a pending one: {}", r.body);
    }
    // A's third delivery was due before B's: had A's cap not held it, it
    // would have been started before B's were.
    assert_eq!(hung.len(), 2, "{hung:#?}");
    assert_eq!(hung_now.len(), 2, "max_concurrent_per_user = 2 held: {hung_now:#?}");
    drop(daemon);
}
