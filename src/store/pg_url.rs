//! `[database] url`: where a PostgreSQL URL points and how to reach it -
//! the client's configuration, and TLS or not.
//!
//! `sslmode` is read here, not by the client (which knows no `verify-*`):
//! `disable`, `prefer`, `allow` or none at all connect without TLS (this
//! client never falls back from TLS, so `prefer` means plain TCP);
//! `require` and `verify-full` connect only over TLS (rustls), checking the
//! server's certificate chain and host name against `sslrootcert` (a PEM
//! file of CA certificates, as libpq names it) or, without it, the web's
//! root CAs - stricter than libpq's `require`, which checks nothing.
//! `verify-ca` (chain without host name) and client certificates (`sslcert`,
//! `sslkey`) are refused rather than half done. Every error names keys and
//! files, never the URL: it carries the password.

use std::sync::Arc;

/// How to reach the server.
pub(crate) struct Target {
    /// The client's settings (without our TLS keys).
    pub(crate) config: postgres::Config,
    /// TLS to use; `None`: plain TCP.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// Connects (blocking: never from the async runtime).
    pub(crate) fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        match &self.tls {
            None => self.config.connect(postgres::NoTls),
            Some(tls) => self.config.connect(tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone())),
        }
    }
}

/// Reads `url`; the error says what is wrong without repeating it.
pub(crate) fn parse(url: &str) -> Result<Target, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    if !(base.starts_with("postgres://") || base.starts_with("postgresql://")) {
        return Err("must start with postgres:// (or postgresql://)".into());
    }
    let mut sslmode = None;
    let mut root_file = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (percent_decode(key)?, percent_decode(value)?);
        match key.as_str() {
            "sslmode" => sslmode = Some(value),
            "sslrootcert" => root_file = Some(value),
            "sslcert" | "sslkey" => return Err(format!("{key}: client certificates are not supported")),
            _ => rest.push(format!("{}={}", percent_encode(&key), percent_encode(&value))),
        }
    }
    let tls = match sslmode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => {
            if root_file.is_some() {
                return Err("sslrootcert is given but sslmode does not ask for TLS (sslmode=verify-full)".into());
            }
            None
        }
        Some("require" | "verify-full") => Some(Arc::new(tls_config(root_file.as_deref())?)),
        Some("verify-ca") => {
            return Err("sslmode=verify-ca is not supported: use verify-full (the certificate chain and the host \
                        name are both checked)"
                .into());
        }
        Some(other) => {
            return Err(format!("sslmode={other} is not one of disable, allow, prefer, require, verify-full"));
        }
    };
    // The client gets the rest, and no TLS negotiation of its own: ours is
    // decided above.
    rest.push(format!("sslmode={}", if tls.is_some() { "require" } else { "disable" }));
    let url = format!("{base}?{}", rest.join("&"));
    let config: postgres::Config = url.parse().map_err(|e: postgres::Error| e.to_string())?;
    if config.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    if config.get_dbname().is_none() {
        return Err("names no database (postgres://user:password@host:port/DATABASE)".into());
    }
    Ok(Target { config, tls })
}

/// A URL query part decoded as libpq and the client decode it: `%XX`
/// escapes, and `+` left as it is.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or("a query parameter has a broken %-escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a query parameter is not UTF-8 once decoded".to_owned())
}

/// `text` as a URL query part: every byte but the unreserved ones as `%XX`
/// (a space as `%20`: the client decodes no `+`).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// rustls's client settings: the CAs of `root_file` (PEM), or the web's.
fn tls_config(root_file: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match root_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("sslrootcert {path}: no CA certificate in it"));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_decides_tls_and_the_rest_reaches_the_client() {
        let plain = parse(
            "postgres://u:pw@db.example:5433/otp?application_name=x&options=-c%20search_path%3Ds+t&sslmode=prefer",
        )
        .unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(plain.config.get_application_name(), Some("x"));
        assert_eq!(plain.config.get_options(), Some("-c search_path=s+t"), "decoded once, passed on as given");
        assert_eq!(plain.config.get_ssl_mode(), postgres::config::SslMode::Disable);
        assert!(parse("postgres://u:pw@db.example/otp").unwrap().tls.is_none());
        for mode in ["require", "verify-full"] {
            let tls = parse(&format!("postgres://u:pw@db.example/otp?sslmode={mode}")).unwrap();
            assert!(tls.tls.is_some(), "{mode}");
            assert_eq!(tls.config.get_ssl_mode(), postgres::config::SslMode::Require);
        }
    }

    #[test]
    fn what_is_refused_says_why_without_the_url() {
        for (url, says) in [
            ("mysql://u:hunter2@b/c", "must start with postgres://"),
            ("postgres://u:hunter2@b/c?sslmode=verify-ca", "verify-ca is not supported"),
            ("postgres://u:hunter2@b/c?sslmode=yes", "sslmode=yes is not one of"),
            ("postgres://u:hunter2@b/c?sslcert=/x.pem", "client certificates"),
            ("postgres://u:hunter2@b/c?sslrootcert=/x.pem", "sslmode does not ask for TLS"),
            (
                "postgres://u:hunter2@b/c?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "sslrootcert /nonexistent",
            ),
            ("postgres://u:hunter2@b:5432", "names no database"),
        ] {
            let err = parse(url).err().unwrap_or_else(|| panic!("{url} accepted"));
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
