//! The client examples in `examples/`, run as a user would run them
//! (`python3 examples/...`, `sh examples/...`) against the real daemon
//! binary, with a scripted AMI and a scripted FastAGI callee playing
//! Asterisk. Each is given the daemon's address and credentials in its
//! environment and judged on its output and exit status, and on what the
//! daemon stored for the call id it printed; the webhook receiver takes the
//! daemon's real signed webhooks and must refuse tampered copies of one.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::daemon::{Daemon, TempDir};
use support::fake_agi::{self, Callee};
use support::fake_ami::{FakeAmi, FakeScript, OriginateOutcome};
use support::harness::{FAST_FLOW, NO_NUMBER_QUOTAS, PASSWORD, Setup};
use support::http;
use support::webhook_receiver::{Received, Receiver};

/// Test config: loopback receivers allowed, quick retries.
const WEBHOOKS: &str =
    "[webhooks]\ndeny_private = false\nretry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\n";

/// The interpreter and script of an example: `python3 examples/x.py` or
/// `sh examples/x.sh`.
fn example(script: &str) -> Command {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join(script);
    let mut cmd = Command::new(if script.ends_with(".py") { "python3" } else { "sh" });
    cmd.arg(path);
    // A proxy of the test machine's must not stand between the example and
    // the daemon on loopback.
    for var in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
        cmd.env_remove(var);
    }
    cmd
}

/// An example pointed at `daemon` as user `acme1`.
fn client(script: &str, daemon: &Daemon) -> Command {
    let mut cmd = example(script);
    cmd.env("VOICE_OTP_URL", format!("http://{}", daemon.http))
        .env("VOICE_OTP_USER", "acme1")
        .env("VOICE_OTP_PASSWORD", PASSWORD);
    cmd
}

/// What a finished example left.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The value of the first `key=value` line of stdout.
    fn value(&self, key: &str) -> Option<&str> {
        self.stdout.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    /// Every `key=value` line's value, in order.
    fn values(&self, key: &str) -> Vec<&str> {
        self.stdout.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
    }
}

