//! The durable queue against a scripted AMI server: calls wait while
//! Asterisk is away and are dialled once it is back, at most
//! `max_concurrent_calls` at a time, expire at their deadline, and a call
//! whose channel vanished while the link was down is settled - never
//! originated a second time.

mod support;

use std::time::Duration;

use support::daemon::{Daemon, TempDir, add_user, call_show, write_config};
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome};
use support::http;

const PASSWORD: &str = "correct-horse-9";
const WAIT: Duration = Duration::from_secs(15);

/// A daemon on a fake AMI; the quotas per number are off (these tests dial
/// one number many times).
async fn setup(name: &str, script: FakeScript, extra: &str) -> (TempDir, FakeAmi, Daemon) {
    let fake =
        FakeAmi::start(FakeScript { username: "voice-otp".into(), secret: "voice-otp-sandbox".into(), ..script }).await;
    let dir = TempDir::new(name);
    let config = write_config(&dir.0, fake.addr(), extra);
    let daemon = tokio::task::block_in_place(|| {
        add_user(&config, "acme1", PASSWORD);
        Daemon::start(&config)
    });
    (dir, fake, daemon)
}

fn place_call(daemon: &Daemon) -> String {
    let target = format!("/outbound.cgi?number=03001234567&code=482915&username=acme1&password={PASSWORD}");
    let resp = tokio::task::block_in_place(|| http::get(daemon.http, &target));
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.json_field("call_id").expect("call_id")
}

fn status(daemon: &Daemon, id: &str) -> String {
    tokio::task::block_in_place(|| call_show(&daemon.config, id))["status"].clone()
}

fn originated(fake: &FakeAmi) -> Vec<String> {
    fake.actions().iter().filter(|a| a.is("Originate")).filter_map(|a| a.get("ChannelId").map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_while_ami_is_down_and_are_dialled_once_when_it_is_back() {
    // Wrong credentials: the daemon cannot log in, as if Asterisk were down.
    let script = FakeScript::default();
    let (_dir, fake, daemon) =
        setup("ami-down", script, "[limits]\nnumber_calls_per_window = 0\nnumber_calls_per_day = 0\n").await;
    fake.update_script(|s| s.secret = "changed".into());
    fake.drop_connections();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = (0..3).map(|_| place_call(&daemon)).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in &ids {
        assert_eq!(status(&daemon, id), "queued");
    }
    assert!(originated(&fake).is_empty());
    // Asterisk is back: each queued call is originated, in order, once.
    fake.update_script(|s| s.secret = "voice-otp-sandbox".into());
    assert!(fake.wait_for_count("Originate", 3, Duration::from_secs(40)).await, "{:?}", fake.actions());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(originated(&fake), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_not_dialled_before_its_deadline_expires() {
    let (_dir, fake, daemon) = setup("deadline", FakeScript::default(), "[dial]\ndeadline_secs = 2\n").await;
    fake.update_script(|s| s.secret = "changed".into());
    fake.drop_connections();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = place_call(&daemon);
    let call = tokio::task::block_in_place(|| daemon.wait_final(&id, WAIT));
    assert_eq!(call["status"], "expired", "{call:?}");
    fake.update_script(|s| s.secret = "voice-otp-sandbox".into());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(originated(&fake).is_empty(), "an expired call is never dialled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_max_concurrent_calls_at_once() {
    // Calls that never end on their own: they hold their trunk slot.
    let script = FakeScript { originate_outcome: OriginateOutcome::Silent, ..FakeScript::default() };
    let extra =
        "[queue]\nmax_concurrent_calls = 2\n\n[limits]\nnumber_calls_per_window = 0\nnumber_calls_per_day = 0\n";
    let (_dir, fake, daemon) = setup("concurrency", script, extra).await;
    let ids: Vec<String> = (0..4).map(|_| place_call(&daemon)).collect();
    assert!(fake.wait_for_count("Originate", 2, WAIT).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(originated(&fake), ids[..2], "only two calls at once, the oldest first");
    assert_eq!(status(&daemon, &ids[2]), "queued");
    // The first call ends (busy): its slot goes to the third.
    fake.emit_event(&[("Event", "Hangup"), ("Uniqueid", &ids[0]), ("Cause", "17"), ("Cause-txt", "User busy")]);
    assert!(fake.wait_for_count("Originate", 3, WAIT).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(originated(&fake), ids[..3]);
    assert_eq!(status(&daemon, &ids[0]), "failed");
    assert_eq!(status(&daemon, &ids[3]), "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_channel_vanished_with_the_link_fails_and_is_not_redialled() {
    // Answered, then nothing: no FastAGI session, no Hangup event.
    let (_dir, fake, daemon) = setup("reconcile", FakeScript::default(), "").await;
    let id = place_call(&daemon);
    assert!(fake.wait_for_count("Originate", 1, WAIT).await);
    for _ in 0..50 {
        if status(&daemon, &id) == "answered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&daemon, &id), "answered");
    // The link drops; on reconnection the daemon asks about its call. The
    // fake knows no `Status` action: Asterisk's "no such channel" error.
    fake.drop_connections();
    let call = tokio::task::block_in_place(|| daemon.wait_final(&id, Duration::from_secs(40)));
    assert_eq!(call["status"], "failed", "{call:?}");
    assert_eq!(call["reason"], "system_error");
    assert!(call["detail"].contains("no channel"), "{call:?}");
    let status_asked = fake.actions().iter().any(|a| a.is("Status") && a.get("Channel") == Some(id.as_str()));
    assert!(status_asked, "the daemon asked Asterisk about the call: {:?}", fake.actions());
    assert_eq!(originated(&fake), [id], "never originated twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after_and_stores_nothing() {
    let extra = "[queue]\nmax_queued = 2\n\n[limits]\nnumber_calls_per_window = 0\nnumber_calls_per_day = 0\n";
    let (_dir, fake, daemon) = setup("queue-full", FakeScript::default(), extra).await;
    fake.update_script(|s| s.secret = "changed".into());
    fake.drop_connections();
    tokio::time::sleep(Duration::from_millis(300)).await;
    place_call(&daemon);
    place_call(&daemon);
    let target = format!("/outbound.cgi?number=03001234567&code=482915&username=acme1&password={PASSWORD}");
    let resp = tokio::task::block_in_place(|| http::get(daemon.http, &target));
    assert_eq!(resp.status, 503, "{}", resp.body);
    assert_eq!(resp.header("retry-after"), Some("30"));
    assert_eq!(resp.json_field("response_description").as_deref(), Some("Service Unavailable"));
    assert_eq!(resp.json_field("detail").as_deref(), Some("2 calls are waiting to be dialled (queue.max_queued)"));
    let (_, list, _) = tokio::task::block_in_place(|| support::daemon::cli(&daemon.config, &["call", "list"], ""));
    assert_eq!(list.lines().count(), 2, "the refused call is not stored: {list}");
}
