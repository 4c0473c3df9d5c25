//! Self-tests of [`super::fake_ami`], built only by the `support` test target
//! (`tests/support/main.rs`), not by every integration test that includes
//! `mod support;`.

use super::fake_ami::*;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const T: Duration = Duration::from_secs(5);

/// A deliberately dumb raw client: writes bytes, reads CRLF-framed messages.
struct Client {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Client {
    async fn connect(ami: &FakeAmi) -> (Client, String) {
        let stream = TcpStream::connect(ami.addr()).await.unwrap();
        let (rd, wr) = stream.into_split();
        let mut c = Client { rd: BufReader::new(rd), wr };
        let mut banner = String::new();
        c.rd.read_line(&mut banner).await.unwrap();
        (c, banner)
    }
    async fn send(&mut self, raw: &str) {
        self.wr.write_all(raw.as_bytes()).await.unwrap();
    }
    /// Next message as (key, value) lines; None on EOF/timeout.
    async fn recv(&mut self) -> Option<Vec<(String, String)>> {
        tokio::time::timeout(T, async {
            let mut msg = Vec::new();
            loop {
                let mut line = String::new();
                if self.rd.read_line(&mut line).await.ok()? == 0 {
                    return None;
                }
                let line = line.strip_suffix("\r\n").expect("fake AMI line without CRLF");
                if line.is_empty() {
                    return Some(msg);
                }
                let (k, v) = line.split_once(": ").expect("fake AMI line without ': '");
                msg.push((k.to_string(), v.to_string()));
            }
        })
        .await
        .ok()
        .flatten()
    }
    async fn login(&mut self, user: &str, secret: &str) -> Vec<(String, String)> {
        self.send(&format!("Action: Login\r\nActionID: l1\r\nUsername: {user}\r\nSecret: {secret}\r\n\r\n")).await;
        self.recv().await.expect("login response")
    }
    /// Sends a Ping and returns the next message: if it is that Ping's
    /// Pong, nothing was queued for this session before it (the fake writes
    /// a session's replies and events in the order it queued them).
    async fn after_ping(&mut self, action_id: &str) -> Vec<(String, String)> {
        self.send(&format!("Action: Ping\r\nActionID: {action_id}\r\n\r\n")).await;
        self.recv().await.expect("a message after the ping")
    }
    /// Whether the server closed the connection (EOF) within `within`.
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut sink = Vec::new();
        matches!(tokio::time::timeout(within, self.rd.read_to_end(&mut sink)).await, Ok(Ok(_)))
    }
}

fn get<'a>(msg: &'a [(String, String)], k: &str) -> Option<&'a str> {
    msg.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn banner_login_ok_and_fully_booted() {
    let ami = FakeAmi::start(FakeScript::default()).await;
    let (mut c, banner) = Client::connect(&ami).await;
    assert_eq!(banner, BANNER);
    let r = c.login("voiceotp", "secret").await;
    assert_eq!(
        r,
        vec![
            ("Response".into(), "Success".into()),
            ("ActionID".into(), "l1".into()),
            ("Message".into(), "Authentication accepted".into())
        ]
    );
    let ev = c.recv().await.unwrap();
    assert_eq!(get(&ev, "Event"), Some("FullyBooted"));
    assert_eq!(ami.count("login"), 1);
    assert_eq!(ami.connections(), 1);
    assert_eq!(ami.live_connections(), 1);
}

#[tokio::test]
async fn login_failure_waits_then_closes() {
    let ami = FakeAmi::start(FakeScript::with_credentials("u", "right")).await;
    let (mut c, _) = Client::connect(&ami).await;
    let t0 = std::time::Instant::now();
    let r = c.login("u", "wrong").await;
    assert!(t0.elapsed() >= Duration::from_millis(950), "answered after {:?}", t0.elapsed());
    assert_eq!(get(&r, "Response"), Some("Error"));
    assert_eq!(get(&r, "Message"), Some("Authentication failed"));
    assert!(c.closed_within(Duration::from_secs(2)).await, "session not closed");
    assert_eq!(ami.actions()[0].get("secret"), Some("wrong"));
}

#[tokio::test]
async fn actions_before_login_are_denied_and_unknown_ones_rejected() {
    let ami = FakeAmi::start(FakeScript::default()).await;
    let (mut c, _) = Client::connect(&ami).await;
    c.send("Action: Ping\r\nActionID: p0\r\n\r\n").await;
    let r = c.recv().await.unwrap();
    assert_eq!(get(&r, "Message"), Some("Permission denied"));
    assert_eq!(get(&r, "ActionID"), Some("p0"));
    c.login("voiceotp", "secret").await;
    c.recv().await.unwrap(); // FullyBooted
    c.send("Action: CoreShowChannels\r\n\r\n").await;
    let r = c.recv().await.unwrap();
    assert_eq!(get(&r, "Response"), Some("Error"));
    assert!(get(&r, "Message").unwrap().starts_with("Invalid/unknown command"), "{r:?}");
    c.send("Foo: bar\r\n\r\n").await;
    assert_eq!(get(&c.recv().await.unwrap(), "Message"), Some("Missing action in request"));
    assert_eq!(ami.count(""), 1, "action-less message recorded");
}

