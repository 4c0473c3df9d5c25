//! Hostile or broken peers on every port of the real binary: hundreds of
//! malformed HTTP requests, garbage on the FastAGI port, garbage from a
//! scripted AMI server, slow and idle clients. Each must end in a 4xx or a
//! closed connection, and the daemon must go on serving real calls.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::daemon::Daemon;
use support::fake_agi;
use support::fake_ami::{FakeAmi, FakeScript};
use support::harness::{FAST_FLOW, Home, Setup};
use support::http;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

async fn setup(name: &str, script: FakeScript, http_keys: &str) -> (Home, FakeAmi, Daemon) {
    Setup::new(name).http_keys(http_keys).config(FAST_FLOW).fake(script).await
}

/// One good call end to end: accepted, originated, read over FastAGI,
/// completed. Returns its id.
async fn good_call(daemon: &Daemon, fake: &FakeAmi, number: &str) -> String {
    let id = daemon.seed_call(number, "482915");
    assert!(fake.wait_for_originate(&id, Duration::from_secs(20)).await.is_some(), "no Originate");
    let token = fake.agi_token(&id);
    let commands = fake_agi::answered_call(daemon.agi, &id, token.as_deref()).await;
    assert!(commands.iter().any(|c| c.starts_with("STREAM FILE digits/4")), "{commands:?}");
    let call = daemon.wait_final(&id, Duration::from_secs(20));
    assert_eq!(call["status"], "completed", "{call:?}");
    id
}

