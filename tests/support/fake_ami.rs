//! A scripted Asterisk Manager Interface (AMI) server over real TCP, for
//! integration tests that need to see exactly which actions voice-otp sends
//! (e.g. "a rejected HTTP request reaches no Originate") or to inject faults
//! (failed logins, silent pings, dropped sessions, garbage on the wire).
//!
//! It is written independently of the product's AMI codec, with plain
//! line-oriented parsing, so it cross-checks it. Where cheap it copies
//! Asterisk 22's `manager.c` behaviour rather than an idealised protocol:
//! only CRLF ends a line (a bare LF does not, as in Asterisk), header names
//! and action names are case-insensitive, a failed Login waits 1 s before its
//! error and then closes, actions before Login get "Permission denied",
//! events go only to logged-in sessions that did not log in with
//! `Events: off`, and `OriginateResponse` is broadcast like any event (so a
//! client that reconnected still gets it). It keeps no channels: `Status`
//! of a channel is answered as [`FakeScript::status_reply`] says.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

/// The greeting Asterisk sends on connect (one line, no blank line after it).
pub const BANNER: &str = "Asterisk Call Manager/11.0.0\r\n";

/// Longest line accepted before the session is closed; only a guard against
/// a runaway client (Asterisk itself discards lines over 1024 bytes).
const MAX_LINE: usize = 64 * 1024;

/// What happens to the call after an `Originate` was queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginateOutcome {
    /// The callee answers: `Event: OriginateResponse`, `Response: Success`, `Reason: 4`.
    Answer,
    /// The call fails: `Event: Hangup` (with `Cause`/`Cause-txt`) then
    /// `Event: OriginateResponse`, `Response: Failure`, `Reason: <reason>`.
    Fail {
        /// OriginateResponse `Reason` (0 for most failures, 3 for no answer).
        reason: u8,
        /// Hangup cause code (Q.850), e.g. 17 for busy.
        cause: u16,
        /// Hangup `Cause-txt`, e.g. "User busy".
        cause_txt: String,
    },
    /// Nothing ever comes: for tests of the product's own call timeout.
    Silent,
}

impl OriginateOutcome {
    /// Busy() as observed through a PJSIP trunk: Reason 0, Cause 17.
    pub fn busy() -> Self {
        Self::fail(0, 17, "User busy")
    }
    /// Rang without answer until Originate's Timeout: Reason 3, Cause 19.
    pub fn no_answer() -> Self {
        Self::fail(3, 19, "User alerting, no answer")
    }
    /// Hangup(21): Reason 0, Cause 21.
    pub fn rejected() -> Self {
        Self::fail(0, 21, "Call Rejected")
    }
    /// Hangup(1): Reason 0, Cause 1.
    pub fn unallocated() -> Self {
        Self::fail(0, 1, "Unallocated (unassigned) number")
    }
    /// Congestion(): Reason 0, Cause 34.
    pub fn congestion() -> Self {
        Self::fail(0, 34, "Circuit/channel congestion")
    }
    fn fail(reason: u8, cause: u16, cause_txt: &str) -> Self {
        Self::Fail { reason, cause, cause_txt: cause_txt.to_string() }
    }
}

/// How `Status` with a `Channel` is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusReply {
    /// `Response: Error`, `Message: No such channel`: Asterisk 22's answer
    /// for a channel it does not have.
    NoSuchChannel,
    /// The channel exists: `Response: Success` (`EventList: start`), one
    /// `Event: Status` for it, `Event: StatusComplete`.
    Exists,
    /// `Response: Error` with this `Message` (e.g. `Permission denied`, as
    /// for a manager user with none of the write classes `Status` needs:
    /// system, call, reporting).
    Error(String),
    /// "No such channel" for the first asks about a channel, [`StatusReply::Exists`]
    /// from this (1-based) ask on: a channel Asterisk has not made yet when
    /// first asked.
    ExistsFromAsk(usize),
}