fn run(mut cmd: Command, args: &[&str]) -> Run {
    support::blocking(|| {
        finish(cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn example"))
    })
}

fn spawn(mut cmd: Command, args: &[&str]) -> Child {
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn example")
}

/// Waits (at most a minute) for an example to exit.
fn finish(mut child: Child) -> Run {
    support::blocking(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait example").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("example output");
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
}

/// The seed API examples place a call (as the user's defaults or with an
/// extra option), print its id and exit 0; a refusal prints the daemon's
/// detail and exits 1, and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_api_examples_place_calls_and_report_refusals() {
    let (_home, _fake, daemon) =
        Setup::new("ex-seed").config(NO_NUMBER_QUOTAS).fake(FakeScript::outcome(OriginateOutcome::busy())).await;
    for (script, language_option) in [("seed.py", ["--language", "ur"]), ("seed.sh", ["language=ur", ""])] {
        let plain = run(client(script, &daemon), &["03001234567", "482915"]);
        assert!(plain.status.success(), "{script}: {plain:?}");
        let id = plain.value("call_id").unwrap_or_else(|| panic!("{script} printed no call_id: {plain:?}"));
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{script}: {id}");
        let call = daemon.wait_final(id, Duration::from_secs(10));
        assert_eq!((call["status"].as_str(), call["reason"].as_str()), ("failed", "busy"), "{script}: {call:?}");
        assert_eq!(call["language"], "en");

        let args: Vec<&str> =
            ["03001234567", "482915"].into_iter().chain(language_option).filter(|a| !a.is_empty()).collect();
        let urdu = run(client(script, &daemon), &args);
        assert!(urdu.status.success(), "{script}: {urdu:?}");
        assert_eq!(daemon.show(urdu.value("call_id").unwrap())["language"], "ur", "{script}");

        let stored = daemon.stored_calls().len();
        let bad_code = run(client(script, &daemon), &["03001234567", "12"]);
        assert_eq!(bad_code.status.code(), Some(1), "{script}: {bad_code:?}");
        assert!(bad_code.stderr.contains("refused: 400 code must be 4 to 20 digits long"), "{script}: {bad_code:?}");
        let mut wrong = client(script, &daemon);
        wrong.env("VOICE_OTP_PASSWORD", "not-the-password");
        let wrong = run(wrong, &["03001234567", "482915"]);
        assert_eq!(wrong.status.code(), Some(1), "{script}: {wrong:?}");
        assert!(wrong.stderr.contains("refused: 401"), "{script}: {wrong:?}");
        assert!(wrong.value("call_id").is_none() && bad_code.value("call_id").is_none());
        assert_eq!(daemon.stored_calls().len(), stored, "{script}: refused requests store nothing");
    }
}

/// The id of the call `fake` was asked to originate beyond those `known`,
/// once there are `n` Originates.
async fn next_originated(fake: &FakeAmi, n: usize, known: &mut BTreeSet<String>) -> String {
    assert!(
        fake.wait_for_count("Originate", n, Duration::from_secs(20)).await,
        "no Originate #{n}: {:?}",
        fake.actions()
    );
    let new: Vec<String> = fake.originated().into_iter().filter(|id| !known.contains(id)).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    known.insert(new[0].clone());
    new[0].clone()
}

/// The JSON API examples create a call and follow it to its end: an
/// answered call that hears its code ends `completed` (exit 0), a busy one
/// `failed`/`busy` (exit 2); each prints the id the daemon dialled and
/// every status it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_examples_wait_for_the_outcome() {
    let (_home, fake, daemon) =
        Setup::new("ex-call").config(FAST_FLOW).config(NO_NUMBER_QUOTAS).fake(FakeScript::for_daemon()).await;
    let mut known = BTreeSet::new();
    let mut originates = 0;
    for script in ["call.py", "call.sh"] {
        // Answered: the example polls while the scripted callee listens.
        let child = spawn(client(script, &daemon), &["03001234567", "482915"]);
        originates += 1;
        let id = next_originated(&fake, originates, &mut known).await;
        let token = fake.wait_agi_token(&id, Duration::from_secs(10)).await.expect("the Originate carries a token");
        let commands = fake_agi::session(daemon.agi, &id, Callee { token: Some(&token), ..Callee::default() }).await;
        assert!(commands.iter().any(|c| c.contains("digits/4")), "{commands:?}");
        let done = finish(child);
        assert!(done.status.success(), "{script}: {done:?}");
        assert_eq!(done.value("call_id"), Some(id.as_str()), "{script}: {done:?}");
        let statuses = done.values("status");
        assert_eq!(statuses.last(), Some(&"completed"), "{script}: {done:?}");
        assert_eq!(statuses.first(), Some(&"queued"), "{script}: the status the POST answered comes first");
        assert_eq!(done.value("reason"), Some(""), "{script}: {done:?}");
        assert_eq!(daemon.show(&id)["status"], "completed");

        // Busy: Asterisk's Hangup cause, and the example's exit status 2.
        fake.update_script(|s| s.originate_outcome = OriginateOutcome::busy());
        let busy = run(client(script, &daemon), &["03001234567", "482915"]);
        originates += 1;
        let id = next_originated(&fake, originates, &mut known).await;
        assert_eq!(busy.status.code(), Some(2), "{script}: {busy:?}");
        assert_eq!(busy.value("call_id"), Some(id.as_str()), "{script}: {busy:?}");
        assert_eq!(busy.values("status").last(), Some(&"failed"), "{script}: {busy:?}");
        assert_eq!(busy.value("reason"), Some("busy"), "{script}: {busy:?}");
        fake.update_script(|s| s.originate_outcome = OriginateOutcome::Answer);

        // Refused: the problem's detail and field, exit status 1.
        let refused = run(client(script, &daemon), &["03001234567", "12"]);
        assert_eq!(refused.status.code(), Some(1), "{script}: {refused:?}");
        assert!(refused.stderr.contains("refused: 400 code must be 4 to 20 digits long"), "{script}: {refused:?}");
    }
    assert_eq!(fake.count("Originate"), originates, "the refused requests dialled nobody");
}