/// Deterministic pseudo-random bytes (xorshift), so a failure replays.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Requests no correct client sends, each complete (so the server has
/// everything it needs to answer at once).
fn malformed_requests() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let close = "Host: t\r\nConnection: close\r\n";
    // Broken request lines.
    let lines = [
        "GET",
        "GET /outbound.cgi",
        " GET /outbound.cgi HTTP/1.1",
        "GET  /outbound.cgi HTTP/1.1",
        "GET /outbound.cgi HTTP/1.1 extra",
        "GE\u{7f}T /outbound.cgi HTTP/1.1",
        "G(T /outbound.cgi HTTP/1.1",
        "GET /outbound.cgi\tHTTP/1.1",
        "GET /out bound.cgi HTTP/1.1",
        "GET \"/outbound.cgi\" HTTP/1.1",
        "GET /outbound.cgi?a=<b> HTTP/1.1",
        "GET /\u{1}x HTTP/1.1",
        "\u{0}\u{0}\u{0}\u{0}",
        "HTTP/1.1 200 OK",
        "/outbound.cgi HTTP/1.1",
        "GET /outbound.cgi HTTP/2.0",
        "GET /outbound.cgi HTTP/9.9",
        "GET /outbound.cgi HTTP/1.1x",
        "GET /outbound.cgi HTTP/1",
        "PRI * HTTP/2.0",
    ];
    for line in lines {
        out.push(format!("{line}\r\n{close}\r\n").into_bytes());
    }
    // Well-formed heads our server refuses: methods, paths, query encodings.
    for method in ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "BREW", "get", "HEAD"] {
        out.push(format!("{method} /outbound.cgi HTTP/1.1\r\n{close}\r\n").into_bytes());
    }
    for target in [
        "/",
        "/outbound",
        "/outbound.cgi/",
        "/OUTBOUND.CGI",
        "/../etc/passwd",
        "/outbound.cgi%00",
        "/outbound.cgi?number=%",
        "/outbound.cgi?number=%zz&code=%",
        "/outbound.cgi?%%%%",
        "/outbound.cgi?&&&&=&=",
        "/outbound.cgi?number=%C0%AF",
        "/outbound.cgi?code=%0D%0A%0D%0A",
        "/outbound.cgi?username=%00",
        "*",
        "http://evil.example/outbound.cgi",
        "//outbound.cgi",
        "/outbound.cgi#frag",
    ] {
        out.push(format!("GET {target} HTTP/1.1\r\n{close}\r\n").into_bytes());
    }
    // Broken headers.
    let headers = [
        "NoColon",
        "Bad Name: x",
        ": empty-name",
        "Name\u{1}: x",
        "X: a\u{0}b",
        "X: a\rb",
        " folded: line",
        "Content-Length: abc",
        "Content-Length: -1",
        "Content-Length: 1, 2",
        "Content-Length: 99999999999999999999999",
        "Transfer-Encoding: chunked\r\nContent-Length: 3",
        "Transfer-Encoding: gzip",
        "Transfer-Encoding: chunked, gzip",
        "Content-Length: 3\r\nContent-Length: 4",
    ];
    for header in headers {
        out.push(format!("POST /outbound.cgi HTTP/1.1\r\n{close}{header}\r\n\r\n").into_bytes());
    }
    let too_many: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
    out.push(format!("GET /outbound.cgi HTTP/1.1\r\n{close}{too_many}\r\n").into_bytes());
    out.push(format!("GET /outbound.cgi HTTP/1.1\r\n{close}X: {}\r\n\r\n", "v".repeat(20_000)).into_bytes());
    out.push(format!("GET /outbound.cgi?{} HTTP/1.1\r\n{close}\r\n", "a".repeat(20_000)).into_bytes());
    // Bodies: wrong media types, bad chunking, over the size limit.
    let form = "application/x-www-form-urlencoded";
    for (content_type, body) in [
        ("application/json", "{\"number\":\"03001234567\"}"),
        ("text/plain", "number=03001234567"),
        ("multipart/form-data; boundary=x", "--x--"),
        ("", "number=1"),
        ("application/x-www-form-urlencoded-evil", "number=1"),
    ] {
        out.push(
            format!("POST /outbound.cgi HTTP/1.1\r\n{close}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .into_bytes(),
        );
    }
    for chunked in ["zz\r\nabc\r\n0\r\n\r\n", "3\r\nabcdef\r\n0\r\n\r\n", "-1\r\n\r\n", "3;\u{0}\r\nabc\r\n0\r\n\r\n"] {
        out.push(
            format!("POST /outbound.cgi HTTP/1.1\r\n{close}Content-Type: {form}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}")
                .into_bytes(),
        );
    }
    let big = "n".repeat(9000);
    out.push(
        format!("POST /outbound.cgi HTTP/1.1\r\n{close}Content-Type: {form}\r\nContent-Length: 9000\r\n\r\n{big}")
            .into_bytes(),
    );
    // Well-formed requests with hostile values in every field.
    for value in [
        "%27%20OR%201=1--",
        "%3Cscript%3E",
        "%0D%0AAction:%20Originate",
        "%FF%FE%FD",
        "999999999999999999999",
        "-1",
        "0x10",
    ] {
        for field in ["number", "code", "username", "password"] {
            let target =
                format!("/outbound.cgi?number=03001234567&code=4829&username=acme1&password=nope&{field}={value}");
            out.push(format!("GET {target} HTTP/1.1\r\n{close}\r\n").into_bytes());
        }
    }
    // Noise: binary and printable garbage heads.
    for seed in 1..=220u64 {
        let mut bytes = noise(seed, 16 + (seed as usize * 37) % 600);
        if seed % 2 == 0 {
            // Printable, space-free: looks like a method that never ends.
            for b in &mut bytes {
                *b = b'!' + *b % 90;
            }
        }
        bytes.extend_from_slice(b"\r\n\r\n");
        out.push(bytes);
    }
    out
}

/// Sends raw bytes, reads the answer; the status code, or `None` if the
/// server closed without one.
fn status_of(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = stream.write_all(request);
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_malformed_http_requests_get_4xx_and_the_daemon_stays_healthy() {
    let (_home, fake, daemon) = setup("malformed-http", FakeScript::for_daemon(), "").await;
    let requests = malformed_requests();
    assert!(requests.len() >= 300, "{}", requests.len());
    let answers: Vec<(usize, Option<u16>)> = tokio::task::block_in_place(|| {
        requests.iter().enumerate().map(|(i, r)| (i, status_of(daemon.http, r))).collect()
    });
    let wrong: Vec<String> = answers
        .iter()
        .filter(|(_, status)| !status.is_some_and(|s| (400..500).contains(&s)))
        .map(|(i, status)| {
            format!("{status:?} for {:?}", String::from_utf8_lossy(&requests[*i][..requests[*i].len().min(80)]))
        })
        .collect();
    assert!(wrong.is_empty(), "{} not answered 4xx:\n{}", wrong.len(), wrong.join("\n"));

    let calls = tokio::task::block_in_place(|| support::daemon::cli(&daemon.config, &["call", "list"], ""));
    assert!(calls.1.trim().is_empty(), "malformed requests stored calls: {}", calls.1);
    // The good call is dialled after anything queued before it: the only
    // Originate is its own.
    let good = good_call(&daemon, &fake, "03001234567").await;
    assert_eq!(fake.originated(), [good], "malformed requests dialled: {:?}", fake.actions());
    assert!(!daemon.logs().contains("panicked"), "{}", daemon.logs());
}

/// The metric series in a `/metrics` scrape: each sample line without its value.
fn metric_series(daemon: &Daemon) -> std::collections::BTreeSet<String> {
    let resp = http::get(daemon.http, "/metrics");
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(series, _)| series).to_owned())
        .collect()
}

