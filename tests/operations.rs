//! What an operator runs beside the daemon: the metrics the alert rules and
//! the dashboard need, counted by the real binary where calls end (with a
//! scripted AMI and a scripted FastAGI callee); the alert rules in
//! `contrib/prometheus/` checked and unit-tested by `promtool`; the Grafana
//! dashboard in `contrib/grafana/` valid, and every metric name it or the
//! rules use found in a live daemon's `/metrics`.

mod support;

use std::time::Duration;

use support::daemon::Daemon;
use support::fake_agi::{self, Callee};
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome};
use support::harness::{FAST_FLOW, NO_NUMBER_QUOTAS, PASSWORD, Setup};
use support::http;

fn api(daemon: &Daemon, method: &str, target: &str, json: Option<&str>) -> http::Response {
    support::blocking(|| http::with_basic(daemon.http, method, target, "acme1", PASSWORD, json))
}

fn create(daemon: &Daemon) -> String {
    let resp = api(daemon, "POST", "/v1/calls", Some(r#"{"number":"03001234567","code":"482915"}"#));
    assert_eq!(resp.status, 202, "{}", resp.body);
    resp.json()["id"].as_str().expect("call id").to_owned()
}

fn ringing(fake: &FakeAmi, id: &str) {
    fake.emit_event(&[
        ("Event", "Newstate"),
        ("Privilege", "call,all"),
        ("Channel", "PJSIP/carrier-00000001"),
        ("ChannelState", "5"),
        ("ChannelStateDesc", "Ringing"),
        ("Uniqueid", id),
    ]);
}

fn scrape(daemon: &Daemon) -> String {
    let resp = support::blocking(|| http::get(daemon.http, "/metrics"));
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.body
}

/// The value of the sample line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Each way a call ends is counted once in `voice_otp_calls_ended_total`:
/// by the FastAGI session (completed), by the event follower (busy), by a
/// cancel over the API and by expiry in the queue; ring and talk times go
/// to their histograms, and the configured maximums are exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_counted_where_they_end() {
    let (_home, fake, daemon) = Setup::new("ops-ended")
        .agi_keys("max_sessions = 7")
        .config(FAST_FLOW)
        .config(NO_NUMBER_QUOTAS)
        .config("[queue]\nmax_concurrent_calls = 3\nmax_queued = 50\n\n[dial]\ndeadline_secs = 1\n")
        .fake(FakeScript::outcome(OriginateOutcome::Silent))
        .await;
    let before = scrape(&daemon);
    for series in [
        "voice_otp_calls_ended_total{status=\"completed\",reason=\"\"}",
        "voice_otp_calls_ended_total{status=\"failed\",reason=\"system_error\"}",
        "voice_otp_calls_ended_total{status=\"expired\",reason=\"\"}",
        "voice_otp_call_talk_duration_seconds_count{mode=\"enter\"}",
    ] {
        assert_eq!(sample(&before, series), 0.0, "{series} there from the start");
    }
    assert_eq!(sample(&before, "voice_otp_agi_max_sessions"), 7.0);
    assert_eq!(sample(&before, "voice_otp_queue_max_concurrent_calls"), 3.0);
    assert_eq!(sample(&before, "voice_otp_queue_max_queued"), 50.0);

    // Rings, is answered, hears the code: the FastAGI session ends it.
    let answered = create(&daemon);
    let token = fake.wait_agi_token(&answered, Duration::from_secs(10)).await.expect("Originate with a token");
    ringing(&fake, &answered);
    daemon.wait_status(&answered, "ringing", Duration::from_secs(10));
    let commands = fake_agi::session(daemon.agi, &answered, Callee { token: Some(&token), ..Callee::default() }).await;
    assert!(commands.iter().any(|c| c.contains("digits/4")), "the code was read: {commands:?}");
    assert_eq!(daemon.wait_final(&answered, Duration::from_secs(10))["status"], "completed");

    // Busy: the Hangup's cause ends it in the event follower.
    let busy = create(&daemon);
    fake.wait_for_originate(&busy, Duration::from_secs(10)).await.expect("Originate");
    fake.emit_event(&[
        ("Event", "Hangup"),
        ("Privilege", "call,all"),
        ("Uniqueid", &busy),
        ("Cause", "17"),
        ("Cause-txt", "User busy"),
    ]);
    assert_eq!(daemon.wait_final(&busy, Duration::from_secs(10))["reason"], "busy");

    // Canceled over the API while dialling.
    let canceled = create(&daemon);
    fake.wait_for_originate(&canceled, Duration::from_secs(10)).await.expect("Originate");
    let resp = api(&daemon, "POST", &format!("/v1/calls/{canceled}/cancel"), None);
    assert_eq!(resp.status, 200, "{}", resp.body);

    // Asterisk gone: a call waits in the queue past its deadline.
    fake.stop();
    let expired = create(&daemon);
    daemon.wait_status(&expired, "expired", Duration::from_secs(10));

    let after = scrape(&daemon);
    for (series, want) in [
        ("voice_otp_calls_ended_total{status=\"completed\",reason=\"\"}", 1.0),
        ("voice_otp_calls_ended_total{status=\"failed\",reason=\"busy\"}", 1.0),
        ("voice_otp_calls_ended_total{status=\"canceled\",reason=\"\"}", 1.0),
        ("voice_otp_calls_ended_total{status=\"expired\",reason=\"\"}", 1.0),
        ("voice_otp_calls_ended_total{status=\"failed\",reason=\"system_error\"}", 0.0),
        // Only the answered call rang (the others never reported Ringing).
        ("voice_otp_call_ring_duration_seconds_count{answered=\"true\"}", 1.0),
        ("voice_otp_call_ring_duration_seconds_count{answered=\"false\"}", 0.0),
        ("voice_otp_call_talk_duration_seconds_count{mode=\"read\"}", 1.0),
        ("voice_otp_call_talk_duration_seconds_count{mode=\"enter\"}", 0.0),
    ] {
        assert_eq!(sample(&after, series), want, "{series}\n{after}");
    }
    let total: f64 = after
        .lines()
        .filter(|l| l.starts_with("voice_otp_calls_ended_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 4.0, "each call counted once:\n{after}");
}