#[tokio::test]
async fn status_answered_as_scripted() {
    let ami = FakeAmi::start(FakeScript::default()).await;
    let (mut c, _) = Client::connect(&ami).await;
    c.login("voiceotp", "secret").await;
    c.recv().await.unwrap(); // FullyBooted
    c.send("Action: Status\r\nActionID: s1\r\nChannel: abc\r\n\r\n").await;
    let r = c.recv().await.unwrap();
    assert_eq!((get(&r, "Response"), get(&r, "ActionID")), (Some("Error"), Some("s1")));
    assert_eq!(get(&r, "Message"), Some("No such channel"));
    ami.update_script(|s| s.status_reply = StatusReply::Error("Permission denied".into()));
    c.send("Action: Status\r\nActionID: s2\r\nChannel: abc\r\n\r\n").await;
    assert_eq!(get(&c.recv().await.unwrap(), "Message"), Some("Permission denied"));
    ami.update_script(|s| s.status_reply = StatusReply::Exists);
    c.send("Action: Status\r\nActionID: s3\r\nChannel: abc\r\n\r\n").await;
    let r = c.recv().await.unwrap();
    assert_eq!((get(&r, "Response"), get(&r, "EventList")), (Some("Success"), Some("start")));
    let r = c.recv().await.unwrap();
    assert_eq!((get(&r, "Event"), get(&r, "Uniqueid"), get(&r, "ActionID")), (Some("Status"), Some("abc"), Some("s3")));
    assert_eq!(get(&c.recv().await.unwrap(), "Event"), Some("StatusComplete"));
    assert_eq!(ami.count("Status"), 3);
}

#[tokio::test]
async fn ping_pong_and_ignored_pings() {
    let ami = FakeAmi::start(FakeScript::default()).await;
    let (mut c, _) = Client::connect(&ami).await;
    c.login("voiceotp", "secret").await;
    c.recv().await.unwrap();
    c.send("Action: Ping\r\nActionID: 7\r\n\r\n").await;
    let r = c.recv().await.unwrap();
    assert_eq!(get(&r, "Response"), Some("Success"));
    assert_eq!(get(&r, "Ping"), Some("Pong"));
    assert_eq!(get(&r, "ActionID"), Some("7"));
    assert!(get(&r, "Timestamp").is_some_and(|t| t.contains('.')), "{r:?}");

    ami.update_script(|s| s.ignore_pings = true);
    c.send("Action: Ping\r\nActionID: 8\r\n\r\n").await;
    assert!(ami.wait_for_count("Ping", 2, T).await);
    // Answered again, the next ping's Pong is the next message: ping 8 got none.
    ami.update_script(|s| s.ignore_pings = false);
    let r = c.after_ping("9").await;
    assert_eq!((get(&r, "Ping"), get(&r, "ActionID")), (Some("Pong"), Some("9")), "ignored ping got an answer: {r:?}");
}

#[tokio::test]
async fn originate_answer_sends_response_then_event() {
    let script = FakeScript { hangup_after_answer: Some(Duration::from_millis(50)), ..FakeScript::default() };
    let ami = FakeAmi::start(script).await;
    let (mut c, _) = Client::connect(&ami).await;
    c.login("voiceotp", "secret").await;
    c.recv().await.unwrap();
    c.send(concat!(
        "Action: Originate\r\nActionID: o1\r\nChannel: PJSIP/+923001234567@carrier\r\n",
        "Context: otp\r\nExten: s\r\nPriority: 1\r\nAsync: true\r\nChannelId: call-42\r\n",
        "Variable: OTP_ID=42\r\nVariable: LANG=en\r\nCallerID: \"OTP\" <1000>\r\n\r\n"
    ))
    .await;
    let r = c.recv().await.unwrap();
    assert_eq!(get(&r, "Response"), Some("Success"));
    assert_eq!(get(&r, "ActionID"), Some("o1"));
    assert_eq!(get(&r, "Message"), Some("Originate successfully queued"));
    let ev = c.recv().await.unwrap();
    assert_eq!(get(&ev, "Event"), Some("OriginateResponse"));
    assert_eq!(get(&ev, "Response"), Some("Success"));
    assert_eq!(get(&ev, "Reason"), Some("4"));
    assert_eq!(get(&ev, "Uniqueid"), Some("call-42"));
    assert_eq!(get(&ev, "ActionID"), Some("o1"));
    assert_eq!(get(&ev, "Channel"), Some("PJSIP/+923001234567@carrier"));
    assert_eq!(get(&ev, "CallerIDNum"), Some("1000"));
    let hup = c.recv().await.unwrap();
    assert_eq!(get(&hup, "Event"), Some("Hangup"));
    assert_eq!(get(&hup, "Cause"), Some("16"));

    let o = ami.wait_for_action("originate", T).await.expect("originate recorded");
    assert_eq!(o.get_all("Variable"), vec!["OTP_ID=42", "LANG=en"]);
    assert_eq!(o.get("channelid"), Some("call-42"));
    assert_eq!(o.session, 1);
    let names: Vec<String> = ami.actions().into_iter().map(|a| a.name).collect();
    assert_eq!(names, vec!["Login", "Originate"]);
}