/// Issue 10, attack 3: requests with made-up methods must not add metric
/// series (each used to add a line to every later scrape, for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_add_no_metric_series() {
    let (_home, _fake, daemon) = setup("metric-series", FakeScript::for_daemon(), "").await;
    let targets = ["/healthz", "/metrics", "/outbound.cgi", "/v1/calls", "/v1/calls/abc", "/nothing"];
    let made_up = |i: usize| {
        let target = targets[i % targets.len()];
        let method: String = noise(i as u64 + 1, 3 + i % 10).iter().map(|b| (b'A' + b % 26) as char).collect();
        format!("{method}{i} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    };
    tokio::task::block_in_place(|| {
        // Once per target, so every (route, status) these answers make
        // exists, and one scrape, which counts itself.
        for i in 0..targets.len() {
            let status = status_of(daemon.http, made_up(i).as_bytes());
            assert!(status.is_some_and(|s| s == 404 || s == 405), "{status:?} for {}", made_up(i));
        }
        metric_series(&daemon);
        let before = metric_series(&daemon);
        for i in targets.len()..targets.len() + 300 {
            assert!(status_of(daemon.http, made_up(i).as_bytes()).is_some());
        }
        let after = metric_series(&daemon);
        let added: Vec<&String> = after.difference(&before).collect();
        assert!(added.is_empty(), "series added by made-up methods: {added:#?}");
        assert!(after.iter().any(|s| s.contains("method=\"other\"")), "{after:#?}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_and_slow_clients_are_cut_off_and_the_connection_cap_holds() {
    let (_home, fake, daemon) =
        setup("slow-http", FakeScript::for_daemon(), "max_connections = 2\nheader_timeout_secs = 2\n").await;
    let addr = daemon.http;
    tokio::task::block_in_place(|| {
        // A keep-alive client that goes quiet after one answer is closed.
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        idle.write_all(b"GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let _ = idle.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
        // read_to_end returned: the server closed the idle connection.

        // Two slow clients fill the cap; a third waits for a slot, and is
        // served once the slow ones are cut off.
        let mut slow: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for s in &mut slow {
            s.write_all(b"GET /outbound.cgi HTTP/1.1\r\nHo").unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let third = http::get(addr, "/nothing");
        assert_eq!(third.status, 404);
        for s in &mut slow {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let text = String::from_utf8_lossy(&buf);
            assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "slow client: {text}");
        }
    });
    good_call(&daemon, &fake, "03001234567").await;
}

/// Reads until the server closes (or resets) the connection; `None` if it
/// is still open after `within`.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return None;
            }
            Err(_) => return Some(got),
        }
    }
}

/// Review item 10: one address cannot take every connection slot. Over
/// `http.max_connections_per_ip` a connection is answered 503 and closed
/// at once; other addresses are served; a closed connection gives its slot
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let http_keys = "max_connections = 8\nmax_connections_per_ip = 2\n";
    let (_home, _fake, daemon) = setup("per-ip", FakeScript::for_daemon(), http_keys).await;
    let addr = daemon.http;
    let greedy: Option<std::net::IpAddr> = Some("127.0.0.2".parse().unwrap());
    let refused = tokio::task::block_in_place(|| {
        let mut held: Vec<TcpStream> = (0..2).map(|_| http::connect_from(greedy, addr)).collect();
        for s in &mut held {
            s.write_all(b"GET /nothing HTTP/1.1\r\nHo").unwrap();
        }
        // Accepted (and counted) in arrival order: the third is over the cap.
        let mut third = http::connect_from(greedy, addr);
        let answer = read_until_closed(&mut third, Duration::from_secs(5)).expect("closed at once");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("http.max_connections_per_ip"), "{text}");
        let other = http::get_from(Some("127.0.0.3".parse().unwrap()), addr, "/nothing");
        assert_eq!(other.status, 404, "another address is served");
        drop(held);
        // Until the server has seen those two close, a new one is still refused.
        let mut refused = 1;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut again = http::connect_from(greedy, addr);
            let _ = again.write_all(b"GET /nothing HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let answer = read_until_closed(&mut again, Duration::from_secs(10)).unwrap_or_default();
            let text = String::from_utf8_lossy(&answer);
            if text.starts_with("HTTP/1.1 404") {
                break;
            }
            if text.starts_with("HTTP/1.1 503") {
                refused += 1;
            }
            assert!(std::time::Instant::now() < deadline, "the slots were not given back");
            std::thread::sleep(Duration::from_millis(50));
        }
        refused
    });
    let metrics = tokio::task::block_in_place(|| http::get(addr, "/metrics"));
    let line = format!("voice_otp_http_connections_refused_total {refused}");
    assert!(metrics.body.contains(&line), "{line} missing:\n{}", metrics.body);
}

