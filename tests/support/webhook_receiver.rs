//! A webhook receiver for tests: a plain TCP listener speaking just enough
//! HTTP/1.1 to take voice-otp's POSTs, answering each with the next status
//! of a script (then 200 forever), and checking every signature on its own
//! with `hmac`/`sha2` against the documented format.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One POST as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request target.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: String,
    /// The status we answered.
    pub answered: u16,
}

impl Received {
    /// First header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {}", self.body))
    }

    /// True if `X-Voice-OTP-Signature: t=<t>,v1=<hex>` is HMAC-SHA256 of
    /// `"<t>.<body>"` under `secret`.
    pub fn signed_with(&self, secret: &str) -> bool {
        let Some(sig) = self.header("x-voice-otp-signature") else { return false };
        let (mut t, mut v1, mut v2) = (None, None, None);
        for part in sig.split(',') {
            match part.split_once('=') {
                Some(("t", v)) => t = Some(v),
                Some(("v1", v)) => v1 = Some(v),
                Some(("v2", v)) => v2 = Some(v),
                _ => {}
            }
        }
        let (Some(t), Some(v1), Some(v2)) = (t, v1, v2) else { return false };
        let (Some(delivery), Some(event)) = (self.header("x-voice-otp-delivery"), self.header("x-voice-otp-event"))
        else {
            return false;
        };
        let matches = |hex_mac: &str, signed: String| {
            let Ok(expected) = hex::decode(hex_mac) else { return false };
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(signed.as_bytes());
            mac.verify_slice(&expected).is_ok()
        };
        // Both: v1 over "<t>.<body>", v2 over "<t>\n<delivery>\n<event>\n<body>".
        matches(v1, format!("{t}.{}", self.body)) && matches(v2, format!("{t}\n{delivery}\n{event}\n{}", self.body))
    }
}

/// The running receiver; it lives until the test process ends.
pub struct Receiver {
    /// Its address.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    answer_all: Arc<Mutex<Option<u16>>>,
}

impl Receiver {
    /// Listens on a free loopback port; answers the statuses of `script` in
    /// turn, then 200.
    pub fn start(script: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let answer_all = Arc::new(Mutex::new(None));
        let forced = answer_all.clone();
        let mut script: std::collections::VecDeque<u16> = script.iter().copied().collect();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(mut req) = read_request(&mut stream) else { continue };
                let forced = *forced.lock().unwrap();
                let status = forced.or_else(|| script.pop_front()).unwrap_or(200);
                req.answered = status;
                // On record before the daemon reads the answer: whatever it
                // records of this attempt comes after, never before.
                sink.lock().unwrap().push(req);
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Receiver { addr, received, answer_all }
    }

    /// From now on answers every POST with `status` (e.g. 503: the receiver
    /// is "down" while keeping its port, which no other process can take
    /// meanwhile); `None` goes back to the script, then 200.
    pub fn answer_all(&self, status: Option<u16>) {
        *self.answer_all.lock().unwrap() = status;
    }

    /// `http://<addr>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until a POST matching `pred` arrived; panics with what did
    /// arrive after `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.received().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(Instant::now() < deadline, "no matching webhook in {timeout:?}; got: {:#?}", self.received());
            super::blocking(|| std::thread::sleep(Duration::from_millis(100)));
        }
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok())?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Received { path, headers, body: String::from_utf8_lossy(&body).into_owned(), answered: 0 })
}

/// A receiver that accepts every connection, reads the request and never
/// answers, holding the connection open until the test process ends: the
/// receiver of a user whose server hangs.
pub struct SilentReceiver {
    /// Its address.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl SilentReceiver {
    /// Listens on a free loopback port.
    pub fn start() -> SilentReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind silent receiver");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let sink = sink.clone();
                // One thread per connection, so a request still arriving
                // never delays the next accept.
                std::thread::spawn(move || {
                    if let Some(req) = read_request(&mut stream) {
                        sink.lock().unwrap().push(req);
                    }
                    // Keep the socket open and silent: voice-otp is left
                    // waiting for a response head that never comes.
                    loop {
                        std::thread::park();
                    }
                });
            }
        });
        SilentReceiver { addr, received }
    }

    /// `http://<addr>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Every request read so far (`answered` is 0: none was).
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have been read; panics with what did arrive
    /// after `timeout`.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} of {n} requests in {timeout:?}: {got:#?}", got.len());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
