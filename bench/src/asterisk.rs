//! A scripted Asterisk for load: an AMI server that answers `Originate` the
//! way Asterisk 22 does (a queued response, later `OriginateResponse` and
//! `Hangup` events, matched by the `ChannelId` given), and a FastAGI client
//! that connects to the URL in the call's `VOICE_OTP_AGI` variable with
//! `agi_uniqueid` = that ChannelId and answers commands like Asterisk
//! (after a configurable playback delay).
//!
//! Written for throughput, not for checking: plain line handling, no
//! assertions (the product's tests hold the protocol details).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the simulated callee does after an `Originate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallMode {
    /// Answers; the dialplan runs FastAGI; `Hangup` once the session ends.
    Full,
    /// Answers and stays answered: no FastAGI session, no `Hangup`. Used to
    /// store calls that a separate AGI load then plays.
    Hold,
}

/// Counters of the simulated Asterisk, and switches that change what it
/// does from the next call (or login) on.
#[derive(Default)]
pub struct Stats {
    /// Originate actions received.
    pub originates: AtomicU64,
    /// When the last Originate arrived.
    pub last_originate: Mutex<Option<Instant>>,
    /// Calls answered from now on stay answered, as in [`CallMode::Hold`].
    pub hold: AtomicBool,
    /// Logins are refused from now on: Asterisk is "down" for the daemon.
    pub refuse_logins: AtomicBool,
    /// Each logged-in AMI session's outbox; [`Stats::drop_sessions`] ends them.
    sessions: Mutex<Vec<mpsc::UnboundedSender<String>>>,
    /// FastAGI sessions the server ended with `HANGUP` (the flow finished).
    pub completed: AtomicU64,
    /// FastAGI sessions that ended any other way.
    pub failed: AtomicU64,
    /// When the last `Hangup` event was sent.
    pub last_hangup: Mutex<Option<Instant>>,
    /// Each originated channel's FastAGI token (`VOICE_OTP_TOKEN`), by
    /// ChannelId: what the channel answers when the server asks for it.
    pub tokens: Mutex<HashMap<String, String>>,
}

/// What an AMI session's writer takes as "close the connection".
const CLOSE: &str = "";

impl Stats {
    /// The token of channel `id` ("" if it was never originated).
    pub fn token(&self, id: &str) -> String {
        self.tokens.lock().unwrap().get(id).cloned().unwrap_or_default()
    }

    /// Closes every AMI connection, as an Asterisk that stopped would.
    pub fn drop_sessions(&self) {
        for session in self.sessions.lock().unwrap().drain(..) {
            let _ = session.send(CLOSE.to_owned());
        }
    }

    fn broadcast(&self, text: String) {
        self.sessions.lock().unwrap().retain(|s| s.send(text.clone()).is_ok());
    }
}

/// Listens for AMI on a free loopback port; returns its address.
pub async fn start_ami(mode: CallMode, playback: Duration) -> (SocketAddr, Arc<Stats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind scripted AMI");
    let addr = listener.local_addr().expect("AMI address");
    let stats = Arc::new(Stats { hold: AtomicBool::new(mode == CallMode::Hold), ..Stats::default() });
    let shared = stats.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(ami_session(stream, playback, shared.clone()));
        }
    });
    (addr, stats)
}

