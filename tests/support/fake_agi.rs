//! Plays Asterisk's side of a FastAGI session against the daemon: the
//! request block for a call id, the channel's FastAGI token when the daemon
//! asks for it (`GET VARIABLE VOICE_OTP_TOKEN`), then `200 result=0` to
//! every command (a playback also gets `endpos=`), until the daemon hangs
//! up (`EXEC Hangup` or `HANGUP`) or closes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The command with which the daemon asks the channel for its token.
pub const ASK_TOKEN: &str = "GET VARIABLE VOICE_OTP_TOKEN";

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

/// Runs one answered call's session on a channel carrying `token`; returns
/// the commands the daemon sent.
pub async fn answered_call(agi: SocketAddr, uniqueid: &str, token: Option<&str>) -> Vec<String> {
    let stream = TcpStream::connect(agi).await.expect("connect FastAGI");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(request_block(agi, uniqueid).as_bytes()).await.expect("send request block");
    let mut commands = Vec::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
        let reply = if line == ASK_TOKEN {
            token_reply(token)
        } else if line.starts_with("STREAM FILE") {
            "200 result=0 endpos=4000\n".to_owned()
        } else if is_hangup(&line) {
            "200 result=-1\nHANGUP\n".to_owned()
        } else {
            "200 result=0\n".to_owned()
        };
        let hangup = is_hangup(&line);
        commands.push(line);
        if write.write_all(reply.as_bytes()).await.is_err() || hangup {
            break;
        }
    }
    commands
}
