//! HTTP front end (hyper 1, HTTP/1.1): accept loop, routing, JSON replies.
//!
//! - `outbound`: the seed API, `/outbound.cgi`;
//! - `api`: the JSON API, `/v1/calls...`, with `problem` (RFC 9457 replies,
//!   Basic credentials);
//! - `intake`: checking and placing a new call, shared by both;
//! - `ops`: `/healthz` and `/metrics`;
//! - `params`: form/query fields.
//!
//! Request logs carry method, path and status only: the seed API puts the
//! password and the code in the query string, so a URI is never logged whole.

mod api;
pub mod intake;
mod ops;
mod outbound;
mod params;
mod problem;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::daemon::App;

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// How long a client may take to send its request head (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line + headers) accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a client may take to send the body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown`, then lets requests in
/// flight finish.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
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
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, req, peer).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
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
    tracker.close();
    tracker.wait().await;
}

async fn route(app: &App, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (route, response) = match path.as_str() {
        "/outbound.cgi" => (
            "/outbound.cgi",
            match method {
                Method::GET | Method::POST => outbound::handle(app, req).await,
                _ => with_allow(seed_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"), "GET, POST"),
            },
        ),
        "/healthz" | "/metrics" if method != Method::GET && method != Method::HEAD => (
            if path == "/healthz" { "/healthz" } else { "/metrics" },
            with_allow(problem::problem(StatusCode::METHOD_NOT_ALLOWED, "use GET", None), "GET"),
        ),
        "/healthz" => ("/healthz", ops::healthz(app).await),
        "/metrics" => ("/metrics", ops::metrics(app).await),
        other => match api::Endpoint::parse(other) {
            Some(endpoint) => (endpoint.route(), api::handle(app, endpoint, req).await),
            None if other.starts_with("/v1/") => ("other", problem::problem(StatusCode::NOT_FOUND, "no such endpoint", None)),
            None => ("other", seed_error(StatusCode::NOT_FOUND, "Not Found")),
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

/// Reads a whole request body, at most `limit` bytes, within the body timeout.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(BodyError::TooLarge(limit)),
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Err(_) => Err(BodyError::Timeout),
    }
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
