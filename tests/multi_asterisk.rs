//! Several Asterisk servers (`[[asterisk]]`), each played by a scripted
//! fake AMI over real TCP, against the real daemon: calls spread by weight
//! and each dialled once, on the server it names; a server that is down
//! gets none; one server's events never settle another's call; each
//! server reconciles only its own calls; a paced server is never sent
//! Originates faster than its rate.

mod support;

use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome, StatusReply};
use support::harness::{Home, NO_NUMBER_QUOTAS, PASSWORD, Setup};
use support::http;

const WAIT: Duration = Duration::from_secs(20);

/// A daemon with servers `a` and `b` (their `[[asterisk]]` keys added),
/// once it has sent each its first Login.
async fn two(
    name: &str,
    (a, a_keys): (FakeScript, &str),
    (b, b_keys): (FakeScript, &str),
) -> (Home, FakeAmi, FakeAmi, Daemon) {
    let (fa, fb) = (FakeAmi::start(a).await, FakeAmi::start(b).await);
    let (home, daemon) = Setup::new(name)
        .config(NO_NUMBER_QUOTAS)
        .server("a", fa.addr(), a_keys)
        .server("b", fb.addr(), b_keys)
        .start_servers();
    assert!(fa.wait_for_count("Login", 1, WAIT).await, "no Login on a\n{}", daemon.logs());
    assert!(fb.wait_for_count("Login", 1, WAIT).await, "no Login on b\n{}", daemon.logs());
    (home, fa, fb, daemon)
}

fn place(daemon: &Daemon) -> String {
    daemon.seed_call("03001234567", "482915")
}

