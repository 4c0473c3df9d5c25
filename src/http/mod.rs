//! HTTP front end (hyper 1, HTTP/1.1): accept loop, routing, JSON replies.
//!
//! Request logs carry method, path and status only: the seed API puts the
//! password and the code in the query string, so a URI is never logged whole.

mod outbound;
mod params;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
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
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match path.as_str() {
        "/outbound.cgi" => match method {
            Method::GET | Method::POST => outbound::handle(app, req).await,
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
