//! Secrets and shutdown on the sandbox Asterisk, with the real binary: a
//! full call at debug log level leaks no password, AMI secret or code (the
//! daemon's log, Asterisk's log and the AMI traffic itself are searched);
//! SIGTERM in the middle of a call lets it finish; the database files are
//! private.

mod support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::daemon::{Daemon, TempDir, add_user, call_show, write_config};
use support::http;
use support::sandbox::{self, unique_number};

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

/// The part of a file written after `offset`.
fn tail(path: &std::path::Path, offset: u64) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A code no other test uses, so finding it anywhere means it leaked.
fn unusual_code() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("7{:011}", (nanos / 7 + u128::from(std::process::id())) % 100_000_000_000)
}

fn seed_call(daemon: &Daemon, number: &str, code: &str) -> String {
    let target = format!("/outbound.cgi?number={number}&code={code}&username=acme1&password={PASSWORD}");
    let resp = http::get(daemon.http, &target);
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.json_field("call_id").expect("call_id")
}

#[test]
fn a_full_call_at_debug_level_leaks_no_secret() {
    let sandbox = sandbox::up();
    let log_start = std::fs::metadata(&sandbox.asterisk_log).map(|m| m.len()).unwrap_or(0);
    let tap = AmiTap::start(sandbox.ami);
    let dir = TempDir::new("secrets");
    let config = write_config(&dir.0, tap.addr, "");
    add_user(&config, "acme1", PASSWORD);
    // The database is private from its first byte, whoever created it.
    let db = dir.0.join("test.db");
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
    let daemon = Daemon::start(&config); // at VOICE_OTP_LOG=debug
    let code = unusual_code();
    let number = unique_number();
    let id = seed_call(&daemon, &number, &code);
    // A wrong password too, so a failed login is logged as well.
    let wrong = http::get(
        daemon.http,
        &format!("/outbound.cgi?number={number}&code={code}&username=acme1&password=Wrong-{PASSWORD}"),
    );
    assert_eq!(wrong.status, 401);
    let call = daemon.wait_final(&id, Duration::from_secs(90));
    assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
    assert!(!call.values().any(|v| v.contains(&code)), "call show prints the code: {call:?}");

    for (path, mode) in [(db.clone(), 0o600), (dir.0.join("test.db-wal"), 0o600), (dir.0.join("test.db-shm"), 0o600)] {
        if let Ok(meta) = std::fs::metadata(&path) {
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{path:?}");
        }
    }

    let logs = daemon.logs();
    assert!(logs.contains(&id) && logs.contains("DEBUG"), "debug logs were captured:\n{logs}");
    let asterisk_log = tail(&sandbox.asterisk_log, log_start);
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
    let dir = TempDir::new("sigterm");
    let config = write_config(&dir.0, sandbox.ami, "");
    add_user(&config, "acme1", PASSWORD);
    let mut daemon = Daemon::start(&config);
    let number = unique_number();
    let id = seed_call(&daemon, &number, "482915");
    // Wait until the callee has answered and is hearing the code.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = call_show(&config, &id).get("status").cloned().unwrap_or_default();
        if status == "answered" {
            break;
        }
        assert!(status == "queued" || status == "dialing", "call went {status} before SIGTERM\n{}", daemon.logs());
        assert!(Instant::now() < deadline, "never answered\n{}", daemon.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.sigterm();
    // Once the daemon says it is shutting down, new clients are refused
    // while the call plays on.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.logs().contains("shutting down") {
        assert!(Instant::now() < deadline, "no shutdown log line\n{}", daemon.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        TcpStream::connect_timeout(&daemon.http, Duration::from_secs(5)).is_err()
    });
    assert!(refused, "the HTTP port still accepts connections during shutdown");
    assert_eq!(call_show(&config, &id)["status"], "answered", "the call was cut short");
    let status = daemon.wait_exit().expect("the daemon exits within the drain bound");
    assert!(status.success(), "exit status {status:?}\n{}", daemon.logs());
    let logs = daemon.logs();
    assert!(logs.contains("shutting down"), "{logs}");

    let call = call_show(&config, &id);
    assert_eq!(call["status"], "completed", "{call:?}\n{logs}");
    assert_eq!(call["readings"], "2", "{call:?}");
    // Nothing half-written: the database is intact and no call is left open.
    let conn = rusqlite::Connection::open(dir.0.join("test.db")).unwrap();
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
