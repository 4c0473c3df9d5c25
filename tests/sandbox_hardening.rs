//! Secrets and shutdown on the sandbox Asterisk, with the real binary: a
//! full call at debug log level leaks no password, AMI secret or code (the
//! daemon's log, Asterisk's log and the AMI traffic itself are searched);
//! SIGTERM in the middle of a call lets it finish; the database files are
//! private.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::harness::Setup;
use support::http;
use support::sandbox::{self, unique_number, wait_recording};

const PASSWORD: &str = "Pw-9f27c1e0-hardening";
/// The sandbox's AMI secret (asterisk-conf/sandbox/manager.conf), the default.
const AMI_SECRET: &str = "voice-otp-sandbox";

/// A TCP relay between the daemon and Asterisk's AMI that keeps a copy of
/// every byte in both directions.
struct AmiTap {
    addr: SocketAddr,
    traffic: Arc<Mutex<Vec<u8>>>,
}

impl AmiTap {
    fn start(upstream: SocketAddr) -> AmiTap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let traffic = Arc::new(Mutex::new(Vec::new()));
        let log = traffic.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let log = log.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            log.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        AmiTap { addr, traffic }
    }

    fn traffic(&self) -> String {
        String::from_utf8_lossy(&self.traffic.lock().unwrap()).into_owned()
    }
}

/// A code no other test uses (random), so finding it anywhere means it leaked.
fn unusual_code() -> String {
    format!("7{:011}", rand::random_range(0..100_000_000_000u64))
}

/// How long the phone's recording may take to appear once the call is final.
const RECORDING_WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_full_call_at_debug_level_leaks_no_secret() {
    let sandbox = sandbox::up();
    let mark = sandbox::log_mark(&sandbox);
    let tap = AmiTap::start(sandbox.ami);
    let home = Setup::new("secrets").user("acme1", PASSWORD).home(tap.addr);
    // The database is private from its first byte, whoever created it.
    let db = home.db();
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
    let daemon = home.start(); // at VOICE_OTP_LOG=debug
    let code = unusual_code();
    let number = unique_number();
    let id = daemon.seed_call(&number, &code);
    // A wrong password too, so a failed login is logged as well.
    let wrong = http::get(
        daemon.http,
        &format!("/outbound.cgi?number={number}&code={code}&username=acme1&password=Wrong-{PASSWORD}"),
    );
    assert_eq!(wrong.status, 401);
    let call = daemon.wait_final(&id, Duration::from_secs(90));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
    assert!(!call.values().any(|v| v.contains(&code)), "call show prints the code: {call:?}");

    wait_recording(&sandbox, &number, &id, RECORDING_WAIT).discard();

    for (path, mode) in
        [(db.clone(), 0o600), (home.dir.0.join("test.db-wal"), 0o600), (home.dir.0.join("test.db-shm"), 0o600)]
    {
        if let Ok(meta) = std::fs::metadata(&path) {
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{path:?}");
        }
    }

    let logs = daemon.logs();
    assert!(logs.contains(&id) && logs.contains("DEBUG"), "debug logs were captured:\n{logs}");
    // Everything Asterisk logged meanwhile, other tests' calls included:
    // none of them has this test's code, password or a reason to log the secret.
    let asterisk_log = sandbox::log_since(&sandbox, mark);
    let ami = tap.traffic();
    assert!(ami.contains(&id), "the tap saw the call's AMI traffic");
    for (place, text) in [("daemon log", &logs), ("Asterisk log", &asterisk_log), ("AMI traffic", &ami)] {
        assert!(!text.contains(&code), "the code is in the {place}");
        assert!(!text.contains(PASSWORD), "the API password is in the {place}");
    }
    assert!(!logs.contains(AMI_SECRET), "the AMI secret is in the daemon log");
    // The sandbox's folders happen to be named like its secret; those paths are no leak.
    let asterisk_log = asterisk_log.replace(&format!("/{AMI_SECRET}/"), "/");
    assert!(!asterisk_log.contains(AMI_SECRET), "the AMI secret is in the Asterisk log");
    // On the wire the secret goes only in Login, which it exists for.
    let secret_lines: Vec<&str> = ami.lines().filter(|l| l.contains(AMI_SECRET)).collect();
    assert!(
        !secret_lines.is_empty() && secret_lines.iter().all(|l| l.trim_end() == format!("Secret: {AMI_SECRET}")),
        "{secret_lines:?}"
    );
}

#[test]
fn sigterm_mid_call_lets_the_call_finish_and_refuses_new_clients() {
    let sandbox = sandbox::up();
    let (home, mut daemon) = Setup::new("sigterm").user("acme1", PASSWORD).sandbox(&sandbox);
    let number = unique_number();
    let id = daemon.seed_call(&number, "482915");
    // Wait until the callee has answered and is hearing the code.
    daemon.wait_status(&id, "answered", Duration::from_secs(60));
    sandbox::wait_playing(&sandbox, &id, "digits/", Duration::from_secs(30));
    daemon.sigterm();
    // Once the daemon says it is shutting down, new clients are refused
    // while the call plays on.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.logs().contains("shutting down") {
        assert!(Instant::now() < deadline, "no shutdown log line\n{}", daemon.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&daemon.http, Duration::from_secs(5)).is_ok() {
        assert!(Instant::now() < deadline, "the HTTP port still accepts connections during shutdown");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(daemon.show(&id)["status"], "answered", "the call was cut short");
    let status = daemon.wait_exit().expect("the daemon exits within the drain bound");
    assert!(status.success(), "exit status {status:?}\n{}", daemon.logs());
    let logs = daemon.logs();
    assert!(logs.contains("shutting down"), "{logs}");

    let call = daemon.show(&id);
    assert_eq!(call["status"], "completed", "{call:?}\n{logs}");
    assert_eq!(call["readings"], "2", "{call:?}");
    wait_recording(&sandbox, &number, &id, RECORDING_WAIT).discard();
    // Nothing half-written: the database is intact and no call is left open.
    let conn = rusqlite::Connection::open(home.db()).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let open: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM calls WHERE status NOT IN ('completed', 'failed') OR code IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 0);
}