/// Review item 10: a client that pipelines requests and never reads the
/// answers used to hold its connection (and here the only slot) forever.
/// Past `http.write_timeout_secs` it is closed and the next client served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection() {
    let http_keys = "max_connections = 1\nwrite_timeout_secs = 1\nmax_requests_per_connection = 0\n";
    let (_home, _fake, daemon) = setup("write-timeout", FakeScript::for_daemon(), http_keys).await;
    let addr = daemon.http;
    tokio::task::block_in_place(|| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        // A small window, so the answers pile up on the server's side.
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&addr.into()).unwrap();
        let mut greedy: TcpStream = socket.into();
        // Far more answer bytes than the kernel buffers on both sides hold.
        let requests = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(3000);
        let mut writer = greedy.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(&requests);
        });
        std::thread::sleep(Duration::from_millis(500));
        // The only slot is the greedy client's until the server gives up on it.
        let started = std::time::Instant::now();
        let next = http::get(addr, "/nothing");
        assert_eq!(next.status, 404);
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
        let answered = read_until_closed(&mut greedy, Duration::from_secs(20)).expect("the greedy client is closed");
        let responses = String::from_utf8_lossy(&answered).matches("HTTP/1.1 200").count();
        assert!(responses < 3000, "all {responses} answers arrived: the write never stalled");
        let _ = sender.join();
    });
}

