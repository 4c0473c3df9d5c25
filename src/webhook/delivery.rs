//! One delivery attempt: the signed HTTP(S) POST, what its answer means,
//! and the retry schedule - capped exponential backoff (each wait a random
//! 50-100% of it) until `max_attempts`. Which deliveries are attempted when
//! is `outbox`'s business; [`run`] starts it with these attempts.
//!
//! Delivery is at least once: a delivery whose attempt was cut short by a
//! shutdown is sent again after the restart (same `X-Voice-OTP-Delivery`).
//!
//! The POST is made by hand over hyper's client connection API rather than
//! a pooled client, so the address that passed the SSRF check is the very
//! address connected to (no second DNS lookup an attacker could answer
//! differently). Redirects are not followed.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::outbox::{Attempter, Caps, Outbox};
use super::{DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, WebhookUrl, check_url, is_public, sign};
use crate::call::now_ms;
use crate::config::WebhooksConfig;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::{Attempt, AttemptVerdict, Db, Delivery};

/// Why an attempt failed.
#[derive(Debug)]
enum Failure {
    /// Worth retrying (refused connection, timeout, 5xx...).
    Transient(String),
    /// Never going to work under this config (destination refused).
    Permanent(String),
}

/// Runs the outbox, with HTTP(S) attempts under `policy`, until `shutdown`.
pub async fn run(db: Db, policy: WebhooksConfig, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let caps = Caps::from_config(&policy);
    Outbox::new(db, caps, HttpAttempts { policy: Arc::new(policy) }, metrics).run(shutdown).await;
}

/// Attempts made over HTTP(S) under a policy.
struct HttpAttempts {
    policy: Arc<WebhooksConfig>,
}

impl Attempter for HttpAttempts {
    async fn attempt(&self, d: Delivery) -> (Attempt, AttemptVerdict) {
        attempt(&d, &self.policy).await
    }
}

/// Sends `d` once; what to record and what comes next.
async fn attempt(d: &Delivery, policy: &WebhooksConfig) -> (Attempt, AttemptVerdict) {
    let started = Instant::now();
    let result = send(d, policy).await;
    let duration_ms = started.elapsed().as_millis() as i64;
    let attempts = d.attempts + 1;
    match result {
        Ok(status) if (200..300).contains(&status) => {
            (Attempt { http_status: Some(status), error: None, duration_ms }, AttemptVerdict::Delivered)
        }
        Ok(status) => {
            (Attempt { http_status: Some(status), error: None, duration_ms }, retry_or_give_up(attempts, policy))
        }
        Err(Failure::Transient(e)) => {
            (Attempt { http_status: None, error: Some(e), duration_ms }, retry_or_give_up(attempts, policy))
        }
        Err(Failure::Permanent(e)) => {
            (Attempt { http_status: None, error: Some(e), duration_ms }, AttemptVerdict::GiveUp)
        }
    }
}

/// Backoff after the `attempts`-th failure: initial * 2^(attempts-1), capped.
pub fn retry_delay(attempts: u32, policy: &WebhooksConfig) -> Duration {
    let factor = 1u64 << attempts.saturating_sub(1).min(30);
    let secs = u64::from(policy.retry_initial_secs).saturating_mul(factor).min(u64::from(policy.retry_max_secs));
    Duration::from_secs(secs)
}

/// What is actually waited: a random 50-100% of `delay`, so that the
/// deliveries that failed together (a receiver down for a while) do not all
/// come back in the same second.
pub fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..=1.0))
}

fn retry_or_give_up(attempts: u32, policy: &WebhooksConfig) -> AttemptVerdict {
    if attempts >= policy.max_attempts {
        AttemptVerdict::GiveUp
    } else {
        AttemptVerdict::RetryAt(now_ms() + jittered(retry_delay(attempts, policy)).as_millis() as i64)
    }
}

