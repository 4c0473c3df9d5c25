//! The durable queue against a scripted AMI server: calls wait while
//! Asterisk is away and are dialled once it is back, at most
//! `max_concurrent_calls` at a time, expire at their deadline, and a call
//! whose channel vanished while the link was down is settled - never
//! originated a second time - while one Asterisk will not tell about
//! (`Status` refused) is left alone, and one on a server that stays
//! unreachable ends once it is older than any call.
//!
//! "Not dialled" is judged after an event that shows the dialler went past
//! the call - it expired, a later call was dialled, every call is final -
//! never after a sleep.

mod support;

use std::time::Duration;

use support::daemon::Daemon;
use support::fake_ami::{DAEMON_SECRET, FakeAmi, FakeScript, OriginateOutcome, StatusReply};
use support::harness::{Home, NO_NUMBER_QUOTAS, Setup};

const WAIT: Duration = Duration::from_secs(15);
/// Enough for the daemon's reconnect backoff to come round again.
const RECONNECT_WAIT: Duration = Duration::from_secs(40);

/// A daemon on a fake AMI; the quotas per number are off (these tests dial
/// one number many times).
async fn setup(name: &str, script: FakeScript, extra: &str) -> (Home, FakeAmi, Daemon) {
    Setup::new(name).config(NO_NUMBER_QUOTAS).config(extra).fake(script).await
}

/// A fake Asterisk that refuses the daemon's login: as good as down, and
/// known to be from the first moment (no link that might still be up).
fn refusing(outcome: OriginateOutcome) -> FakeScript {
    FakeScript { secret: "changed".into(), ..FakeScript::outcome(outcome) }
}

fn place_call(daemon: &Daemon) -> String {
    daemon.seed_call("03001234567", "482915")
}

