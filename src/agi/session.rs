//! One FastAGI connection: the request block, then one command at a time.
//!
//! [`AgiSession`] owns the socket and turns the reply protocol into plain
//! results: a 200 reply is `Ok`, everything that means "the caller is gone"
//! (a `HANGUP` line, a 511, the socket closing after a hang-up) is
//! [`AgiError::HungUp`], and a stream that can no longer be trusted (timeout,
//! garbage, I/O error) makes every later call fail instead of pairing a late
//! reply with the wrong command.
//!
//! [`AgiChannel`] is one command and its reply; [`super::playback`] builds
//! typed playback on it, and tests implement it with a scripted peer.

use std::fmt;
use std::future::Future;
use std::io;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::Framed;

use super::codec::{AgiCodec, AgiCodecError, AgiFrame, AgiRequest, Reply};
use super::command::{Command, CommandError};

/// Default limit for one command, reply included. Generous because a
/// `STREAM FILE` or `GET OPTION` only replies once its playback has ended.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Default wait for the pending reply once a `HANGUP` line has been seen:
/// Asterisk normally answers at once, but must not be able to stall us.
pub const DEFAULT_HANGUP_GRACE: Duration = Duration::from_secs(2);

/// Something that runs AGI commands on one channel, one at a time.
///
/// Implemented by [`AgiSession`]; tests implement it with a scripted fake.
/// Declared with `impl Future + Send` (rather than `async fn`), and `Send`
/// itself, so a generic caller's future can still be spawned on a
/// multi-threaded runtime; implementors may write `async fn run`.
pub trait AgiChannel: Send {
    /// Runs one command and returns its 200 reply; see [`AgiSession::run`]
    /// for the meaning of each error.
    fn run(&mut self, cmd: Command) -> impl Future<Output = Result<Reply, AgiError>> + Send;

    /// Tells the server how far this session has come in proving itself
    /// (e.g. by its call's token). Until it is admitted, a connection that
    /// finds every slot taken closes the oldest unproven session that is
    /// not vouching to get one (see [`crate::agi::AgiServer`]). False when
    /// this session was closed for room already: it must stop. Default:
    /// nothing to tell, true.
    fn admission(&mut self, step: super::server::Admission) -> bool {
        let _ = step;
        true
    }
}

/// What can go wrong running an AGI command.
#[derive(Debug, thiserror::Error)]
pub enum AgiError {
    /// The channel hung up (a `HANGUP` line, a 511 reply, or the connection
    /// closing after either). The normal end of many calls.
    #[error("channel hung up")]
    HungUp,
    /// Asterisk closed the connection, or the session is unusable after an
    /// earlier timeout or protocol error.
    #[error("AGI connection closed")]
    Closed,
    /// No request block or reply arrived in time.
    #[error("timed out waiting for Asterisk")]
    Timeout,
    /// 510: Asterisk does not know the command (a module not loaded?).
    #[error("Asterisk does not know the command: {0}")]
    UnknownCommand(String),
    /// 520: Asterisk rejected the command's syntax; carries its usage text.
    #[error("Asterisk rejected the command syntax: {0}")]
    Syntax(String),
    /// Asterisk sent something that is not FastAGI or not expected here.
    #[error("AGI protocol error: {0}")]
    Protocol(String),
    /// The socket failed.
    #[error("AGI I/O error: {0}")]
    Io(#[source] io::Error),
    /// The command was invalid; nothing was written.
    #[error("invalid AGI command: {0}")]
    Command(#[from] CommandError),
}

/// A FastAGI connection after its request block, ready for commands.
///
/// Generic over the stream so tests can use `tokio::io::duplex`. Commands
/// are strictly sequential: `run` takes `&mut self`, so a second command
/// cannot be written while one is pending (a command written during a
/// playback would abort it with no reply, desynchronising the stream).
pub struct AgiSession<S = TcpStream> {
    framed: Framed<S, AgiCodec>,
    request: AgiRequest,
    hung_up: bool,
    /// Set when the stream can no longer be trusted (timeout mid-command,
    /// garbage, I/O error, EOF): later calls fail without touching it.
    broken: bool,
    command_timeout: Duration,
    hangup_grace: Duration,
    /// Its place among the sessions not admitted yet, while it has one.
    waiting: Option<super::server::Waiting>,
}

impl<S> fmt::Debug for AgiSession<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgiSession")
            .field("uniqueid", &self.request.uniqueid())
            .field("hung_up", &self.hung_up)
            .field("broken", &self.broken)
            .finish()
    }
}

