//! The FastAGI listener: accepts Asterisk's connections, checks who is
//! calling, reads each request block and hands the session to the call flow.
//!
//! One task per connection, tracked so shutdown can wait for calls in
//! progress to finish (how long is the caller's decision: wrap `serve` in a
//! timeout). Peers outside the allow-list are closed at once; a connection
//! that sends nothing or garbage is closed after the request timeout
//! without holding up anyone else.
//!
//! The session limit cannot be used to lock Asterisk out: any local process
//! may connect, so a connection is only sure of its slot once its handler
//! says the session proved itself ([`AgiChannel::admission`]: for voice-otp,
//! the call's token). When every slot is taken, a new connection closes the
//! oldest session neither admitted nor vouching (its proof being checked,
//! one database trip) and takes its slot; when there is none, the new
//! connection is closed. A flood of idle connections thus pushes out its
//! own oldest - never a call being served, nor one whose token is being
//! checked. Closing and admitting happen under one lock: a session is
//! either closed for room or admitted, never both.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

#[cfg(doc)]
use super::session::AgiChannel;
use super::session::AgiSession;

/// Default limit for a new connection to deliver its request block.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Default limit of concurrent sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 256;

/// The call flow: runs one AGI session to its end.
///
/// Implement it on the application's state, or pass a closure
/// `|session| async move { ... }` (any `Fn(AgiSession) -> impl Future`).
pub trait AgiHandler: Send + Sync + 'static {
    /// Handles one session; the connection closes when the session is
    /// dropped (Asterisk then continues the dialplan).
    fn handle(&self, session: AgiSession) -> impl Future<Output = ()> + Send;
}

impl<F, Fut> AgiHandler for F
where
    F: Fn(AgiSession) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn handle(&self, session: AgiSession) -> impl Future<Output = ()> + Send {
        self(session)
    }
}

/// How long a new connection waits for the slot of the session it pushed
/// out (that session's task ends at once; this only bounds a surprise).
const PUSH_OUT_WAIT: Duration = Duration::from_secs(1);

/// The connections whose sessions are not admitted yet, by arrival (ids
/// count up, so the map's order is their age): each with what closes it,
/// and whether it is vouching (its proof is being checked: not to be
/// closed for room until the verdict).
#[derive(Default)]
struct Unadmitted {
    next: u64,
    waiting: BTreeMap<u64, Entry>,
}

struct Entry {
    close: CancellationToken,
    vouching: bool,
}

impl Unadmitted {
    /// Closes the oldest session that is not vouching; false if none is.
    /// Under the line's lock, like every admission step: a session is
    /// either closed here or admitted there, never both.
    fn push_out_oldest(&mut self) -> bool {
        let Some(id) = self.waiting.iter().find(|(_, e)| !e.vouching).map(|(id, _)| *id) else { return false };
        if let Some(entry) = self.waiting.remove(&id) {
            entry.close.cancel();
        }
        true
    }
}

/// How far a session has come in proving itself, for
/// [`AgiChannel::admission`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Its proof (for voice-otp, the token) is in and being checked: it may
    /// not be closed for room meanwhile (one database trip).
    Vouching,
    /// Proven: it keeps its slot for good.
    Admitted,
    /// Not proven: it may be closed for room again.
    Refused,
}

/// One connection's place in [`Unadmitted`]; dropping it (at the session's
/// end) gives the place up.
pub(super) struct Waiting {
    id: u64,
    line: Arc<Mutex<Unadmitted>>,
}

impl Waiting {
    /// Puts a new connection at the back of the line.
    fn join(line: &Arc<Mutex<Unadmitted>>, close: CancellationToken) -> Waiting {
        let mut l = line.lock().unwrap_or_else(|p| p.into_inner());
        let id = l.next;
        l.next += 1;
        l.waiting.insert(id, Entry { close, vouching: false });
        Waiting { id, line: line.clone() }
    }

    /// Takes `step`; false if the session was closed for room already (it
    /// must stop: its connection is going).
    pub(super) fn step(&self, step: Admission) -> bool {
        let mut l = self.line.lock().unwrap_or_else(|p| p.into_inner());
        if step == Admission::Admitted {
            return l.waiting.remove(&self.id).is_some();
        }
        let Some(entry) = l.waiting.get_mut(&self.id) else { return false };
        entry.vouching = step == Admission::Vouching;
        true
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.line.lock().unwrap_or_else(|p| p.into_inner()).waiting.remove(&self.id);
    }
}

/// A bound FastAGI listener, not yet serving.
#[derive(Debug)]
pub struct AgiServer {
    listener: TcpListener,
    allowed_peers: Vec<IpAddr>,
    max_sessions: usize,
    request_timeout: Duration,
}

