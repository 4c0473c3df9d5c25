//! One of two sandbox Asterisk stops (`scripts/sandbox down 2`), so this
//! holds the sandbox alone (`sandbox::exclusive_asterisks`) in its own test
//! binary: the daemons see that server down, stay healthy, and the next 10
//! calls all complete on the other. Instance 2 is the one stopped: the
//! sandbox's phone lives in instance 1, and every call needs it. With the
//! test PostgreSQL (`scripts/test` gives it) two daemons share it and the
//! calls are posted to both in turn; without it one daemon on SQLite.

mod support;

use std::time::Duration;

use support::daemon::Daemon;
use support::harness::{Home, PASSWORD, Setup};
use support::postgres::TestDatabase;
use support::sandbox::{self, Sandbox, dials, log_mark, unique_number, wait_recording};

/// Brings instance 2 back however the test ends, for everyone after us.
struct RestoreSandbox;

impl Drop for RestoreSandbox {
    fn drop(&mut self) {
        sandbox::run_args(&["up", "--asterisks", "2"]);
    }
}

/// A daemon named `name` on both sandbox servers (and on `db`, if given).
fn daemon(sandbox: &Sandbox, name: &str, db: Option<&TestDatabase>, users: bool) -> (Home, Daemon) {
    let mut setup = Setup::new(name).server("pbx1", sandbox.ami_of(1), "max_calls_per_second = 0").server(
        "pbx2",
        sandbox.ami_of(2),
        "max_calls_per_second = 0",
    );
    if let Some(db) = db {
        setup = setup.postgres(db);
    }
    if !users {
        setup = setup.no_users();
    }
    let (home, daemon) = setup.start_servers();
    (home, if users { daemon } else { daemon.calling_as("acme1", PASSWORD) })
}

#[test]
fn with_one_asterisk_stopped_the_next_ten_calls_all_complete_on_the_other() {
    let sandbox = sandbox::exclusive_asterisks(2);
    let _restore = RestoreSandbox;
    let db = TestDatabase::create("outage");
    let mut daemons = vec![daemon(&sandbox, "multi-outage", db.as_ref(), true)];
    if db.is_some() {
        daemons.push(daemon(&sandbox, "multi-outage-b", db.as_ref(), false));
    }
    for (_, d) in &daemons {
        d.wait_servers(&[("pbx1", "up"), ("pbx2", "up")]);
    }

    sandbox::run_args(&["down", "2"]);
    for (_, d) in &daemons {
        let health = d.wait_servers(&[("pbx2", "down")]);
        assert_eq!(health["status"], "ok", "healthy on the other server: {health}");
        assert_eq!(health["checks"]["asterisk"]["pbx1"], "up", "{health}");
    }

    let mark = log_mark(&sandbox);
    let calls: Vec<(String, String)> = (0..10)
        .map(|i| {
            let number = unique_number();
            let id = daemons[i % daemons.len()].1.seed_call(&number, "4821");
            (number, id)
        })
        .collect();
    let judge = &daemons[0].1;
    for (number, id) in &calls {
        let call = judge.wait_final(id, Duration::from_secs(120));
        assert_eq!(call["status"], "completed", "{call:?}\n{}", judge.logs());
        assert_eq!(call["asterisk"], "pbx1", "{call:?}");
        wait_recording(&sandbox, number, id, Duration::from_secs(20));
        assert_eq!(dials(&sandbox, number, mark), 1, "{number} rung once");
    }
    assert_eq!(judge.stored_calls().len(), 10);
}
