//! The credential cache in the real binary: a second request with the same
//! credentials skips bcrypt, and `voice-otp user passwd|disable|remove` run
//! by the CLI - another process - while the daemon serves takes effect on
//! the very next request.

mod support;

use std::time::Duration;

use support::daemon::{Daemon, cli};
use support::fake_ami::FakeScript;
use support::harness::{NO_NUMBER_QUOTAS, Setup};
use support::http;

fn seed(password: &str) -> String {
    format!("/outbound.cgi?number=03001234567&code=482915&username=acme1&password={password}")
}

fn status(daemon: &Daemon, password: &str) -> u16 {
    tokio::task::block_in_place(|| http::get(daemon.http, &seed(password))).status
}

fn run_cli(daemon: &Daemon, args: &[&str], stdin: &str) {
    let (ok, out, err) = tokio::task::block_in_place(|| cli(&daemon.config, args, stdin));
    assert!(ok, "{args:?}: {out} {err}");
}

fn logged(daemon: &Daemon, needle: &str, expected: usize) -> usize {
    tokio::task::block_in_place(|| daemon.logged(needle, expected, Duration::from_secs(10)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_while_serving_count_at_once() {
    // One number is dialled many times: its quotas are tests/abuse_limits.rs's subject.
    let (_home, _fake, daemon) = Setup::new("auth-cache")
        .user("acme1", "old-pass-1")
        .config(NO_NUMBER_QUOTAS)
        .fake(FakeScript::for_daemon())
        .await;

    assert_eq!(status(&daemon, "old-pass-1"), 200);
    assert_eq!(status(&daemon, "old-pass-1"), 200);
    assert_eq!(status(&daemon, "old-pass-1"), 200);
    assert_eq!(logged(&daemon, "credentials accepted from the cache", 2), 2, "{}", daemon.logs());
    assert_eq!(logged(&daemon, "credentials checked with bcrypt", 1), 1, "{}", daemon.logs());
    // A wrong password is checked every time, never remembered.
    assert_eq!(status(&daemon, "wrong"), 401);
    assert_eq!(status(&daemon, "wrong"), 401);
    assert_eq!(logged(&daemon, "credentials checked with bcrypt", 3), 3, "{}", daemon.logs());

    run_cli(&daemon, &["user", "passwd", "acme1", "--password-stdin"], "new-pass-2\n");
    assert_eq!(status(&daemon, "old-pass-1"), 401, "the old password must be refused at once");
    assert_eq!(status(&daemon, "new-pass-2"), 200);
    assert_eq!(status(&daemon, "new-pass-2"), 200);

    run_cli(&daemon, &["user", "disable", "acme1"], "");
    assert_eq!(status(&daemon, "new-pass-2"), 401, "a disabled user must be refused at once");
    run_cli(&daemon, &["user", "enable", "acme1"], "");
    assert_eq!(status(&daemon, "new-pass-2"), 200);

    run_cli(&daemon, &["user", "remove", "acme1"], "");
    assert_eq!(status(&daemon, "new-pass-2"), 401, "a removed user must be refused at once");

    let logs = daemon.logs();
    assert!(!logs.contains("old-pass-1") && !logs.contains("new-pass-2"), "password in logs:\n{logs}");
}
