//! Several Asterisk servers on the sandbox (`scripts/sandbox up
//! --asterisks 2`: two real PBXs dialling one real phone): one daemon,
//! both servers, every call completed and dialled once - judged by the
//! callee's recording of each call and by the stored calls -, both servers
//! carrying calls, the paced one never faster than its rate; and the
//! dialplan's FastAGI failover: a refused first address, then the next.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use support::daemon::Daemon;
use support::harness::Setup;
use support::relay::Relay;
use support::sandbox::{self, Sandbox, dials, log_mark, unique_number, wait_recording};
use support::wav::{read_wav, speech_segments};

const CALL_WAIT: Duration = Duration::from_secs(120);
const RECORDING_WAIT: Duration = Duration::from_secs(20);

/// Every call completed with two readings, its recording holds speech
/// (the intro, 2 x 4 digits, "I repeat", goodbye) and its number was rung
/// once since `mark`. Returns each call's server.
fn judge(sandbox: &Sandbox, daemon: &Daemon, calls: &[(String, String)], mark: sandbox::LogMark) -> Vec<String> {
    let mut servers = Vec::new();
    for (number, id) in calls {
        let call = daemon.wait_final(id, CALL_WAIT);
        assert_eq!(call["status"], "completed", "{call:?}\n{}", daemon.logs());
        assert_eq!(call["readings"], "2", "{call:?}");
        let recording = wait_recording(sandbox, number, id, RECORDING_WAIT);
        let speech = speech_segments(&read_wav(&recording).expect("readable recording"));
        assert!(speech.len() >= 8, "{recording:?}: only {} speech segments", speech.len());
        assert_eq!(dials(sandbox, number, mark), 1, "{number} rung once (call {id})");
        servers.push(call["asterisk"].clone());
    }
    let mut stored: Vec<String> = daemon.stored_calls().into_iter().map(|(id, _)| id).collect();
    let mut placed: Vec<String> = calls.iter().map(|(_, id)| id.clone()).collect();
    stored.sort();
    placed.sort();
    assert_eq!(stored, placed, "one stored call per request");
    servers
}

#[test]
fn twenty_calls_over_two_asterisk_all_complete_once_each_and_the_paced_one_keeps_its_rate() {
    let sandbox = sandbox::up_asterisks(2);
    let (_home, daemon) = Setup::new("two-asterisk")
        .server("pbx1", sandbox.ami_of(1), "max_calls_per_second = 0")
        .server("pbx2", sandbox.ami_of(2), "max_calls_per_second = 2")
        .start_servers();
    daemon.wait_servers(&[("pbx1", "up"), ("pbx2", "up")]);
    let mark = log_mark(&sandbox);
    let calls: Vec<(String, String)> = (0..20)
        .map(|_| {
            let number = unique_number();
            let id = daemon.seed_call(&number, "4821");
            (number, id)
        })
        .collect();
    let servers = judge(&sandbox, &daemon, &calls, mark);
    let on = |name: &str| servers.iter().filter(|s| *s == name).count();
    assert!(on("pbx1") > 0 && on("pbx2") > 0, "both servers carry calls: {servers:?}");
    assert_eq!(on("pbx1") + on("pbx2"), 20, "{servers:?}");
    // pbx2's Originates: half a second apart at the least.
    let conn = rusqlite::Connection::open(daemon.db_path()).unwrap();
    let mut dialed: Vec<i64> = conn
        .prepare("SELECT dialed_at FROM calls WHERE asterisk = 'pbx2'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    dialed.sort();
    let gaps: Vec<i64> = dialed.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|&g| g >= 499), "pbx2 at 2 calls/s: gaps {gaps:?} ms");
}

#[test]
fn the_dialplan_tries_the_next_fastagi_address_only_when_no_daemon_took_the_call() {
    let sandbox = sandbox::up_asterisks(2);
    // Nothing listens there: connections are refused.
    let refused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (second, third) = (Relay::start(), Relay::start());
    let agi =
        format!("url = \"agi://{refused}/otp\"\nfallback_urls = [\"{}\", \"{}\"]", second.agi_url(), third.agi_url());
    // On instance 2: its dialplan is made from the same extensions.conf.
    let (_home, daemon) = Setup::new("agi-failover")
        .agi_keys(&agi)
        .server("pbx2", sandbox.ami_of(2), "max_calls_per_second = 0")
        .start_servers();
    second.point_at(daemon.agi);
    third.point_at(daemon.agi);
    daemon.wait_servers(&[("pbx2", "up")]);
    let mark = log_mark(&sandbox);
    let number = unique_number();
    let id = daemon.seed_call(&number, "4821");
    judge(&sandbox, &daemon, &[(number, id.clone())], mark);
    // The call is over and its channel gone: the dialplan has ended.
    assert_eq!(second.accepted(), 1, "the second address took the call");
    assert_eq!(third.accepted(), 0, "the call was taken: no third try");
    // pbx2's log: its dialplan went on past the refused address.
    let log = std::fs::read_to_string(&sandbox.status["asterisk_log.2"]).unwrap_or_default();
    let lines: Vec<&str> = log.lines().skip_while(|l| !l.contains(&format!("uniqueid={id}"))).collect();
    let channel = lines.first().and_then(|l| l.split("voice-otp: ").nth(1)).and_then(|r| r.split(' ').next());
    let channel = channel.unwrap_or_else(|| panic!("call {id} not in pbx2's log"));
    let tried = format!("NoOp(\"{channel}\", \"voice-otp: no daemon took the call at agi://{refused}/otp");
    assert!(lines.iter().any(|l| l.contains(&tried)), "no {tried} in\n{}", lines.join("\n"));
}
