//! One of two sandbox Asterisk stops (`scripts/sandbox down 2`), so this
//! holds the sandbox alone (`sandbox::exclusive_asterisks`) in its own test
//! binary: the daemon sees that server down, stays healthy, and the next
//! 10 calls all complete on the other. Instance 2 is the one stopped: the
//! sandbox's phone lives in instance 1, and every call needs it.

mod support;

use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::harness::Setup;
use support::http;
use support::sandbox::{self, dials, log_mark, unique_number, wait_recording};

/// Brings instance 2 back however the test ends, for everyone after us.
struct RestoreSandbox;

impl Drop for RestoreSandbox {
    fn drop(&mut self) {
        sandbox::run_args(&["up", "--asterisks", "2"]);
    }
}

fn wait_health(daemon: &Daemon, server: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = http::get(daemon.http, "/healthz").json();
        if health["checks"]["asterisk"][server] == state {
            return health;
        }
        assert!(Instant::now() < deadline, "{server} not {state}: {health}\n{}", daemon.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn with_one_asterisk_stopped_the_next_ten_calls_all_complete_on_the_other() {
    let sandbox = sandbox::exclusive_asterisks(2);
    let _restore = RestoreSandbox;
    let (_home, daemon) = Setup::new("multi-outage")
        .server("pbx1", sandbox.ami_of(1), "max_calls_per_second = 0")
        .server("pbx2", sandbox.ami_of(2), "max_calls_per_second = 0")
        .start_servers();
    wait_health(&daemon, "pbx1", "up");
    wait_health(&daemon, "pbx2", "up");

    sandbox::run_args(&["down", "2"]);
    let health = wait_health(&daemon, "pbx2", "down");
    assert_eq!(health["status"], "ok", "healthy on the other server: {health}");
    assert_eq!(health["checks"]["asterisk"]["pbx1"], "up", "{health}");

    let mark = log_mark(&sandbox);
    let calls: Vec<(String, String)> = (0..10)
        .map(|_| {
            let number = unique_number();
            let id = daemon.seed_call(&number, "4821");
            (number, id)
        })
        .collect();
    for (number, id) in &calls {
        let call = daemon.wait_final(id, Duration::from_secs(120));
        assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
        assert_eq!(call["asterisk"], "pbx1", "{call:?}");
        wait_recording(&sandbox, number, id, Duration::from_secs(20));
        assert_eq!(dials(&sandbox, number, mark), 1, "{number} rung once");
    }
    assert_eq!(daemon.stored_calls().len(), 10);
}