/// The webhook receiver example, running: its address and every line it
/// printed so far.
struct WebhookExample {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl WebhookExample {
    fn start(secret: &str) -> WebhookExample {
        let mut cmd = example("webhook_receiver.py");
        cmd.env("VOICE_OTP_WEBHOOK_SECRET", secret).args(["--port", "0"]);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn webhook_receiver.py");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        support::blocking(|| stdout.read_line(&mut first)).expect("read the receiver's first line");
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.strip_suffix('/'))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("webhook_receiver.py said {first:?}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        WebhookExample { child, addr, lines }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Waits for a line starting with `prefix`.
    fn wait_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.starts_with(prefix)) {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "no line {prefix:?}; got {:?}", self.lines.lock().unwrap());
            support::blocking(|| std::thread::sleep(Duration::from_millis(50)));
        }
    }

    /// POSTs `body` as a webhook with `signature` (none if `None`), the
    /// other headers taken from `like`; returns the status and the body.
    fn post(&self, like: &Received, signature: Option<&str>, body: &str) -> (u16, String) {
        self.post_as(like, like.header("x-voice-otp-delivery").unwrap(), signature, body)
    }

    /// [`WebhookExample::post`] under another delivery id.
    fn post_as(&self, like: &Received, delivery: &str, signature: Option<&str>, body: &str) -> (u16, String) {
        let mut head = format!(
            "POST /hook HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.addr,
            body.len()
        );
        head.push_str(&format!("x-voice-otp-event: {}\r\n", like.header("x-voice-otp-event").unwrap()));
        head.push_str(&format!("x-voice-otp-delivery: {delivery}\r\n"));
        if let Some(sig) = signature {
            head.push_str(&format!("X-Voice-OTP-Signature: {sig}\r\n"));
        }
        let resp = support::blocking(|| http::raw(self.addr, format!("{head}\r\n{body}").as_bytes()));
        (resp.status, resp.body.trim().to_owned())
    }
}

