//! HTTP front end (hyper 1, HTTP/1.1): accept loop, routing, JSON replies.
//!
//! Request logs carry method, path and status only: the seed API puts the
//! password and the code in the query string, so a URI is never logged whole.
//!
//! Limits against slow or greedy clients: at most `[http] max_connections`
//! connections at once (the rest wait in the kernel's queue), a request head
//! of at most 16 KiB arriving within `header_timeout_secs` (which also ends
//! idle keep-alive connections), a body within `max_body_bytes` and
//! `body_timeout_secs`.

mod outbound;
mod params;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::daemon::App;
use crate::limits::Refusal;

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// Largest request head (request line + headers) accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves the API on `listener` until `shutdown`, then lets requests in
/// flight finish.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let connections = Arc::new(Semaphore::new(app.config.http.max_connections));
    let header_timeout = Duration::from_secs(app.config.http.header_timeout_secs);
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
        let app = app.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, req, peer).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
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
    // Closed now, not when the drain below ends: new clients must be
    // refused at once rather than queue for a server that will not answer.
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

async fn route(app: &App, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match path.as_str() {
        "/outbound.cgi" => match method {
            Method::GET | Method::POST => {
                let client = client_ip(peer.ip(), req.headers(), &app.config.http.trusted_proxies);
                outbound::handle(app, req, client).await
            }
            _ => with_allow(seed_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"), "GET, POST"),
        },
        _ => seed_error(StatusCode::NOT_FOUND, "Not Found"),
    };
    tracing::info!(%peer, %method, path = %truncate(&path, 100), status = response.status().as_u16(), "http request");
    response
}

/// The seed API's body: `{"response_code":"200","response_description":"OK",...}`.
#[derive(Serialize)]
struct SeedBody<'a> {
    response_code: String,
    response_description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_id: Option<&'a str>,
}

/// A seed-shaped JSON reply whose HTTP status equals `response_code`.
pub fn seed_reply(status: StatusCode, description: &str, call_id: Option<&str>) -> HttpResponse {
    let body = SeedBody { response_code: status.as_u16().to_string(), response_description: description, call_id };
    json(status, &body)
}

/// A seed-shaped error reply.
pub fn seed_error(status: StatusCode, description: &str) -> HttpResponse {
    seed_reply(status, description, None)
}

/// The seed-shaped reply to a request a limit refused: 429 with
/// `Retry-After` (whole seconds, rounded up), or 403.
pub fn refusal_reply(refusal: &Refusal) -> HttpResponse {
    match refusal {
        Refusal::TooMany { description, retry_after } => {
            let mut resp = seed_error(StatusCode::TOO_MANY_REQUESTS, description);
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
            resp
        }
        Refusal::Forbidden { description } => seed_error(StatusCode::FORBIDDEN, description),
    }
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

    #[test]
    fn refusals_become_429_with_retry_after_or_403() {
        let resp = refusal_reply(&Refusal::TooMany {
            description: "Too Many Requests: x (limits.y)".into(),
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[RETRY_AFTER], "2");
        let resp = refusal_reply(&Refusal::TooMany { description: "x".into(), retry_after: Duration::ZERO });
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        let resp = refusal_reply(&Refusal::Forbidden { description: "Forbidden: z".into() });
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers().get(RETRY_AFTER).is_none());
    }
}
