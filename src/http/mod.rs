//! HTTP front end (hyper 1, HTTP/1.1): accept loop, routing, JSON replies.
//!
//! - `outbound`: the seed API, `/outbound.cgi`;
//! - `api`: the JSON API, `/v1/calls...`, with `problem` (RFC 9457 replies,
//!   Basic credentials);
//! - `idempotency`: the `Idempotency-Key` header of the creating POSTs;
//! - `json_body`: the JSON API's bodies and fields, and its common answers;
//! - `intake`: checking, limiting and placing a new call, shared by both;
//! - `ops`: `/healthz` and `/metrics`;
//! - `openapi`: `/v1/openapi.json`, the OpenAPI document of both APIs;
//! - `params`: form/query fields;
//! - `state`: [`App`], what every handler shares;
//! - `verifications`: `/v1/verifications...`, generated codes and checks.
//!
//! Request logs carry method, path and status only: the seed API puts the
//! password and the code in the query string, so a URI is never logged whole.
//!
//! Limits against slow or greedy clients: at most `[http] max_connections`
//! connections at once (the rest wait in the kernel's queue) and
//! `max_connections_per_ip` from one address (more are answered 503 and
//! closed), a request head of at most 16 KiB arriving within
//! `header_timeout_secs` (which also ends idle keep-alive connections), a
//! body within `max_body_bytes` and `body_timeout_secs`, responses handed
//! over within `write_timeout_secs` (a client that stops reading loses its
//! connection), and `max_requests_per_connection` requests per connection.

mod api;
mod idempotency;
pub mod intake;
mod json_body;
mod openapi;
mod ops;
mod outbound;
mod params;
mod problem;
mod state;
mod timeout_io;
mod verifications;

pub use state::App;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpConfig;
use crate::limits::{Refusal, RefusalKind, address_bucket};

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// Largest request head (request line + headers) accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// `http.listen`: the APIs (and `/healthz`, `/metrics` unless `ops` is apart).
    Api,
    /// `http.ops_listen`: `/healthz` and `/metrics` only.
    Ops,
}

/// Serves the API on `api` and, when given, `/healthz` and `/metrics` on
/// `ops` instead of `api`, until `shutdown`; then lets requests in flight
/// finish.
pub async fn serve(api: TcpListener, ops: Option<TcpListener>, app: Arc<App>, shutdown: CancellationToken) {
    let front = Arc::new(Frontend {
        app,
        health: ops::HealthProbe::default(),
        ops_apart: ops.is_some(),
        per_ip: PerIp::default(),
    });
    let tracker = TaskTracker::new();
    if let Some(ops) = ops {
        tracker.spawn(accept_loop(ops, Port::Ops, front.clone(), tracker.clone(), shutdown.clone()));
    }
    accept_loop(api, Port::Api, front, tracker.clone(), shutdown).await;
    tracker.close();
    tracker.wait().await;
}