impl AgiServer {
    /// Binds the listener (e.g. `"127.0.0.1:4573"`; port 0 picks a free one).
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<AgiServer> {
        Ok(AgiServer {
            listener: TcpListener::bind(addr).await?,
            allowed_peers: Vec::new(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections only from these IPs (empty: from anyone). AGI
    /// runs commands on live calls, so anything beyond loopback should be
    /// listed explicitly.
    pub fn with_allowed_peers(mut self, peers: Vec<IpAddr>) -> Self {
        self.allowed_peers = peers.into_iter().map(|ip| ip.to_canonical()).collect();
        self
    }

    /// Caps concurrent sessions; connections above it are closed at once
    /// (Asterisk then continues the dialplan with `AGISTATUS=FAILURE`).
    pub fn with_max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max;
        self
    }

    /// Sets how long a new connection may take to send its request block.
    pub fn with_request_timeout(mut self, limit: Duration) -> Self {
        self.request_timeout = limit;
        self
    }

    fn allows(&self, ip: IpAddr) -> bool {
        self.allowed_peers.is_empty() || self.allowed_peers.contains(&ip.to_canonical())
    }

    /// Serves until `shutdown` is cancelled, then stops accepting (the
    /// listener is closed) and waits for every session task to end.
    pub async fn serve<H: AgiHandler>(self, handler: Arc<H>, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.max_sessions));
        let unadmitted = Arc::new(Mutex::new(Unadmitted::default()));
        let addr = self.listener.local_addr().ok();
        tracing::info!(?addr, "AGI server listening");
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // E.g. out of file descriptors: back off instead of
                        // spinning on the same error.
                        tracing::warn!(error = %e, "AGI accept failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        }
                    }
                },
            };
            if !self.allows(peer.ip()) {
                tracing::warn!(%peer, "AGI connection from a peer not allowed: closed");
                continue;
            }
            let permit = match permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if !unadmitted.lock().unwrap_or_else(|p| p.into_inner()).push_out_oldest() {
                        tracing::warn!(%peer, max = self.max_sessions, "too many AGI sessions: connection closed");
                        continue;
                    }
                    tracing::warn!(%peer, max = self.max_sessions,
                        "every AGI session slot taken: the oldest session not admitted yet is closed for this one");
                    match tokio::time::timeout(PUSH_OUT_WAIT, permits.clone().acquire_owned()).await {
                        Ok(Ok(permit)) => permit,
                        _ => continue,
                    }
                }
            };
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            let request_timeout = self.request_timeout;
            let close = CancellationToken::new();
            let waiting = Waiting::join(&unadmitted, close.clone());
            tracker.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    _ = close.cancelled() => tracing::debug!(%peer, "AGI connection closed to make room"),
                    _ = connection(stream, peer, request_timeout, handler, shutdown, waiting) => {}
                }
            });
        }
        drop(self.listener);
        tracker.close();
        tracing::info!(sessions = tracker.len(), "AGI server stopped; waiting for sessions to end");
        tracker.wait().await;
        tracing::info!("AGI server drained");
    }
}

