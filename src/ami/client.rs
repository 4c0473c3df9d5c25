//! The AMI connection: one background task that connects, logs in, keeps the
//! link alive and reconnects, and a cloneable [`AmiClient`] handle to send
//! actions and watch events.
//!
//! Rules this module keeps, because other AMI clients broke them:
//! - An action is written at most once. Nothing is queued while the link is
//!   down and nothing is re-sent after a reconnect: a re-sent `Originate`
//!   calls a person twice.
//! - Responses are matched by `ActionID`, and only messages without an
//!   `Event` header are responses (`OriginateResponse` is an event).
//! - A `Ping` goes out every `ping_interval`; no answer within
//!   `ping_timeout` and the link is declared dead, so a silently broken TCP
//!   session cannot hang on for hours.
//! - The AMI secret never reaches a log line, an error or a `Debug` output.
//! - A message over the codec's frame bound (a long `VarSet` value, say) is
//!   skipped, logged and counted ([`AmiClient::oversized_messages`]); the
//!   link stays up. Only a stream that is not AMI at all ends it.
//!
//! Each connection gets its own command channel and pending-response map,
//! owned by the task; the handle only holds the channel's sender behind a
//! mutex that is never held across an `.await`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::action::{Action, HeaderError};
use super::codec::{AmiCodec, CodecError, Frame, Message, MessageKind};
use super::response::ChannelStatus;

/// Events kept for a slow [`AmiClient::events`] receiver. One that falls
/// further behind gets `RecvError::Lagged` and loses the oldest events; the
/// link itself never waits for a receiver.
pub const EVENT_CAPACITY: usize = 1024;

/// Actions accepted but not yet written, per connection.
const COMMAND_QUEUE: usize = 64;

/// Floor for configured durations: a zero interval would panic in Tokio and
/// a zero backoff would spin on a dead server.
const MIN_DURATION: Duration = Duration::from_millis(1);

/// Where and how to reach Asterisk's manager interface.
#[derive(Clone)]
pub struct AmiConfig {
    /// Host name or address of Asterisk.
    pub host: String,
    /// AMI TCP port (Asterisk's default is 5038).
    pub port: u16,
    /// `[user]` section in `manager.conf`.
    pub username: String,
    /// That user's `secret`. Never logged or shown by `Debug`.
    pub secret: String,
    /// How often to send a keepalive `Ping`.
    pub ping_interval: Duration,
    /// How long a `Ping` may go unanswered before the link is declared dead.
    pub ping_timeout: Duration,
    /// How long [`AmiClient::send`] waits for a response; also bounds the
    /// TCP connect and the login exchange.
    pub action_timeout: Duration,
    /// First reconnect delay; doubles after each failure...
    pub reconnect_min: Duration,
    /// ...up to this cap. Each delay is jittered down by up to half.
    pub reconnect_max: Duration,
}

/// The link as seen by the rest of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Connecting or logging in.
    Connecting,
    /// Logged in; actions can be sent.
    Connected,
    /// Down, waiting before the next attempt (or stopped for shutdown).
    Disconnected,
}