// Accessors need no bound on `S`, so code generic over the stream (e.g.
// `where AgiSession<S>: AgiChannel`) can still read the request.
impl<S> AgiSession<S> {
    /// The `agi_*` variables of this connection.
    pub fn request(&self) -> &AgiRequest {
        &self.request
    }

    /// Whether the channel is known to have hung up.
    pub fn hung_up(&self) -> bool {
        self.hung_up
    }

    /// Sets the limit for one command, from writing it to its reply
    /// (default [`DEFAULT_COMMAND_TIMEOUT`]). Must exceed the longest
    /// playback or digit wait.
    pub fn set_command_timeout(&mut self, limit: Duration) {
        self.command_timeout = limit;
    }

    /// Sets how long to wait for the pending reply after a `HANGUP` line
    /// (default [`DEFAULT_HANGUP_GRACE`]).
    pub fn set_hangup_grace(&mut self, limit: Duration) {
        self.hangup_grace = limit;
    }

    /// Keeps the connection's place among the sessions not admitted yet
    /// until it is admitted ([`AgiChannel::admission`]) or ends.
    pub(super) fn set_waiting(&mut self, waiting: super::server::Waiting) {
        self.waiting = Some(waiting);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AgiSession<S> {
    /// Reads the request block from a fresh connection, giving up after
    /// `limit` so idle or slow connections cannot pile up. Garbage ends in
    /// [`AgiError::Protocol`], a silent peer in [`AgiError::Timeout`].
    pub async fn accept(stream: S, limit: Duration) -> Result<Self, AgiError> {
        let mut framed = Framed::new(stream, AgiCodec::new());
        let request = match timeout(limit, framed.next()).await {
            Err(_) => return Err(AgiError::Timeout),
            Ok(None) => return Err(AgiError::Closed),
            Ok(Some(Err(e))) => return Err(codec_error(e, false)),
            Ok(Some(Ok(AgiFrame::Request(request)))) => request,
            Ok(Some(Ok(_))) => return Err(AgiError::Protocol("expected the request block".into())),
        };
        Ok(Self {
            framed,
            request,
            hung_up: false,
            broken: false,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            hangup_grace: DEFAULT_HANGUP_GRACE,
            waiting: None,
        })
    }

    /// Writes one command and waits for its reply.
    ///
    /// - `200` is `Ok(reply)`, **including `result=-1`**: for a playback
    ///   that means a missing sound file *or* a hang-up, and only the caller
    ///   knows which matters (a following command will report the hang-up).
    /// - A `HANGUP` line seen before the reply turns it into
    ///   `Err(HungUp)` (the reply is still consumed if it arrives within the
    ///   hang-up grace); `511` is `Err(HungUp)` too. `Command::Hangup` itself
    ///   is `Ok` on a 200 even when `HANGUP` lines surround it.
    /// - `510` is `Err(UnknownCommand)`, `520` `Err(Syntax)`.
    /// - EOF is `Err(Closed)` (`Err(HungUp)` once a hang-up was seen).
    /// - No reply within the command timeout is `Err(Timeout)`.
    ///
    /// Once the hang-up is known, commands other than `Hangup` fail with
    /// `Err(HungUp)` without being written. After `Timeout`, `Protocol`,
    /// `Io` or `Closed` the session is unusable and every call returns
    /// `Err(Closed)` (or `HungUp`): a late reply can no longer be matched.
    pub async fn run(&mut self, cmd: Command) -> Result<Reply, AgiError> {
        // Validate first: an invalid command must not even look at the wire.
        cmd.check()?;
        if self.broken {
            return Err(self.gone());
        }
        self.take_pending()?;
        let is_hangup = matches!(cmd, Command::Hangup);
        if self.hung_up && !is_hangup {
            return Err(AgiError::HungUp);
        }
        let limit = if self.hung_up { self.hangup_grace } else { self.command_timeout };
        let mut deadline = Instant::now() + limit;
        tracing::trace!(command = cmd.name(), "AGI command");

        match timeout_at(deadline, self.framed.send(&cmd)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.fail(e)),
            Err(_) => {
                self.broken = true;
                return Err(if self.hung_up { AgiError::HungUp } else { AgiError::Timeout });
            }
        }

        let mut hangup_seen = false;
        loop {
            let frame = match timeout_at(deadline, self.framed.next()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(e))) => return Err(self.fail(e)),
                Ok(None) => {
                    self.broken = true;
                    return Err(self.gone());
                }
                Err(_) => {
                    self.broken = true;
                    return Err(if self.hung_up { AgiError::HungUp } else { AgiError::Timeout });
                }
            };
            match frame {
                AgiFrame::Hangup => {
                    self.hung_up = true;
                    hangup_seen = true;
                    deadline = deadline.min(Instant::now() + self.hangup_grace);
                }
                AgiFrame::Reply(reply) => return self.outcome(reply, is_hangup, hangup_seen),
                AgiFrame::Request(_) => {
                    self.broken = true;
                    return Err(AgiError::Protocol("second request block".into()));
                }
            }
        }
    }

    /// Picks up, without waiting, what Asterisk sent while no command was
    /// pending: a `HANGUP` line or the connection closing.
    fn take_pending(&mut self) -> Result<(), AgiError> {
        while let Some(item) = self.framed.next().now_or_never() {
            match item {
                Some(Ok(AgiFrame::Hangup)) => self.hung_up = true,
                Some(Ok(_)) => {
                    self.broken = true;
                    return Err(AgiError::Protocol("reply without a pending command".into()));
                }
                Some(Err(e)) => return Err(self.fail(e)),
                None => {
                    self.broken = true;
                    return Err(self.gone());
                }
            }
        }
        Ok(())
    }

    fn outcome(&mut self, reply: Reply, is_hangup: bool, hangup_seen: bool) -> Result<Reply, AgiError> {
        match reply.code {
            200 if hangup_seen && !is_hangup => Err(AgiError::HungUp),
            200 => Ok(reply),
            511 => {
                self.hung_up = true;
                Err(AgiError::HungUp)
            }
            510 => Err(AgiError::UnknownCommand(reply.text)),
            520 => Err(AgiError::Syntax(reply.text)),
            code => Err(AgiError::Protocol(format!("unexpected reply code {code}"))),
        }
    }

    /// Marks the stream unusable and classifies the codec's error.
    fn fail(&mut self, e: AgiCodecError) -> AgiError {
        self.broken = true;
        codec_error(e, self.hung_up)
    }

    /// The error for a connection that is gone.
    fn gone(&self) -> AgiError {
        if self.hung_up { AgiError::HungUp } else { AgiError::Closed }
    }
}

