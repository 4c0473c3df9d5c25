//! Attacks on a live call, on the sandbox (real Asterisk, SIP/RTP,
//! FastAGI): a local process that knows a call id connects to the FastAGI
//! port while the call rings and tries to be read the code (issue 10,
//! attack 1). The judge is the callee's recording of that very call.

mod support;

use std::time::Duration;

use support::fake_agi;
use support::harness::Setup;
use support::http;
use support::sandbox::{self, wait_recording};
use support::wav::{read_wav, speech_segments};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Rings 6 s, then answers and records (asterisk-conf/sandbox/extensions.conf).
const RINGS_THEN_ANSWERS: &str = "03000000015";

/// An impostor's FastAGI session: the request block of a real call, every
/// command answered like a channel would, `token` as its answer to the token
/// question. Returns every command it was sent.
async fn impostor(agi: std::net::SocketAddr, id: &str, token: Option<&str>) -> Vec<String> {
    let stream = TcpStream::connect(agi).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(fake_agi::request_block(agi, id).as_bytes()).await.unwrap();
    let mut sent = Vec::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
        let reply = match line.as_str() {
            fake_agi::ASK_TOKEN => fake_agi::token_reply(token),
            l if l.starts_with("STREAM FILE") => "200 result=0 endpos=4000\n".to_owned(),
            _ => "200 result=0\n".to_owned(),
        };
        sent.push(line);
        if write.write_all(reply.as_bytes()).await.is_err() {
            break;
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowing_a_ringing_calls_id_is_not_enough_to_hear_its_code() {
    let sandbox = sandbox::up();
    let (_home, daemon) =
        support::blocking(|| Setup::new("agi-theft").config("[call]\nmax_extra_readings = 0\n").sandbox(&sandbox));
    let id = support::blocking(|| daemon.seed_call(RINGS_THEN_ANSWERS, "482915"));
    let ringing = support::blocking(|| daemon.wait_status(&id, "ringing", Duration::from_secs(20)));

    // While it rings: one impostor with no token, one with a made-up one.
    for token in [None, Some("0123456789abcdef0123456789abcdef")] {
        let sent = impostor(daemon.agi, &id, token).await;
        assert_eq!(sent.first().map(String::as_str), Some(fake_agi::ASK_TOKEN), "{sent:?}");
        assert!(sent.iter().all(|c| !c.starts_with("STREAM FILE") && !c.starts_with("SAY")), "played: {sent:?}");
        assert!(fake_agi::is_hangup(sent.last().unwrap()), "{sent:?}");
    }
    assert_eq!(ringing, support::blocking(|| daemon.show(&id)), "the impostors changed nothing");

    // Answered 6 s after ringing began: the real callee hears the code twice.
    let call = support::blocking(|| daemon.wait_final(&id, Duration::from_secs(90)));
    assert_eq!((call["status"].as_str(), call["readings"].as_str()), ("completed", "2"), "{call:?}\n{}", daemon.logs());
    // The cause comes with the channel's Hangup event, after the session ended the call.
    let ended = support::blocking(|| daemon.wait_field(&id, "cause", Duration::from_secs(10)));
    assert_eq!(
        (ended["status"].as_str(), ended["cause"].as_str()),
        ("completed", "16"),
        "we ended it: normal clearing {ended:?}"
    );
    let recording = support::blocking(|| wait_recording(&sandbox, RINGS_THEN_ANSWERS, &id, Duration::from_secs(20)));
    let segments = speech_segments(&read_wav(&recording).expect("readable recording"));
    // intro (1-2 pieces) + 6 digits + "I repeat" + 6 digits + goodbye.
    assert!((15..=16).contains(&segments.len()), "{} segments in {:?}", segments.len(), recording.path);
    let metrics = support::blocking(|| http::get(daemon.http, "/metrics")).body;
    assert!(metrics.contains("voice_otp_agi_sessions_refused_total{reason=\"no_token\"} 1"), "{metrics}");
    assert!(metrics.contains("voice_otp_agi_sessions_refused_total{reason=\"wrong_token\"} 1"), "{metrics}");
}