/// Why an AMI exchange failed. No variant carries the AMI secret.
#[derive(Debug, thiserror::Error)]
pub enum AmiError {
    /// The link was not up when the action was sent; the action was not
    /// written and may safely be retried.
    #[error("AMI link is not connected")]
    NotConnected,
    /// The link dropped after the action was written and before its response
    /// arrived: Asterisk may or may not have carried it out. It is not
    /// re-sent.
    #[error("AMI link dropped before the response arrived")]
    Disconnected,
    /// No response within the action timeout (the action may still run).
    #[error("no AMI response in time")]
    Timeout,
    /// Asterisk answered `Response: Error`; carries its `Message` text.
    #[error("Asterisk refused the action: {0}")]
    Rejected(String),
    /// Asterisk refused the login; carries its `Message` text.
    #[error("AMI login refused: {0}")]
    LoginFailed(String),
    /// The peer does not speak AMI as expected (e.g. a wrong banner).
    #[error("AMI protocol error: {0}")]
    Protocol(String),
    /// Socket error.
    #[error("AMI I/O error: {0}")]
    Io(#[from] io::Error),
    /// The byte stream could not be decoded (frame too large, ...).
    #[error("AMI stream error: {0}")]
    Codec(#[from] CodecError),
    /// An action header was refused (e.g. CR/LF in a value).
    #[error("invalid AMI action: {0}")]
    Header(#[from] HeaderError),
}

/// Handle to the AMI link. Cheap to clone; all clones share one connection.
/// The background task runs until the shutdown token given to
/// [`AmiClient::spawn`] is cancelled, even if every handle is dropped.
#[derive(Clone)]
pub struct AmiClient {
    shared: Arc<Shared>,
}

/// State shared by the handles and the background task.
struct Shared {
    /// Sender of the current connection's command channel; `None` while the
    /// link is down, which is what makes `send` fail fast.
    session: Mutex<Option<mpsc::Sender<Command>>>,
    state: watch::Sender<LinkState>,
    events: broadcast::Sender<Arc<Message>>,
    id_prefix: String,
    next_id: AtomicU64,
    reconnects: AtomicU64,
    oversized: AtomicU64,
    action_timeout: Duration,
}

type Reply = oneshot::Sender<Result<Message, AmiError>>;

/// An action on its way to the connection task, with where to put the answer.
struct Command {
    action: Action,
    reply: Reply,
}

/// One logged-in connection.
struct Link {
    reader: FramedRead<OwnedReadHalf, AmiCodec>,
    writer: FramedWrite<OwnedWriteHalf, AmiCodec>,
}

/// Why a logged-in connection ended.
enum SessionEnd {
    Shutdown,
    Closed,
    PingTimeout,
    Failed(AmiError),
}

impl AmiConfig {
    /// A config with the defaults used in production: ping every 10 s,
    /// 5 s to answer it, 10 s per action, reconnect backoff 0.5 s to 30 s.
    pub fn new(host: impl Into<String>, port: u16, username: impl Into<String>, secret: impl Into<String>) -> Self {
        AmiConfig {
            host: host.into(),
            port,
            username: username.into(),
            secret: secret.into(),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(5),
            action_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for AmiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmiConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("action_timeout", &self.action_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

impl AmiClient {
    /// Starts the connection task and returns its handle at once; the link
    /// comes up in the background (watch [`AmiClient::link_state`]). A failed
    /// connect or login is logged and retried with backoff until `shutdown`
    /// is cancelled; on shutdown the task sends `Logoff` and stops.
    ///
    /// Must be called from within a Tokio runtime.
    pub fn spawn(config: AmiConfig, shutdown: CancellationToken) -> AmiClient {
        let shared = Arc::new(Shared::new(&config));
        tokio::spawn(run(config, Arc::clone(&shared), shutdown));
        AmiClient { shared }
    }

    /// Sends `action` with a fresh `ActionID` (`<prefix>-<n>`, replacing any
    /// set by the caller) and waits up to `action_timeout` for its response.
    ///
    /// `Response: Error` comes back as [`AmiError::Rejected`] with Asterisk's
    /// message, so `?` cannot mistake a refusal for success; every other
    /// response (`Success`, `Follows`, `Goodbye`) is `Ok`. Events that carry
    /// this ActionID (`OriginateResponse`) go to [`AmiClient::events`], not
    /// here. The ActionID used can be read back from the response.
    ///
    /// Fails at once with [`AmiError::NotConnected`] while the link is down:
    /// nothing is queued for later.
    pub async fn send(&self, mut action: Action) -> Result<Message, AmiError> {
        let tx = self.shared.session_sender().ok_or(AmiError::NotConnected)?;
        action.set_action_id(self.shared.next_action_id())?;
        trace!(action = action.name(), action_id = action.action_id(), "AMI send");
        let (reply, answer) = oneshot::channel();
        let exchange = async move {
            // A closed channel means the connection ended before the action
            // was accepted: it was never written.
            tx.send(Command { action, reply }).await.map_err(|_| AmiError::NotConnected)?;
            // The task always replies; a dropped reply means it died.
            answer.await.unwrap_or(Err(AmiError::Disconnected))
        };
        tokio::time::timeout(self.shared.action_timeout, exchange).await.unwrap_or(Err(AmiError::Timeout))
    }

    /// Asks Asterisk whether the channel whose name or `Uniqueid` is
    /// `channel` exists (`Status`). An error is "unknown": the link failed,
    /// or Asterisk refused the question without saying the channel is gone
    /// (see [`ChannelStatus::from_reply`]).
    pub async fn channel_status(&self, channel: &str) -> Result<ChannelStatus, AmiError> {
        ChannelStatus::from_reply(self.send(Action::status(channel)?).await)
    }

    /// A receiver of every AMI event (every message with an `Event` header,
    /// including those that carry an ActionID). Only events arriving after
    /// the call are seen; a receiver that lags more than [`EVENT_CAPACITY`]
    /// events loses the oldest ones.
    pub fn events(&self) -> broadcast::Receiver<Arc<Message>> {
        self.shared.events.subscribe()
    }

    /// A receiver of the link state, for waiting until connected or noticing
    /// a drop.
    pub fn link_state(&self) -> watch::Receiver<LinkState> {
        self.shared.state.subscribe()
    }

    /// Whether the link is logged in right now.
    pub fn is_connected(&self) -> bool {
        *self.shared.state.borrow() == LinkState::Connected
    }

    /// Whether the link is down and waiting before its next attempt: an
    /// attempt failed (not merely one in progress, as at start).
    pub fn is_down(&self) -> bool {
        *self.shared.state.borrow() == LinkState::Disconnected
    }

    /// How many times the link was re-established after the first login.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// How many messages from Asterisk were skipped for being larger than
    /// the frame bound ([`super::codec::DEFAULT_MAX_FRAME`]), since start.
    pub fn oversized_messages(&self) -> u64 {
        self.shared.oversized.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for AmiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmiClient")
            .field("state", &*self.shared.state.borrow())
            .field("reconnects", &self.reconnects())
            .field("oversized_messages", &self.oversized_messages())
            .finish()
    }
}

impl Shared {
    fn new(config: &AmiConfig) -> Shared {
        // Unique per process and per client - and, with 32 random bits, per
        // daemon when several share one Asterisk - so ActionIDs seen in
        // OriginateResponse events (which Asterisk sends to every session)
        // never collide with another client's.
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let nanos: u32 = rand::random();
        Shared {
            session: Mutex::new(None),
            state: watch::Sender::new(LinkState::Connecting),
            events: broadcast::Sender::new(EVENT_CAPACITY),
            id_prefix: format!("votp-{:x}-{:x}{instance}", std::process::id(), nanos),
            next_id: AtomicU64::new(1),
            reconnects: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            action_timeout: config.action_timeout.max(MIN_DURATION),
        }
    }

    fn next_action_id(&self) -> String {
        format!("{}-{}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn session_sender(&self) -> Option<mpsc::Sender<Command>> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_session(&self, tx: Option<mpsc::Sender<Command>>) {
        *self.session.lock().unwrap_or_else(PoisonError::into_inner) = tx;
    }

    fn set_state(&self, new: LinkState) {
        self.state.send_if_modified(|state| {
            let changed = *state != new;
            *state = new;
            changed
        });
    }

    fn publish(&self, event: Message) {
        // An error only means nobody is subscribed right now.
        let _ = self.events.send(Arc::new(event));
    }

    /// A message was skipped for its size. Whatever it was (most likely an
    /// event with a long value) is lost; if it was the answer to an action,
    /// that action times out like any unanswered one.
    fn oversized(&self, max: usize) {
        let total = self.oversized.fetch_add(1, Ordering::Relaxed) + 1;
        warn!(max_bytes = max, total, "AMI message larger than the frame bound skipped; link kept");
    }
}

/// The connection task: connect, log in, serve, back off, repeat.
async fn run(config: AmiConfig, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut jitter = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let mut failures: u32 = 0;
    let mut logged_in_before = false;
    while !shutdown.is_cancelled() {
        shared.set_state(LinkState::Connecting);
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => break,
            attempt = connect_and_login(&config, &shared) => attempt,
        };
        match attempt {
            Ok(link) => {
                if logged_in_before {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                logged_in_before = true;
                info!(host = %config.host, port = config.port, "AMI connected");
                let started = Instant::now();
                match serve(link, &config, &shared, &shutdown).await {
                    SessionEnd::Shutdown => break,
                    SessionEnd::Closed => warn!("AMI link closed by Asterisk"),
                    SessionEnd::PingTimeout => {
                        warn!(timeout = ?config.ping_timeout, "AMI ping unanswered, link declared dead")
                    }
                    SessionEnd::Failed(error) => warn!(%error, "AMI link failed"),
                }
                // Only a link that stayed up for a while resets the backoff,
                // so a server that accepts and drops at once is not hammered.
                if started.elapsed() >= config.reconnect_max {
                    failures = 0;
                }
            }
            Err(error) => {
                warn!(host = %config.host, port = config.port, username = %config.username, %error, "AMI connect or login failed");
            }
        }
        shared.set_state(LinkState::Disconnected);
        let delay = backoff(&config, failures, &mut jitter);
        failures = failures.saturating_add(1);
        debug!(?delay, "AMI reconnect scheduled");
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    shared.set_state(LinkState::Disconnected);
    debug!("AMI task stopped");
}

/// Connects, checks the banner and logs in, all within `action_timeout`.
async fn connect_and_login(config: &AmiConfig, shared: &Shared) -> Result<Link, AmiError> {
    let limit = config.action_timeout.max(MIN_DURATION);
    tokio::time::timeout(limit, async {
        let stream = TcpStream::connect((config.host.as_str(), config.port)).await?;
        // Actions are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let mut link =
            Link { reader: FramedRead::new(read, AmiCodec::new()), writer: FramedWrite::new(write, AmiCodec::new()) };
        match next_frame(&mut link.reader).await? {
            Frame::Banner(banner) if banner.starts_with("Asterisk Call Manager") => {
                debug!(%banner, "AMI banner");
            }
            Frame::Banner(banner) => {
                let shown: String = banner.chars().take(80).collect();
                return Err(AmiError::Protocol(format!("unexpected banner {shown:?}")));
            }
            Frame::Message(_) | Frame::Oversized { .. } => return Err(AmiError::Protocol("no banner".into())),
        }
        let mut login = Action::login(&config.username, &config.secret)?;
        let id = shared.next_action_id();
        login.set_action_id(id.as_str())?;
        link.writer.send(&login).await?;
        loop {
            let msg = match next_frame(&mut link.reader).await? {
                Frame::Message(msg) => msg,
                Frame::Oversized { max } => {
                    shared.oversized(max);
                    continue;
                }
                Frame::Banner(_) => continue,
            };
            match msg.kind() {
                MessageKind::Event(_) => shared.publish(msg),
                MessageKind::Response(status) if msg.action_id().is_none_or(|a| a == id) => {
                    if status.eq_ignore_ascii_case("Success") {
                        return Ok(link);
                    }
                    // Asterisk's text does not echo the secret; scrub it anyway
                    // since this string ends up in logs.
                    let text = msg.get("Message").unwrap_or(status);
                    return Err(AmiError::LoginFailed(scrub(text, &config.secret)));
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or(Err(AmiError::Timeout))
}

async fn next_frame(reader: &mut FramedRead<OwnedReadHalf, AmiCodec>) -> Result<Frame, AmiError> {
    match reader.next().await {
        Some(frame) => Ok(frame?),
        None => Err(AmiError::Io(io::ErrorKind::UnexpectedEof.into())),
    }
}

/// Serves one logged-in connection until it ends, then fails whatever was
/// still waiting on it.
async fn serve(link: Link, config: &AmiConfig, shared: &Shared, shutdown: &CancellationToken) -> SessionEnd {
    let Link { mut reader, mut writer } = link;
    let (tx, mut commands) = mpsc::channel::<Command>(COMMAND_QUEUE);
    let mut pending: HashMap<String, Reply> = HashMap::new();
    // Outstanding keepalive: its ActionID and when it must have been answered.
    let mut ping: Option<(String, Instant)> = None;
    let ping_every = config.ping_interval.max(MIN_DURATION);
    let ping_timeout = config.ping_timeout.max(MIN_DURATION);
    let write_timeout = config.action_timeout.max(MIN_DURATION);
    let mut ticker = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    shared.set_session(Some(tx));
    shared.set_state(LinkState::Connected);

    let end = loop {
        let ping_deadline = ping.as_ref().map(|(_, deadline)| *deadline);
        // Unbiased on purpose: a flood of events must not starve commands
        // or the keepalive.
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = write(&mut writer, &Action::logoff(), Duration::from_secs(1)).await;
                break SessionEnd::Shutdown;
            }
            frame = reader.next() => match frame {
                Some(Ok(Frame::Message(msg))) => route(msg, &mut pending, &mut ping, shared),
                Some(Ok(Frame::Banner(_))) => {}
                Some(Ok(Frame::Oversized { max })) => shared.oversized(max),
                Some(Err(error)) => break SessionEnd::Failed(error.into()),
                None => break SessionEnd::Closed,
            },
            _ = tokio::time::sleep_until(ping_deadline.unwrap_or_else(Instant::now)), if ping_deadline.is_some() => {
                break SessionEnd::PingTimeout;
            }
            _ = ticker.tick() => {
                // Callers that timed out dropped their receivers; forget them.
                pending.retain(|_, reply| !reply.is_closed());
                if ping.is_none() {
                    let mut action = Action::ping();
                    let id = shared.next_action_id();
                    if let Err(error) = action.set_action_id(id.as_str()) {
                        break SessionEnd::Failed(error.into());
                    }
                    if let Err(error) = write(&mut writer, &action, ping_timeout).await {
                        break SessionEnd::Failed(error);
                    }
                    ping = Some((id, Instant::now() + ping_timeout));
                }
            }
            Some(Command { action, reply }) = commands.recv() => {
                if reply.is_closed() {
                    // The caller gave up before we got to it: don't write an
                    // action whose outcome nobody will hear of.
                    continue;
                }
                let id = action.action_id().unwrap_or_default().to_owned();
                match write(&mut writer, &action, write_timeout).await {
                    Ok(()) => {
                        pending.insert(id, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(AmiError::Disconnected));
                        break SessionEnd::Failed(error);
                    }
                }
            }
        }
    };

    // Stop new sends first, then answer everything left. Accepted but
    // unwritten actions were never sent (NotConnected: safe to retry);
    // written ones have an unknown outcome (Disconnected).
    shared.set_session(None);
    shared.set_state(LinkState::Disconnected);
    commands.close();
    while let Ok(Command { reply, .. }) = commands.try_recv() {
        let _ = reply.send(Err(AmiError::NotConnected));
    }
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(AmiError::Disconnected));
    }
    end
}

/// Writes one action, giving up after `limit` so a peer that stopped reading
/// cannot stall the connection task.
async fn write(
    writer: &mut FramedWrite<OwnedWriteHalf, AmiCodec>,
    action: &Action,
    limit: Duration,
) -> Result<(), AmiError> {
    match tokio::time::timeout(limit, writer.send(action)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(AmiError::Timeout),
    }
}

/// Hands a message to whoever waits for it: events to subscribers, responses
/// to the matching pending action or keepalive.
fn route(msg: Message, pending: &mut HashMap<String, Reply>, ping: &mut Option<(String, Instant)>, shared: &Shared) {
    let (id, refused) = match msg.kind() {
        MessageKind::Event(name) => {
            trace!(event = name, "AMI event");
            shared.publish(msg);
            return;
        }
        MessageKind::Response(status) => match msg.action_id() {
            Some(id) => (id.to_owned(), status.eq_ignore_ascii_case("Error")),
            None => {
                debug!(status, "AMI response without ActionID ignored");
                return;
            }
        },
        MessageKind::Unknown => {
            debug!("AMI message that is neither event nor response ignored");
            return;
        }
    };
    if ping.as_ref().is_some_and(|(ping_id, _)| *ping_id == id) {
        *ping = None;
        return;
    }
    let Some(reply) = pending.remove(&id) else {
        debug!(action_id = %id, "AMI response for no waiting action (timed out?)");
        return;
    };
    let result =
        if refused { Err(AmiError::Rejected(msg.get("Message").unwrap_or("no message").to_owned())) } else { Ok(msg) };
    let _ = reply.send(result);
}

/// Capped exponential backoff with "equal jitter": between half and all of
/// `min * 2^failures`, so many daemons restarting with one Asterisk spread
/// out without ever retrying in a tight loop.
fn backoff(config: &AmiConfig, failures: u32, jitter: &mut impl rand::Rng) -> Duration {
    let min = config.reconnect_min.max(MIN_DURATION);
    let max = config.reconnect_max.max(min);
    let full = min.saturating_mul(1u32 << failures.min(20)).min(max);
    full.mul_f64(jitter.random_range(0.5..=1.0))
}

/// Replaces every occurrence of `secret` in `text`.
fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() { text.to_owned() } else { text.replace(secret, "<redacted>") }
}

#[cfg(test)]
mod tests {
    //! Against a scripted AMI server on 127.0.0.1:0 that speaks raw bytes,
    //! parsed here independently of `AmiCodec`.

    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    const SECRET: &str = "Sup3r-S3cret-Value";
    const WAIT: Duration = Duration::from_secs(5);

    type Headers = Vec<(String, String)>;

    struct FakeAmi {
        listener: TcpListener,
    }

    struct Conn {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl FakeAmi {
        async fn start() -> (FakeAmi, AmiConfig) {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let config = AmiConfig {
                ping_interval: Duration::from_secs(3600),
                ping_timeout: Duration::from_secs(1),
                action_timeout: Duration::from_secs(2),
                reconnect_min: Duration::from_millis(10),
                reconnect_max: Duration::from_millis(50),
                ..AmiConfig::new("127.0.0.1", port, "otp", SECRET)
            };
            (FakeAmi { listener }, config)
        }

        /// Accepts the next connection and greets it with the banner.
        async fn accept(&self) -> Conn {
            let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
                .await
                .expect("client connected in time")
                .expect("accept");
            let (read, write) = stream.into_split();
            let mut conn = Conn { reader: BufReader::new(read), writer: write };
            conn.write("Asterisk Call Manager/11.0.0\r\n").await;
            conn
        }

        /// Accepts a connection and accepts its login.
        async fn accept_logged_in(&self) -> Conn {
            let mut conn = self.accept().await;
            let login = conn.expect_action("Login").await;
            assert_eq!(get(&login, "Secret"), SECRET);
            assert_eq!(get(&login, "Events"), "on");
            conn.reply(&login, "Response: Success\r\nMessage: Authentication accepted\r\n").await;
            conn
        }
    }

    impl Conn {
        async fn write(&mut self, text: &str) {
            self.writer.write_all(text.as_bytes()).await.expect("server write");
        }

        /// Next action the client wrote; `None` once it closed the socket.
        async fn read_action(&mut self) -> Option<Headers> {
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if self.reader.read_line(&mut line).await.ok()? == 0 {
                    return None;
                }
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    return Some(headers);
                }
                let (k, v) = line.split_once(": ").expect("client writes Key: Value");
                headers.push((k.to_owned(), v.to_owned()));
            }
        }

        async fn expect_action(&mut self, name: &str) -> Headers {
            let action =
                tokio::time::timeout(WAIT, self.read_action()).await.expect("action in time").expect("connection open");
            assert_eq!(get(&action, "Action"), name, "{action:?}");
            action
        }

        /// Writes `body` (CRLF lines) as the response to `action`.
        async fn reply(&mut self, action: &Headers, body: &str) {
            let id = get(action, "ActionID");
            let (first, rest) = body.split_once("\r\n").expect("one line at least");
            self.write(&format!("{first}\r\nActionID: {id}\r\n{rest}\r\n")).await;
        }
    }

    fn get<'a>(headers: &'a Headers, key: &str) -> &'a str {
        headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or("")
    }

    async fn wait_state(client: &AmiClient, want: LinkState) {
        let mut state = client.link_state();
        tokio::time::timeout(WAIT, state.wait_for(|s| *s == want))
            .await
            .expect("state reached in time")
            .expect("task alive");
    }

    fn originate() -> Action {
        Action::originate(super::super::action::Originate {
            channel: "PJSIP/+923001234567@carrier".into(),
            context: "otp".into(),
            exten: "s".into(),
            priority: 1,
            timeout_ms: 30_000,
            caller_id: None,
            channel_id: "call-42".into(),
            variables: vec![],
        })
        .expect("valid originate")
    }

    #[tokio::test]
    async fn logs_in_and_connects() {
        let (server, config) = FakeAmi::start().await;
        let shutdown = CancellationToken::new();
        let client = AmiClient::spawn(config, shutdown.clone());
        assert!(!client.is_connected());
        let mut conn = server.accept().await;
        let login = conn.expect_action("Login").await;
        assert_eq!(get(&login, "Username"), "otp");
        assert!(!get(&login, "ActionID").is_empty());
        conn.reply(&login, "Response: Success\r\nMessage: Authentication accepted\r\n").await;
        wait_state(&client, LinkState::Connected).await;
        assert!(client.is_connected());
        assert_eq!(client.reconnects(), 0);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn concurrent_sends_answered_out_of_order() {
        let (server, config) = FakeAmi::start().await;
        let shutdown = CancellationToken::new();
        let client = AmiClient::spawn(config, shutdown.clone());
        let mut conn = server.accept_logged_in().await;
        wait_state(&client, LinkState::Connected).await;

        let send = |tag: &str| {
            let client = client.clone();
            let action = Action::new("Status").and_then(|a| a.header("Tag", tag)).expect("valid");
            tokio::spawn(async move { client.send(action).await })
        };
        let (a, b) = (send("a"), send("b"));
        let first = conn.expect_action("Status").await;
        let second = conn.expect_action("Status").await;
        assert_ne!(get(&first, "ActionID"), get(&second, "ActionID"));
        for action in [&second, &first] {
            let body = format!("Response: Success\r\nEcho: {}\r\n", get(action, "Tag"));
            conn.reply(action, &body).await;
        }
        let a = a.await.expect("task").expect("response a");
        let b = b.await.expect("task").expect("response b");
        assert_eq!(a.get("Echo"), Some("a"));
        assert_eq!(b.get("Echo"), Some("b"));
        assert!(a.action_id().is_some_and(|id| id.starts_with("votp-")));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn events_delivered_and_originate_response_not_taken_as_response() {
        let (server, config) = FakeAmi::start().await;
        let shutdown = CancellationToken::new();
        let client = AmiClient::spawn(config, shutdown.clone());
        let mut events = client.events();
        let mut conn = server.accept_logged_in().await;
        conn.write("Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n").await;
        wait_state(&client, LinkState::Connected).await;

        let sender = client.clone();
        let call = tokio::spawn(async move { sender.send(originate()).await });
        let action = conn.expect_action("Originate").await;
        assert_eq!(get(&action, "Async"), "true");
        assert_eq!(get(&action, "ChannelId"), "call-42");
        let id = get(&action, "ActionID").to_owned();
        // The event comes first on purpose: it carries `Response:` and our
        // ActionID, and must still not be taken for the action's response.
        conn.write(&format!(
            "Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {id}\r\nResponse: Failure\r\n\
             Channel: PJSIP/+923001234567@carrier\r\nReason: 0\r\nUniqueid: call-42\r\n\r\n"
        ))
        .await;
        conn.reply(&action, "Response: Success\r\nMessage: Originate successfully queued\r\n").await;
        conn.write("Event: Hangup\r\nUniqueid: call-42\r\nCause: 17\r\nCause-txt: User busy\r\n\r\n").await;

        let response = call.await.expect("task").expect("response");
        assert_eq!(response.get("Message"), Some("Originate successfully queued"));
        assert_eq!(response.action_id(), Some(id.as_str()));

        let mut next = async || tokio::time::timeout(WAIT, events.recv()).await.expect("event in time").expect("event");
        assert_eq!(next().await.kind(), MessageKind::Event("FullyBooted"));
        let orig = next().await;
        assert_eq!(orig.kind(), MessageKind::Event("OriginateResponse"));
        assert_eq!(orig.action_id(), Some(id.as_str()));
        assert_eq!(orig.get("Reason"), Some("0"));
        let hangup = next().await;
        assert_eq!(hangup.kind(), MessageKind::Event("Hangup"));
        assert_eq!(hangup.get("Cause"), Some("17"));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_oversized_message_is_skipped_counted_and_the_link_kept() {
        let (server, config) = FakeAmi::start().await;
        let shutdown = CancellationToken::new();
        let client = AmiClient::spawn(config, shutdown.clone());
        let mut events = client.events();
        let mut conn = server.accept_logged_in().await;
        wait_state(&client, LinkState::Connected).await;
        let long = "v".repeat(super::super::codec::DEFAULT_MAX_FRAME);
        conn.write(&format!(
            "Event: VarSet\r\nUniqueid: call-42\r\nVariable: X\r\nValue: {long}\r\n\r\n\
             Event: Hangup\r\nUniqueid: call-42\r\nCause: 16\r\n\r\n"
        ))
        .await;
        let next = tokio::time::timeout(WAIT, events.recv()).await.expect("event in time").expect("event");
        assert_eq!(next.kind(), MessageKind::Event("Hangup"), "the message after the oversized one");
        assert_eq!(client.oversized_messages(), 1);
        // Same connection, still answering actions.
        let sender = client.clone();
        let ping = tokio::spawn(async move { sender.send(Action::ping()).await });
        let action = conn.expect_action("Ping").await;
        conn.reply(&action, "Response: Success\r\nPing: Pong\r\n").await;
        assert!(ping.await.expect("task").is_ok());
        assert!(client.is_connected());
        assert_eq!(client.reconnects(), 0);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn response_error_is_rejected_with_message() {
        let (server, config) = FakeAmi::start().await;
        let shutdown = CancellationToken::new();
        let client = AmiClient::spawn(config, shutdown.clone());
        let mut conn = server.accept_logged_in().await;
        wait_state(&client, LinkState::Connected).await;
        let sender = client.clone();
        let call = tokio::spawn(async move { sender.send(originate()).await });
        let action = conn.expect_action("Originate").await;
        conn.reply(&action, "Response: Error\r\nMessage: Permission denied\r\n").await;
        match call.await.expect("task") {
            Err(AmiError::Rejected(text)) => assert_eq!(text, "Permission denied"),
            other => panic!("expected Rejected, got {other:?}"),
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn unanswered_action_times_out() {
        let (server, mut config) = FakeAmi::start().await;
        // It also bounds the login: not so short that a busy machine's
        // scheduling makes the client give up on the login.
        config.action_timeout = Duration::from_secs(1);
        let shutdown = CancellationToken::new();
        let client = AmiClient::spawn(config, shutdown.clone());
        let mut conn = server.accept_logged_in().await;
        wait_state(&client, LinkState::Connected).await;
        let sender = client.clone();
        let call = tokio::spawn(async move { sender.send(Action::ping()).await });
        conn.expect_action("Ping").await;
        assert!(matches!(call.await.expect("task"), Err(AmiError::Timeout)));
        assert!(client.is_connected(), "a slow answer is not a dead link");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn not_connected_fails_fast_without_queueing() {
        let (server, config) = FakeAmi::start().await;
        let shutdown = CancellationToken::new();
        let client = AmiClient::spawn(config, shutdown.clone());
        let mut conn = server.accept().await;
        let login = conn.expect_action("Login").await; // left unanswered for now
        let started = Instant::now();
        assert!(matches!(client.send(originate()).await, Err(AmiError::NotConnected)));
        // Fails fast: long before the unanswered login's timeout.
        assert!(started.elapsed() < Duration::from_secs(2));
        conn.reply(&login, "Response: Success\r\nMessage: Authentication accepted\r\n").await;
        wait_state(&client, LinkState::Connected).await;
        // The refused Originate must not turn up now that the link is up.
        let late = tokio::time::timeout(Duration::from_millis(300), conn.read_action()).await;
        assert!(late.is_err(), "nothing was queued: {late:?}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn ping_timeout_reconnects() {
        let (server, mut config) = FakeAmi::start().await;
        config.ping_interval = Duration::from_millis(50);
        // Each answered ping must get its pong within this, on a busy machine too.
        config.ping_timeout = Duration::from_secs(1);
        let shutdown = CancellationToken::new();
        let client = AmiClient::spawn(config, shutdown.clone());
        let mut first = server.accept_logged_in().await;
        wait_state(&client, LinkState::Connected).await;
        first.expect_action("Ping").await; // never answered
        let mut second = server.accept_logged_in().await;
        wait_state(&client, LinkState::Connected).await;
        assert_eq!(client.reconnects(), 1);
        // The dead link was closed by the client.
        let closed = tokio::time::timeout(WAIT, async { while first.read_action().await.is_some() {} }).await;
        assert!(closed.is_ok(), "old connection closed");
        // And the new one is kept alive by answered pings.
        for _ in 0..3 {
            let ping = second.expect_action("Ping").await;
            second.reply(&ping, "Response: Success\r\nPing: Pong\r\nTimestamp: 1.0\r\n").await;
        }
        assert!(client.is_connected());
        assert_eq!(client.reconnects(), 1);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn pending_action_gets_disconnected_and_is_not_resent() {
        let (server, config) = FakeAmi::start().await;
        let shutdown = CancellationToken::new();
        let client = AmiClient::spawn(config, shutdown.clone());
        let mut first = server.accept_logged_in().await;
        wait_state(&client, LinkState::Connected).await;
        let sender = client.clone();
        let call = tokio::spawn(async move { sender.send(originate()).await });
        first.expect_action("Originate").await;
        drop(first); // Asterisk goes away mid-action
        assert!(matches!(call.await.expect("task"), Err(AmiError::Disconnected)));

        let mut second = server.accept_logged_in().await;
        wait_state(&client, LinkState::Connected).await;
        assert_eq!(client.reconnects(), 1);
        let resent = tokio::time::timeout(Duration::from_millis(300), second.read_action()).await;
        assert!(resent.is_err(), "Originate must not be re-sent after reconnect: {resent:?}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn shutdown_logs_off() {
        let (server, config) = FakeAmi::start().await;
        let shutdown = CancellationToken::new();
        let client = AmiClient::spawn(config, shutdown.clone());
        let mut conn = server.accept_logged_in().await;
        wait_state(&client, LinkState::Connected).await;
        shutdown.cancel();
        conn.expect_action("Logoff").await;
        wait_state(&client, LinkState::Disconnected).await;
        assert!(matches!(client.send(Action::ping()).await, Err(AmiError::NotConnected)));
    }

    #[tokio::test]
    async fn wrong_banner_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let config = AmiConfig::new("127.0.0.1", port, "otp", SECRET);
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.expect("write");
            stream
        });
        let err = connect_and_login(&config, &Shared::new(&config)).await.err().expect("refused");
        assert!(matches!(err, AmiError::Protocol(_)), "{err:?}");
        drop(server);
    }

    #[tokio::test]
    async fn login_failure_text_never_holds_the_secret() {
        let (server, config) = FakeAmi::start().await;
        let shared = Shared::new(&config);
        let script = async {
            let mut conn = server.accept().await;
            let login = conn.expect_action("Login").await;
            // A hostile or buggy server echoing the secret must not get it logged.
            let body = format!("Response: Error\r\nMessage: Authentication failed for {SECRET}\r\n");
            conn.reply(&login, &body).await;
            conn
        };
        let (result, _conn) = tokio::join!(connect_and_login(&config, &shared), script);
        let err = result.err().expect("login refused");
        assert!(matches!(err, AmiError::LoginFailed(_)), "{err:?}");
        for shown in [err.to_string(), format!("{err:?}"), format!("{config:?}")] {
            assert!(!shown.contains(SECRET), "secret leaked: {shown}");
        }
        assert!(err.to_string().contains("Authentication failed"));
    }

    #[tokio::test]
    async fn wrong_secret_is_retried_and_never_logged() {
        let logs = Capture::default();
        let _guard = tracing::subscriber::set_default(logs.clone());
        let (server, config) = FakeAmi::start().await;
        let shutdown = CancellationToken::new();
        let client = AmiClient::spawn(config, shutdown.clone());
        for _ in 0..3 {
            let mut conn = server.accept().await;
            let login = conn.expect_action("Login").await;
            conn.reply(&login, "Response: Error\r\nMessage: Authentication failed\r\n").await;
            // Asterisk sleeps 1 s then closes; closing at once is enough here.
        }
        assert!(!client.is_connected());
        assert!(matches!(client.send(Action::ping()).await, Err(AmiError::NotConnected)));
        shutdown.cancel();
        wait_state(&client, LinkState::Disconnected).await;
        let text = logs.text();
        assert!(text.contains("Authentication failed"), "failure was logged: {text}");
        assert!(!text.contains(SECRET), "secret leaked into logs: {text}");
    }

    #[test]
    fn backoff_grows_capped_and_jittered() {
        let config = AmiConfig::new("h", 1, "u", "s");
        let mut rng = rand::rng();
        for failures in 0..40 {
            let d = backoff(&config, failures, &mut rng);
            let full = (Duration::from_millis(500) * 2u32.pow(failures.min(10))).min(Duration::from_secs(30));
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?} vs {full:?}");
        }
    }

    #[test]
    fn config_debug_redacts_secret() {
        let shown = format!("{:?}", AmiConfig::new("h", 5038, "otp", SECRET));
        assert!(!shown.contains(SECRET) && shown.contains("<redacted>"), "{shown}");
    }

    /// A minimal tracing subscriber that records every event and span field
    /// as text, to check what would reach the logs.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<String>>);

    impl Capture {
        fn text(&self) -> String {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
        }
    }

    impl tracing::field::Visit for Capture {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            let mut text = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            text.push_str(&format!("{}={:?} ", field.name(), value));
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            span.record(&mut self.clone());
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
            values.record(&mut self.clone());
        }
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            event.record(&mut self.clone());
            self.0.lock().unwrap_or_else(PoisonError::into_inner).push('\n');
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
}
