//! Plays Asterisk's side of a FastAGI session against the daemon: the
//! request block for a call id, the channel's FastAGI token when the daemon
//! asks for it (`GET VARIABLE VOICE_OTP_TOKEN`), then `200 result=0` to
//! every command (a playback also gets `endpos=`), until the daemon hangs
//! up (`EXEC Hangup` or `HANGUP`) or closes - or the scripted callee hangs
//! up or presses a key first ([`Callee`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long the fake channel waits for the daemon's next command.
const COMMAND_WAIT: Duration = Duration::from_secs(20);

/// The command with which the daemon asks the channel for its token.
pub const ASK_TOKEN: &str = "GET VARIABLE VOICE_OTP_TOKEN";

/// The command with which a daemon that takes the call marks the channel
/// (for the dialplan's failover), right after the token question.
pub const MARK_TAKEN: &str = "SET VARIABLE VOICE_OTP_AGI_REACHED \"1\"";

/// The request block Asterisk sends for channel `uniqueid` (our call id).
pub fn request_block(agi: SocketAddr, uniqueid: &str) -> String {
    format!(
        "agi_network: yes\nagi_network_script: otp\nagi_request: agi://{agi}/otp\nagi_channel: PJSIP/carrier-00000001\n\
         agi_language: en\nagi_uniqueid: {uniqueid}\nagi_callerid: unknown\n\n"
    )
}

/// Asterisk's reply to `GET VARIABLE VOICE_OTP_TOKEN` on a channel that
/// carries `token` (or none).
pub fn token_reply(token: Option<&str>) -> String {
    match token {
        Some(t) => format!("200 result=1 ({t})\n"),
        None => "200 result=0\n".to_owned(),
    }
}

/// Whether `line` is the daemon ending the call.
pub fn is_hangup(line: &str) -> bool {
    line == "HANGUP" || line.starts_with("EXEC Hangup")
}

/// What the scripted callee does besides listening.
#[derive(Debug, Default, Clone, Copy)]
pub struct Callee<'a> {
    /// The FastAGI token its channel carries (what the Originate set); a
    /// channel without one answers the token question with `result=0`.
    pub token: Option<&'a str>,
    /// Hangs up after this many commands (the token question counts): the
    /// next one gets Asterisk's `HANGUP` line and a 511, as on a dead channel.
    pub hang_up_after: Option<usize>,
    /// Presses the key in reply to the first command starting with the
    /// prefix (Asterisk answers with the key's ASCII code).
    pub press: Option<(&'a str, char)>,
}

/// Runs one answered call's session on a channel carrying `token`, with a
/// callee who only listens; returns the commands the daemon sent.
pub async fn answered_call(agi: SocketAddr, uniqueid: &str, token: Option<&str>) -> Vec<String> {
    session(agi, uniqueid, Callee { token, ..Callee::default() }).await
}

/// Runs one answered call's session with `callee`; returns the commands
/// the daemon sent, in order (the token question first).
pub async fn session(agi: SocketAddr, uniqueid: &str, callee: Callee<'_>) -> Vec<String> {
    let mut press = callee.press;
    let stream = TcpStream::connect(agi).await.expect("connect FastAGI");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(request_block(agi, uniqueid).as_bytes()).await.expect("send request block");
    let mut commands = Vec::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(COMMAND_WAIT, lines.next_line()).await {
        commands.push(line.clone());
        if callee.hang_up_after.is_some_and(|n| commands.len() > n) {
            // The channel is gone: Asterisk says HANGUP, then 511 to the command.
            let _ =
                write.write_all(b"HANGUP\n511 Command Not Permitted on a dead channel or intercept routine\n").await;
            continue;
        }
        let reply = match press {
            _ if line == ASK_TOKEN => token_reply(callee.token),
            Some((prefix, key)) if line.starts_with(prefix) => {
                press = None;
                format!("200 result={} endpos=2000\n", key as u32)
            }
            _ if line.starts_with("STREAM FILE") => "200 result=0 endpos=4000\n".to_owned(),
            // Hangup(16) returns -1, and Asterisk reports the hang-up too.
            _ if is_hangup(&line) => "200 result=-1\nHANGUP\n".to_owned(),
            _ => "200 result=0\n".to_owned(),
        };
        if write.write_all(reply.as_bytes()).await.is_err() || is_hangup(&line) {
            break;
        }
    }
    commands
}

/// Answers call `call_id` of the daemon whose FastAGI is at `agi` like a
/// callee who listens, with the token `fake` saw on its Originate; returns
/// every digit the session played, in order (all readings), and the
/// session's commands (for messages).
pub async fn hear_digits(fake: &super::fake_ami::FakeAmi, agi: SocketAddr, call_id: &str) -> (String, Vec<String>) {
    let token = fake.wait_agi_token(call_id, Duration::from_secs(10)).await.expect("an Originate with a token");
    let commands = session(agi, call_id, Callee { token: Some(&token), ..Callee::default() }).await;
    let digits = commands
        .iter()
        .filter_map(|c| c.strip_prefix("STREAM FILE digits/"))
        .filter_map(|rest| rest.chars().next())
        .collect();
    (digits, commands)
}