/// Accepts connections on one listener, each served by a task on `tracker`,
/// until `shutdown`. Each listener has its own `max_connections` slots, so
/// a saturated API port does not keep the operator's scrapes out.
async fn accept_loop(
    listener: TcpListener,
    port: Port,
    front: Arc<Frontend>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let http = &front.app.config.http;
    let connections = Arc::new(Semaphore::new(http.max_connections));
    let header_timeout = Duration::from_secs(http.header_timeout_secs);
    let write_timeout = Duration::from_secs(http.write_timeout_secs);
    let max_requests = http.max_requests_per_connection;
    loop {
        // Take a connection slot first: at the limit, clients wait in the
        // kernel's accept queue instead of costing us a task each.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(ip_slot) = front.per_ip.take(peer.ip(), &front.app.config.http) else {
            refuse_connection(&stream, &front.app, peer);
            continue;
        };
        let front = front.clone();
        let shutdown = shutdown.clone();
        let requests = tracker.clone();
        tracker.spawn(async move {
            // Held by the connection and by each of its requests' tasks: a
            // client that goes away while its request runs on keeps its
            // slots until that work is done, so the connection caps bound
            // the work in progress, not just the sockets.
            let slots = Arc::new((permit, ip_slot));
            let served = Arc::new(AtomicU64::new(0));
            let service = service_fn(move |req| {
                let (front, served, requests, slots) = (front.clone(), served.clone(), requests.clone(), slots.clone());
                async move {
                    // A task of its own, carried out to its end even if the
                    // client goes away meanwhile (hyper then drops this
                    // future): a call placed keeps its Idempotency-Key
                    // answer, a cancel hangs up, nothing is left half done.
                    let handled = requests.spawn(async move {
                        let _slots = slots;
                        route(&front, port, req, peer).await
                    });
                    let mut resp = match handled.await {
                        Ok(resp) => resp,
                        Err(e) => {
                            tracing::error!(error = %e, "HTTP request handler failed");
                            seed_error(StatusCode::INTERNAL_SERVER_ERROR)
                        }
                    };
                    // hyper closes the connection after an answer that says so.
                    if max_requests > 0 && served.fetch_add(1, Ordering::Relaxed) + 1 >= max_requests {
                        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(MAX_HEAD_BYTES);
            let io = TokioIo::new(timeout_io::WriteTimeout::new(stream, write_timeout));
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "http connection ended with error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    // Closed now, not when the drain ends: new clients must be refused at
    // once rather than queue for a server that will not answer.
    drop(listener);
}

/// What every connection of the HTTP server shares.
struct Frontend {
    app: Arc<App>,
    /// The last database probe of `/healthz`.
    health: ops::HealthProbe,
    /// `/healthz` and `/metrics` are served on their own listener only.
    ops_apart: bool,
    /// Connections open per client address, on every listener.
    per_ip: PerIp,
}

/// Connections open per client address ([`address_bucket`]), for
/// `http.max_connections_per_ip`.
#[derive(Default)]
struct PerIp {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    /// A slot for one more connection from `peer`, held until dropped;
    /// `None` when that address has its fill. Trusted proxies carry many
    /// clients and are not capped.
    fn take(&self, peer: IpAddr, http: &HttpConfig) -> Option<IpSlot> {
        let key = address_bucket(peer);
        let cap = http.max_connections_per_ip;
        if cap == 0 || http.trusted_proxies.iter().any(|p| p.to_canonical() == peer.to_canonical()) {
            return Some(IpSlot { open: None, key });
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(IpSlot { open: Some(self.open.clone()), key })
    }
}

/// One connection's place in [`PerIp`]'s count.
struct IpSlot {
    open: Option<Arc<Mutex<HashMap<IpAddr, usize>>>>,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some(open) = &self.open else { return };
        let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The whole answer to a connection over its address's cap: sent without
/// waiting (a fresh socket's buffer has room; if not, the client just sees
/// the close), then the connection is dropped.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Retry-After: 1\r\nConnection: close\r\nContent-Length: 148\r\n\r\n\
{\"response_code\":\"503\",\"response_description\":\"Service Unavailable\",\
\"detail\":\"too many connections from this address (http.max_connections_per_ip)\"}";

fn refuse_connection(stream: &TcpStream, app: &App, peer: SocketAddr) {
    let _ = stream.try_write(OVER_CAP);
    app.metrics.http_connection_refused();
    tracing::debug!(%peer, "connection refused: http.max_connections_per_ip");
}

async fn route(front: &Frontend, port: Port, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    let app = front.app.as_ref();
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let client = client_ip(peer.ip(), req.headers(), &app.config.http.trusted_proxies);
    let is_ops = path == "/healthz" || path == "/metrics";
    let (route, response) = match path.as_str() {
        // Each listener serves its own paths only.
        _ if port == Port::Ops && !is_ops => ("other", seed_error(StatusCode::NOT_FOUND)),
        "/healthz" | "/metrics" if port == Port::Api && front.ops_apart => ("other", seed_error(StatusCode::NOT_FOUND)),
        "/outbound.cgi" => (
            "/outbound.cgi",
            match method {
                Method::GET | Method::POST => outbound::handle(app, req, client).await,
                _ => with_allow(seed_error(StatusCode::METHOD_NOT_ALLOWED), "GET, POST"),
            },
        ),
        "/healthz" | "/metrics" if method != Method::GET && method != Method::HEAD => (
            if path == "/healthz" { "/healthz" } else { "/metrics" },
            with_allow(problem::problem(StatusCode::METHOD_NOT_ALLOWED, "use GET", None), "GET"),
        ),
        "/healthz" => ("/healthz", ops::healthz(app, &front.health).await),
        "/metrics" => ("/metrics", ops::metrics(app).await),
        openapi::PATH => (openapi::PATH, openapi::handle(&method)),
        other if other.starts_with("/v1/verifications") => match verifications::Endpoint::parse(other) {
            Some(endpoint) => (endpoint.route(), verifications::handle(app, endpoint, req, client).await),
            None => ("other", problem::problem(StatusCode::NOT_FOUND, "no such endpoint", None)),
        },
        other => match api::Endpoint::parse(other) {
            Some(endpoint) => (endpoint.route(), api::handle(app, endpoint, req, client).await),
            None if other.starts_with("/v1/") => {
                ("other", problem::problem(StatusCode::NOT_FOUND, "no such endpoint", None))
            }
            None => ("other", seed_error(StatusCode::NOT_FOUND)),
        },
    };
    let status = response.status().as_u16();
    app.metrics.http_request(method.as_str(), route, status, started.elapsed().as_secs_f64());
    tracing::info!(%peer, %method, path = %truncate(&path, 100), status, "http request");
    response
}

/// Why a request body could not be read; each front end words its reply.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the configured limit (bytes).
    #[error("the body may be at most {0} bytes")]
    TooLarge(usize),
    /// The connection failed mid-body.
    #[error("the body could not be read")]
    Unreadable,
    /// Slower than the body timeout.
    #[error("the body took too long")]
    Timeout,
}

impl BodyError {
    /// The HTTP status for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Unreadable => StatusCode::BAD_REQUEST,
            BodyError::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// True if the request's `Content-Type` is `media_type` (parameters such as
/// `charset` ignored, case-insensitive).
fn has_media_type<B>(req: &Request<B>, media_type: &str) -> bool {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(media_type))
}

/// Reads a whole request body, at most `[http] max_body_bytes`, within
/// `body_timeout_secs`.
async fn read_body(req: Request<Incoming>, http: &HttpConfig) -> Result<Bytes, BodyError> {
    let (limit, timeout) = (http.max_body_bytes, Duration::from_secs(http.body_timeout_secs));
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(BodyError::TooLarge(limit)),
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Err(_) => Err(BodyError::Timeout),
    }
}

/// The seed API's body: `{"response_code":"200","response_description":"OK",...}`.
///
/// `response_description` is exactly the status's reason phrase, as the
/// seed's error table pairs them (`400` "Bad Request", `401`
/// "Unauthorized"): a client written for the seed's service may compare it
/// verbatim. What exactly went wrong is in fields of its own.
#[derive(Serialize)]
struct SeedBody<'a> {
    response_code: String,
    response_description: &'a str,
    /// What exactly went wrong, e.g. `code must be 4 to 20 digits long`.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_id: Option<&'a str>,
}

fn seed_body(status: StatusCode, detail: Option<&str>, field: Option<&str>, call_id: Option<&str>) -> HttpResponse {
    let body = SeedBody {
        response_code: status.as_u16().to_string(),
        response_description: status.canonical_reason().unwrap_or("Error"),
        detail,
        field,
        call_id,
    };
    json(status, &body)
}

/// The seed API's success: 200 `OK` with the new call's id.
pub fn seed_accepted(call_id: &str) -> HttpResponse {
    seed_body(StatusCode::OK, None, None, Some(call_id))
}

/// A seed-shaped error with nothing to add to its status (401, 404, 405).
pub fn seed_error(status: StatusCode) -> HttpResponse {
    seed_body(status, None, None, None)
}

/// A seed-shaped error saying what exactly is wrong and, if it is one
/// field, which.
pub fn seed_detail(status: StatusCode, detail: &str, field: Option<&str>) -> HttpResponse {
    seed_body(status, Some(detail), field, None)
}

/// The HTTP status of a kind of refusal.
pub fn refusal_status(kind: RefusalKind) -> StatusCode {
    match kind {
        RefusalKind::TooMany => StatusCode::TOO_MANY_REQUESTS,
        RefusalKind::Forbidden => StatusCode::FORBIDDEN,
        RefusalKind::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The seed-shaped reply to a request a limit refused: 429 or 503 with
/// `Retry-After` (whole seconds, rounded up), or 403; the refusal's detail
/// in `detail`.
pub fn refusal_reply(refusal: &Refusal) -> HttpResponse {
    let resp = seed_detail(refusal_status(refusal.kind), &refusal.detail, None);
    match refusal.retry_after {
        Some(wait) => with_retry_after(resp, wait),
        None => resp,
    }
}

/// Adds `Retry-After` in whole seconds, rounded up and at least 1 (0 would
/// invite an immediate retry that is refused again).
fn with_retry_after(mut resp: HttpResponse, retry_after: Duration) -> HttpResponse {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

/// The client a request came from: the TCP peer, unless that is a trusted
/// proxy, in which case the nearest address in `X-Forwarded-For` that is
/// not itself a trusted proxy (addresses further left are the client's
/// say-so and could be forged).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpAddr]) -> IpAddr {
    let peer = peer.to_canonical();
    let trusted = |ip: &IpAddr| trusted_proxies.contains(&ip.to_canonical());
    if !trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else { return peer };
        hops.extend(value.split(','));
    }
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted(&ip) => continue,
            Ok(ip) => return ip.to_canonical(),
            // A hop we cannot read: the chain is not trustworthy past it.
            Err(_) => return peer,
        }
    }
    peer
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> HttpResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn with_allow(mut resp: HttpResponse, allow: &'static str) -> HttpResponse {
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn the_over_cap_answer_is_a_well_formed_response() {
        let text = std::str::from_utf8(OVER_CAP).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["response_description"], "Service Unavailable");
    }

    #[test]
    fn per_ip_slots_are_counted_by_bucket_and_given_back() {
        let http = HttpConfig { max_connections_per_ip: 2, ..HttpConfig::default() };
        let per_ip = PerIp::default();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let first = per_ip.take(a, &http).unwrap();
        let _second = per_ip.take(b, &http).unwrap();
        assert!(per_ip.take(a, &http).is_none(), "one /64 is one address");
        assert!(per_ip.take("192.0.2.1".parse().unwrap(), &http).is_some());
        drop(first);
        assert!(per_ip.take(b, &http).is_some());
        let proxied = HttpConfig { trusted_proxies: vec![a], ..http.clone() };
        assert!((0..10).all(|_| per_ip.take(a, &proxied).is_some()), "a trusted proxy is not capped");
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.5".parse().unwrap();
        let trusted = [proxy];
        // No trusted proxy: the header is ignored.
        assert_eq!(client_ip(client, &forwarded(&["198.51.100.1"]), &trusted), client);
        assert_eq!(client_ip(proxy, &forwarded(&["203.0.113.5"]), &[]), proxy);
        // The rightmost untrusted hop wins; a forged left part is ignored.
        assert_eq!(client_ip(proxy, &forwarded(&["1.2.3.4, 203.0.113.5"]), &trusted), client);
        assert_eq!(client_ip(proxy, &forwarded(&["1.2.3.4", "203.0.113.5, 10.0.0.1"]), &trusted), client);
        // Garbage or no header: the proxy itself.
        assert_eq!(client_ip(proxy, &forwarded(&["nonsense"]), &trusted), proxy);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(mapped, &forwarded(&["203.0.113.5"]), &trusted), client);
    }

    async fn body(resp: HttpResponse) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn refusals_become_429_with_retry_after_or_403() {
        let resp = refusal_reply(&Refusal::too_many("x (limits.y)", Duration::from_millis(1500)));
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[RETRY_AFTER], "2");
        assert_eq!(
            body(resp).await,
            serde_json::json!({"response_code": "429", "response_description": "Too Many Requests", "detail": "x (limits.y)"})
        );
        let resp = refusal_reply(&Refusal::too_many("x", Duration::ZERO));
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        let resp = refusal_reply(&Refusal::forbidden("z"));
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers().get(RETRY_AFTER).is_none());
        assert_eq!(body(resp).await["response_description"], "Forbidden");
        let resp = refusal_reply(&Refusal::queue_full("q", Duration::from_secs(30)));
        assert_eq!(
            (resp.status(), &resp.headers()[RETRY_AFTER]),
            (StatusCode::SERVICE_UNAVAILABLE, &HeaderValue::from(30))
        );
    }

    #[tokio::test]
    async fn seed_descriptions_are_exactly_the_reason_phrases() {
        assert_eq!(
            body(seed_detail(StatusCode::BAD_REQUEST, "code is required", Some("code"))).await,
            serde_json::json!({"response_code": "400", "response_description": "Bad Request", "detail": "code is required", "field": "code"})
        );
        assert_eq!(
            body(seed_error(StatusCode::UNAUTHORIZED)).await,
            serde_json::json!({"response_code": "401", "response_description": "Unauthorized"})
        );
        assert_eq!(
            body(seed_accepted("abc")).await,
            serde_json::json!({"response_code": "200", "response_description": "OK", "call_id": "abc"})
        );
    }
}
