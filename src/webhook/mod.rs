//! Webhooks: every status change of a call is POSTed, as the call's JSON,
//! to its `callback_url` (or its user's default URL), signed with the
//! user's secret.
//!
//! - this file: the signature and which destinations are allowed;
//! - `outbox`: the worker that runs attempts side by side, as soon as they
//!   are due, within caps per host, per user and overall;
//! - `delivery`: one attempt - the HTTP(S) POST - and the retry schedule
//!   (capped exponential backoff, every attempt recorded).
//!
//! Signature: header `X-Voice-OTP-Signature: t=<unix seconds>,v1=<hex>`
//! where `<hex>` is HMAC-SHA256 with the user's secret over
//! `"<t>.<raw body>"`. The timestamp lets receivers refuse replays.

pub mod delivery;
pub mod outbox;

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::WebhooksConfig;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Voice-OTP-Signature";
/// The outbox row id: the same for every retry of one delivery (dedupe).
pub const DELIVERY_HEADER: &str = "X-Voice-OTP-Delivery";
/// `call.<status>`.
pub const EVENT_HEADER: &str = "X-Voice-OTP-Event";

/// Longest callback URL accepted.
pub const MAX_URL_LEN: usize = 2000;

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A callback URL that passed the syntactic and host checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The URL as given.
    pub url: String,
    /// `https` or not.
    pub tls: bool,
    /// Host name or IP literal (no brackets).
    pub host: String,
    /// Port (default 80/443).
    pub port: u16,
    /// Path and query to request.
    pub path: String,
}

/// Checks a callback URL: http(s) only, a host, no user-info, allowed by
/// `[webhooks] allow_hosts`, and - for IP literals with `deny_private` - a
/// public address. Names are resolved (and checked again) at each attempt.
pub fn check_url(url: &str, policy: &WebhooksConfig) -> Result<WebhookUrl, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    let uri: hyper::Uri = url.parse().map_err(|_| "is not a valid URL".to_owned())?;
    let tls = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        _ => return Err("must be an http:// or https:// URL".into()),
    };
    let authority = uri.authority().ok_or("must name a host")?;
    if authority.as_str().contains('@') {
        return Err("must not contain user information".into());
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if host.is_empty() {
        return Err("must name a host".into());
    }
    if !policy.allow_hosts.is_empty() && !policy.allow_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
        return Err(format!("host {host} is not in the allowed webhook hosts"));
    }
    if let Ok(ip) = host.parse::<IpAddr>()
        && policy.deny_private
        && !is_public(ip)
    {
        return Err(format!("host {host} is not a public address"));
    }
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    Ok(WebhookUrl { url: url.to_owned(), tls, host, port, path })
}

/// True for addresses on the public internet: not loopback, private,
/// link-local, CGNAT, unique-local, multicast, documentation, reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac() {
        // Expected value from `printf '%s' "0.what do ya want for nothing?" |
        // openssl dgst -sha256 -hmac Jefe`: the framing is "<t>.<body>".
        let sig = sign("Jefe", 0, b"what do ya want for nothing?");
        assert_eq!(sig, "t=0,v1=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc");
        assert_ne!(sign("Jefe", 1, b"what do ya want for nothing?"), sig, "the timestamp is signed");
        assert_ne!(sign("Jeff", 0, b"what do ya want for nothing?"), sig, "the secret matters");
    }

    fn policy(allow: &[&str], deny_private: bool) -> WebhooksConfig {
        WebhooksConfig {
            allow_hosts: allow.iter().map(|s| s.to_string()).collect(),
            deny_private,
            ..WebhooksConfig::default()
        }
    }

    #[test]
    fn urls() {
        let open = policy(&[], true);
        let u = check_url("https://Hooks.Example.com/otp?x=1", &open).unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.path.as_str()), (true, "hooks.example.com", 443, "/otp?x=1"));
        let u = check_url("http://hooks.example.com:8080", &open).unwrap();
        assert_eq!((u.port, u.path.as_str()), (8080, "/"));
        for (bad, why) in [
            ("ftp://x.example/", "http"),
            ("hooks.example.com/x", "valid URL"),
            ("//hooks.example.com/x", "http"),
            ("http://user:pw@x.example/", "user information"),
            ("http://127.0.0.1:9/", "public"),
            ("http://[::1]/", "public"),
            ("http://10.1.2.3/", "public"),
            ("http://169.254.169.254/latest/meta-data", "public"),
            ("http://a b/", "valid URL"),
            ("http://x.example/\r\nX: y", "valid URL"),
        ] {
            let err = check_url(bad, &open).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(check_url("http://127.0.0.1:9/", &policy(&[], false)).is_ok());
        let listed = policy(&["hooks.example.com"], true);
        assert!(check_url("https://hooks.example.com/", &listed).is_ok());
        assert!(check_url("https://evil.example.com/", &listed).unwrap_err().contains("allowed"));
        assert!(check_url(&format!("http://x.example/{}", "a".repeat(MAX_URL_LEN)), &open).is_err());
    }

    #[test]
    fn public_addresses() {
        for ip in ["8.8.8.8", "2a00:1450::1", "100.128.0.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