/// Reads the request block, then runs the handler under a span naming the
/// call. Only identifying variables are logged: others may carry caller data.
async fn connection<H: AgiHandler>(
    stream: TcpStream,
    peer: SocketAddr,
    request_timeout: Duration,
    handler: Arc<H>,
    shutdown: CancellationToken,
    waiting: Waiting,
) {
    // Replies are single short lines: don't let Nagle delay them.
    let _ = stream.set_nodelay(true);
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => return,
        accepted = AgiSession::accept(stream, request_timeout) => accepted,
    };
    let mut session = match accepted {
        Ok(session) => session,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "AGI connection closed before a valid request block");
            return;
        }
    };
    session.set_waiting(waiting);
    let request = session.request();
    // `?` formatting escapes control characters Asterisk passed through.
    let span = tracing::info_span!(
        "agi",
        %peer,
        uniqueid = ?request.uniqueid().unwrap_or_default(),
        channel = ?request.channel().unwrap_or_default(),
        script = ?request.network_script().unwrap_or_default(),
    );
    // Debug, not info: the handler logs what the session meant (for
    // voice-otp, "call ended" with the call id), and two
    // more lines per call were a visible share of a session's cost.
    async move {
        tracing::debug!("AGI session started");
        handler.handle(session).await;
        tracing::debug!("AGI session ended");
    }
    .instrument(span)
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agi::{AgiError, Command};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::sync::{Notify, mpsc};
    use tokio::time::timeout;

    const REQUEST: &str = "agi_network: yes\nagi_network_script: otp\nagi_request: agi://127.0.0.1/otp\n\
        agi_channel: PJSIP/carrier-00000001\nagi_language: en\nagi_uniqueid: call-1\nagi_arg_1: 42\n\n";

    const WAIT: Duration = Duration::from_secs(5);

    /// Starts `server` with `handler`; returns its address, the shutdown
    /// token and the serve task.
    async fn start<H: AgiHandler>(
        server: AgiServer,
        handler: H,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let addr = server.local_addr().unwrap();
        let token = CancellationToken::new();
        let task = tokio::spawn(server.serve(Arc::new(handler), token.clone()));
        (addr, token, task)
    }

    /// True if the server closes the connection (EOF or reset) in time.
    async fn closed_by_server(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(timeout(WAIT, stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    /// A raw-bytes Asterisk: sends the request block, answers one playback,
    /// then expects the server to close the connection.
    async fn asterisk_call(addr: SocketAddr) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(REQUEST.as_bytes()).await.unwrap();
        let mut line = String::new();
        timeout(WAIT, r.read_line(&mut line)).await.unwrap().unwrap();
        assert_eq!(line, "STREAM FILE digits/4 \"1\"\n");
        w.write_all(b"200 result=0 endpos=6560\r\n").await.unwrap();
        line.clear();
        let n = timeout(WAIT, r.read_line(&mut line)).await.unwrap().unwrap();
        assert_eq!(n, 0, "expected the session to end, got {line:?}");
    }

    /// Handler that plays one file and reports the request and result.
    fn reporting_handler(tx: mpsc::UnboundedSender<(String, Result<Option<u64>, String>)>) -> impl AgiHandler {
        move |mut session: AgiSession| {
            let tx = tx.clone();
            async move {
                let id = session.request().uniqueid().unwrap_or_default().to_owned();
                let play = Command::StreamFile { file: "digits/4".into(), escape_digits: "1".into(), offset: None };
                let result = session.run(play).await.map(|r| r.endpos).map_err(|e| e.to_string());
                let _ = tx.send((id, result));
            }
        }
    }

    #[tokio::test]
    async fn serves_a_call_over_tcp() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server = AgiServer::bind("127.0.0.1:0").await.unwrap();
        let (addr, token, task) = start(server, reporting_handler(tx)).await;
        asterisk_call(addr).await;
        let (id, result) = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert_eq!((id.as_str(), result), ("call-1", Ok(Some(6560))));
        token.cancel();
        timeout(WAIT, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn peers_outside_the_allow_list_are_closed() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server =
            AgiServer::bind("127.0.0.1:0").await.unwrap().with_allowed_peers(vec!["10.9.9.9".parse().unwrap()]);
        let (addr, token, task) = start(server, reporting_handler(tx)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(REQUEST.as_bytes()).await;
        assert!(closed_by_server(&mut stream).await);
        assert!(rx.try_recv().is_err(), "handler must not run");
        token.cancel();
        timeout(WAIT, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn allow_list_admits_listed_peers() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server = AgiServer::bind("127.0.0.1:0")
            .await
            .unwrap()
            .with_allowed_peers(vec!["10.9.9.9".parse().unwrap(), "127.0.0.1".parse().unwrap()]);
        let (addr, token, _task) = start(server, reporting_handler(tx)).await;
        asterisk_call(addr).await;
        assert!(timeout(WAIT, rx.recv()).await.unwrap().is_some());
        token.cancel();
    }

    #[tokio::test]
    async fn garbage_and_silent_connections_do_not_stall_the_server() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server = AgiServer::bind("127.0.0.1:0").await.unwrap().with_request_timeout(Duration::from_millis(300));
        let (addr, token, task) = start(server, reporting_handler(tx)).await;

        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(b"\x00\xff\x16\x03\x01GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut flood = TcpStream::connect(addr).await.unwrap();
        // One endless line: must be cut off at the line limit, not buffered.
        let _ = flood.write_all(&vec![b'a'; 64 * 1024]).await;

        // A real call is served while those are pending.
        asterisk_call(addr).await;
        assert!(timeout(WAIT, rx.recv()).await.unwrap().is_some());

        assert!(closed_by_server(&mut garbage).await);
        assert!(closed_by_server(&mut flood).await);
        assert!(closed_by_server(&mut silent).await);
        token.cancel();
        timeout(WAIT, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn sessions_above_the_limit_are_closed() {
        let release = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let handler = {
            let (release, started) = (release.clone(), started.clone());
            move |mut session: AgiSession| {
                let (release, started) = (release.clone(), started.clone());
                async move {
                    // Proven: it keeps its slot whoever comes next.
                    assert!(crate::agi::AgiChannel::admission(&mut session, Admission::Admitted));
                    started.notify_one();
                    release.notified().await;
                    drop(session);
                }
            }
        };
        let server = AgiServer::bind("127.0.0.1:0").await.unwrap().with_max_sessions(1);
        let (addr, token, task) = start(server, handler).await;

        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(REQUEST.as_bytes()).await.unwrap();
        timeout(WAIT, started.notified()).await.unwrap();

        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_server(&mut second).await);

        release.notify_one();
        assert!(closed_by_server(&mut first).await);
        token.cancel();
        timeout(WAIT, task).await.unwrap().unwrap();
    }

    /// The request block of a call with uniqueid `id`.
    fn request_of(id: &str) -> String {
        REQUEST.replace("agi_uniqueid: call-1", &format!("agi_uniqueid: {id}"))
    }

    #[tokio::test]
    async fn sessions_not_admitted_make_room_for_a_new_connection() {
        // "idle-*" sessions never prove themselves and wait to be released
        // (then answer the call), "vouching-*" ones say their proof is being
        // checked and wait likewise; any other plays a file.
        let release = Arc::new(Notify::new());
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handler = {
            let release = release.clone();
            move |mut session: AgiSession| {
                let (release, started_tx, tx) = (release.clone(), started_tx.clone(), tx.clone());
                async move {
                    let id = session.request().uniqueid().unwrap_or_default().to_owned();
                    if id.starts_with("vouching") {
                        assert!(crate::agi::AgiChannel::admission(&mut session, Admission::Vouching));
                    }
                    if id.starts_with("idle") || id.starts_with("vouching") {
                        let _ = started_tx.send(id);
                        release.notified().await;
                        let _ = session.run(Command::Answer).await;
                        return;
                    }
                    let play = Command::StreamFile { file: "digits/4".into(), escape_digits: "1".into(), offset: None };
                    let result = session.run(play).await.map(|r| r.endpos).map_err(|e| e.to_string());
                    let _ = tx.send((id, result));
                }
            }
        };
        let server = AgiServer::bind("127.0.0.1:0").await.unwrap().with_max_sessions(3);
        let (addr, token, task) = start(server, handler).await;
        let mut held = Vec::new();
        for id in ["vouching-1", "idle-1", "idle-2"] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request_of(id).as_bytes()).await.unwrap();
            assert_eq!(timeout(WAIT, started.recv()).await.unwrap().as_deref(), Some(id));
            held.push(stream);
        }
        // Every slot is taken by a session not admitted: a new call pushes
        // out the oldest that is not vouching, and is served.
        asterisk_call(addr).await;
        assert_eq!(timeout(WAIT, rx.recv()).await.unwrap(), Some(("call-1".to_owned(), Ok(Some(6560)))));
        assert!(closed_by_server(&mut held[1]).await, "the oldest not vouching made room");
        // The others kept their connections: released, they still talk.
        release.notify_waiters();
        for at in [0, 2] {
            let mut line = String::new();
            timeout(WAIT, BufReader::new(&mut held[at]).read_line(&mut line)).await.unwrap().unwrap();
            assert_eq!(line, "ANSWER\n", "session {at}");
        }
        token.cancel();
        drop(held);
        timeout(WAIT, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_waits_for_sessions_and_refuses_new_ones() {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let handler = move |mut session: AgiSession| {
            let done_tx = done_tx.clone();
            async move {
                // Finishes its call even though shutdown has begun.
                let r = session.run(Command::Answer).await;
                let _ = done_tx.send(r.map(|r| r.code).map_err(|e| matches!(e, AgiError::HungUp)));
            }
        };
        let server = AgiServer::bind("127.0.0.1:0").await.unwrap();
        let (addr, token, task) = start(server, handler).await;

        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(REQUEST.as_bytes()).await.unwrap();
        let mut line = String::new();
        timeout(WAIT, r.read_line(&mut line)).await.unwrap().unwrap();
        assert_eq!(line, "ANSWER\n");

        token.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!task.is_finished(), "serve must wait for the live session");
        assert!(TcpStream::connect(addr).await.is_err(), "listener must be closed");

        w.write_all(b"200 result=0\n").await.unwrap();
        assert_eq!(timeout(WAIT, done_rx.recv()).await.unwrap(), Some(Ok(200)));
        timeout(WAIT, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn struct_handlers_with_state_work() {
        struct App {
            calls: mpsc::UnboundedSender<String>,
        }
        impl AgiHandler for App {
            async fn handle(&self, session: AgiSession) {
                let _ = self.calls.send(session.request().args().join(","));
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server = AgiServer::bind("127.0.0.1:0").await.unwrap();
        let (addr, token, _task) = start(server, App { calls: tx }).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(REQUEST.as_bytes()).await.unwrap();
        assert_eq!(timeout(WAIT, rx.recv()).await.unwrap().as_deref(), Some("42"));
        assert!(closed_by_server(&mut stream).await);
        token.cancel();
    }
}