/// How the fake server behaves. Can be changed while it runs with
/// [`FakeAmi::update_script`].
#[derive(Clone, Debug)]
pub struct FakeScript {
    /// `Username` that Login must carry (compared exactly, like Asterisk).
    pub username: String,
    /// `Secret` that Login must carry.
    pub secret: String,
    /// What every Originate leads to.
    pub originate_outcome: OriginateOutcome,
    /// Time between the Originate response and the outcome's events (for a
    /// synchronous Originate, the time before its response).
    pub outcome_delay: Duration,
    /// After an answered call, send `Event: Hangup` (Cause 16, Normal
    /// Clearing) this long after the OriginateResponse; `None`: never.
    pub hangup_after_answer: Option<Duration>,
    /// Record `Ping` actions but never answer them (keepalive-timeout tests).
    pub ignore_pings: bool,
    /// Raw bytes written right after a successful Login's response.
    pub garbage_after_login: Option<Vec<u8>>,
    /// How `Status` of a channel is answered.
    pub status_reply: StatusReply,
}

impl Default for FakeScript {
    /// Credentials `voiceotp`/`secret`, every call answered at once, pings answered.
    fn default() -> Self {
        Self {
            username: "voiceotp".to_string(),
            secret: "secret".to_string(),
            originate_outcome: OriginateOutcome::Answer,
            outcome_delay: Duration::ZERO,
            hangup_after_answer: None,
            ignore_pings: false,
            garbage_after_login: None,
            status_reply: StatusReply::NoSuchChannel,
        }
    }
}

/// The AMI user and secret of the daemon's default config (the sandbox's).
pub const DAEMON_USERNAME: &str = "voice-otp";
/// See [`DAEMON_USERNAME`].
pub const DAEMON_SECRET: &str = "voice-otp-sandbox";

impl FakeScript {
    /// The default script, taking the daemon's default credentials: what
    /// the test harness starts a daemon against.
    pub fn for_daemon() -> Self {
        Self::with_credentials(DAEMON_USERNAME, DAEMON_SECRET)
    }

    /// [`FakeScript::for_daemon`] with every call ending as `outcome`.
    pub fn outcome(outcome: OriginateOutcome) -> Self {
        Self { originate_outcome: outcome, ..Self::for_daemon() }
    }

    /// The default script with these credentials.
    pub fn with_credentials(username: &str, secret: &str) -> Self {
        Self { username: username.to_string(), secret: secret.to_string(), ..Self::default() }
    }
}

/// One message received from a client, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedAction {
    /// Value of its `Action` header as sent ("" if it had none: such a
    /// message is recorded too, since it can only come from a framing or
    /// header-injection bug).
    pub name: String,
    /// Every header line in order, repeated keys kept. A line without a colon
    /// is kept as (line, "").
    pub headers: Vec<(String, String)>,
    /// Which connection sent it: 1 for the first accepted, 2 for the next...
    pub session: usize,
}

impl ReceivedAction {
    /// First value of header `key` (case-insensitive, like Asterisk).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }
    /// Every value of header `key`, in order (e.g. repeated `Variable`).
    pub fn get_all(&self, key: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str()).collect()
    }
    /// Whether this is action `name` (case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
    /// The value of channel variable `name` set by this Originate, if any.
    pub fn variable(&self, name: &str) -> Option<&str> {
        self.get_all("Variable").into_iter().find_map(|v| v.strip_prefix(name)?.strip_prefix('='))
    }
}

/// A running fake AMI server on `127.0.0.1`. Stops when dropped.
pub struct FakeAmi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

struct Shared {
    script: Mutex<FakeScript>,
    state: Mutex<State>,
    /// Bumped on every recorded action and accepted connection, so waiters
    /// can sleep instead of polling.
    changed: watch::Sender<u64>,
    unique_seq: AtomicU64,
}

#[derive(Default)]
struct State {
    actions: Vec<ReceivedAction>,
    accepted: usize,
    /// Logins answered with success, across connections.
    logins: usize,
    sessions: HashMap<usize, SessionEntry>,
    stopped: bool,
}

struct SessionEntry {
    out: mpsc::UnboundedSender<Vec<u8>>,
    /// Set once the session is logged in; `None` until then.
    events: Option<EventFilter>,
    task: Option<AbortHandle>,
}

/// Which event classes a logged-in session receives (Login's `Events` header).
#[derive(Clone, Debug)]
pub(super) enum EventFilter {
    All,
    Off,
    Classes(Vec<String>),
}

