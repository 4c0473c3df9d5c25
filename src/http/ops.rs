//! Operations endpoints, unauthenticated (keep the HTTP listener private or
//! filter these paths at the proxy): `GET /healthz` and `GET /metrics`.
//!
//! Both are cheap whatever the history and however often they are asked: a
//! scrape reads a few rows of counts kept by triggers, and `/healthz` writes
//! its database probe at most once per [`PROBE_EVERY`], answering the
//! requests in between from the last result, so a loop on either cannot
//! crowd the database thread that calls wait on.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

// Tokio's clock: the same as std's, but a test can pause and advance it.
use tokio::time::Instant;

use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;

use super::App;
use super::{HttpResponse, json};
use crate::metrics::{ServerSnapshot, Snapshot};
use crate::store::ScrapeCounts;

/// A health check that takes longer than this counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The database probe (one small write) runs at most this often.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The last database probe's verdict and when it was taken.
#[derive(Default)]
pub(super) struct HealthProbe {
    /// Async, and held across the probe: concurrent health checks wait for
    /// the one probe in flight instead of each starting their own.
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl HealthProbe {
    /// The last verdict if younger than [`PROBE_EVERY`], else `probe`'s.
    pub(super) async fn up<F, Fut>(&self, probe: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, up)) = *last
            && at.elapsed() < PROBE_EVERY
        {
            return up;
        }
        let up = probe().await;
        *last = Some((Instant::now(), up));
        up
    }
}

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
    /// `up` while at least one Asterisk server's AMI link is logged in.
    ami: &'static str,
    fastagi: &'static str,
    database: &'static str,
    /// Each configured Asterisk server by name: `up` or `down`.
    asterisk: BTreeMap<String, &'static str>,
}

/// 200 when at least one Asterisk server's AMI link is logged in (calls
/// can be placed: the others' share goes to it), the FastAGI listener is
/// serving and the database takes a write (probed at most once per
/// [`PROBE_EVERY`]); 503 naming what is down otherwise. Which servers are
/// up is in `checks.asterisk` either way.
pub(super) async fn healthz(app: &App, probe: &HealthProbe) -> HttpResponse {
    let word = |up: bool| if up { "up" } else { "down" };
    // Each link read once: `ami` is what the per-server map says, never a
    // second look that a link change in between would contradict.
    let links: Vec<(String, bool)> = app.servers.iter().map(|s| (s.name.clone(), s.ami.is_connected())).collect();
    let ami = links.iter().any(|(_, up)| *up);
    let asterisk: BTreeMap<String, &'static str> = links.into_iter().map(|(name, up)| (name, word(up))).collect();
    let agi = app.agi_listening.load(Ordering::Relaxed);
    let db = probe.up(|| database_takes_a_write(app)).await;
    let down: Vec<&'static str> =
        [("ami", ami), ("fastagi", agi), ("database", db)].into_iter().filter(|(_, up)| !up).map(|(n, _)| n).collect();
    let status = if down.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Health {
        status: if down.is_empty() { "ok" } else { "unavailable" },
        checks: Checks { ami: word(ami), fastagi: word(agi), database: word(db), asterisk },
        down,
    };
    let mut resp = json(status, &body);
    resp.headers_mut().insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn database_takes_a_write(app: &App) -> bool {
    match tokio::time::timeout(CHECK_TIMEOUT, app.db.run(|s| s.probe_write())).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: database write failed");
            false
        }
        Err(_) => {
            tracing::warn!("health check: database write timed out");
            false
        }
    }
}

/// Every metric, OpenMetrics text.
pub(super) async fn metrics(app: &App) -> HttpResponse {
    let counts = app.db.run(|s| s.scrape_counts()).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "metrics: database unreadable; call gauges left empty");
        ScrapeCounts::default()
    });
    let ScrapeCounts { calls, webhooks_pending } = counts;
    // Only the configured names become labels; calls naming another server
    // (renamed since, or dialled before there were several) are left out.
    let in_flight = app.db.run(|s| s.in_flight_by_server()).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "metrics: database unreadable; per-server calls left at 0");
        Vec::new()
    });
    let servers: Vec<ServerSnapshot> = app
        .servers
        .iter()
        .map(|s| ServerSnapshot {
            name: s.name.clone(),
            up: s.ami.is_connected(),
            in_flight: in_flight.iter().find(|(n, _)| n.as_deref() == Some(s.name.as_str())).map_or(0, |r| r.1),
            capacity: u64::from(s.max_concurrent_calls),
        })
        .collect();
    // From the same reads as the per-server gauges, so the two agree.
    let ami_connected = servers.iter().any(|s| s.up);
    let snap = Snapshot {
        servers,
        calls,
        ami_connected,
        ami_reconnects: app.servers.iter().map(|s| s.ami.reconnects()).sum(),
        ami_oversized_messages: app.servers.iter().map(|s| s.ami.oversized_messages()).sum(),
        agi_sessions: app.live.count(),
        webhooks_pending,
    };
    let text = app.metrics.render(&snap);
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    // Paused time: a slow machine's stall is not "a second later".
    #[tokio::test(start_paused = true)]
    async fn the_database_is_probed_at_most_once_per_interval() {
        let probe = Arc::new(HealthProbe::default());
        let probes = Arc::new(AtomicUsize::new(0));
        let check = |probe: Arc<HealthProbe>, probes: Arc<AtomicUsize>| async move {
            probe
                .up(|| async {
                    probes.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    true
                })
                .await
        };
        // A burst, concurrent and then in a row: one probe.
        let burst: Vec<_> = (0..50).map(|_| tokio::spawn(check(probe.clone(), probes.clone()))).collect();
        for b in burst {
            assert!(b.await.unwrap());
        }
        for _ in 0..50 {
            assert!(check(probe.clone(), probes.clone()).await);
        }
        assert_eq!(probes.load(Ordering::Relaxed), 1);
        tokio::time::sleep(PROBE_EVERY).await;
        assert!(check(probe.clone(), probes.clone()).await);
        assert_eq!(probes.load(Ordering::Relaxed), 2, "a new probe once the last is a second old");
    }
}
