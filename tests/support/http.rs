//! A deliberately small HTTP/1.1 client over a raw TCP socket: tests need
//! to send malformed requests no well-behaved client library would.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body as text.
    pub body: String,
}

impl Response {
    /// First header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body parsed as a flat JSON object of string values.
    pub fn json_field(&self, key: &str) -> Option<String> {
        let needle = format!("\"{key}\":\"");
        let start = self.body.find(&needle)? + needle.len();
        let end = self.body[start..].find('"')? + start;
        Some(self.body[start..end].to_owned())
    }
}

/// Sends raw bytes, reads until the server closes, parses the response.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    raw_from(None, addr, request)
}

/// A TCP connection to `addr` from `source` (any port), or from wherever
/// the kernel picks when `None`. Every 127.x.y.z address is the loopback
/// interface's, so a test can play several clients on one machine.
pub fn connect_from(source: Option<IpAddr>, addr: SocketAddr) -> TcpStream {
    let Some(source) = source else { return TcpStream::connect(addr).expect("connect to daemon") };
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).expect("client socket");
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket.connect(&addr.into()).expect("connect to daemon");
    socket.into()
}

/// [`raw`] from the client address `source` (see [`connect_from`]).
pub fn raw_from(source: Option<IpAddr>, addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = connect_from(source, addr);
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request).expect("send request");
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    parse(&buf).unwrap_or_else(|| panic!("unparseable response: {:?}", String::from_utf8_lossy(&buf)))
}

/// `GET target`.
pub fn get(addr: SocketAddr, target: &str) -> Response {
    get_from(None, addr, target)
}

/// `GET target` from the client address `source` (see [`connect_from`]).
pub fn get_from(source: Option<IpAddr>, addr: SocketAddr, target: &str) -> Response {
    raw_from(source, addr, format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
}

/// `METHOD target` with a body of `content_type`.
pub fn send(addr: SocketAddr, method: &str, target: &str, content_type: &str, body: &[u8]) -> Response {
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(addr, &req)
}

/// `METHOD target` with HTTP Basic credentials and, if given, a JSON body.
pub fn with_basic(
    addr: SocketAddr,
    method: &str,
    target: &str,
    user: &str,
    password: &str,
    json: Option<&str>,
) -> Response {
    with_basic_headers(addr, method, target, user, password, &[], json)
}

/// [`with_basic`] with extra request headers (`Name: value` pairs).
pub fn with_basic_headers(
    addr: SocketAddr,
    method: &str,
    target: &str,
    user: &str,
    password: &str,
    headers: &[(&str, &str)],
    json: Option<&str>,
) -> Response {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let body = json.unwrap_or("");
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Basic {token}\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if json.is_some() {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(addr, req.as_bytes())
}

impl Response {
    /// Parses the body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `POST target` with a form-encoded body.
pub fn post_form(addr: SocketAddr, target: &str, body: &str) -> Response {
    send(addr, "POST", target, "application/x-www-form-urlencoded", body.as_bytes())
}

fn parse(buf: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Some(Response { status, headers, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
