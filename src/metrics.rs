//! Prometheus metrics (the `prometheus-client` crate), served at
//! `GET /metrics` in the OpenMetrics text format.
//!
//! Counters and histograms are updated as things happen (HTTP requests,
//! webhook attempts, calls reaching a final status); gauges that mirror
//! state owned elsewhere (calls in the database, the AMI link, live FastAGI
//! sessions, pending webhooks) are set from a [`Snapshot`] taken at scrape
//! time, so they can never drift. The configured capacities
//! ([`Capacity`]) are set once at start, so alert rules can compare usage
//! with them.
//!
//! Every label value comes from a fixed set ([`method_label`],
//! [`status_label`], route templates), never from the request as sent: a
//! client inventing methods must not be able to add series (memory, and
//! scrape size) without bound.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Method: one of [`METHODS`], else `other`.
    pub method: String,
    /// The route template (`/v1/calls/{id}`), never the raw path.
    pub route: String,
    /// Response status: one of [`STATUSES`], else its class (`4xx`, ...).
    pub status: String,
}

/// Methods counted under their own name (RFC 9110's and PATCH).
pub const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// Statuses the handlers answer with, counted under their own code.
pub const STATUSES: [u16; 17] = [200, 201, 202, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 431, 500, 503];

/// The `method` label of a request method: itself if standard, else `other`.
pub fn method_label(method: &str) -> &'static str {
    METHODS.iter().find(|m| **m == method).copied().unwrap_or("other")
}

/// The `status` label of a status code: itself if one of [`STATUSES`], else
/// its class (`1xx` .. `5xx`, `other` outside 100-599).
pub fn status_label(status: u16) -> String {
    if STATUSES.contains(&status) {
        return status.to_string();
    }
    match status {
        100..=599 => format!("{}xx", status / 100),
        _ => "other".to_owned(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    status: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// Labels of a call that reached a final status. `&'static str` only: the
/// values are the domain's own names, never anything a request sent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    status: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnsweredLabels {
    answered: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

/// Webhook attempt outcomes, each series there from the start (at 0), so a
/// rule on "nothing delivered" sees a 0 rather than no series at all.
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "failed", "gave_up"];

/// Upper bounds (seconds) of the ring-time buckets: up to the longest
/// `dial.ring_timeout_secs` (300).
const RING_BUCKETS: [f64; 11] = [1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, 300.0];

/// Upper bounds (seconds) of the talk-time buckets: a reading of the code
/// takes some 10-20 s, a callee pressing 1 many times a minute or two.
const TALK_BUCKETS: [f64; 11] = [2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0];

/// A call that just reached its final status, as the metrics see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallEnded {
    /// The final status (`completed`, `failed`, `expired`, `canceled`).
    pub status: &'static str,
    /// The reason of a failed call; `""` otherwise.
    pub reason: &'static str,
    /// The call's mode (`read`, `enter`).
    pub mode: &'static str,
    /// How long the phone rang (from `Ringing` to answer or end), if it did.
    pub ring_secs: Option<f64>,
    /// Whether the callee answered.
    pub answered: bool,
    /// How long the call was connected, if it was answered.
    pub talk_secs: Option<f64>,
}

impl CallEnded {
    /// A call that ended as `status` without ever being dialled (expired in
    /// the queue): no ring, no talk.
    pub fn undialled(status: &'static str) -> CallEnded {
        CallEnded { status, reason: "", mode: "", ring_secs: None, answered: false, talk_secs: None }
    }
}

/// The configured maximums, exported so rules can compare usage with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// `[agi] max_sessions`.
    pub agi_max_sessions: u64,
    /// Calls in flight at most: every Asterisk server's
    /// `max_concurrent_calls` together (`[queue] max_concurrent_calls` in
    /// the single-server form).
    pub max_concurrent_calls: u64,
    /// `[queue] max_queued`.
    pub max_queued: u64,
}

/// Why a FastAGI session was hung up with nothing played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusedSession {
    /// `agi_uniqueid` is not a call id of ours.
    NotOurs,
    /// No call has that id.
    UnknownCall,
    /// The channel carries no FastAGI token.
    NoToken,
    /// The token is not the one this call's Originate carried.
    WrongToken,
    /// The call was never dialled or is over.
    NotInFlight,
    /// Another session already serves the call.
    Duplicate,
}

