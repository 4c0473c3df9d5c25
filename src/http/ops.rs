//! Operations endpoints, unauthenticated (keep the HTTP listener private or
//! filter these paths at the proxy): `GET /healthz` and `GET /metrics`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;

use super::{HttpResponse, json};
use crate::daemon::App;
use crate::metrics::Snapshot;

/// A health check that takes longer than this counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct Health {
    /// `ok` or `unavailable`.
    status: &'static str,
    /// Each part: `up` or `down`.
    checks: Checks,
    /// The parts that are down, for a quick read.
    down: Vec<&'static str>,
}

#[derive(Serialize)]
struct Checks {
    ami: &'static str,
    fastagi: &'static str,
    database: &'static str,
}

/// 200 when the AMI link is logged in, the FastAGI listener is serving and
/// the database takes a write; 503 naming what is down otherwise.
pub(super) async fn healthz(app: &App) -> HttpResponse {
    let ami = app.ami.is_connected();
    let agi = app.agi_listening.load(Ordering::Relaxed);
    let db = match tokio::time::timeout(CHECK_TIMEOUT, app.db.run(|s| s.probe_write())).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: database write failed");
            false
        }
        Err(_) => {
            tracing::warn!("health check: database write timed out");
            false
        }
    };
    let word = |up: bool| if up { "up" } else { "down" };
    let down: Vec<&'static str> =
        [("ami", ami), ("fastagi", agi), ("database", db)].into_iter().filter(|(_, up)| !up).map(|(n, _)| n).collect();
    let status = if down.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Health {
        status: if down.is_empty() { "ok" } else { "unavailable" },
        checks: Checks { ami: word(ami), fastagi: word(agi), database: word(db) },
        down,
    };
    let mut resp = json(status, &body);
    resp.headers_mut().insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Every metric, OpenMetrics text.
pub(super) async fn metrics(app: &App) -> HttpResponse {
    let stored = app.db.run(|s| Ok((s.call_counts()?, s.pending_deliveries()?))).await;
    let (calls, webhooks_pending) = stored.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "metrics: database unreadable; call gauges left empty");
        (Vec::new(), 0)
    });
    let snap = Snapshot {
        calls,
        ami_connected: app.ami.is_connected(),
        ami_reconnects: app.ami.reconnects(),
        ami_oversized_messages: app.ami.oversized_messages(),
        agi_sessions: app.live.count(),
        webhooks_pending,
    };
    let text = app.metrics.render(&snap);
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    resp
}