async fn ami_session(stream: TcpStream, playback: Duration, stats: Arc<Stats>) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        if write.write_all(b"Asterisk Call Manager/11.0.0\r\n").await.is_err() {
            return;
        }
        while let Some(text) = rx.recv().await {
            if text == CLOSE || write.write_all(text.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut lines = BufReader::new(read).lines();
    let mut headers: Vec<(String, String)> = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim_end_matches('\r');
        if !line.is_empty() {
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
            continue;
        }
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
        let action = get("action").to_ascii_lowercase();
        let id = get("actionid");
        match action.as_str() {
            "login" if stats.refuse_logins.load(Ordering::Relaxed) => {
                let _ = tx.send(format!("Response: Error\r\nActionID: {id}\r\nMessage: Authentication failed\r\n\r\n"));
                let _ = tx.send(CLOSE.to_owned());
            }
            "login" => {
                let _ =
                    tx.send(format!("Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"));
                stats.sessions.lock().unwrap().push(tx.clone());
            }
            "ping" => {
                let _ = tx.send(format!("Response: Success\r\nActionID: {id}\r\nPing: Pong\r\nTimestamp: 0.0\r\n\r\n"));
            }
            "originate" => {
                *stats.last_originate.lock().unwrap() = Some(Instant::now());
                stats.originates.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(format!(
                    "Response: Success\r\nActionID: {id}\r\nMessage: Originate successfully queued\r\n\r\n"
                ));
                let channel_id = get("channelid");
                let variable = |name: &str| {
                    headers
                        .iter()
                        .filter(|(k, _)| k == "variable")
                        .find_map(|(_, v)| v.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
                };
                let agi = variable("VOICE_OTP_AGI");
                let token = variable("VOICE_OTP_TOKEN").unwrap_or_default();
                stats.tokens.lock().unwrap().insert(channel_id.clone(), token.clone());
                let call = Call { channel_id, action_id: id, agi, token };
                tokio::spawn(call.run(playback, stats.clone()));
            }
            "logoff" => {
                let _ = tx
                    .send(format!("Response: Goodbye\r\nActionID: {id}\r\nMessage: Thanks for all the fish.\r\n\r\n"));
                return;
            }
            _ => {
                let _ =
                    tx.send(format!("Response: Error\r\nActionID: {id}\r\nMessage: Invalid/unknown command\r\n\r\n"));
            }
        }
        headers.clear();
    }
}

struct Call {
    channel_id: String,
    action_id: String,
    agi: Option<String>,
    token: String,
}

impl Call {
    async fn run(self, playback: Duration, stats: Arc<Stats>) {
        let id = &self.channel_id;
        stats.broadcast(format!(
            "Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {}\r\nResponse: Success\r\n\
             Channel: PJSIP/carrier-{id}\r\nContext: voice-otp\r\nExten: s\r\nReason: 4\r\nUniqueid: {id}\r\n\
             CallerIDNum: <unknown>\r\nCallerIDName: <unknown>\r\n\r\n",
            self.action_id
        ));
        if stats.hold.load(Ordering::Relaxed) {
            return;
        }
        let end = match self.agi.as_deref().and_then(agi_address) {
            Some(addr) => agi_call(addr, id, &self.token, playback, false).await.ok(),
            None => None,
        };
        let counter = if end.is_some_and(|e| e.completed) { &stats.completed } else { &stats.failed };
        stats.broadcast(format!(
            "Event: Hangup\r\nPrivilege: call,all\r\nChannel: PJSIP/carrier-{id}\r\nUniqueid: {id}\r\nLinkedid: {id}\r\n\
             Cause: 16\r\nCause-txt: Normal Clearing\r\n\r\n"
        ));
        *stats.last_hangup.lock().unwrap() = Some(Instant::now());
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// `agi://127.0.0.1:4573/otp` -> `127.0.0.1:4573`.
fn agi_address(url: &str) -> Option<SocketAddr> {
    url.strip_prefix("agi://")?.split('/').next()?.parse().ok()
}

/// How a FastAGI session ended.
#[derive(Debug)]
pub struct AgiEnd {
    /// The server finished with `HANGUP`.
    pub completed: bool,
    /// The command lines received, in order (only when asked to record).
    pub commands: Vec<String>,
    /// From the token's answer written to the next command read: the
    /// server's lookup of the call (token check, load, mark answered).
    pub lookup: Option<Duration>,
}

fn request_block(uniqueid: &str, addr: SocketAddr) -> String {
    format!(
        "agi_network: yes\nagi_network_script: otp\nagi_request: agi://{addr}/otp\nagi_channel: PJSIP/carrier-{uniqueid}\n\
         agi_language: en\nagi_type: PJSIP\nagi_uniqueid: {uniqueid}\nagi_version: 22.0.0\nagi_callerid: unknown\n\
         agi_calleridname: unknown\nagi_callingpres: 67\nagi_callingani2: 0\nagi_callington: 0\nagi_callingtns: 0\n\
         agi_dnid: unknown\nagi_rdnis: unknown\nagi_context: voice-otp\nagi_extension: s\nagi_priority: 4\n\
         agi_enhanced: 0.0\nagi_accountcode: \nagi_threadid: 140000000000000\n\n"
    )
}

/// Plays Asterisk's side of one FastAGI session on a channel carrying
/// `token`: sends the request block, answers the token question, every command (`STREAM FILE` after `playback`, `WAIT FOR DIGIT`
/// after the shorter of its timeout and `playback`), and hangs up after the
/// server's `HANGUP`.
///
/// Lean on purpose, since it shares the cores with the server measured: one
/// socket, one fixed buffer, commands looked at in place, one read and one
/// write per command.
pub async fn agi_call(
    addr: SocketAddr,
    uniqueid: &str,
    token: &str,
    playback: Duration,
    record: bool,
) -> std::io::Result<AgiEnd> {
    let token_reply = format!("200 result=1 ({token})\n");
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request_block(uniqueid, addr).as_bytes()).await?;
    let mut end = AgiEnd { completed: false, commands: Vec::new(), lookup: None };
    let mut token_sent: Option<Instant> = None;
    let mut buf = [0u8; 2048];
    let mut filled = 0;
    loop {
        while let Some(newline) = buf[..filled].iter().position(|&b| b == b'\n') {
            let line = buf[..newline].strip_suffix(b"\r").unwrap_or(&buf[..newline]);
            if let Some(sent) = token_sent.take() {
                end.lookup = Some(sent.elapsed());
            }
            if record {
                end.commands.push(String::from_utf8_lossy(line).into_owned());
            }
            let reply: &[u8] = if line == b"GET VARIABLE VOICE_OTP_TOKEN" {
                token_sent = Some(Instant::now());
                token_reply.as_bytes()
            } else if line.starts_with(b"STREAM FILE") {
                if !playback.is_zero() {
                    tokio::time::sleep(playback).await;
                }
                b"200 result=0 endpos=8000\n"
            } else if let Some(ms) = line.strip_prefix(b"WAIT FOR DIGIT ") {
                let ms = std::str::from_utf8(ms).ok().and_then(|m| m.trim().parse().ok()).unwrap_or(0);
                let wait = Duration::from_millis(ms).min(playback);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                b"200 result=0\n"
            } else if line == b"HANGUP" || line.starts_with(b"EXEC Hangup") {
                stream.write_all(b"200 result=-1\nHANGUP\n").await?;
                end.completed = true;
                return Ok(end);
            } else if line.starts_with(b"SET VARIABLE") {
                b"200 result=1\n"
            } else if line.starts_with(b"ANSWER") || line.starts_with(b"SAY DIGITS") || line.starts_with(b"VERBOSE") {
                b"200 result=0\n"
            } else {
                b"510 Invalid or unknown command\n"
            };
            stream.write_all(reply).await?;
            buf.copy_within(newline + 1..filled, 0);
            filled -= newline + 1;
        }
        if filled == buf.len() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "command line too long"));
        }
        match stream.read(&mut buf[filled..]).await? {
            0 => return Ok(end),
            n => filled += n,
        }
    }
}