/// Unpaced, so the tests that are not about pacing do not wait for it.
const UNPACED: &str = "max_calls_per_second = 0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_spread_by_weight_each_dialled_once_on_the_server_it_names() {
    let busy = || FakeScript::outcome(OriginateOutcome::busy());
    let (_home, a, b, daemon) =
        two("spread", (busy(), &format!("{UNPACED}\nweight = 2")), (busy(), &format!("{UNPACED}\nweight = 1"))).await;
    let health = daemon.wait_servers(&[("a", "up"), ("b", "up")]);
    assert_eq!(health["status"], "ok", "{health}");
    let ids: Vec<String> = (0..12).map(|_| place(&daemon)).collect();
    let stored = daemon.settle(WAIT);
    let (on_a, on_b) = (a.originated(), b.originated());
    assert_eq!((on_a.len(), on_b.len()), (8, 4), "weights 2:1\na: {on_a:?}\nb: {on_b:?}");
    let mut all: Vec<String> = on_a.iter().chain(&on_b).cloned().collect();
    all.sort();
    let mut expected = stored.clone();
    expected.sort();
    assert_eq!(all, expected, "each stored call originated once, on one server");
    for id in &ids {
        let call = daemon.show(id);
        let server = if on_a.contains(id) { "a" } else { "b" };
        assert_eq!(call["asterisk"], server, "{call:?}");
        assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "busy"), "{call:?}");
    }
    // The JSON API names the server too.
    let json = support::blocking(|| {
        http::with_basic(daemon.http, "GET", &format!("/v1/calls/{}", ids[0]), "acme1", PASSWORD, None)
    });
    assert_eq!(json.json()["asterisk"], if on_a.contains(&ids[0]) { "a" } else { "b" }, "{}", json.body);
    let metrics = support::blocking(|| http::get(daemon.http, "/metrics")).body;
    for line in [
        "voice_otp_asterisk_up{server=\"a\"} 1",
        "voice_otp_asterisk_up{server=\"b\"} 1",
        "voice_otp_asterisk_capacity{server=\"a\"} 10",
        "voice_otp_asterisk_calls_in_flight{server=\"b\"} 0",
        "voice_otp_ami_connected 1",
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_gets_no_calls_and_its_share_when_back() {
    let busy = FakeScript::outcome(OriginateOutcome::busy());
    // b refuses the daemon's login: down from the first moment.
    let refusing = FakeScript { secret: "changed".into(), ..busy.clone() };
    let (_home, a, b, daemon) = two("one-down", (busy, UNPACED), (refusing, UNPACED)).await;
    let health = daemon.wait_servers(&[("a", "up"), ("b", "down")]);
    assert_eq!(health["status"], "ok", "healthy while one server is up: {health}");
    assert_eq!(health["down"], serde_json::json!([]), "{health}");
    let metrics = support::blocking(|| http::get(daemon.http, "/metrics")).body;
    assert!(metrics.contains("voice_otp_asterisk_up{server=\"b\"} 0"), "{metrics}");
    let ids: Vec<String> = (0..4).map(|_| place(&daemon)).collect();
    daemon.settle(WAIT);
    let mut on_a = a.originated();
    on_a.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(on_a, expected, "every call on a");
    assert_eq!(b.count("Originate"), 0);
    // b takes the daemon's login again: it gets its share.
    b.update_script(|s| s.secret = support::fake_ami::DAEMON_SECRET.into());
    daemon.wait_servers(&[("a", "up"), ("b", "up")]);
    let later: Vec<String> = (0..4).map(|_| place(&daemon)).collect();
    daemon.settle(WAIT);
    let on_b = b.originated();
    assert_eq!(on_b.len(), 2, "equal weights: half of the later calls on b: {on_b:?}");
    assert!(on_b.iter().all(|id| later.contains(id)));
    // Both down: unhealthy, naming AMI.
    a.stop();
    b.stop();
    let deadline = Instant::now() + WAIT;
    let down = loop {
        let resp = support::blocking(|| http::get(daemon.http, "/healthz"));
        if resp.status == 503 {
            break resp.json();
        }
        assert!(Instant::now() < deadline, "still {}: {}", resp.status, resp.body);
        support::blocking(|| std::thread::sleep(Duration::from_millis(50)));
    };
    assert_eq!(down["down"], serde_json::json!(["ami"]), "{down}");
    assert_eq!(down["checks"]["asterisk"], serde_json::json!({"a": "down", "b": "down"}), "{down}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_another_server_never_settle_a_call() {
    // a never says anything about its calls; the test speaks for it. Both
    // have the call's channel, should a periodic reconciliation ask.
    let silent = FakeScript { status_reply: StatusReply::Exists, ..FakeScript::outcome(OriginateOutcome::Silent) };
    // Ties go to the first server: the first call is placed on a.
    let (_home, a, b, daemon) = two("foreign-events", (silent.clone(), UNPACED), (silent, UNPACED)).await;
    daemon.wait_servers(&[("a", "up"), ("b", "up")]);
    let id = place(&daemon);
    assert!(a.wait_for_originate(&id, WAIT).await.is_some(), "{:?}", a.actions());
    daemon.wait_status(&id, "dialing", WAIT);
    // b claims the call's channel: busy, hung up. Ignored, and logged so.
    for event in [
        vec![("Event", "Newstate"), ("ChannelState", "5"), ("ChannelStateDesc", "Ringing"), ("Uniqueid", &id)],
        vec![("Event", "Hangup"), ("Uniqueid", &id), ("Cause", "17"), ("Cause-txt", "User busy")],
        vec![("Event", "OriginateResponse"), ("Response", "Failure"), ("Reason", "0"), ("Uniqueid", &id)],
    ] {
        assert_eq!(b.emit_event(&event), 1);
    }
    let ignored = format!("call_id={id} from=\"b\" placed_on=\"a\"");
    assert_eq!(daemon.logged(&ignored, 3, WAIT), 3, "{}", daemon.logs());
    let call = daemon.show(&id);
    assert_eq!((call["status"].as_str(), call["cause"].as_str()), ("dialing", ""), "{call:?}");
    // a's own word settles it.
    a.emit_event(&[("Event", "Hangup"), ("Uniqueid", &id), ("Cause", "21"), ("Cause-txt", "Call Rejected")]);
    a.emit_event(&[("Event", "OriginateResponse"), ("Response", "Failure"), ("Reason", "0"), ("Uniqueid", &id)]);
    let call = daemon.wait_final(&id, WAIT);
    assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "rejected"), "{call:?}");
    assert_eq!(call["asterisk"], "a");
    assert_eq!(b.count("Originate"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_reconciles_only_its_own_calls() {
    // Answered, then nothing (no FastAGI session, no Hangup): in flight
    // until a reconciliation finds the channel gone.
    // a keeps its channel until its turn (a periodic reconciliation, every
    // 30 s, may ask it meanwhile); b has none.
    let answer = FakeScript::outcome(OriginateOutcome::Answer);
    let kept = FakeScript { status_reply: StatusReply::Exists, ..answer.clone() };
    let (_home, a, b, daemon) = two("reconcile-each", (kept, UNPACED), (answer, UNPACED)).await;
    daemon.wait_servers(&[("a", "up"), ("b", "up")]);
    let first = place(&daemon);
    daemon.wait_status(&first, "answered", WAIT);
    let second = place(&daemon);
    daemon.wait_status(&second, "answered", WAIT);
    assert_eq!((a.originated(), b.originated()), (vec![first.clone()], vec![second.clone()]));
    // b's link drops: on reconnection b is asked about its call alone.
    b.drop_connections();
    let lost = daemon.wait_final(&second, Duration::from_secs(40));
    assert_eq!((lost["status"].as_str(), lost["reason"].as_str()), ("failed", "system_error"), "{lost:?}");
    assert!(lost["detail"].contains("Asterisk server b has no channel"), "{lost:?}");
    let asked_b: Vec<_> = b.actions().into_iter().filter(|a| a.is("Status")).collect();
    assert!(!asked_b.is_empty() && asked_b.iter().all(|s| s.get("Channel") == Some(second.as_str())), "{asked_b:?}");
    assert_eq!(daemon.show(&first)["status"], "answered", "a's call untouched by b's reconciliation");
    assert!(a.actions().iter().filter(|s| s.is("Status")).all(|s| s.get("Channel") == Some(first.as_str())));
    // a's turn: its channel is gone too.
    a.update_script(|s| s.status_reply = StatusReply::NoSuchChannel);
    a.drop_connections();
    let lost = daemon.wait_final(&first, Duration::from_secs(40));
    assert!(lost["detail"].contains("Asterisk server a has no channel"), "{lost:?}");
    assert!(b.actions().iter().filter(|s| s.is("Status")).all(|s| s.get("Channel") == Some(second.as_str())));
    assert_eq!((a.count("Originate"), b.count("Originate")), (1, 1), "never dialled again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_server_is_sent_no_more_originates_than_its_rate() {
    let fake = FakeAmi::start(FakeScript::outcome(OriginateOutcome::busy())).await;
    let (_home, daemon) = Setup::new("paced")
        .config(NO_NUMBER_QUOTAS)
        .server("slow", fake.addr(), "max_calls_per_second = 2")
        .start_servers();
    daemon.wait_servers(&[("slow", "up")]);
    let ids: Vec<String> = (0..6).map(|_| place(&daemon)).collect();
    daemon.settle(WAIT);
    assert_eq!(fake.count("Originate"), ids.len());
    let conn = rusqlite::Connection::open(daemon.db_path()).unwrap();
    let mut dialed: Vec<i64> = ids
        .iter()
        .map(|id| conn.query_row("SELECT dialed_at FROM calls WHERE id = ?1", [id], |r| r.get(0)).unwrap())
        .collect();
    dialed.sort();
    let gaps: Vec<i64> = dialed.windows(2).map(|w| w[1] - w[0]).collect();
    // 2 a second: half a second between two Originates, at the least
    // (dialed_at is in whole milliseconds).
    assert!(gaps.iter().all(|&g| g >= 499), "gaps {gaps:?} ms");
    // And paced, not stalled: the burst takes about 5 x 0.5 s; a dialler
    // that waited out its 1 s tick before each Originate would take 5 s.
    assert!(dialed[5] - dialed[0] < 4500, "gaps {gaps:?} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_a_server_no_longer_configured_are_named_in_a_warning() {
    let fake = FakeAmi::start(FakeScript::outcome(OriginateOutcome::Answer)).await;
    let (home, mut daemon) =
        Setup::new("renamed").config(NO_NUMBER_QUOTAS).server("old", fake.addr(), UNPACED).start_servers();
    daemon.wait_servers(&[("old", "up")]);
    let id = place(&daemon);
    daemon.wait_status(&id, "answered", WAIT);
    daemon.terminate();
    // The entry renamed: the answered call's server is gone from the config.
    let config = std::fs::read_to_string(&home.config).unwrap().replace("name = \"old\"", "name = \"new\"");
    std::fs::write(&home.config, config).unwrap();
    let daemon = home.start();
    daemon.wait_servers(&[("new", "up")]);
    let warning = "no longer configured: not reconciled nor followed server=old calls=1";
    assert_eq!(daemon.logged(warning, 1, WAIT), 1, "{}", daemon.logs());
    assert_eq!(daemon.show(&id)["status"], "answered", "left as it is");
}
