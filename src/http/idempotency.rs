//! The `Idempotency-Key` request header on `POST /v1/calls` and
//! `POST /v1/verifications`: a retry of a request - same user, same key,
//! same method, path and body - within 24 hours gets the first answer
//! again (status, body, `Location`) and places no second call; the same key
//! with another request is `422`; while the first is still being carried
//! out, `409`. Answers of our own failures (5xx) and of limits (429: "try
//! again later") are not kept, so a retry after one is carried out afresh.
//! Keys live in the database (`store/idempotency.rs`), so they hold across
//! restarts (and daemons).

use std::future::Future;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, LOCATION};
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::json_body;
use super::problem::{bad_field, problem};
use super::{App, HttpResponse};
use crate::call::now_ms;
use crate::store::{KeyClaim, StoredAnswer, User};

/// The header.
pub const HEADER: &str = "idempotency-key";

/// Longest key accepted (the IETF draft leaves it to the server; Stripe
/// takes 255).
const MAX_KEY: usize = 255;

/// The key of a request, if it has one: 1 to 255 printable ASCII
/// characters, given once. `Err` is the detail of the 400 to answer
/// (naming the header).
pub fn key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    let bad = |why: &str| Err(format!("Idempotency-Key {why}"));
    if values.next().is_some() {
        return bad("is given more than once");
    }
    let Ok(text) = value.to_str() else { return bad("must be printable ASCII") };
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_KEY || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return bad(&format!("must be 1 to {MAX_KEY} printable ASCII characters without spaces"));
    }
    Ok(Some(text.to_owned()))
}

/// A `POST` to `path` that creates something: its `Idempotency-Key` read,
/// its JSON object body parsed, then `create` run on the body's fields -
/// once per key ([`idempotent`]).
pub async fn create<F, Fut>(app: &App, user: &User, req: Request<Incoming>, path: &str, create: F) -> HttpResponse
where
    F: FnOnce(Map<String, Value>) -> Fut,
    Fut: Future<Output = HttpResponse>,
{
    let key = match key(req.headers()) {
        Ok(key) => key,
        Err(detail) => return bad_field("Idempotency-Key", &detail),
    };
    let (body, fields) = match json_body::object(app, req).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    idempotent(app, user, key, fingerprint("POST", path, &body), create(fields)).await
}

/// Carries out `run` under `key` for `user`, or answers as the first request
/// with that key was answered. `fingerprint` is what makes two requests the
/// same: the method, the path and the body bytes.
pub async fn idempotent<F>(app: &App, user: &User, key: Option<String>, fingerprint: [u8; 32], run: F) -> HttpResponse
where
    F: Future<Output = HttpResponse>,
{
    let Some(key) = key else { return run.await };
    let (user_id, taken) = (user.id, key.clone());
    let claim = app.db.run(move |s| s.take_idempotency_key(user_id, &taken, &fingerprint, now_ms())).await;
    match claim {
        Ok(KeyClaim::Fresh) => {}
        Ok(KeyClaim::Replay(answer)) => return replay(answer),
        Ok(KeyClaim::Mismatch) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this Idempotency-Key was used with another request in the last 24 hours; use a new key",
                Some("Idempotency-Key"),
            );
        }
        Ok(KeyClaim::InProgress) => {
            return problem(
                StatusCode::CONFLICT,
                "a request with this Idempotency-Key is still being carried out; retry in a moment",
                Some("Idempotency-Key"),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "could not read the Idempotency-Key");
            return problem(StatusCode::SERVICE_UNAVAILABLE, "the database is unavailable; try again", None);
        }
    }
    let response = run.await;
    let (parts, body) = response.into_parts();
    // A `Full` body is all in memory: collecting it cannot wait or fail.
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let status = parts.status;
    // "Try again later" must not be the answer to trying again later.
    let kept = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        app.db.run(move |s| s.release_idempotency_key(user_id, &key)).await
    } else {
        let answer = StoredAnswer {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
            location: parts.headers.get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned),
        };
        app.db.run(move |s| s.keep_idempotent_answer(user_id, &key, &answer)).await
    };
    if let Err(e) = kept {
        // The request was carried out; only its replay is lost (a retry
        // within a minute gets 409, later it is carried out again).
        tracing::error!(error = %e, "could not keep the answer of an Idempotency-Key");
    }
    Response::from_parts(parts, Full::new(bytes))
}

/// The fingerprint of a request.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes(), body] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

fn replay(answer: StoredAnswer) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let content_type = if resp.status().is_success() { "application/json" } else { "application/problem+json" };
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(location) = answer.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(LOCATION, location);
    }
    resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(key(&h).ok(), Some(None));
        h.insert(HEADER, HeaderValue::from_static("order-42"));
        assert_eq!(key(&h).ok(), Some(Some("order-42".to_owned())));
        for bad in ["", "two words", &"k".repeat(256)] {
            let mut h = HeaderMap::new();
            h.insert(HEADER, HeaderValue::from_str(bad).unwrap());
            assert!(key(&h).unwrap_err().starts_with("Idempotency-Key "), "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.append(HEADER, HeaderValue::from_static("a"));
        h.append(HEADER, HeaderValue::from_static("a"));
        assert!(key(&h).unwrap_err().contains("more than once"));
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = fingerprint("POST", "/v1/calls", b"{}");
        assert_eq!(a, fingerprint("POST", "/v1/calls", b"{}"));
        assert_ne!(a, fingerprint("POST", "/v1/calls", b"{ }"));
        assert_ne!(a, fingerprint("POST", "/v1/verifications", b"{}"));
        // Lengths are part of it: no shifting bytes between parts.
        assert_ne!(fingerprint("POST", "/v1/x", b"y"), fingerprint("POST", "/v1/", b"xy"));
    }
}