/// Opens a session, answers the token question and keeps the session open
/// without answering its first flow command, like a channel whose first
/// playback never ends. Resolves once that command has arrived; the
/// connection lives as long as the returned stream.
pub async fn agi_hold(addr: SocketAddr, uniqueid: &str, token: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request_block(uniqueid, addr).as_bytes()).await?;
    let mut buf = [0u8; 256];
    let mut asked = false;
    loop {
        stream.readable().await?;
        match stream.try_read(&mut buf) {
            Ok(0) => {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a command"));
            }
            Ok(n) if buf[..n].contains(&b'\n') && !asked => {
                asked = true;
                stream.write_all(format!("200 result=1 ({token})\n").as_bytes()).await?;
            }
            Ok(n) if buf[..n].contains(&b'\n') => return Ok(stream),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Runs `total` sessions against `addr`, `concurrency` at a time, with the
/// (id, token) pairs `calls[i]`. Returns (completed sessions, seconds, the
/// commands of the first session).
pub async fn agi_load(
    addr: SocketAddr,
    ids: Arc<Vec<(String, String)>>,
    concurrency: usize,
    playback: Duration,
) -> (u64, f64, Vec<String>) {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let first: Arc<Mutex<Vec<String>>> = Arc::default();
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (ids, next, done, first) = (ids.clone(), next.clone(), done.clone(), first.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some((id, token)) = ids.get(i) else { return };
                    if let Ok(end) = agi_call(addr, id, token, playback, i == 0).await {
                        if end.completed {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        if i == 0 {
                            *first.lock().unwrap() = end.commands;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let commands = first.lock().unwrap().clone();
    (done.load(Ordering::Relaxed), secs, commands)
}
