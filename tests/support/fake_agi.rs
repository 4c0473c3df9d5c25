//! Plays Asterisk's side of a FastAGI session against the daemon: the
//! request block for a call id, then `200 result=0` to every command (a
//! playback also gets `endpos=`), until the daemon hangs up or closes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The request block Asterisk sends for channel `uniqueid` (our call id).
pub fn request_block(agi: SocketAddr, uniqueid: &str) -> String {
    format!(
        "agi_network: yes\nagi_network_script: otp\nagi_request: agi://{agi}/otp\nagi_channel: PJSIP/carrier-00000001\n\
         agi_language: en\nagi_uniqueid: {uniqueid}\nagi_callerid: unknown\n\n"
    )
}

/// Runs one answered call's session; returns the commands the daemon sent.
pub async fn answered_call(agi: SocketAddr, uniqueid: &str) -> Vec<String> {
    let stream = TcpStream::connect(agi).await.expect("connect FastAGI");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(request_block(agi, uniqueid).as_bytes()).await.expect("send request block");
    let mut commands = Vec::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
        let reply: &[u8] =
            if line.starts_with("STREAM FILE") { b"200 result=0 endpos=4000\n" } else { b"200 result=0\n" };
        let hangup = line == "HANGUP";
        commands.push(line);
        if write.write_all(reply).await.is_err() || hangup {
            break;
        }
    }
    commands
}