/// Review item 10: a keep-alive connection serves at most
/// `http.max_requests_per_connection` requests; the last answer says
/// `Connection: close` and the server closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_serves_a_bounded_number_of_requests() {
    let http_keys = "max_requests_per_connection = 3\nheader_timeout_secs = 2\n";
    let (_home, _fake, daemon) = setup("max-requests", FakeScript::for_daemon(), http_keys).await;
    tokio::task::block_in_place(|| {
        let mut stream = TcpStream::connect(daemon.http).unwrap();
        stream.write_all(&b"GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n".repeat(5)).unwrap();
        // Without the cap all five would be answered and the connection
        // closed only when idle (header_timeout_secs).
        let answered = read_until_closed(&mut stream, Duration::from_secs(5)).expect("closed after the third answer");
        let text = String::from_utf8_lossy(&answered);
        assert_eq!(text.matches("HTTP/1.1 404").count(), 3, "{text}");
        let last = text.rsplit("HTTP/1.1 404").next().unwrap().to_ascii_lowercase();
        assert!(last.contains("connection: close"), "{text}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_fastagi_port_closes_that_connection_only() {
    let (_home, fake, daemon) = setup("agi-garbage", FakeScript::for_daemon(), "").await;
    let agi = daemon.agi;
    let mut hostile = Vec::new();
    for seed in 1..=20u64 {
        let mut s = tokio::net::TcpStream::connect(agi).await.unwrap();
        let _ = s.write_all(&noise(seed, 2000)).await;
        hostile.push(s);
    }
    // One endless line, a valid block for no call of ours, a valid block
    // followed by garbage replies, and a silent peer.
    let mut endless = tokio::net::TcpStream::connect(agi).await.unwrap();
    let _ = endless.write_all(&vec![b'a'; 64 * 1024]).await;
    hostile.push(endless);
    let mut unknown = tokio::net::TcpStream::connect(agi).await.unwrap();
    unknown.write_all(fake_agi::request_block(agi, "0123456789abcdef0123456789abcdef").as_bytes()).await.unwrap();
    let mut unknown = tokio::io::BufReader::new(unknown);
    let mut unknown_said = String::new();
    tokio::time::timeout(Duration::from_secs(20), unknown.read_line(&mut unknown_said)).await.unwrap().unwrap();
    assert_eq!(unknown_said, format!("{}\n", fake_agi::ASK_TOKEN), "first the token");
    unknown.get_mut().write_all(b"200 result=1 (0123456789abcdef0123456789abcdef)\n").await.unwrap();
    unknown_said.clear();
    tokio::time::timeout(Duration::from_secs(20), unknown.read_line(&mut unknown_said)).await.unwrap().unwrap();
    let hung_up = fake_agi::is_hangup(unknown_said.trim_end());
    assert!(hung_up, "an unknown call id is hung up with nothing played: {unknown_said:?}");
    unknown.get_mut().write_all(b"200 result=-1\n").await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(20), unknown.read_to_string(&mut rest)).await.unwrap().unwrap();
    assert_eq!(rest, "", "nothing after the hangup");
    let silent = tokio::net::TcpStream::connect(agi).await.unwrap();
    hostile.push(silent);

    // Real calls are served while those connections are open. A peer that
    // names a real call and answers the token question with garbage is
    // dropped and changes nothing: that call's own channel reads it after.
    good_call(&daemon, &fake, "03001234567").await;
    let id = daemon.seed_call("03001234568", "482915");
    assert!(fake.wait_for_originate(&id, Duration::from_secs(20)).await.is_some(), "no Originate");
    let mut liar = tokio::net::TcpStream::connect(agi).await.unwrap();
    liar.write_all(fake_agi::request_block(agi, &id).as_bytes()).await.unwrap();
    let mut first = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(20), liar.read(&mut first)).await;
    liar.write_all(b"\x00\xffnot a reply at all\n").await.unwrap();
    hostile.push(liar);
    assert_eq!(tokio::task::block_in_place(|| daemon.logged("no token read", 1, Duration::from_secs(10))), 1);
    let token = fake.agi_token(&id);
    let commands = fake_agi::answered_call(agi, &id, token.as_deref()).await;
    assert!(commands.iter().any(|c| c.starts_with("STREAM FILE digits/4")), "{commands:?}");
    let call = tokio::task::block_in_place(|| daemon.wait_final(&id, Duration::from_secs(30)));
    assert_eq!(call["status"], "completed", "{call:?}");

    // Every hostile connection is closed by the daemon in the end (the
    // silent one after the request timeout), none is left hanging.
    for mut s in hostile {
        let mut buf = vec![0u8; 4096];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        assert!(closed, "a hostile FastAGI connection was left open");
    }
    good_call(&daemon, &fake, "03001234569").await;
    assert!(!daemon.logs().contains("panicked"), "{}", daemon.logs());
}

