//! One user's webhook receiver that accepts connections and never answers
//! must not hold up anyone else's deliveries: against the real binary over
//! real HTTP, with a scripted AMI server standing in for Asterisk.

mod support;

use std::time::Duration;

use support::daemon::Daemon;
use support::fake_ami::{FakeScript, OriginateOutcome};
use support::harness::{PASSWORD, Setup};
use support::http;
use support::webhook_receiver::{Receiver, SilentReceiver};

/// Attempts may take the longest allowed (300 s), so a worker that waits for
/// a hung attempt before starting others cannot deliver within the test's
/// patience; two attempts per user at once.
const CONFIG: &str = "[webhooks]\ndeny_private = false\ntimeout_secs = 300\nmax_concurrent_per_user = 2\n";

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
    let script = FakeScript { originate_outcome: OriginateOutcome::busy(), ..FakeScript::for_daemon() };
    let (home, _fake, daemon) = Setup::new("hook-isolation").user("other1", PASSWORD).config(CONFIG).fake(script).await;
    let secret_b = home.user("other1").webhook_secret.clone();

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