async fn send(d: &Delivery, policy: &WebhooksConfig) -> Result<u16, Failure> {
    // Checked again at send time: the config may have changed since the
    // call was accepted, and a user's default URL was never checked by the API.
    let url = check_url(&d.url, policy).map_err(|e| Failure::Permanent(format!("destination refused: {e}")))?;
    let Some(secret) = d.secret.as_ref().map(Secret::expose) else {
        return Err(Failure::Permanent("the user has no webhook secret".into()));
    };
    let limit = Duration::from_secs(u64::from(policy.timeout_secs));
    let timestamp = now_ms() / 1000;
    let delivery = d.id.to_string();
    let signature = sign(secret, timestamp, &delivery, d.event.as_str(), d.body.as_bytes());
    let request = Request::post(url.path.as_str())
        .header(hyper::header::HOST, host_header(&url))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("voice-otp/", env!("CARGO_PKG_VERSION")))
        .header(SIGNATURE_HEADER, signature)
        .header(DELIVERY_HEADER, delivery)
        .header(EVENT_HEADER, d.event.as_str())
        .body(Full::new(Bytes::from(d.body.clone())))
        .map_err(|e| Failure::Permanent(format!("request: {e}")))?;
    match tokio::time::timeout(limit, post(&url, policy, request)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Transient(format!("no response within {}s", policy.timeout_secs))),
    }
}

fn host_header(url: &WebhookUrl) -> String {
    let host = if url.host.contains(':') { format!("[{}]", url.host) } else { url.host.clone() };
    let default = if url.tls { 443 } else { 80 };
    if url.port == default { host } else { format!("{host}:{}", url.port) }
}

async fn post(url: &WebhookUrl, policy: &WebhooksConfig, request: Request<Full<Bytes>>) -> Result<u16, Failure> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| Failure::Transient(format!("cannot resolve {}: {e}", url.host)))?
        .collect();
    if policy.deny_private {
        // Any non-public answer refuses the host: picking only the public
        // ones would let a name that also points inside still be used.
        if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(Failure::Permanent(format!("{} resolves to non-public address {}", url.host, bad.ip())));
        }
    }
    let mut last = None;
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(format!("connect {addr}: {e}")),
        }
    }
    let stream =
        stream.ok_or_else(|| Failure::Transient(last.unwrap_or_else(|| format!("{} has no address", url.host))))?;
    if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| Failure::Permanent(format!("TLS server name {}: {e}", url.host)))?;
        let tls = tls_connector()
            .connect(name, stream)
            .await
            .map_err(|e| Failure::Transient(format!("TLS handshake with {}: {e}", url.host)))?;
        exchange(TokioIo::new(tls), request).await
    } else {
        exchange(TokioIo::new(stream), request).await
    }
}

async fn exchange<T>(io: TokioIo<T>, request: Request<Full<Bytes>>) -> Result<u16, Failure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Transient(format!("HTTP handshake: {e}")))?;
    let driver = tokio::spawn(conn);
    let result = sender.send_request(request).await;
    driver.abort();
    // Only the status matters; the body is not read.
    result.map(|resp| resp.status().as_u16()).map_err(|e| Failure::Transient(format!("HTTP: {e}")))
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p =
            WebhooksConfig { retry_initial_secs: 5, retry_max_secs: 60, max_attempts: 4, ..WebhooksConfig::default() };
        let delays: Vec<u64> = (1..=6).map(|n| retry_delay(n, &p).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 60, 60]);
        assert_eq!(retry_delay(200, &p).as_secs(), 60, "no overflow");
        let before = now_ms();
        let AttemptVerdict::RetryAt(at) = retry_or_give_up(3, &p) else { panic!("no retry") };
        assert!(
            (before + 10_000..=now_ms() + 20_000).contains(&at),
            "20 s backoff, jittered to 10-20 s: {}",
            at - before
        );
        assert_eq!(retry_or_give_up(4, &p), AttemptVerdict::GiveUp);
    }

    #[test]
    fn jitter_spreads_retries_over_the_upper_half() {
        let delay = Duration::from_secs(100);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(delay)).collect();
        assert!(waits.iter().all(|w| (Duration::from_secs(50)..=delay).contains(w)), "{waits:?}");
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "spread, not one fixed value: {} distinct", distinct.len());
    }

    #[test]
    fn host_header_has_port_only_when_needed() {
        let open = WebhooksConfig { deny_private: false, ..WebhooksConfig::default() };
        assert_eq!(host_header(&check_url("https://a.example/x", &open).unwrap()), "a.example");
        assert_eq!(host_header(&check_url("http://a.example:8080/x", &open).unwrap()), "a.example:8080");
        assert_eq!(host_header(&check_url("http://[::1]:81/", &open).unwrap()), "[::1]:81");
    }

    #[test]
    fn tls_config_builds() {
        let _ = tls_connector();
    }
}
