//! RFC 9457 problem details (`application/problem+json`) for the JSON API,
//! including refusals by the abuse limits, and HTTP Basic credentials.

use base64::Engine;
use hyper::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{HeaderMap, StatusCode};
use serde::Serialize;

use super::{HttpResponse, json, refusal_status, with_retry_after};
use crate::limits::Refusal;
use crate::secret::Secret;

/// The realm of `WWW-Authenticate`.
pub const REALM: &str = "voice-otp";

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    /// Extension member: the request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// A problem reply. `about:blank` type: the status says what kind of
/// problem it is; `detail` says what exactly, `field` names the field.
pub fn problem(status: StatusCode, detail: &str, field: Option<&str>) -> HttpResponse {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = Problem { kind: "about:blank", title, status: status.as_u16(), detail, field };
    let mut resp = json(status, &body);
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    resp
}

/// 400 naming the field.
pub fn bad_field(field: &str, detail: &str) -> HttpResponse {
    problem(StatusCode::BAD_REQUEST, detail, Some(field))
}

/// A limit's refusal: 429 or 503 with `Retry-After`, or 403 from the
/// toll-fraud guard; the refusal's detail (naming the configuration key of
/// the rule) is the problem's detail.
pub fn refused(refusal: &Refusal) -> HttpResponse {
    let resp = problem(refusal_status(refusal.kind), &refusal.detail, None);
    match refusal.retry_after {
        Some(wait) => with_retry_after(resp, wait),
        None => resp,
    }
}

/// 401 with the Basic challenge.
pub fn unauthorized() -> HttpResponse {
    let mut resp = problem(StatusCode::UNAUTHORIZED, "valid HTTP Basic credentials are required", None);
    if let Ok(challenge) = HeaderValue::from_str(&format!("Basic realm=\"{REALM}\"")) {
        resp.headers_mut().insert(WWW_AUTHENTICATE, challenge);
    }
    resp
}

/// `Authorization: Basic base64(user:password)`, decoded. `None` when
/// absent or malformed (both answered 401 alike).
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, Secret)> {
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), Secret::new(password)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(hyper::header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn basic_credentials_decode() {
        // base64("acme1:pa:ss") - the password may contain colons.
        assert_eq!(basic_credentials(&headers("Basic YWNtZTE6cGE6c3M=")), Some(("acme1".into(), Secret::new("pa:ss"))));
        assert_eq!(basic_credentials(&headers("basic YWNtZTE6cGE6c3M=")).map(|c| c.0), Some("acme1".into()));
        assert_eq!(basic_credentials(&headers("Bearer abc")), None);
        assert_eq!(basic_credentials(&headers("Basic !!!")), None);
        assert_eq!(basic_credentials(&headers("Basic YWNtZTE=")), None, "no colon");
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
    }

    #[test]
    fn problems_are_problem_json() {
        let resp = bad_field("number", "number is required");
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
        let resp = unauthorized();
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], format!("Basic realm=\"{REALM}\"").as_str());
    }

    #[test]
    fn refusals_are_problems_with_retry_after() {
        let too_many = Refusal::too_many(
            "limit reached (limits.user_requests_per_minute)",
            std::time::Duration::from_millis(2500),
        );
        let resp = refused(&too_many);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(resp.headers()[hyper::header::RETRY_AFTER], "3");
        let resp = refused(&Refusal::forbidden("destination country XX is not allowed"));
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers().get(hyper::header::RETRY_AFTER).is_none());
    }
}
