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
//! Signature: header `X-Voice-OTP-Signature: t=<unix seconds>,v1=<hex>,v2=<hex>`,
//! each HMAC-SHA256 with the user's secret: `v2` over
//! `"<t>\n<delivery id>\n<event>\n<raw body>"` (line breaks, which no
//! header value can hold: the parts cannot be shifted between headers),
//! `v1` over `"<t>.<raw body>"`
//! (kept for receivers written against it). The timestamp lets receivers
//! refuse old replays; `v2` also binds the `X-Voice-OTP-Delivery` and
//! `X-Voice-OTP-Event` headers, so a replay within the tolerance cannot
//! pose as a new delivery (defeating the dedupe) or as another event.

pub mod delivery;
pub mod outbox;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>,
/// v2=<hex HMAC-SHA256(secret, "<timestamp>\n<delivery>\n<event>\n<body>")>`.
pub fn sign(secret: &str, timestamp: i64, delivery: &str, event: &str, body: &[u8]) -> String {
    let mac = |separator: &[u8], parts: &[&[u8]]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(separator);
            }
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    };
    let t = timestamp.to_string();
    let v1 = mac(b".", &[t.as_bytes(), body]);
    let v2 = mac(b"\n", &[t.as_bytes(), delivery.as_bytes(), event.as_bytes(), body]);
    format!("t={t},v1={v1},v2={v2}")
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
///
/// IPv6 forms that carry an IPv4 address are judged by that address where
/// a standard gateway turns them into it - IPv4-mapped `::ffff:a.b.c.d` and
/// NAT64's well-known prefix `64:ff9b::/96` (so an IPv6-only host behind
/// DNS64 can still reach public IPv4 receivers). The other embedding ranges
/// are refused whole: IPv4-compatible `::a.b.c.d` (deprecated), 6to4
/// `2002::/16` and Teredo (`2001::/32`, inside `2001::/23`) reach their IPv4
/// address only through relays, and local-use NAT64 `64:ff9b:1::/48` puts
/// it where each network chooses. Otherwise only global unicast `2000::/3`
/// passes, less its special-purpose blocks.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        // 6to4 relay anycast (deprecated, RFC 7526): a relay into IPv6.
        || (a == 192 && b == 88 && c == 99)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., w, x, y, z] = v6.octets();
        return is_public_v4(Ipv4Addr::new(w, x, y, z));
    }
    // Outside 2000::/3: ::/8 (unspecified, loopback, IPv4-compatible),
    // 64:ff9b:1::/48, discard-only 100::/64, unique-local fc00::/7,
    // site-local fec0::/10, link-local fe80::/10, multicast ff00::/8, and
    // space not allocated for unicast.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    let special = match s[0] {
        // IETF protocol assignments 2001::/23 (Teredo, benchmarking, ORCHID,
        // anycast services - never a webhook receiver) and documentation.
        0x2001 => s[1] < 0x0200 || s[1] == 0x0db8,
        // 6to4: its IPv4 address is reached only through relays.
        0x2002 => true,
        // Documentation (RFC 9637).
        0x3fff => s[1] < 0x1000,
        _ => false,
    };
    !special
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac() {
        // Expected values from `printf '%s' "0.what do ya want for nothing?" |
        // openssl dgst -sha256 -hmac Jefe` (v1: "<t>.<body>") and the same
        // over `printf '0\n42\ncall.failed\n%s' "what do ya..."` (v2:
        // "<t>\n<delivery>\n<event>\n<body>").
        let body = b"what do ya want for nothing?";
        let sig = sign("Jefe", 0, "42", "call.failed", body);
        assert_eq!(
            sig,
            "t=0,v1=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc,\
             v2=0425d7aed493dc737633f78aa0440fba66cd86c7e2586f90d0a9336d91f65420"
        );
        let v2 = |s: String| s.rsplit_once(",v2=").map(|(_, v)| v.to_owned());
        assert_ne!(v2(sign("Jefe", 1, "42", "call.failed", body)), v2(sig.clone()), "the timestamp is signed");
        assert_ne!(v2(sign("Jeff", 0, "42", "call.failed", body)), v2(sig.clone()), "the secret matters");
        assert_ne!(v2(sign("Jefe", 0, "43", "call.failed", body)), v2(sig.clone()), "the delivery is signed");
        assert_ne!(v2(sign("Jefe", 0, "42", "call.completed", body)), v2(sig.clone()), "the event is signed");
        // Parts cannot be shifted from one header to the other.
        assert_ne!(v2(sign("Jefe", 0, "42.call", "failed", body)), v2(sig), "the framing is unambiguous");
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
        // (address, public, why)
        let table: &[(&str, bool, &str)] = &[
            ("8.8.8.8", true, "public IPv4"),
            ("100.128.0.1", true, "just above CGNAT"),
            ("192.88.98.1", true, "just below the 6to4 relay block"),
            ("192.88.100.1", true, "just above the 6to4 relay block"),
            ("127.0.0.1", false, "loopback"),
            ("10.0.0.1", false, "private"),
            ("172.16.0.1", false, "private"),
            ("192.168.1.1", false, "private"),
            ("100.64.0.1", false, "CGNAT"),
            ("169.254.169.254", false, "link-local (cloud metadata)"),
            ("0.0.0.0", false, "unspecified"),
            ("0.1.2.3", false, "this network"),
            ("192.0.0.8", false, "IETF protocol assignments"),
            ("192.0.2.1", false, "documentation"),
            ("192.88.99.1", false, "6to4 relay anycast"),
            ("198.18.0.1", false, "benchmarking"),
            ("224.0.0.1", false, "multicast"),
            ("240.0.0.1", false, "reserved"),
            ("255.255.255.255", false, "broadcast"),
            ("2a00:1450::1", true, "global unicast"),
            ("2001:4860:4860::8888", true, "global unicast in 2001::/16, outside 2001::/23"),
            ("2001:200::1", true, "just above 2001::/23"),
            ("3ffe::1", true, "2000::/3, not documentation"),
            ("::1", false, "loopback"),
            ("::", false, "unspecified"),
            ("fd00::1", false, "unique-local"),
            ("fc00::1", false, "unique-local"),
            ("fe80::1", false, "link-local"),
            ("fec0::1", false, "site-local"),
            ("feff::1", false, "site-local, top"),
            ("ff02::1", false, "multicast"),
            ("100::1", false, "discard-only"),
            ("4000::1", false, "outside 2000::/3"),
            ("2001:db8::1", false, "documentation"),
            ("3fff::1", false, "documentation (RFC 9637)"),
            ("3fff:fff::1", false, "documentation (RFC 9637), top"),
            ("2001::1", false, "Teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", false, "Teredo, public server and client"),
            ("2001:2::1", false, "benchmarking"),
            ("2001:10::1", false, "ORCHID"),
            ("2002:808:808::1", false, "6to4 of public 8.8.8.8: refused whole"),
            ("2002:7f00:1::1", false, "6to4 of 127.0.0.1"),
            ("2002:a00:1::1", false, "6to4 of 10.0.0.1"),
            ("::ffff:8.8.8.8", true, "IPv4-mapped, judged by 8.8.8.8"),
            ("::ffff:127.0.0.1", false, "IPv4-mapped loopback"),
            ("::ffff:10.1.2.3", false, "IPv4-mapped private"),
            ("::ffff:169.254.169.254", false, "IPv4-mapped link-local"),
            ("::8.8.8.8", false, "IPv4-compatible: refused whole"),
            ("::127.0.0.1", false, "IPv4-compatible loopback"),
            ("::10.0.0.1", false, "IPv4-compatible private"),
            ("64:ff9b::8.8.8.8", true, "NAT64, judged by 8.8.8.8"),
            ("64:ff9b::127.0.0.1", false, "NAT64 of loopback"),
            ("64:ff9b::a00:1", false, "NAT64 of 10.0.0.1"),
            ("64:ff9b::a9fe:a9fe", false, "NAT64 of 169.254.169.254"),
            ("64:ff9b::192.88.99.1", false, "NAT64 of the 6to4 relay"),
            ("64:ff9b:0:0:1::808:808", false, "64:ff9b::/32 outside the /96: not the well-known prefix"),
            ("64:ff9b:1::808:808", false, "local-use NAT64: refused whole"),
            ("64:ff9b:1:ffff::1", false, "local-use NAT64, elsewhere in the /48"),
        ];
        for &(ip, public, why) in table {
            let addr: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
            assert_eq!(is_public(addr), public, "{ip} ({why})");
        }
    }

    #[test]
    fn literal_callback_hosts_in_the_embedding_ranges_are_refused() {
        let open = policy(&[], true);
        for url in [
            "http://[2002:a00:1::1]/",
            "http://[2001::1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[64:ff9b:1::808:808]/",
            "http://[::127.0.0.1]/",
            "http://[fec0::1]/",
            "http://192.88.99.1/",
        ] {
            let err = check_url(url, &open).unwrap_err();
            assert!(err.contains("not a public address"), "{url}: {err}");
        }
        assert!(check_url("http://[64:ff9b::808:808]/", &open).is_ok());
    }
}
