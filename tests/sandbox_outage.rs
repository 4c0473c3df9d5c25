//! Stops and restarts the sandbox's Asterisk, so it holds the sandbox alone
//! (`sandbox::exclusive()`) in its own test binary: `/healthz` must turn 503
//! naming AMI while Asterisk is down, and 200 again once it is back.

mod support;

use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::harness::Setup;
use support::http;
use support::sandbox;

/// Brings the sandbox back up however the test ends, for everyone after us.
struct RestoreSandbox;

impl Drop for RestoreSandbox {
    fn drop(&mut self) {
        sandbox::run("up");
    }
}

fn wait_health(daemon: &Daemon, status: u16, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let resp = http::get(daemon.http, "/healthz");
        if resp.status == status {
            return resp.json();
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still {} after {limit:?}: {}\n{}",
            resp.status,
            resp.body,
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn healthz_follows_asterisk_down_and_back() {
    let sandbox = sandbox::exclusive();
    let _restore = RestoreSandbox;
    let (_home, daemon) = Setup::new("outage").no_users().sandbox(&sandbox);
    let up = wait_health(&daemon, 200, Duration::from_secs(30));
    assert_eq!(up["status"], "ok");

    sandbox::run("down");
    let down = wait_health(&daemon, 503, Duration::from_secs(10));
    assert_eq!(down["checks"]["ami"], "down", "{down}");
    assert_eq!(down["checks"]["fastagi"], "up");
    assert_eq!(down["checks"]["database"], "up");
    assert_eq!(down["down"], serde_json::json!(["ami"]));

    sandbox::run("up");
    let back = wait_health(&daemon, 200, Duration::from_secs(60));
    assert_eq!(back["down"], serde_json::json!([]));
    let metrics = http::get(daemon.http, "/metrics");
    assert!(metrics.body.contains("voice_otp_ami_connected 1"), "{}", metrics.body);
    assert!(!metrics.body.contains("voice_otp_ami_reconnects_total 0\n"), "the reconnect is counted: {}", metrics.body);
}