impl Drop for WebhookExample {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A signature header for `body` as delivery `like`'s (v2 only: what the
/// examples check).
fn sign(secret: &str, t: u64, like: &Received, body: &str) -> String {
    let (delivery, event) = (like.header("x-voice-otp-delivery").unwrap(), like.header("x-voice-otp-event").unwrap());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}\n{delivery}\n{event}\n{body}").as_bytes());
    format!("t={t},v2={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook receiver accepts the daemon's real signed webhooks for a
/// call (every change, the final one included), and refuses a copy of a
/// real one whose body, signature, timestamp or secret is not right; the
/// shell check agrees on the same webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_examples_accept_signed_webhooks_and_refuse_tampered_ones() {
    let (home, _fake, daemon) = Setup::new("ex-hooks")
        .config(WEBHOOKS)
        .config(NO_NUMBER_QUOTAS)
        .fake(FakeScript::outcome(OriginateOutcome::busy()))
        .await;
    let secret = home.user("acme1").webhook_secret.clone();
    let receiver = WebhookExample::start(&secret);

    // The daemon's own webhooks, straight to the example.
    let body = format!(r#"{{"number":"03001234567","code":"482915","callback_url":"{}"}}"#, receiver.url());
    let resp = support::blocking(|| http::with_basic(daemon.http, "POST", "/v1/calls", "acme1", PASSWORD, Some(&body)));
    assert_eq!(resp.status, 202, "{}", resp.body);
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    let last = receiver.wait_line(&format!("accepted event=call.failed call={id} status=failed delivery="));
    receiver.wait_line(&format!("accepted event=call.dialing call={id} status=dialing delivery="));
    assert!(!receiver.lines.lock().unwrap().iter().any(|l| l.starts_with("rejected")), "{last}");

    // A real webhook of another call, caught by the test's own receiver, to
    // replay to the example as it is and tampered with.
    let catcher = Receiver::start(&[]);
    let body = format!(r#"{{"number":"03001234567","code":"482915","callback_url":"{}"}}"#, catcher.url("hook"));
    let resp = support::blocking(|| http::with_basic(daemon.http, "POST", "/v1/calls", "acme1", PASSWORD, Some(&body)));
    assert_eq!(resp.status, 202, "{}", resp.body);
    let other = resp.json()["id"].as_str().unwrap().to_owned();
    let real = support::blocking(|| catcher.wait_for(Duration::from_secs(30), |r| r.json()["status"] == "failed"));
    assert_eq!(real.json()["id"], other.as_str());
    let signature = real.header("x-voice-otp-signature").unwrap().to_owned();
    let delivery = real.header("x-voice-otp-delivery").unwrap();

    let (status, said) = receiver.post(&real, Some(&signature), &real.body);
    assert_eq!(
        (status, said.as_str()),
        (200, format!("accepted event=call.failed call={other} status=failed delivery={delivery}").as_str())
    );
    let (status, said) = receiver.post(&real, Some(&signature), &real.body);
    assert_eq!((status, said.starts_with("duplicate event=call.failed")), (200, true), "a retry: {said}");

    let tampered = real.body.replace("\"status\":\"failed\"", "\"status\":\"completed\"");
    assert_ne!(tampered, real.body);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (before, v2) = signature.rsplit_once(",v2=").unwrap();
    let flipped = format!("{before},v2={}", v2.chars().rev().collect::<String>());
    let v1_only = before.to_owned();
    for (what, sig, body, why) in [
        ("tampered body", Some(signature.clone()), tampered.as_str(), "signature does not match"),
        ("wrong v2", Some(flipped), real.body.as_str(), "signature does not match"),
        ("v1 alone", Some(v1_only), real.body.as_str(), "malformed signature header"),
        (
            "another secret",
            Some(sign("not-the-secret", now, &real, &real.body)),
            real.body.as_str(),
            "signature does not match",
        ),
        (
            "an hour old",
            Some(sign(&secret, now - 3600, &real, &real.body)),
            real.body.as_str(),
            "timestamp outside the tolerance",
        ),
        ("garbage", Some("v2=abc".to_owned()), real.body.as_str(), "malformed signature header"),
        ("unsigned", None, real.body.as_str(), "no X-Voice-OTP-Signature header"),
    ] {
        let (status, said) = receiver.post(&real, sig.as_deref(), body);
        assert_eq!(status, 401, "{what}: {said}");
        assert!(said.starts_with(&format!("rejected: {why}")), "{what}: {said}");
    }
    // The real webhook replayed at once under a new delivery id, to pass
    // the dedupe: the delivery id is signed.
    let (status, said) = receiver.post_as(&real, "999999", Some(&signature), &real.body);
    assert_eq!(status, 401, "a replay as a new delivery: {said}");
    assert!(said.starts_with("rejected: signature does not match"), "{said}");
    // Nor by moving a part of the event into the delivery id.
    let shifted = format!("{delivery}.call");
    let (status, said) = receiver.post_as(&real, &shifted, Some(&signature), &real.body);
    assert_eq!(status, 401, "delivery {shifted}: {said}");
    // Signed right with the secret and a fresh time: a body the daemon
    // never sent is accepted - it is the secret that proves the sender.
    let (status, _) = receiver.post(&real, Some(&sign(&secret, now, &real, &tampered)), &tampered);
    assert_eq!(status, 200);

    // The shell check on the same webhook, saved as received.
    let dir = TempDir::new("ex-verify");
    let (good, bad) = (dir.0.join("good.json"), dir.0.join("tampered.json"));
    std::fs::write(&good, &real.body).unwrap();
    std::fs::write(&bad, &tampered).unwrap();
    let verify = |key: &str, file: &PathBuf| {
        let mut cmd = example("verify_webhook.sh");
        cmd.env("VOICE_OTP_WEBHOOK_SECRET", key);
        run(cmd, &[&signature, delivery, "call.failed", file.to_str().unwrap()])
    };
    let ok = verify(&secret, &good);
    assert!(ok.status.success() && ok.stdout.trim() == "valid", "{ok:?}");
    let tampered_run = verify(&secret, &bad);
    assert_eq!(tampered_run.status.code(), Some(1), "{tampered_run:?}");
    assert!(tampered_run.stderr.contains("signature does not match"), "{tampered_run:?}");
    let wrong_secret = verify("not-the-secret", &good);
    assert_eq!(wrong_secret.status.code(), Some(1), "{wrong_secret:?}");
    let mut cmd = example("verify_webhook.sh");
    cmd.env("VOICE_OTP_WEBHOOK_SECRET", &secret);
    let replayed = run(cmd, &[&signature, "999999", "call.failed", good.to_str().unwrap()]);
    assert!(replayed.stderr.contains("signature does not match"), "another delivery id: {replayed:?}");
}

/// The verification examples: `start` makes a verification whose call the
/// scripted callee answers and writes the digits of; `check` with a wrong
/// code says `pending` and exits 2, with the heard code `approved` and
/// exits 0; `start` again with the same Idempotency-Key gets the same
/// verification and places no second call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verification_examples_start_and_check() {
    let (_home, fake, daemon) = Setup::new("ex-verify").config(FAST_FLOW).fake(FakeScript::for_daemon()).await;
    for (n, script) in ["verify.py", "verify.sh"].into_iter().enumerate() {
        let number = format!("0300123456{n}");
        let key = format!("signup-{n}");
        let key_args: Vec<&str> = if script.ends_with(".py") {
            vec!["start", &number, "--idempotency-key", &key]
        } else {
            vec!["start", &number, &key]
        };
        let started = run(client(script, &daemon), &key_args);
        assert!(started.status.success(), "{script}: {started:?}");
        let id = started.value("verification_id").expect("verification_id").to_owned();
        let call_id = started.value("call_id").expect("call_id").to_owned();
        assert_eq!(started.value("status"), Some("pending"), "{script}: {started:?}");
        let retried = run(client(script, &daemon), &key_args);
        assert_eq!(retried.value("verification_id"), Some(id.as_str()), "{script}: the key replays: {retried:?}");
        assert_eq!(retried.value("call_id"), Some(call_id.as_str()), "{script}: no second call");

        // The callee hears the code.
        let token = fake.wait_agi_token(&call_id, Duration::from_secs(10)).await.expect("an Originate");
        let commands =
            fake_agi::session(daemon.agi, &call_id, Callee { token: Some(&token), ..Callee::default() }).await;
        let code: String = commands
            .iter()
            .filter_map(|c| c.strip_prefix("STREAM FILE digits/"))
            .filter_map(|rest| rest.chars().next())
            .take(6)
            .collect();
        assert_eq!(code.len(), 6, "{commands:?}");
        let wrong: String = code.chars().map(|c| if c == '0' { '1' } else { '0' }).collect();
        let miss = run(client(script, &daemon), &["check", &id, &wrong]);
        assert_eq!(miss.status.code(), Some(2), "{script}: {miss:?}");
        assert_eq!((miss.value("status"), miss.value("attempts_left")), (Some("pending"), Some("4")), "{script}");
        let hit = run(client(script, &daemon), &["check", &id, &code]);
        assert!(hit.status.success(), "{script}: {hit:?}");
        assert_eq!(hit.value("status"), Some("approved"), "{script}: {hit:?}");
        let again = run(client(script, &daemon), &["check", &id, &code]);
        assert_eq!(again.status.code(), Some(1), "{script}: a code serves once (409): {again:?}");
    }
    assert_eq!(daemon.stored_calls().len(), 2, "one call per verification: {:?}", daemon.stored_calls());
}