fn status(daemon: &Daemon, id: &str) -> String {
    daemon.show(id)["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_while_ami_is_down_and_are_dialled_once_when_it_is_back() {
    let (_home, fake, daemon) = setup("ami-down", refusing(OriginateOutcome::busy()), "").await;
    let ids: Vec<String> = (0..3).map(|_| place_call(&daemon)).collect();
    // The daemon comes back for another (refused) login with the calls
    // stored: they stay queued, nothing is sent outside a session.
    let logins = fake.count("Login");
    assert!(fake.wait_for_count("Login", logins + 1, RECONNECT_WAIT).await, "{:?}", fake.actions());
    for id in &ids {
        assert_eq!(status(&daemon, id), "queued");
    }
    assert!(fake.originated().is_empty(), "{:?}", fake.actions());
    // Asterisk is back: each queued call is originated, in order, once -
    // judged when all have ended (busy), so nothing is still on its way.
    fake.update_script(|s| s.secret = DAEMON_SECRET.into());
    assert_eq!(daemon.settle(RECONNECT_WAIT), ids);
    assert_eq!(fake.originated(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_not_dialled_before_its_deadline_expires() {
    let (_home, fake, daemon) =
        setup("deadline", refusing(OriginateOutcome::busy()), "[dial]\ndeadline_secs = 6").await;
    let id = place_call(&daemon);
    let call = daemon.wait_final(&id, WAIT);
    assert_eq!(call["status"], "expired", "{call:?}");
    // Asterisk is back; a call placed now is dialled at once, and once it
    // has ended the dialler has had every chance to dial the expired one.
    fake.update_script(|s| s.secret = DAEMON_SECRET.into());
    assert!(fake.wait_for_logins(1, RECONNECT_WAIT).await, "the daemon never got back in");
    let next = place_call(&daemon);
    assert_eq!(daemon.settle(WAIT), [id, next.clone()]);
    assert_eq!(fake.originated(), [next], "an expired call is never dialled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_max_concurrent_calls_at_once() {
    // Calls that never end on their own hold their trunk slot; a call not
    // dialled within 8 s expires, which shows the dialler passed it over
    // (long enough for the one that is to be dialled on a slow machine).
    // Asterisk has their channels: a periodic reconciliation (every 30 s, on
    // a slow machine within the test) leaves them in flight.
    let extra = "[queue]\nmax_concurrent_calls = 2\n\n[dial]\ndeadline_secs = 8";
    let script = FakeScript { status_reply: StatusReply::Exists, ..FakeScript::outcome(OriginateOutcome::Silent) };
    let (_home, fake, daemon) = setup("concurrency", script, extra).await;
    let ids: Vec<String> = (0..4).map(|_| place_call(&daemon)).collect();
    for late in &ids[2..] {
        assert_eq!(daemon.wait_final(late, WAIT)["status"], "expired", "only two calls at once");
    }
    assert_eq!(fake.originated(), ids[..2], "the oldest first");
    // Two more wait; the first call ends (busy): its slot goes to the
    // older of them, and the other waits out its deadline.
    let waiting: Vec<String> = (0..2).map(|_| place_call(&daemon)).collect();
    fake.emit_event(&[("Event", "Hangup"), ("Uniqueid", &ids[0]), ("Cause", "17"), ("Cause-txt", "User busy")]);
    assert!(fake.wait_for_originate(&waiting[0], WAIT).await.is_some(), "{:?}", fake.originated());
    assert_eq!(daemon.wait_final(&waiting[1], WAIT)["status"], "expired");
    assert_eq!(fake.originated(), [ids[0].clone(), ids[1].clone(), waiting[0].clone()]);
    assert_eq!(status(&daemon, &ids[0]), "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_channel_vanished_with_the_link_fails_and_is_not_redialled() {
    // Answered, then nothing: no FastAGI session, no Hangup event.
    let (_home, fake, daemon) = setup("reconcile", FakeScript::for_daemon(), "").await;
    let id = place_call(&daemon);
    daemon.wait_status(&id, "answered", WAIT);
    // The link drops; on reconnection the daemon asks about its call. The
    // fake has no channels: `Status` gets Asterisk's "No such channel".
    fake.drop_connections();
    let call = daemon.wait_final(&id, Duration::from_secs(40));
    assert_eq!(call["status"], "failed", "{call:?}");
    assert_eq!(call["reason"], "system_error");
    assert!(call["detail"].contains("no channel"), "{call:?}");
    let status_asked = fake.actions().iter().any(|a| a.is("Status") && a.get("Channel") == Some(id.as_str()));
    assert!(status_asked, "the daemon asked Asterisk about the call: {:?}", fake.actions());
    // A later call is dialled on the new link: nothing of the old one came
    // again with the reconnection.
    let next = place_call(&daemon);
    assert!(fake.wait_for_originate(&next, WAIT).await.is_some(), "{:?}", fake.actions());
    assert_eq!(fake.originated(), [id, next], "never originated twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_just_dialled_is_not_failed_for_having_no_channel_yet() {
    // The link drops and comes back right after the Originate: the
    // reconciliation that follows may ask about the call before Asterisk
    // has made its channel ("No such channel"). That is no proof the call
    // is gone; the daemon asks again once the call is a few seconds old,
    // and by then Asterisk has the channel.
    let script = FakeScript { status_reply: StatusReply::ExistsFromAsk(2), ..FakeScript::for_daemon() };
    let (_home, fake, daemon) = setup("fresh-reconcile", script, "").await;
    let id = place_call(&daemon);
    assert!(fake.wait_for_originate(&id, WAIT).await.is_some(), "{:?}", fake.actions());
    fake.drop_connections();
    assert!(fake.wait_for_count("Status", 2, RECONNECT_WAIT).await, "asked once only: {:?}", fake.actions());
    let asked: Vec<_> = fake.actions().into_iter().filter(|a| a.is("Status")).collect();
    assert!(asked.iter().all(|a| a.get("Channel") == Some(id.as_str())), "{asked:?}");
    let call = daemon.show(&id);
    assert!(["dialing", "answered"].contains(&call["status"].as_str()), "still in flight: {call:?}");
    assert_eq!(fake.originated(), [id], "never originated twice");
}

/// Calls in flight on a server that stays unreachable: once one is older
/// than any call (ring timeout + an hour), no word of its end can come, and
/// it ends `system_error`; a younger one waits for the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_server_stays_unreachable_ends_once_older_than_any_call() {
    // Dialled, then nothing: both stay in flight.
    let (home, fake, daemon) = setup("unreachable", FakeScript::outcome(OriginateOutcome::Silent), "").await;
    let mut placed = Vec::new();
    for _ in 0..2 {
        let id = place_call(&daemon);
        assert!(fake.wait_for_originate(&id, WAIT).await.is_some(), "{:?}", fake.actions());
        placed.push(id);
    }
    let (young, old) = (placed[0].clone(), placed[1].clone());
    drop(daemon); // SIGKILL
    // The server is gone for good, and `old` was dialled two hours ago.
    fake.stop();
    let db = rusqlite::Connection::open(home.db()).expect("the daemon's database");
    let aged = db
        .execute("UPDATE calls SET dialed_at = dialed_at - 7200000 WHERE id = ?1 AND status = 'dialing'", [&old])
        .unwrap();
    assert_eq!(aged, 1);
    drop(db);
    let daemon = home.start();
    let call = daemon.wait_final(&old, WAIT);
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "system_error"), "{call:?}");
    assert!(call["detail"].contains("longer than any call lasts"), "{call:?}");
    // Both were looked at in one pass, the younger first (oldest created
    // first): it was left in flight.
    assert_eq!(status(&daemon, &young), "dialing");
    assert_eq!(fake.originated(), [young, old], "never originated again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_asterisk_will_not_tell_about_is_left_alone_until_it_does() {
    // Answered, then nothing; and the manager user may not ask `Status`.
    let script =
        FakeScript { status_reply: StatusReply::Error("Permission denied".into()), ..FakeScript::for_daemon() };
    let (_home, fake, daemon) = setup("status-refused", script, "").await;
    let id = place_call(&daemon);
    daemon.wait_status(&id, "answered", WAIT);
    // Each reconnection reconciles: the call is asked about, the refusal
    // read (the daemon's warning names the call), the call left as it is.
    let refused = format!("call_id={id} answer=Permission denied");
    for round in 1..=2 {
        fake.drop_connections();
        assert!(
            fake.wait_for_count("Status", round, Duration::from_secs(40)).await,
            "no Status after reconnect {round}"
        );
        let logged = daemon.logged(&refused, round, WAIT);
        assert_eq!(logged, round, "{}", daemon.logs());
        assert_eq!(status(&daemon, &id), "answered", "after refusal {round}");
    }
    let asked: Vec<_> = fake.actions().into_iter().filter(|a| a.is("Status")).collect();
    assert!(asked.iter().all(|a| a.get("Channel") == Some(id.as_str())), "{asked:?}");
    // Now Asterisk says the channel is gone: the call is settled.
    fake.update_script(|s| s.status_reply = StatusReply::NoSuchChannel);
    fake.drop_connections();
    let call = daemon.wait_final(&id, Duration::from_secs(40));
    assert_eq!(call["status"], "failed", "{call:?}");
    assert_eq!(call["reason"], "system_error");
    assert!(call["detail"].contains("no channel"), "{call:?}");
    assert_eq!(fake.originated(), [id], "never originated twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after_and_stores_nothing() {
    let (_home, _fake, daemon) =
        setup("queue-full", refusing(OriginateOutcome::busy()), "[queue]\nmax_queued = 2").await;
    place_call(&daemon);
    place_call(&daemon);
    let resp = daemon.seed("03001234567", "482915", "");
    assert_eq!(resp.status, 503, "{}", resp.body);
    assert_eq!(resp.header("retry-after"), Some("30"));
    assert_eq!(resp.json_field("response_description").as_deref(), Some("Service Unavailable"));
    assert_eq!(resp.json_field("detail").as_deref(), Some("2 calls are waiting to be dialled (queue.max_queued)"));
    assert_eq!(daemon.stored_calls().len(), 2, "the refused call is not stored: {:?}", daemon.stored_calls());
}