#[tokio::test]
async fn originate_failure_sends_hangup_then_failure_after_delay() {
    let script = FakeScript {
        originate_outcome: OriginateOutcome::busy(),
        outcome_delay: Duration::from_millis(200),
        ..FakeScript::default()
    };
    let ami = FakeAmi::start(script).await;
    let (mut c, _) = Client::connect(&ami).await;
    c.login("voiceotp", "secret").await;
    c.recv().await.unwrap();
    let t0 = std::time::Instant::now();
    c.send("Action: Originate\r\nActionID: o2\r\nChannel: PJSIP/1@carrier\r\nAsync: yes\r\nChannelId: c-2\r\n\r\n")
        .await;
    assert_eq!(get(&c.recv().await.unwrap(), "Response"), Some("Success"));
    let hup = c.recv().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(190), "outcome came after {:?}", t0.elapsed());
    assert_eq!(get(&hup, "Event"), Some("Hangup"));
    assert_eq!(get(&hup, "Uniqueid"), Some("c-2"));
    assert_eq!(get(&hup, "Cause"), Some("17"));
    assert_eq!(get(&hup, "Cause-txt"), Some("User busy"));
    let ev = c.recv().await.unwrap();
    assert_eq!(get(&ev, "Event"), Some("OriginateResponse"));
    assert_eq!(get(&ev, "Response"), Some("Failure"));
    assert_eq!(get(&ev, "Reason"), Some("0"));
    assert_eq!(get(&ev, "Uniqueid"), Some("c-2"));
}

#[tokio::test]
async fn silent_and_synchronous_originates() {
    let script = FakeScript { originate_outcome: OriginateOutcome::Silent, ..FakeScript::default() };
    let ami = FakeAmi::start(script).await;
    let (mut c, _) = Client::connect(&ami).await;
    c.login("voiceotp", "secret").await;
    c.recv().await.unwrap();
    c.send("Action: Originate\r\nAsync: true\r\nChannel: PJSIP/1@carrier\r\n\r\n").await;
    assert_eq!(get(&c.recv().await.unwrap(), "Message"), Some("Originate successfully queued"));
    // Silent means nothing, ever: there is no later event to wait for, so
    // this waits well past the (zero) outcome delay instead.
    assert!(tokio::time::timeout(Duration::from_millis(300), c.recv()).await.is_err());

    // Without Async the only reply is the verdict.
    ami.update_script(|s| s.originate_outcome = OriginateOutcome::congestion());
    c.send("Action: Originate\r\nActionID: s1\r\nChannel: PJSIP/1@carrier\r\n\r\n").await;
    let r = c.recv().await.unwrap();
    assert_eq!(get(&r, "Response"), Some("Error"));
    assert_eq!(get(&r, "Message"), Some("Originate failed"));
    let r = c.after_ping("p1").await;
    assert_eq!(get(&r, "Ping"), Some("Pong"), "an event after a synchronous Originate: {r:?}");
    assert_eq!(ami.count("Originate"), 2);
}

