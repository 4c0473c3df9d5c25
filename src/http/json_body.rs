//! The JSON API's request bodies: one JSON object, its fields read by name
//! with the errors the API gives (a 400 naming the field), and the answers
//! common to every `/v1` endpoint.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{ALLOW, HeaderValue, LOCATION};
use hyper::{Request, StatusCode};
use serde_json::{Map, Value};

use super::intake::FieldError;
use super::problem::problem;
use super::{App, HttpResponse, has_media_type, read_body};

/// A reply other than the one asked for (boxed: a response is large).
pub(super) type Reject = Box<HttpResponse>;

/// The body as read and as a JSON object, or the problem to answer (415,
/// 413, 408, 400).
pub(super) async fn object(app: &App, req: Request<Incoming>) -> Result<(Bytes, Map<String, Value>), Reject> {
    if !has_media_type(&req, "application/json") {
        return Err(Box::new(problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body must be application/json", None)));
    }
    let body =
        read_body(req, &app.config.http).await.map_err(|e| Box::new(problem(e.status(), &e.to_string(), None)))?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok((body, map)),
        Ok(_) => Err(Box::new(problem(StatusCode::BAD_REQUEST, "the body must be a JSON object", None))),
        Err(e) => Err(Box::new(problem(StatusCode::BAD_REQUEST, &format!("the body is not valid JSON: {e}"), None))),
    }
}

/// The 400 for the first field of `fields` not in `known`, if any.
pub(super) fn unknown_field(fields: &Map<String, Value>, known: &[&str]) -> Option<HttpResponse> {
    let unknown = fields.keys().find(|k| !known.contains(&k.as_str()))?;
    let shown: String = unknown.chars().take(64).collect();
    Some(problem(StatusCode::BAD_REQUEST, &format!("unknown field `{shown}`"), Some(&shown)))
}

/// A string field: `None` when absent or null; empty or not a string is
/// an error naming it.
pub(super) fn text<'a>(fields: &'a Map<String, Value>, name: &'static str) -> Result<Option<&'a str>, FieldError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(FieldError::new(name, format!("{name} is empty"))),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(FieldError::new(name, format!("{name} must be a string"))),
    }
}

/// A boolean field: `None` when absent or null.
pub(super) fn flag(fields: &Map<String, Value>, name: &'static str) -> Result<Option<bool>, FieldError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(FieldError::new(name, format!("{name} must be one of: true, false"))),
    }
}

/// 405 with `Allow`, unless `method` is one of `allow` (`"GET, POST"`).
pub(super) fn method_check(method: &hyper::Method, allow: &'static str) -> Option<HttpResponse> {
    if allow.split(", ").any(|m| m == method.as_str()) {
        return None;
    }
    let mut resp = problem(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allow}"), None);
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    Some(resp)
}

/// `resp` with `Location: path`.
pub(super) fn with_location(mut resp: HttpResponse, path: &str) -> HttpResponse {
    if let Ok(location) = HeaderValue::from_str(path) {
        resp.headers_mut().insert(LOCATION, location);
    }
    resp
}