/// Issue 10: local processes that take every FastAGI session slot - each
/// sends a request block, is asked for its call's token, and says nothing
/// more - do not lock Asterisk out. The real channel's session pushes out
/// the oldest of them and is read the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_prove_a_call_cannot_take_every_session_slot() {
    let (_home, fake, daemon) =
        Setup::new("agi-crowd").agi_keys("max_sessions = 4").config(FAST_FLOW).fake(FakeScript::for_daemon()).await;
    let agi = daemon.agi;
    let id = daemon.seed_call("03001234567", "482915");
    assert!(fake.wait_for_originate(&id, Duration::from_secs(20)).await.is_some(), "no Originate");
    let mut crowd = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(agi).await.unwrap();
        s.write_all(fake_agi::request_block(agi, &id).as_bytes()).await.unwrap();
        let mut s = tokio::io::BufReader::new(s);
        let mut asked = String::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_line(&mut asked)).await.unwrap().unwrap();
        assert_eq!(asked, format!("{}\n", fake_agi::ASK_TOKEN), "each holds a session");
        crowd.push(s);
    }
    // Every slot is held (each for up to 5 s, the token's wait): the real
    // session comes at once.
    let token = fake.agi_token(&id);
    let commands = fake_agi::answered_call(agi, &id, token.as_deref()).await;
    assert!(commands.iter().any(|c| c.starts_with("STREAM FILE digits/4")), "{commands:?}\n{}", daemon.logs());
    let call = tokio::task::block_in_place(|| daemon.wait_final(&id, Duration::from_secs(30)));
    assert_eq!(call["status"], "completed", "{call:?}");
    let pushed = "the oldest session not admitted yet is closed for this one";
    assert!(
        tokio::task::block_in_place(|| daemon.logged(pushed, 1, Duration::from_secs(10))) >= 1,
        "{}",
        daemon.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastagi_peers_outside_the_allow_list_are_refused() {
    // Only a made-up Asterisk address may connect; the test's client is on loopback.
    let (_home, _fake, daemon) =
        Setup::new("agi-peers").agi_keys("allowed_peers = [\"192.0.2.10\"]").fake(FakeScript::for_daemon()).await;
    let id = daemon.seed_call("03001234567", "482915");
    let commands = fake_agi::answered_call(daemon.agi, &id, None).await;
    assert!(commands.is_empty(), "a refused peer got commands: {commands:?}");
    let refused = tokio::task::block_in_place(|| daemon.logged("not allowed", 1, Duration::from_secs(10)));
    assert_eq!(refused, 1, "{}", daemon.logs());
}

/// An event as Asterisk writes it, with a `Value` longer than any AMI frame
/// may be (a long `VarSet`, say), ended by its blank line.
fn oversized_event() -> Vec<u8> {
    let mut event = b"Event: VarSet\r\nPrivilege: dialplan,all\r\nChannel: PJSIP/carrier-00000001\r\n\
                      Uniqueid: 1700000000.1\r\nVariable: BIG\r\nValue: "
        .to_vec();
    event.extend(std::iter::repeat_n(b'v', 70 * 1024));
    event.extend_from_slice(b"\r\n\r\n");
    event
}

fn oversized_metric(daemon: &Daemon) -> u64 {
    let resp = tokio::task::block_in_place(|| http::get(daemon.http, "/metrics"));
    assert_eq!(resp.status, 200, "{}", resp.body);
    let line = resp.body.lines().find(|l| l.starts_with("voice_otp_ami_oversized_messages_total "));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or_else(|| panic!("no counter in {}", resp.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_asterisk_drops_the_ami_link_and_the_daemon_recovers() {
    let mut garbage = noise(7, 4096);
    garbage.extend_from_slice(b"\r\n\r\nEvent: Hangup\r\nUniqueid: x\r\n\r\n");
    // An oversized message costs only itself (see the next test)...
    garbage.extend(oversized_event());
    // ...but a message of more lines than any AMI message has is not AMI:
    // that ends the link.
    garbage.extend(b"x\r\n".repeat(5000));
    let script = FakeScript { garbage_after_login: Some(garbage), ..FakeScript::for_daemon() };
    let (_home, fake, daemon) = setup("ami-garbage", script, "").await;
    // The link is dropped and re-established (garbage again each time).
    assert!(fake.wait_for_connections(3, Duration::from_secs(30)).await, "the daemon did not reconnect");
    fake.update_script(|s| s.garbage_after_login = None);
    let logins = fake.count("Login");
    assert!(fake.wait_for_count("Login", logins + 1, Duration::from_secs(60)).await, "no clean login");
    good_call(&daemon, &fake, "03001234567").await;
    assert!(oversized_metric(&daemon) >= 2, "each link skipped its oversized message");
    assert!(!daemon.logs().contains("panicked"), "{}", daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_ami_message_is_skipped_and_the_link_kept() {
    let script = FakeScript { garbage_after_login: Some(oversized_event()), ..FakeScript::for_daemon() };
    let (_home, fake, daemon) = setup("ami-oversized", script, "").await;
    // The call's Originate response and events come after the oversized
    // message on the same stream, so the call working proves it was skipped.
    good_call(&daemon, &fake, "03001234567").await;
    assert_eq!(fake.connections(), 1, "the AMI link was dropped: {:?}", fake.actions());
    assert_eq!(oversized_metric(&daemon), 1);
    let logged = daemon.logged("AMI message larger than the frame bound skipped", 1, Duration::from_secs(5));
    assert_eq!(logged, 1, "{}", daemon.logs());
}