impl RefusedSession {
    /// Every reason, so each series exists from the start (at 0).
    pub const ALL: [RefusedSession; 6] = [
        RefusedSession::NotOurs,
        RefusedSession::UnknownCall,
        RefusedSession::NoToken,
        RefusedSession::WrongToken,
        RefusedSession::NotInFlight,
        RefusedSession::Duplicate,
    ];

    /// The label value and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedSession::NotOurs => "not_ours",
            RefusedSession::UnknownCall => "unknown_call",
            RefusedSession::NoToken => "no_token",
            RefusedSession::WrongToken => "wrong_token",
            RefusedSession::NotInFlight => "not_in_flight",
            RefusedSession::Duplicate => "duplicate",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

/// One Asterisk server at scrape time. Its name is a configured
/// `[[asterisk]] name`, never a value from the wire or the database, so
/// the `server` label has as many values as the config has entries.
#[derive(Debug, Clone, Default)]
pub struct ServerSnapshot {
    /// The configured name.
    pub name: String,
    /// Its AMI link is logged in.
    pub up: bool,
    /// Calls in flight on it.
    pub in_flight: u64,
    /// Its `max_concurrent_calls`.
    pub capacity: u64,
}

/// State read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Each configured Asterisk server.
    pub servers: Vec<ServerSnapshot>,
    /// Stored calls per (status, reason).
    pub calls: Vec<(String, Option<String>, u64)>,
    /// At least one AMI link logged in.
    pub ami_connected: bool,
    /// AMI reconnects since start, all servers together.
    pub ami_reconnects: u64,
    /// AMI messages skipped for their size since start.
    pub ami_oversized_messages: u64,
    /// FastAGI sessions reading a code.
    pub agi_sessions: usize,
    /// Webhook deliveries waiting.
    pub webhooks_pending: u64,
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    webhook_attempts: Family<OutcomeLabels, Counter>,
    http_connections_refused: Counter,
    calls: Family<CallLabels, Gauge>,
    ami_connected: Gauge,
    ami_reconnects: Counter,
    ami_oversized: Counter,
    asterisk_up: Family<ServerLabels, Gauge>,
    asterisk_in_flight: Family<ServerLabels, Gauge>,
    asterisk_capacity: Family<ServerLabels, Gauge>,
    agi_sessions: Gauge,
    webhooks_pending: Gauge,
    agi_refused: Family<ReasonLabels, Counter>,
    calls_ended: Family<EndLabels, Counter>,
    ring_duration: Family<AnsweredLabels, Histogram>,
    talk_duration: Family<ModeLabels, Histogram>,
    agi_max_sessions: Gauge,
    max_concurrent_calls: Gauge,
    max_queued: Gauge,
    /// Scrapes update gauges then encode; one at a time.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `voice_otp_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("voice_otp");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by method, route and status", http_requests.clone());
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by route",
            prometheus_client::registry::Unit::Seconds,
            http_duration.clone(),
        );
        let webhook_attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts by outcome (delivered, failed = will retry, gave_up)",
            webhook_attempts.clone(),
        );
        let http_connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at once: their address had http.max_connections_per_ip open",
            http_connections_refused.clone(),
        );
        let calls = Family::<CallLabels, Gauge>::default();
        registry.register("calls", "Calls on record by status and reason (reason empty unless failed)", calls.clone());
        let ami_connected = Gauge::default();
        registry.register(
            "ami_connected",
            "1 while at least one Asterisk server's AMI link is logged in",
            ami_connected.clone(),
        );
        let ami_reconnects = Counter::default();
        registry.register(
            "ami_reconnects",
            "AMI links re-established after their first login, all servers together",
            ami_reconnects.clone(),
        );
        let asterisk_up = Family::<ServerLabels, Gauge>::default();
        registry.register("asterisk_up", "1 while this Asterisk server's AMI link is logged in", asterisk_up.clone());
        let asterisk_in_flight = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "asterisk_calls_in_flight",
            "Calls dialing, ringing or answered on this Asterisk server",
            asterisk_in_flight.clone(),
        );
        let asterisk_capacity = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "asterisk_capacity",
            "Calls this Asterisk server may carry at once (its max_concurrent_calls)",
            asterisk_capacity.clone(),
        );
        let ami_oversized = Counter::default();
        registry.register(
            "ami_oversized_messages",
            "AMI messages larger than the frame bound, skipped with the link kept",
            ami_oversized.clone(),
        );
        let agi_sessions = Gauge::default();
        registry.register("agi_sessions_active", "FastAGI sessions reading a code now", agi_sessions.clone());
        let webhooks_pending = Gauge::default();
        registry.register(
            "webhooks_pending",
            "Webhook deliveries not yet delivered nor given up",
            webhooks_pending.clone(),
        );
        let agi_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "agi_sessions_refused",
            "FastAGI sessions hung up with nothing played, by reason (impostors, stale or duplicate sessions)",
            agi_refused.clone(),
        );
        for why in RefusedSession::ALL {
            let _ = agi_refused.get_or_create(&ReasonLabels { reason: why.as_str() });
        }
        for outcome in WEBHOOK_OUTCOMES {
            let _ = webhook_attempts.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() });
        }
        let calls_ended = Family::<EndLabels, Counter>::default();
        registry.register(
            "calls_ended",
            "Calls that reached a final status since start, by status and reason (reason empty unless failed)",
            calls_ended.clone(),
        );
        let ring_duration = Family::<AnsweredLabels, Histogram>::new_with_constructor(|| Histogram::new(RING_BUCKETS));
        registry.register_with_unit(
            "call_ring_duration",
            "How long ended calls rang (from Ringing to answer or end), by whether they were answered",
            prometheus_client::registry::Unit::Seconds,
            ring_duration.clone(),
        );
        let talk_duration = Family::<ModeLabels, Histogram>::new_with_constructor(|| Histogram::new(TALK_BUCKETS));
        registry.register_with_unit(
            "call_talk_duration",
            "How long ended calls were connected (from answer to end), by mode",
            prometheus_client::registry::Unit::Seconds,
            talk_duration.clone(),
        );
        for answered in ["true", "false"] {
            let _ = ring_duration.get_or_create(&AnsweredLabels { answered });
        }
        let agi_max_sessions = Gauge::default();
        registry.register("agi_max_sessions", "The configured [agi] max_sessions", agi_max_sessions.clone());
        let max_concurrent_calls = Gauge::default();
        registry.register(
            "queue_max_concurrent_calls",
            "Calls in flight at most: every Asterisk server's max_concurrent_calls together",
            max_concurrent_calls.clone(),
        );
        let max_queued = Gauge::default();
        registry.register(
            "queue_max_queued",
            "The configured [queue] max_queued (calls waiting at most)",
            max_queued.clone(),
        );
        Metrics {
            registry,
            agi_refused,
            http_requests,
            http_duration,
            webhook_attempts,
            http_connections_refused,
            calls,
            ami_connected,
            ami_reconnects,
            ami_oversized,
            asterisk_up,
            asterisk_in_flight,
            asterisk_capacity,
            agi_sessions,
            webhooks_pending,
            calls_ended,
            ring_duration,
            talk_duration,
            agi_max_sessions,
            max_concurrent_calls,
            max_queued,
            scrape: Mutex::new(()),
        }
    }

    /// Sets the configured maximums (once, at start).
    pub fn set_capacity(&self, c: Capacity) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.agi_max_sessions.set(gauge(c.agi_max_sessions));
        self.max_concurrent_calls.set(gauge(c.max_concurrent_calls));
        self.max_queued.set(gauge(c.max_queued));
    }

    /// Creates the `calls_ended` series of (`status`, `reason`) at 0, so
    /// ratios and `increase()` see the first call of every kind.
    pub fn declare_call_end(&self, status: &'static str, reason: &'static str) {
        let _ = self.calls_ended.get_or_create(&EndLabels { status, reason });
    }

    /// Creates the talk-time series of `mode`, empty.
    pub fn declare_mode(&self, mode: &'static str) {
        let _ = self.talk_duration.get_or_create(&ModeLabels { mode });
    }

    /// Counts a call that just reached its final status; its ring and talk
    /// times go to their histograms. Called once per call, by whoever moved
    /// it to its final status.
    pub fn call_ended(&self, end: CallEnded) {
        self.calls_ended.get_or_create(&EndLabels { status: end.status, reason: end.reason }).inc();
        if let Some(secs) = end.ring_secs {
            let answered = if end.answered { "true" } else { "false" };
            self.ring_duration.get_or_create(&AnsweredLabels { answered }).observe(secs);
        }
        if let Some(secs) = end.talk_secs {
            self.talk_duration.get_or_create(&ModeLabels { mode: end.mode }).observe(secs);
        }
    }

    /// Counts one answered HTTP request.
    pub fn http_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let labels = HttpLabels {
            method: method_label(method).to_owned(),
            route: route.to_owned(),
            status: status_label(status),
        };
        self.http_requests.get_or_create(&labels).inc();
        self.http_duration.get_or_create(&RouteLabels { route: route.to_owned() }).observe(seconds);
    }

    /// Counts one FastAGI session refused.
    pub fn agi_session_refused(&self, why: RefusedSession) {
        self.agi_refused.get_or_create(&ReasonLabels { reason: why.as_str() }).inc();
    }

    /// Counts one connection refused for its address's cap.
    pub fn http_connection_refused(&self) {
        self.http_connections_refused.inc();
    }

    /// Counts one webhook attempt.
    pub fn webhook_attempt(&self, outcome: &str) {
        self.webhook_attempts.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
    }

    /// Sets the state gauges from `snap` and encodes everything.
    pub fn render(&self, snap: &Snapshot) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.calls.clear();
        for (status, reason, n) in &snap.calls {
            let labels = CallLabels { status: status.clone(), reason: reason.clone().unwrap_or_default() };
            self.calls.get_or_create(&labels).set(*n as i64);
        }
        self.ami_connected.set(i64::from(snap.ami_connected));
        for server in &snap.servers {
            let labels = ServerLabels { server: server.name.clone() };
            self.asterisk_up.get_or_create(&labels).set(i64::from(server.up));
            self.asterisk_in_flight.get_or_create(&labels).set(server.in_flight as i64);
            self.asterisk_capacity.get_or_create(&labels).set(server.capacity as i64);
        }
        let seen = self.ami_reconnects.get();
        if snap.ami_reconnects > seen {
            self.ami_reconnects.inc_by(snap.ami_reconnects - seen);
        }
        let seen = self.ami_oversized.get();
        if snap.ami_oversized_messages > seen {
            self.ami_oversized.inc_by(snap.ami_oversized_messages - seen);
        }
        self.agi_sessions.set(snap.agi_sessions as i64);
        self.webhooks_pending.set(snap.webhooks_pending as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_fixed_sets() {
        let m = Metrics::new();
        for i in 0..300 {
            m.http_request(&format!("XYZ{i}"), "/healthz", 405, 0.001);
            m.http_request("GET", "/healthz", 600 + i, 0.001);
        }
        m.http_request("GET", "/healthz", 418, 0.001);
        let text = m.render(&Snapshot::default());
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("voice_otp_http_requests_total{")).collect();
        assert_eq!(series.len(), 3, "{series:#?}");
        assert!(text.contains("method=\"other\",route=\"/healthz\",status=\"405\"} 300"), "{text}");
        assert!(text.contains("method=\"GET\",route=\"/healthz\",status=\"other\"} 300"), "{text}");
        assert!(text.contains("method=\"GET\",route=\"/healthz\",status=\"4xx\"} 1"), "{text}");
        assert_eq!(method_label("get"), "other", "methods are case-sensitive");
        // Every code the API answers with has its own label.
        for code in [201, 422] {
            assert_eq!(status_label(code), code.to_string());
        }
    }

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.http_request("GET", "/v1/calls/{id}", 200, 0.012);
        m.webhook_attempt("delivered");
        let snap = Snapshot {
            servers: vec![
                ServerSnapshot { name: "a".into(), up: true, in_flight: 3, capacity: 10 },
                ServerSnapshot { name: "b".into(), up: false, in_flight: 0, capacity: 4 },
            ],
            calls: vec![("failed".into(), Some("busy".into()), 3), ("completed".into(), None, 2)],
            ami_connected: true,
            ami_reconnects: 2,
            ami_oversized_messages: 1,
            agi_sessions: 1,
            webhooks_pending: 4,
        };
        let text = m.render(&snap);
        for line in [
            "voice_otp_calls{status=\"failed\",reason=\"busy\"} 3",
            "voice_otp_calls{status=\"completed\",reason=\"\"} 2",
            "voice_otp_ami_connected 1",
            "voice_otp_asterisk_up{server=\"a\"} 1",
            "voice_otp_asterisk_up{server=\"b\"} 0",
            "voice_otp_asterisk_calls_in_flight{server=\"a\"} 3",
            "voice_otp_asterisk_capacity{server=\"b\"} 4",
            "voice_otp_ami_reconnects_total 2",
            "voice_otp_ami_oversized_messages_total 1",
            "voice_otp_agi_sessions_active 1",
            "voice_otp_webhooks_pending 4",
            "voice_otp_webhook_attempts_total{outcome=\"delivered\"} 1",
            "voice_otp_http_requests_total{method=\"GET\",route=\"/v1/calls/{id}\",status=\"200\"} 1",
            "voice_otp_http_request_duration_seconds_count{route=\"/v1/calls/{id}\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        for prefix in [
            // Series that exist before their first event, so rules see a 0.
            "voice_otp_webhook_attempts_total{outcome=\"gave_up\"} 0",
            "voice_otp_agi_sessions_refused_total{reason=\"wrong_token\"} 0",
            "voice_otp_call_ring_duration_seconds_count{answered=\"true\"} 0",
            "voice_otp_agi_max_sessions 0",
            "voice_otp_queue_max_concurrent_calls 0",
            "voice_otp_queue_max_queued 0",
        ] {
            assert!(text.contains(prefix), "missing {prefix} in:\n{text}");
        }
        // A scrape later: reconnects only grow, vanished label sets vanish.
        let text = m.render(&Snapshot { ami_reconnects: 2, ..Snapshot::default() });
        assert!(text.contains("voice_otp_ami_reconnects_total 2"));
        assert!(!text.contains("reason=\"busy\""));
    }

    #[test]
    fn ended_calls_are_counted_and_timed_and_capacities_shown() {
        let m = Metrics::new();
        m.declare_call_end("failed", "congestion");
        m.declare_mode("enter");
        m.set_capacity(Capacity { agi_max_sessions: 256, max_concurrent_calls: 10, max_queued: 1000 });
        let answered = CallEnded {
            status: "completed",
            reason: "",
            mode: "read",
            ring_secs: Some(2.5),
            answered: true,
            talk_secs: Some(18.2),
        };
        m.call_ended(answered);
        m.call_ended(answered);
        m.call_ended(CallEnded {
            status: "failed",
            reason: "no_answer",
            mode: "read",
            ring_secs: Some(30.0),
            answered: false,
            talk_secs: None,
        });
        m.call_ended(CallEnded::undialled("expired"));
        // The gauges of calls on record are another matter: a purge lowers
        // them, never these counters.
        let text = m.render(&Snapshot::default());
        for line in [
            "voice_otp_calls_ended_total{status=\"completed\",reason=\"\"} 2",
            "voice_otp_calls_ended_total{status=\"failed\",reason=\"no_answer\"} 1",
            "voice_otp_calls_ended_total{status=\"failed\",reason=\"congestion\"} 0",
            "voice_otp_calls_ended_total{status=\"expired\",reason=\"\"} 1",
            "voice_otp_call_ring_duration_seconds_bucket{le=\"3.0\",answered=\"true\"} 2",
            "voice_otp_call_ring_duration_seconds_bucket{le=\"20.0\",answered=\"false\"} 0",
            "voice_otp_call_ring_duration_seconds_bucket{le=\"30.0\",answered=\"false\"} 1",
            "voice_otp_call_ring_duration_seconds_sum{answered=\"true\"} 5.0",
            "voice_otp_call_talk_duration_seconds_bucket{le=\"15.0\",mode=\"read\"} 0",
            "voice_otp_call_talk_duration_seconds_bucket{le=\"20.0\",mode=\"read\"} 2",
            "voice_otp_call_talk_duration_seconds_count{mode=\"enter\"} 0",
            "voice_otp_agi_max_sessions 256",
            "voice_otp_queue_max_concurrent_calls 10",
            "voice_otp_queue_max_queued 1000",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        // The expired call never rang nor talked: 3 ring times, 2 talk times.
        let count = |name: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        assert_eq!(count("voice_otp_call_ring_duration_seconds_count"), 3);
        assert_eq!(count("voice_otp_call_talk_duration_seconds_count"), 2);
    }
}