#[tokio::test]
async fn events_reach_logged_in_sessions_only_and_respect_events_off() {
    let ami = FakeAmi::start(FakeScript::default()).await;
    let (mut a, _) = Client::connect(&ami).await;
    let (mut b, _) = Client::connect(&ami).await;
    let (mut quiet, _) = Client::connect(&ami).await;
    let (_anon, _) = Client::connect(&ami).await;
    a.login("voiceotp", "secret").await;
    a.recv().await.unwrap();
    b.login("voiceotp", "secret").await;
    b.recv().await.unwrap();
    quiet.send("Action: Login\r\nUsername: voiceotp\r\nSecret: secret\r\nEvents: off\r\n\r\n").await;
    quiet.recv().await.unwrap();
    assert!(ami.wait_for_connections(4, T).await);
    let sent = ami.emit_event(&[("Event", "Newstate"), ("Uniqueid", "u1"), ("ChannelStateDesc", "Ringing")]);
    assert_eq!(sent, 2);
    for c in [&mut a, &mut b] {
        let ev = c.recv().await.unwrap();
        assert_eq!(get(&ev, "Event"), Some("Newstate"));
        assert_eq!(get(&ev, "ChannelStateDesc"), Some("Ringing"));
    }
    // emit_event queues to every session before it returns: had the quiet
    // session been sent the event, it would come before this Pong.
    let r = quiet.after_ping("q1").await;
    assert_eq!((get(&r, "Ping"), get(&r, "ActionID")), (Some("Pong"), Some("q1")), "Events: off got {r:?}");
}

#[tokio::test]
async fn garbage_after_login_and_framing() {
    let script = FakeScript { garbage_after_login: Some(b"\x00\xffnot ami\r\n\r\n".to_vec()), ..FakeScript::default() };
    let ami = FakeAmi::start(script).await;
    let (mut c, _) = Client::connect(&ami).await;
    // One message split across writes, with lower-case keys and no space after ':'.
    c.send("action:login\r\nusername: voiceotp\r").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.send("\nsecret:secret\r\n\r\n").await;
    c.send("Action: Ping\r\nX: a\nAction: Originate\r\n\r\n").await; // bare LF is not a line end
    let mut resp = Vec::new();
    c.rd.read_until(b'\n', &mut resp).await.unwrap();
    assert_eq!(resp, b"Response: Success\r\n");
    let mut rest = vec![0u8; 64];
    let mut got = Vec::new();
    while !got.windows(7).any(|w| w == b"not ami") {
        let n = tokio::time::timeout(T, c.rd.read(&mut rest)).await.unwrap().unwrap();
        assert!(n > 0, "EOF before garbage");
        got.extend_from_slice(&rest[..n]);
    }
    assert!(ami.wait_for_count("ping", 1, T).await);
    let acts = ami.actions();
    assert_eq!(acts.len(), 2, "{acts:?}");
    assert_eq!(acts[1].get("x"), Some("a\nAction: Originate"));
    assert_eq!(ami.count("Originate"), 0);
}

#[tokio::test]
async fn drop_connections_closes_sessions_and_reconnect_works() {
    let ami = FakeAmi::start(FakeScript::default()).await;
    let (mut c, _) = Client::connect(&ami).await;
    c.login("voiceotp", "secret").await;
    assert!(ami.wait_for_connections(1, T).await);
    ami.drop_connections();
    assert!(c.closed_within(T).await, "session still open after drop_connections");
    assert_eq!(ami.live_connections(), 0);
    let (mut c2, _) = Client::connect(&ami).await;
    assert_eq!(get(&c2.login("voiceotp", "secret").await, "Response"), Some("Success"));
    assert_eq!(ami.connections(), 2);
    assert_eq!(ami.actions().iter().map(|a| a.session).collect::<Vec<_>>(), vec![1, 2]);

    c2.send("Action: Logoff\r\n\r\n").await;
    c2.recv().await.unwrap(); // FullyBooted
    assert_eq!(get(&c2.recv().await.unwrap(), "Response"), Some("Goodbye"));
    assert!(c2.closed_within(T).await);

    // The listener closes once its aborted task is dropped, a moment after stop().
    ami.stop();
    let deadline = tokio::time::Instant::now() + T;
    while TcpStream::connect(ami.addr()).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting after stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn wait_for_action_times_out_and_sees_late_actions() {
    let ami = FakeAmi::start(FakeScript::default()).await;
    assert!(ami.wait_for_action("Originate", Duration::from_millis(100)).await.is_none());
    let addr = ami.addr();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"Action: Login\r\nUsername: voiceotp\r\nSecret: secret\r\n\r\nAction: Originate\r\nAsync: 1\r\n\r\n",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let o = ami.wait_for_action("ORIGINATE", T).await.expect("late originate seen");
    assert_eq!(o.get("Async"), Some("1"));
}

#[test]
fn callerid_and_event_filter_parsing() {
    assert_eq!(split_callerid("\"OTP\" <1000>"), ("1000".into(), "OTP".into()));
    assert_eq!(split_callerid("1000"), ("1000".into(), "".into()));
    assert_eq!(split_callerid("<>"), ("".into(), "".into()));
    assert!(EventFilter::parse(Some("call,system")).wants("call"));
    assert!(!EventFilter::parse(Some("system")).wants("call"));
    assert!(!EventFilter::parse(Some("off")).wants("system"));
    assert!(EventFilter::parse(None).wants("call"));
}