/// Maps a codec error: a peer that went away is `Closed` (or `HungUp`),
/// not an I/O fault of ours.
fn codec_error(e: AgiCodecError, hung_up: bool) -> AgiError {
    let gone = if hung_up { AgiError::HungUp } else { AgiError::Closed };
    match e {
        AgiCodecError::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            gone
        }
        AgiCodecError::Io(e) => AgiError::Io(e),
        AgiCodecError::Truncated => gone,
        AgiCodecError::Command(e) => AgiError::Command(e),
        other => AgiError::Protocol(other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> AgiChannel for AgiSession<S> {
    fn run(&mut self, cmd: Command) -> impl Future<Output = Result<Reply, AgiError>> + Send {
        AgiSession::run(self, cmd)
    }

    fn admission(&mut self, step: super::server::Admission) -> bool {
        self.waiting.as_ref().is_none_or(|w| w.step(step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

    const REQUEST: &[u8] = b"agi_network: yes\nagi_network_script: otp\nagi_channel: PJSIP/carrier-1\n\
        agi_uniqueid: call-7\nagi_language: en\nagi_arg_1: 42\n\n";

    /// Plays Asterisk on the far end of a duplex pipe.
    struct Peer {
        reader: BufReader<ReadHalf<DuplexStream>>,
        writer: WriteHalf<DuplexStream>,
    }

    impl Peer {
        /// Reads the next command line, or `None` if nothing arrives within
        /// `wait` (or the session closed).
        async fn line_within(&mut self, wait: Duration) -> Option<String> {
            let mut line = String::new();
            match timeout(wait, self.reader.read_line(&mut line)).await {
                Ok(Ok(n)) if n > 0 => Some(line),
                _ => None,
            }
        }

        async fn expect(&mut self, want: &str) {
            let got = self.line_within(Duration::from_secs(5)).await;
            assert_eq!(got.as_deref(), Some(format!("{want}\n").as_str()));
        }

        async fn send(&mut self, bytes: &str) {
            self.writer.write_all(bytes.as_bytes()).await.unwrap();
        }
    }

    async fn pair() -> (AgiSession<DuplexStream>, Peer) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (r, mut w) = tokio::io::split(theirs);
        w.write_all(REQUEST).await.unwrap();
        let session = AgiSession::accept(ours, Duration::from_secs(5)).await.unwrap();
        (session, Peer { reader: BufReader::new(r), writer: w })
    }

    fn play(file: &str) -> Command {
        Command::StreamFile { file: file.into(), escape_digits: "1".into(), offset: None }
    }

    #[tokio::test]
    async fn accept_reads_request() {
        let (session, _peer) = pair().await;
        assert_eq!(session.request().uniqueid(), Some("call-7"));
        assert_eq!(session.request().args(), vec!["42"]);
        assert!(!session.hung_up());
    }

    #[tokio::test]
    async fn accept_rejects_silence_garbage_and_eof() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let err = AgiSession::accept(ours, Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(err, AgiError::Timeout));

        let (ours, mut theirs) = tokio::io::duplex(1024);
        theirs.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let err = AgiSession::accept(ours, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, AgiError::Protocol(_)), "{err:?}");

        let (ours, theirs) = tokio::io::duplex(1024);
        drop(theirs);
        let err = AgiSession::accept(ours, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, AgiError::Closed), "{err:?}");
    }

    #[tokio::test]
    async fn playback_reply() {
        let (mut session, mut peer) = pair().await;
        let peer_task = tokio::spawn(async move {
            peer.expect(r#"STREAM FILE digits/4 "1""#).await;
            peer.send("200 result=0 endpos=6560\n").await;
            peer.expect("WAIT FOR DIGIT 1500").await;
            peer.send("100 Trying...\n200 result=49\n").await;
            peer.expect(r#"STREAM FILE otp/missing "1""#).await;
            peer.send("200 result=-1 endpos=0\n").await;
            peer
        });
        let r = session.run(play("digits/4")).await.unwrap();
        assert_eq!((r.result, r.endpos), (Some(0), Some(6560)));
        let r = session.run(Command::WaitForDigit { timeout_ms: 1500 }).await.unwrap();
        assert_eq!(r.digit(), Some('1'));
        // -1 is the caller's to interpret (missing file or hang-up).
        let r = session.run(play("otp/missing")).await.unwrap();
        assert_eq!(r.result, Some(-1));
        peer_task.await.unwrap();
    }

    #[tokio::test]
    async fn hangup_before_reply_is_hung_up() {
        let (mut session, mut peer) = pair().await;
        let peer_task = tokio::spawn(async move {
            peer.expect(r#"STREAM FILE digits/4 "1""#).await;
            peer.send("HANGUP\n200 result=-1 endpos=100\n").await;
            // Nothing but HANGUP may be written afterwards.
            peer.expect("HANGUP").await;
            peer.send("200 result=1\nHANGUP\n").await;
            assert_eq!(peer.line_within(Duration::from_millis(200)).await, None);
        });
        assert!(matches!(session.run(play("digits/4")).await, Err(AgiError::HungUp)));
        assert!(session.hung_up());
        assert!(matches!(session.run(play("digits/5")).await, Err(AgiError::HungUp)));
        let r = session.run(Command::Hangup).await.unwrap();
        assert_eq!(r.result, Some(1));
        assert!(matches!(session.run(Command::Answer).await, Err(AgiError::HungUp)));
        drop(session);
        peer_task.await.unwrap();
    }

    #[tokio::test]
    async fn hangup_without_reply_does_not_block() {
        let (mut session, mut peer) = pair().await;
        session.set_hangup_grace(Duration::from_millis(100));
        let peer_task = tokio::spawn(async move {
            peer.expect("ANSWER").await;
            peer.send("HANGUP\n").await;
            peer
        });
        let started = std::time::Instant::now();
        assert!(matches!(session.run(Command::Answer).await, Err(AgiError::HungUp)));
        assert!(started.elapsed() < Duration::from_secs(2));
        let _peer = peer_task.await.unwrap();
    }

    #[tokio::test]
    async fn hangup_while_idle_stops_the_next_command() {
        let (mut session, mut peer) = pair().await;
        peer.send("HANGUP\n").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(session.run(play("digits/1")).await, Err(AgiError::HungUp)));
        assert_eq!(peer.line_within(Duration::from_millis(100)).await, None);
    }

    #[tokio::test]
    async fn dead_channel_511_is_hung_up() {
        let (mut session, mut peer) = pair().await;
        let peer_task = tokio::spawn(async move {
            peer.expect("ANSWER").await;
            peer.send("511 Command Not Permitted on a dead channel or intercept routine\n").await;
            peer
        });
        assert!(matches!(session.run(Command::Answer).await, Err(AgiError::HungUp)));
        assert!(session.hung_up());
        let _peer = peer_task.await.unwrap();
    }

    #[tokio::test]
    async fn unknown_command_and_syntax_errors() {
        let (mut session, mut peer) = pair().await;
        let peer_task = tokio::spawn(async move {
            peer.expect("GET VARIABLE X").await;
            peer.send("510 Invalid or unknown command\n").await;
            peer.expect("SAY DIGITS 12 \"\"").await;
            peer.send(
                "520-Invalid command syntax.  Proper usage follows:\nUsage: SAY DIGITS\n520 End of proper usage.\n",
            )
            .await;
            peer.expect("GET VARIABLE X").await;
            peer.send("200 result=1 (v)\n").await;
            peer
        });
        let err = session.run(Command::GetVariable("X".into())).await.unwrap_err();
        assert!(matches!(&err, AgiError::UnknownCommand(t) if t == "Invalid or unknown command"));
        let say = Command::SayDigits { digits: "12".into(), escape_digits: "".into() };
        let err = session.run(say).await.unwrap_err();
        assert!(matches!(&err, AgiError::Syntax(t) if t.contains("Usage: SAY DIGITS")), "{err:?}");
        // The stream is still in step after both.
        let r = session.run(Command::GetVariable("X".into())).await.unwrap();
        assert_eq!(r.data.as_deref(), Some("v"));
        let _peer = peer_task.await.unwrap();
    }

    #[tokio::test]
    async fn eof_is_closed() {
        let (mut session, mut peer) = pair().await;
        let peer_task = tokio::spawn(async move {
            peer.expect("ANSWER").await;
            drop(peer);
        });
        assert!(matches!(session.run(Command::Answer).await, Err(AgiError::Closed)));
        peer_task.await.unwrap();
        assert!(matches!(session.run(Command::Answer).await, Err(AgiError::Closed)));
    }

    #[tokio::test]
    async fn eof_after_hangup_is_hung_up() {
        let (mut session, mut peer) = pair().await;
        let peer_task = tokio::spawn(async move {
            peer.expect("ANSWER").await;
            peer.send("HANGUP\n").await;
            drop(peer);
        });
        assert!(matches!(session.run(Command::Answer).await, Err(AgiError::HungUp)));
        peer_task.await.unwrap();
    }

    #[tokio::test]
    async fn timeout_poisons_the_session() {
        let (mut session, mut peer) = pair().await;
        session.set_command_timeout(Duration::from_millis(100));
        assert!(matches!(session.run(play("digits/1")).await, Err(AgiError::Timeout)));
        peer.expect(r#"STREAM FILE digits/1 "1""#).await;
        // The late reply must not be taken for the next command's.
        peer.send("200 result=0 endpos=10\n").await;
        assert!(matches!(session.run(Command::Answer).await, Err(AgiError::Closed)));
        assert_eq!(peer.line_within(Duration::from_millis(100)).await, None);
    }

    #[tokio::test]
    async fn garbage_reply_is_protocol_error() {
        let (mut session, mut peer) = pair().await;
        let peer_task = tokio::spawn(async move {
            peer.expect("ANSWER").await;
            peer.send("<html>\n").await;
            peer
        });
        assert!(matches!(session.run(Command::Answer).await, Err(AgiError::Protocol(_))));
        assert!(matches!(session.run(Command::Answer).await, Err(AgiError::Closed)));
        let _peer = peer_task.await.unwrap();
    }

    #[tokio::test]
    async fn invalid_command_writes_nothing() {
        let (mut session, mut peer) = pair().await;
        let bad = Command::SetVariable("X".into(), "1\nHANGUP".into());
        assert!(matches!(session.run(bad).await, Err(AgiError::Command(_))));
        assert_eq!(peer.line_within(Duration::from_millis(100)).await, None);
    }

    #[tokio::test]
    async fn one_command_at_a_time() {
        let (mut session, mut peer) = pair().await;
        let peer_task = tokio::spawn(async move {
            for n in 0..3 {
                peer.expect(&format!("STREAM FILE digits/{n} \"1\"")).await;
                // While the "playback" runs, nothing else may arrive.
                assert_eq!(peer.line_within(Duration::from_millis(50)).await, None);
                peer.send("200 result=0 endpos=8000\n").await;
            }
            peer
        });
        for n in 0..3 {
            session.run(play(&format!("digits/{n}"))).await.unwrap();
        }
        let _peer = peer_task.await.unwrap();
    }

    /// Call-flow code is generic over `AgiChannel`; a scripted fake stands in
    /// for Asterisk, and the generic future can still be spawned.
    #[tokio::test]
    async fn generic_callers_work_with_a_fake_channel() {
        struct Fake {
            sent: Vec<String>,
        }
        impl AgiChannel for Fake {
            async fn run(&mut self, cmd: Command) -> Result<Reply, AgiError> {
                self.sent.push(cmd.to_line()?);
                Ok(Reply { code: 200, result: Some(0), data: None, endpos: None, text: "result=0".into() })
            }
        }
        async fn say_code<C: AgiChannel>(channel: &mut C, code: &str) -> Result<(), AgiError> {
            channel.run(Command::Verbose("code".into(), 3)).await?;
            let say = Command::SayDigits { digits: code.into(), escape_digits: String::new() };
            channel.run(say).await?;
            Ok(())
        }
        let mut fake = Fake { sent: Vec::new() };
        let fake = tokio::spawn(async move {
            say_code(&mut fake, "4821").await.unwrap();
            fake
        })
        .await
        .unwrap();
        assert_eq!(fake.sent, vec![r#"VERBOSE "code" 3"#, r#"SAY DIGITS 4821 """#]);

        // The real session satisfies the same bound, Send included, and code
        // generic over its stream can still read the request.
        async fn entry<S>(mut session: AgiSession<S>) -> Result<(), AgiError>
        where
            AgiSession<S>: AgiChannel,
        {
            assert_eq!(session.request().uniqueid(), Some("call-7"));
            say_code(&mut session, "12").await
        }
        let (session, mut peer) = pair().await;
        let task = tokio::spawn(entry(session));
        peer.expect(r#"VERBOSE "code" 3"#).await;
        peer.send("200 result=1\n").await;
        peer.expect(r#"SAY DIGITS 12 """#).await;
        peer.send("200 result=0\n").await;
        task.await.unwrap().unwrap();
    }
}
