//! Seed-API load: keep-alive HTTP/1.1 connections, each sending the next
//! request as soon as the previous answer is in, with every latency kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// When a load run stops.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this many requests in all.
    Requests(u64),
    /// After this long (requests in flight still finish).
    After(Duration),
}

/// What a run measured.
#[derive(Default)]
pub struct Outcome {
    /// 2xx answers.
    pub accepted: u64,
    /// Any other answer, or a broken connection.
    pub refused: u64,
    /// Latency of every request, microseconds.
    pub latencies_us: Vec<u64>,
    /// First request sent to last answer received.
    pub seconds: f64,
    /// `call_id`s of accepted requests (when asked for).
    pub call_ids: Vec<String>,
}

impl Outcome {
    /// Accepted requests per second.
    pub fn accepted_per_s(&self) -> f64 {
        self.accepted as f64 / self.seconds
    }

    /// The `q` quantile of latency in milliseconds (nearest rank).
    pub fn latency_ms(&mut self, q: f64) -> f64 {
        self.latencies_us.sort_unstable();
        let Some(last) = self.latencies_us.len().checked_sub(1) else {
            return f64::NAN;
        };
        self.latencies_us[((last as f64) * q).round() as usize] as f64 / 1000.0
    }
}

/// The `n`th request of a run, as bytes on the wire (see [`get`], [`post_json`]).
pub type Target = Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>;

/// `GET target`, with `headers` (each ending in CRLF).
pub fn get(target: &str, headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n").into_bytes()
}

/// `POST target` with a JSON `body`, with `headers` (each ending in CRLF).
pub fn post_json(target: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {target} HTTP/1.1\r\nHost: bench\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Runs `connections` clients sending `target(n)` as the `n`th request to
/// `addr` until `stop`.
pub async fn run(addr: SocketAddr, target: Target, connections: usize, stop: Stop, keep_ids: bool) -> Outcome {
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (target, sent) = (target.clone(), sent.clone());
            tokio::spawn(client(addr, target, sent, stop, start, keep_ids))
        })
        .collect();
    let mut total = Outcome::default();
    for w in workers {
        if let Ok(part) = w.await {
            total.accepted += part.accepted;
            total.refused += part.refused;
            total.latencies_us.extend(part.latencies_us);
            total.call_ids.extend(part.call_ids);
        }
    }
    total.seconds = start.elapsed().as_secs_f64();
    total
}

async fn client(
    addr: SocketAddr,
    target: Target,
    sent: Arc<AtomicU64>,
    stop: Stop,
    start: Instant,
    keep_ids: bool,
) -> Outcome {
    let mut out = Outcome::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    loop {
        let n = sent.fetch_add(1, Ordering::Relaxed);
        match stop {
            Stop::Requests(total) if n >= total => return out,
            Stop::After(d) if start.elapsed() >= d => return out,
            _ => {}
        }
        let request = target(n);
        if conn.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(BufReader::new(s));
                }
                Err(_) => {
                    out.refused += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let stream = conn.as_mut().expect("connected above");
        let t0 = Instant::now();
        match exchange(stream, &request).await {
            Ok((status, body)) => {
                out.latencies_us.push(t0.elapsed().as_micros() as u64);
                if (200..300).contains(&status) {
                    out.accepted += 1;
                    if keep_ids {
                        out.call_ids.extend(call_id(&body));
                    }
                } else {
                    out.refused += 1;
                }
            }
            Err(_) => {
                out.refused += 1;
                conn = None;
            }
        }
    }
}

/// Writes one request and reads its response (status, body).
async fn exchange(stream: &mut BufReader<TcpStream>, request: &[u8]) -> std::io::Result<(u16, String)> {
    stream.get_mut().write_all(request).await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn call_id(body: &str) -> Option<String> {
    let start = body.find("\"call_id\":\"")? + "\"call_id\":\"".len();
    let end = body[start..].find('"')? + start;
    Some(body[start..end].to_owned())
}