impl EventFilter {
    /// Parses like Asterisk's `strings_to_mask`: true-ish words -> all,
    /// false-ish -> none, else a comma-separated list of classes.
    pub(super) fn parse(value: Option<&str>) -> Self {
        let Some(v) = value.map(str::trim) else {
            return Self::All;
        };
        let lower = v.to_ascii_lowercase();
        match lower.as_str() {
            "" | "on" | "yes" | "true" | "y" | "t" | "1" | "all" => Self::All,
            "off" | "no" | "false" | "n" | "f" | "0" => Self::Off,
            _ => Self::Classes(lower.split(',').map(|c| c.trim().to_string()).collect()),
        }
    }
    pub(super) fn wants(&self, class: &str) -> bool {
        match self {
            Self::All => true,
            Self::Off => false,
            Self::Classes(c) => c.iter().any(|c| c == class || c == "all"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the fake's state from the others.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Sends an event to every logged-in session whose filter takes `class`;
    /// returns how many got it.
    fn broadcast(&self, class: &str, bytes: &[u8]) -> usize {
        let state = lock(&self.state);
        state
            .sessions
            .values()
            .filter(|s| s.events.as_ref().is_some_and(|f| f.wants(class)))
            .filter(|s| s.out.send(bytes.to_vec()).is_ok())
            .count()
    }

    fn next_unique(&self) -> String {
        let n = self.unique_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}.{}", unix_now().as_secs(), n)
    }
}

impl FakeAmi {
    /// Binds `127.0.0.1:0` and starts serving with `script`.
    ///
    /// Panics (a test-setup failure) if the port cannot be bound.
    pub async fn start(script: FakeScript) -> FakeAmi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("fake AMI: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake AMI: local_addr");
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            state: Mutex::new(State::default()),
            changed,
            unique_seq: AtomicU64::new(1),
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((stream, _peer)) = listener.accept().await else {
                    // Transient accept errors (EMFILE...): back off, keep serving.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (tx, rx) = mpsc::unbounded_channel();
                let id = {
                    let mut st = lock(&accept_shared.state);
                    if st.stopped {
                        return;
                    }
                    st.accepted += 1;
                    let id = st.accepted;
                    st.sessions.insert(id, SessionEntry { out: tx.clone(), events: None, task: None });
                    id
                };
                let task = tokio::spawn(run_session(accept_shared.clone(), id, stream, tx, rx));
                if let Some(entry) = lock(&accept_shared.state).sessions.get_mut(&id) {
                    entry.task = Some(task.abort_handle());
                }
                accept_shared.bump();
            }
        });
        FakeAmi { addr, shared, accept_task }
    }

    /// The address to point voice-otp's AMI client at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message received so far, in arrival order, across connections.
    pub fn actions(&self) -> Vec<ReceivedAction> {
        lock(&self.shared.state).actions.clone()
    }

    /// The FastAGI token (`VOICE_OTP_TOKEN`) the Originate of call `id`
    /// carried: what the real channel would answer to `GET VARIABLE`.
    pub fn agi_token(&self, id: &str) -> Option<String> {
        let actions = self.actions();
        let originate = actions.iter().find(|a| a.is("Originate") && a.get("ChannelId") == Some(id))?;
        originate.variable("VOICE_OTP_TOKEN").map(str::to_owned)
    }

    /// [`FakeAmi::agi_token`], waiting up to `timeout` for that Originate
    /// (the daemon dials after it answered the request).
    pub async fn wait_agi_token(&self, id: &str, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(token) = self.agi_token(id) {
                return Some(token);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many actions named `name` (case-insensitive) were received.
    pub fn count(&self, name: &str) -> usize {
        lock(&self.shared.state).actions.iter().filter(|a| a.is(name)).count()
    }

    /// The `ChannelId` of every Originate received, in arrival order: the
    /// daemon's call ids, so a test sees which of its calls were dialled.
    pub fn originated(&self) -> Vec<String> {
        let st = lock(&self.shared.state);
        st.actions.iter().filter(|a| a.is("Originate")).map(|a| a.get("ChannelId").unwrap_or("").to_owned()).collect()
    }

    /// The Originate of call `id` (already, or within `timeout`).
    pub async fn wait_for_originate(&self, id: &str, timeout: Duration) -> Option<ReceivedAction> {
        self.wait_until(timeout, |st| {
            st.actions.iter().find(|a| a.is("Originate") && a.get("ChannelId") == Some(id)).cloned()
        })
        .await
    }

    /// Waits until at least `n` logins were accepted in all; false on timeout.
    pub async fn wait_for_logins(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |st| (st.logins >= n).then_some(())).await.is_some()
    }

    /// The first action named `name` received (already, or within `timeout`).
    pub async fn wait_for_action(&self, name: &str, timeout: Duration) -> Option<ReceivedAction> {
        self.wait_until(timeout, |st| st.actions.iter().find(|a| a.is(name)).cloned()).await
    }

    /// Waits until at least `n` actions named `name` were received; false on timeout.
    pub async fn wait_for_count(&self, name: &str, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |st| (st.actions.iter().filter(|a| a.is(name)).count() >= n).then_some(()))
            .await
            .is_some()
    }

    /// Waits until at least `n` connections were accepted in all; false on timeout.
    pub async fn wait_for_connections(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |st| (st.accepted >= n).then_some(())).await.is_some()
    }

    async fn wait_until<T>(&self, timeout: Duration, mut check: impl FnMut(&State) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        // Subscribe before checking so a change in between is not missed.
        let mut rx = self.shared.changed.subscribe();
        loop {
            if let Some(v) = check(&lock(&self.shared.state)) {
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Connections accepted since start (a reconnect makes it 2).
    pub fn connections(&self) -> usize {
        lock(&self.shared.state).accepted
    }

    /// Connections open right now.
    pub fn live_connections(&self) -> usize {
        lock(&self.shared.state).sessions.len()
    }

    /// Sends an event (`Event: ...` should be among `headers`) to every
    /// logged-in session, like Asterisk does; sessions not yet logged in or
    /// logged in with `Events: off` do not get it. The event's class for
    /// `Events:` filters is the first word of its `Privilege` header, "call"
    /// if it has none. Returns how many sessions it was sent to.
    pub fn emit_event(&self, headers: &[(&str, &str)]) -> usize {
        let class = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Privilege"))
            .and_then(|(_, v)| v.split(',').next())
            .unwrap_or("call")
            .trim()
            .to_ascii_lowercase();
        let owned: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.shared.broadcast(&class, &encode(&owned))
    }

    /// Sends the `Newstate` event (state 5, Ringing) of call `id`'s
    /// channel to every session, as Asterisk does when the callee's phone
    /// rings; returns how many sessions it reached.
    pub fn emit_ringing(&self, id: &str) -> usize {
        self.emit_event(&[
            ("Event", "Newstate"),
            ("Privilege", "call,all"),
            ("Channel", "PJSIP/carrier-00000001"),
            ("ChannelState", "5"),
            ("ChannelStateDesc", "Ringing"),
            ("Uniqueid", id),
        ])
    }

    /// Closes every open session at once (fault injection: Asterisk restart,
    /// network cut). Queued but unsent output is lost. New connections are
    /// still accepted.
    pub fn drop_connections(&self) {
        let sessions: Vec<SessionEntry> = lock(&self.shared.state).sessions.drain().map(|(_, s)| s).collect();
        for s in sessions {
            if let Some(task) = s.task {
                task.abort();
            }
        }
    }

    /// Changes the script for what happens next (already scheduled outcomes keep theirs).
    pub fn update_script(&self, f: impl FnOnce(&mut FakeScript)) {
        f(&mut lock(&self.shared.script));
    }

    /// Stops accepting and closes every session. Idempotent; also done on drop.
    pub fn stop(&self) {
        lock(&self.shared.state).stopped = true;
        self.accept_task.abort();
        self.drop_connections();
    }
}

impl Drop for FakeAmi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes the session from the table however its task ends (including abort).
struct SessionGuard {
    shared: Arc<Shared>,
    id: usize,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        lock(&self.shared.state).sessions.remove(&self.id);
    }
}

/// What the session loop does after handling a message.
enum Next {
    Continue,
    /// Flush what is queued, then close (Logoff, failed Login).
    Close,
}

async fn run_session(
    shared: Arc<Shared>,
    id: usize,
    mut stream: TcpStream,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let _guard = SessionGuard { shared: shared.clone(), id };
    if stream.write_all(BANNER.as_bytes()).await.is_err() {
        return;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Both branches are cancel-safe: a plain read, and a channel receive.
        tokio::select! {
            n = stream.read(&mut chunk) => {
                let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                buf.extend_from_slice(&chunk[..n]);
                // Only CRLF ends a line, as in Asterisk's get_input().
                while let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
                    let line = String::from_utf8_lossy(&buf[..pos]).into_owned();
                    buf.drain(..pos + 2);
                    if !line.is_empty() {
                        lines.push(line);
                        continue;
                    }
                    if lines.is_empty() {
                        continue; // stray blank line between messages
                    }
                    let msg = parse_headers(std::mem::take(&mut lines));
                    if let Next::Close = handle_message(&shared, id, &tx, msg).await {
                        // Everything handled so far was queued in order; flush it, then close.
                        while let Ok(bytes) = rx.try_recv() {
                            if stream.write_all(&bytes).await.is_err() {
                                return;
                            }
                        }
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
                if buf.len() > MAX_LINE {
                    return;
                }
            }
            out = rx.recv() => {
                let Some(bytes) = out else { return };
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn parse_headers(lines: Vec<String>) -> Vec<(String, String)> {
    lines
        .into_iter()
        .map(|line| match line.split_once(':') {
            // Asterisk matches the name up to the colon and skips blanks after it.
            Some((k, v)) => (k.trim().to_string(), v.trim_start().to_string()),
            None => (line, String::new()),
        })
        .collect()
}

/// Handles one complete message; replies go through `tx` so they stay in
/// order with events queued by other tasks.
async fn handle_message(
    shared: &Arc<Shared>,
    id: usize,
    tx: &mpsc::UnboundedSender<Vec<u8>>,
    headers: Vec<(String, String)>,
) -> Next {
    let action = ReceivedAction { name: header(&headers, "Action").unwrap_or("").to_string(), headers, session: id };
    let logged_in = {
        let mut st = lock(&shared.state);
        st.actions.push(action.clone());
        st.sessions.get(&id).is_some_and(|s| s.events.is_some())
    };
    shared.bump();
    let script = lock(&shared.script).clone();
    let action_id = action.get("ActionID").map(str::to_string);
    let reply = |fields: &[(&str, &str)]| {
        let _ = tx.send(response(action_id.as_deref(), fields));
    };
    let name = action.name.to_ascii_lowercase();

    if name.is_empty() {
        reply(&[("Response", "Error"), ("Message", "Missing action in request")]);
        return Next::Continue;
    }
    if !logged_in && !matches!(name.as_str(), "login" | "logoff" | "challenge") {
        reply(&[("Response", "Error"), ("Message", "Permission denied")]);
        return Next::Continue;
    }
    match name.as_str() {
        "login" => {
            if logged_in {
                reply(&[("Response", "Success"), ("Message", "Already authenticated")]);
                return Next::Continue;
            }
            let ok = action.get("Username") == Some(script.username.as_str())
                && action.get("Secret") == Some(script.secret.as_str());
            if !ok {
                // Asterisk sleeps before answering, then drops the session.
                tokio::time::sleep(Duration::from_secs(1)).await;
                reply(&[("Response", "Error"), ("Message", "Authentication failed")]);
                return Next::Close;
            }
            let filter = EventFilter::parse(action.get("Events"));
            let wants_system = filter.wants("system");
            {
                let mut st = lock(&shared.state);
                st.logins += 1;
                if let Some(s) = st.sessions.get_mut(&id) {
                    s.events = Some(filter);
                }
            }
            reply(&[("Response", "Success"), ("Message", "Authentication accepted")]);
            if let Some(garbage) = script.garbage_after_login {
                let _ = tx.send(garbage);
            }
            if wants_system {
                let _ = tx.send(encode_pairs(&[
                    ("Event", "FullyBooted"),
                    ("Privilege", "system,all"),
                    ("Uptime", "10"),
                    ("LastReload", "10"),
                    ("Status", "Fully Booted"),
                ]));
            }
            shared.bump();
        }
        "logoff" => {
            reply(&[("Response", "Goodbye"), ("Message", "Thanks for all the fish.")]);
            return Next::Close;
        }
        "ping" => {
            if !script.ignore_pings {
                let now = unix_now();
                let ts = format!("{}.{:06}", now.as_secs(), now.subsec_micros());
                reply(&[("Response", "Success"), ("Ping", "Pong"), ("Timestamp", &ts)]);
            }
        }
        "originate" => originate(shared, tx, &action, action_id.as_deref(), script),
        "status" => {
            let channel = action.get("Channel");
            let ask =
                lock(&shared.state).actions.iter().filter(|a| a.is("Status") && a.get("Channel") == channel).count();
            let reply = match script.status_reply {
                StatusReply::ExistsFromAsk(n) if ask < n => StatusReply::NoSuchChannel,
                StatusReply::ExistsFromAsk(_) => StatusReply::Exists,
                other => other,
            };
            status(tx, &action, action_id.as_deref(), &reply)
        }
        _ => {
            let msg = format!(
                "Invalid/unknown command: {}. Use Action: ListCommands to show available commands.",
                action.name
            );
            reply(&[("Response", "Error"), ("Message", &msg)]);
        }
    }
    Next::Continue
}

/// Answers `Status` of one channel as scripted, in Asterisk 22's shapes
/// (`action_status`: an error, or a list response of `Status` events).
fn status(tx: &mpsc::UnboundedSender<Vec<u8>>, action: &ReceivedAction, action_id: Option<&str>, reply: &StatusReply) {
    let send = |fields: &[(&str, &str)]| {
        let _ = tx.send(response(action_id, fields));
    };
    let channel = action.get("Channel").unwrap_or("");
    match reply {
        StatusReply::NoSuchChannel => send(&[("Response", "Error"), ("Message", "No such channel")]),
        StatusReply::Error(message) => send(&[("Response", "Error"), ("Message", message)]),
        StatusReply::Exists | StatusReply::ExistsFromAsk(_) => {
            send(&[("Response", "Success"), ("EventList", "start"), ("Message", "Channel status will follow")]);
            let mut event: Vec<(&str, &str)> = vec![("Event", "Status"), ("Privilege", "Call")];
            event.extend(action_id.map(|id| ("ActionID", id)));
            event.extend([
                ("Channel", "PJSIP/carrier-00000001"),
                ("ChannelState", "6"),
                ("ChannelStateDesc", "Up"),
                ("Uniqueid", channel),
                ("Linkedid", channel),
            ]);
            let _ = tx.send(encode_pairs(&event));
            let mut complete: Vec<(&str, &str)> = vec![("Event", "StatusComplete")];
            complete.extend(action_id.map(|id| ("ActionID", id)));
            complete.extend([("EventList", "Complete"), ("ListItems", "1"), ("Items", "1")]);
            let _ = tx.send(encode_pairs(&complete));
        }
    }
}

/// Queues the Originate response and schedules the scripted outcome.
fn originate(
    shared: &Arc<Shared>,
    tx: &mpsc::UnboundedSender<Vec<u8>>,
    action: &ReceivedAction,
    action_id: Option<&str>,
    script: FakeScript,
) {
    let is_async = action.get("Async").is_some_and(is_true);
    let dial = action.get("Channel").unwrap_or("").to_string();
    let uniqueid = match action.get("ChannelId") {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => shared.next_unique(),
    };
    let action_id = action_id.map(str::to_string);
    let outcome = script.originate_outcome.clone();
    let delay = script.outcome_delay;

    if !is_async {
        // Synchronous Originate: the only reply comes when the call is decided,
        // and no OriginateResponse event is sent (Asterisk's action_originate).
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let fields: &[(&str, &str)] = match outcome {
                OriginateOutcome::Answer => &[("Response", "Success"), ("Message", "Originate successfully queued")],
                OriginateOutcome::Fail { .. } => &[("Response", "Error"), ("Message", "Originate failed")],
                OriginateOutcome::Silent => return,
            };
            let _ = tx.send(response(action_id.as_deref(), fields));
        });
        return;
    }

    let _ = tx
        .send(response(action_id.as_deref(), &[("Response", "Success"), ("Message", "Originate successfully queued")]));
    let shared = shared.clone();
    let ctx = |k: &str| action.get(k).unwrap_or("").to_string();
    let (context, exten, app, data) = (ctx("Context"), ctx("Exten"), ctx("Application"), ctx("Data"));
    let (cid_num, cid_name) = split_callerid(action.get("CallerID").unwrap_or(""));
    // Asterisk names the created channel "<tech>/<endpoint>-<seq>"; the exact
    // name does not matter, only that it differs from the dial string.
    let tech = dial.split('/').next().unwrap_or("PJSIP").to_string();
    let chan_name = format!("{tech}/fake-{:08x}", shared.unique_seq.fetch_add(1, Ordering::Relaxed));
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let response_event = |resp: &str, reason: &str| {
            let mut f: Vec<(&str, &str)> = vec![("Event", "OriginateResponse"), ("Privilege", "call,all")];
            if let Some(id) = action_id.as_deref() {
                f.push(("ActionID", id));
            }
            f.extend([
                ("Response", resp),
                ("Channel", dial.as_str()),
                ("Context", context.as_str()),
                ("Exten", exten.as_str()),
                ("Application", app.as_str()),
                ("Data", data.as_str()),
                ("Reason", reason),
                ("Uniqueid", uniqueid.as_str()),
                ("CallerIDNum", cid_num.as_str()),
                ("CallerIDName", cid_name.as_str()),
            ]);
            encode_pairs(&f)
        };
        let hangup_event = |state: &str, state_desc: &str, cause: &str, cause_txt: &str| {
            encode_pairs(&[
                ("Event", "Hangup"),
                ("Privilege", "call,all"),
                ("Channel", chan_name.as_str()),
                ("ChannelState", state),
                ("ChannelStateDesc", state_desc),
                ("CallerIDNum", cid_num.as_str()),
                ("CallerIDName", cid_name.as_str()),
                ("Language", "en"),
                ("Context", context.as_str()),
                ("Exten", exten.as_str()),
                ("Uniqueid", uniqueid.as_str()),
                ("Linkedid", uniqueid.as_str()),
                ("Cause", cause),
                ("Cause-txt", cause_txt),
            ])
        };
        match outcome {
            OriginateOutcome::Answer => {
                shared.broadcast("call", &response_event("Success", "4"));
                if let Some(after) = script.hangup_after_answer {
                    tokio::time::sleep(after).await;
                    shared.broadcast("call", &hangup_event("6", "Up", "16", "Normal Clearing"));
                }
            }
            OriginateOutcome::Fail { reason, cause, cause_txt } => {
                shared.broadcast("call", &hangup_event("0", "Down", &cause.to_string(), &cause_txt));
                shared.broadcast("call", &response_event("Failure", &reason.to_string()));
            }
            OriginateOutcome::Silent => {}
        }
    });
}

fn header<'a>(headers: &'a [(String, String)], key: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
}

/// Asterisk's ast_true().
fn is_true(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "yes" | "true" | "y" | "t" | "1" | "on")
}

/// `"Name" <123>` -> ("123", "Name"); a bare number -> (number, "").
pub(super) fn split_callerid(cid: &str) -> (String, String) {
    match (cid.find('<'), cid.rfind('>')) {
        (Some(a), Some(b)) if a < b => (cid[a + 1..b].to_string(), cid[..a].trim().trim_matches('"').to_string()),
        _ => (cid.trim().to_string(), String::new()),
    }
}

/// A response: `Response` first, then `ActionID` if the action had one, then
/// the rest (Asterisk's astman_send_response order).
fn response(action_id: Option<&str>, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut all: Vec<(&str, &str)> = Vec::with_capacity(fields.len() + 1);
    let (first, rest) = fields.split_first().map_or((None, fields), |(f, r)| (Some(*f), r));
    all.extend(first);
    if let Some(id) = action_id {
        all.push(("ActionID", id));
    }
    all.extend_from_slice(rest);
    encode_pairs(&all)
}

fn encode_pairs(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn encode(fields: &[(String, String)]) -> Vec<u8> {
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    encode_pairs(&pairs)
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}
