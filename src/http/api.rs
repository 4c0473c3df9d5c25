//! The JSON API, `/v1/calls`: HTTP Basic auth with the API users, JSON
//! bodies, RFC 9457 problem replies naming the field at fault.
//!
//! - `POST /v1/calls` -> 202 with the call and a `Location`;
//! - `GET /v1/calls/{id}` -> the call (404 for another user's call);
//! - `GET /v1/calls?status=&limit=&cursor=` -> newest first, paginated;
//! - `POST /v1/calls/{id}/cancel` -> the canceled call, 409 once answered.
//!
//! Credentials are checked before anything else (a stranger learns nothing
//! about the fields), behind the same failed-login limits as the seed API;
//! then the fields, then the database is touched. Creating a call goes
//! through [`super::intake`] like the seed API: the same field checks and
//! options, request rate, toll-fraud guard (403) and per-number quotas
//! (429 with `Retry-After`), answered here as problem+json.

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};

use super::App;
use super::intake::{self, CallOrder, FieldError, PlaceError};
use super::params::Params;
use super::problem::{bad_field, basic_credentials, problem, refused, unauthorized};
use super::{HttpResponse, json};
use super::{idempotency, json_body};
use crate::call::json::CallJson;
use crate::call::{Call, CallId, CallStatus};
use crate::limits::LoginError;
use crate::store::{CallCursor, User};

/// Default and largest page size of `GET /v1/calls`.
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

/// Fields `POST /v1/calls` knows; anything else is refused by name.
const CREATE_FIELDS: [&str; 6] = ["number", "code", "language", "require_keypress", "callback_url", "mode"];

/// Which `/v1` endpoint a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// `/v1/calls`
    Calls,
    /// `/v1/calls/{id}`
    Call(String),
    /// `/v1/calls/{id}/cancel`
    Cancel(String),
}

impl Endpoint {
    /// Matches a path; `None` for anything else.
    pub(super) fn parse(path: &str) -> Option<Endpoint> {
        let rest = path.strip_prefix("/v1/calls")?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [""] => Some(Endpoint::Calls),
            ["", id] if !id.is_empty() => Some(Endpoint::Call((*id).to_owned())),
            ["", id, "cancel"] if !id.is_empty() => Some(Endpoint::Cancel((*id).to_owned())),
            _ => None,
        }
    }

    /// The route template, for logs and metrics.
    pub(super) fn route(&self) -> &'static str {
        match self {
            Endpoint::Calls => "/v1/calls",
            Endpoint::Call(_) => "/v1/calls/{id}",
            Endpoint::Cancel(_) => "/v1/calls/{id}/cancel",
        }
    }

    fn allow(&self) -> &'static str {
        match self {
            Endpoint::Calls => "GET, POST",
            Endpoint::Call(_) => "GET",
            Endpoint::Cancel(_) => "POST",
        }
    }
}

pub(super) async fn handle(app: &App, endpoint: Endpoint, req: Request<Incoming>, client: IpAddr) -> HttpResponse {
    if let Some(refused) = json_body::method_check(req.method(), endpoint.allow()) {
        return refused;
    }
    let user = match authenticate(app, &req, client).await {
        Ok(user) => user,
        Err(resp) => return resp,
    };
    match endpoint {
        Endpoint::Calls if req.method() == Method::POST => create(app, &user, req).await,
        Endpoint::Calls => list(app, &user, &req).await,
        Endpoint::Call(id) => show(app, &user, &id).await,
        Endpoint::Cancel(id) => cancel(app, &user, &id).await,
    }
}

/// The request's Basic credentials checked behind the login limits, or the
/// reply to give instead (401, 429, 503).
pub(super) async fn authenticate(app: &App, req: &Request<Incoming>, client: IpAddr) -> Result<User, HttpResponse> {
    let Some((name, password)) = basic_credentials(req.headers()) else { return Err(unauthorized()) };
    match intake::login(app, &name, &password, client).await {
        Ok(user) => Ok(user),
        Err(LoginError::Unauthorized) => Err(unauthorized()),
        Err(LoginError::Limited(refusal)) => Err(refused(&refusal)),
        Err(LoginError::Auth(_)) => Err(unavailable()),
    }
}

/// 503: the database could not be reached.
pub(super) fn unavailable() -> HttpResponse {
    problem(StatusCode::SERVICE_UNAVAILABLE, "the database is unavailable; try again", None)
}

fn call_reply(status: StatusCode, call: &Call) -> HttpResponse {
    json(status, &call.to_json())
}

async fn create(app: &App, user: &User, req: Request<Incoming>) -> HttpResponse {
    idempotency::create(app, user, req, "/v1/calls", |fields| async move { create_from(app, user, &fields).await })
        .await
}

/// `POST /v1/calls` once its body is read.
async fn create_from(app: &App, user: &User, fields: &Map<String, Value>) -> HttpResponse {
    if let Some(refused) = json_body::unknown_field(fields, &CREATE_FIELDS) {
        return refused;
    }
    let checked = read_order(fields).and_then(|order| intake::check(app, order));
    let checked = match checked {
        Ok(c) => c,
        Err(e) => return bad_field(e.field, &e.message),
    };
    match intake::place(app, user, checked).await {
        Ok(call) => {
            json_body::with_location(call_reply(StatusCode::ACCEPTED, &call), &format!("/v1/calls/{}", call.id))
        }
        Err(PlaceError::Refused(refusal)) => refused(&refusal),
        Err(PlaceError::Store(e)) => {
            tracing::error!(error = %e, "could not store call");
            unavailable()
        }
    }
}

/// The typed fields of a create request.
fn read_order(fields: &Map<String, Value>) -> Result<CallOrder<'_>, FieldError> {
    let required = |name: &'static str| {
        json_body::text(fields, name)?.ok_or_else(|| FieldError::new(name, format!("{name} is required")))
    };
    let number = required("number")?;
    let code = required("code")?;
    let callback_url = json_body::text(fields, "callback_url")?;
    let language = json_body::text(fields, "language")?;
    let mode = json_body::text(fields, "mode")?;
    let require_keypress = json_body::flag(fields, "require_keypress")?;
    Ok(CallOrder { number, code, callback_url, language, require_keypress, mode })
}

/// One of the user's calls, or the reply to give instead (404 for unknown
/// ids and for other users' calls alike).
async fn own_call(app: &App, user: &User, id: &str) -> Result<Call, HttpResponse> {
    let not_found = || problem(StatusCode::NOT_FOUND, "no such call", None);
    let Some(id) = CallId::parse(id) else { return Err(not_found()) };
    match app.db.run(move |s| s.call(&id)).await {
        Ok(Some(call)) if call.user_id == Some(user.id) => Ok(call),
        Ok(_) => Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "could not read call");
            Err(unavailable())
        }
    }
}

async fn show(app: &App, user: &User, id: &str) -> HttpResponse {
    match own_call(app, user, id).await {
        Ok(call) => call_reply(StatusCode::OK, &call),
        Err(resp) => resp,
    }
}

async fn cancel(app: &App, user: &User, id: &str) -> HttpResponse {
    let call = match own_call(app, user, id).await {
        Ok(call) => call,
        Err(resp) => return resp,
    };
    // The cancel and the row as it is now in one trip; the read cannot
    // undo a cancel that was recorded.
    let target = call.id.clone();
    let (canceled, now) = match app.db.run(move |s| Ok((s.cancel_call(&target)?, s.call(&target)))).await {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(call_id = %call.id, error = %e, "could not cancel call");
            return unavailable();
        }
    };
    if canceled {
        tracing::info!(call_id = %call.id, was = %call.status, "call canceled");
        // Recorded: the phone stops ringing, whatever happens next - by
        // the canceled row (the dialler may have dialled it since the first
        // read), or if that read failed, by the first read.
        match &now {
            Ok(Some(row)) => after_cancel(app, row).await,
            _ if call.status != CallStatus::Queued => app.dispatcher.hang_up(&call.id).await,
            _ => {}
        }
    }
    let now = match now {
        Ok(Some(now)) => now,
        Ok(None) => return problem(StatusCode::NOT_FOUND, "no such call", None),
        Err(e) => {
            tracing::error!(call_id = %call.id, error = %e, "could not read the call back");
            return unavailable();
        }
    };
    if !canceled {
        let detail = format!("the call is {}; only queued, dialing or ringing calls can be canceled", now.status);
        return problem(StatusCode::CONFLICT, &detail, None);
    }
    call_reply(StatusCode::OK, &now)
}

/// What follows a recorded cancel, given the canceled row: the call is
/// counted as ended, and its channel hung up if it was dialled (a call
/// never dialled has none).
pub(super) async fn after_cancel(app: &App, call: &Call) {
    app.metrics.call_ended(call.ended());
    if call.dialed_at.is_some() {
        app.dispatcher.hang_up(&call.id).await;
    }
}

#[derive(Serialize)]
struct Page<'a> {
    calls: Vec<CallJson<'a>>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

async fn list(app: &App, user: &User, req: &Request<Incoming>) -> HttpResponse {
    let params = Params::decode([req.uri().query().unwrap_or("").as_bytes()]);
    let query = (|| {
        let status = match params.optional("status").map_err(|e| ("status", e.to_string()))? {
            None => None,
            Some(s) => Some(CallStatus::parse(s).ok_or_else(|| {
                let all: Vec<&str> = CallStatus::ALL.iter().map(|s| s.as_str()).collect();
                ("status", format!("status must be one of: {}", all.join(", ")))
            })?),
        };
        let limit = match params.optional("limit").map_err(|e| ("limit", e.to_string()))? {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| ("limit", format!("limit must be a whole number from 1 to {MAX_LIMIT}")))?,
        };
        let cursor = match params.optional("cursor").map_err(|e| ("cursor", e.to_string()))? {
            None => None,
            Some(c) => Some(
                CallCursor::decode(c).ok_or_else(|| ("cursor", "cursor is not one this API gave out".to_owned()))?,
            ),
        };
        Ok::<_, (&str, String)>((status, limit, cursor))
    })();
    let (status, limit, cursor) = match query {
        Ok(q) => q,
        Err((field, detail)) => return bad_field(field, &detail),
    };
    let user_id = user.id;
    // One extra row tells whether another page follows.
    let rows = app.db.run(move |s| s.user_calls(user_id, status, cursor.as_ref(), limit + 1)).await;
    let mut calls = match rows {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "could not list calls");
            return unavailable();
        }
    };
    let more = calls.len() > limit as usize;
    calls.truncate(limit as usize);
    let next_cursor = more
        .then(|| calls.last().map(|c| CallCursor { created_at: c.created_at, id: c.id.clone() }.encode()))
        .flatten();
    json(StatusCode::OK, &Page { calls: calls.iter().map(Call::to_json).collect(), next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("/v1/calls"), Some(Endpoint::Calls));
        assert_eq!(Endpoint::parse("/v1/calls/abc"), Some(Endpoint::Call("abc".into())));
        assert_eq!(Endpoint::parse("/v1/calls/abc/cancel"), Some(Endpoint::Cancel("abc".into())));
        for other in ["/v1/callsx", "/v1/calls/", "/v1/calls/a/b", "/v1/calls//cancel", "/v1", "/outbound.cgi"] {
            assert_eq!(Endpoint::parse(other), None, "{other}");
        }
    }

    #[test]
    fn create_fields_are_typed_and_named() {
        let map = |v: Value| v.as_object().unwrap().clone();
        let ok = map(
            serde_json::json!({"number": "03001234567", "code": "1234", "language": "ur", "require_keypress": true}),
        );
        let order = read_order(&ok).unwrap();
        assert_eq!((order.number, order.code, order.callback_url), ("03001234567", "1234", None));
        assert_eq!((order.language, order.require_keypress), (Some("ur"), Some(true)));
        for (body, field, msg) in [
            (serde_json::json!({"code": "1234"}), "number", "number is required"),
            (serde_json::json!({"number": 3001234567u64, "code": "1234"}), "number", "number must be a string"),
            (serde_json::json!({"number": "0300", "code": 1234}), "code", "code must be a string"),
            (serde_json::json!({"number": "0300", "code": ""}), "code", "code is empty"),
            (
                serde_json::json!({"number": "0300", "code": "1", "require_keypress": "yes"}),
                "require_keypress",
                "require_keypress must be one of: true, false",
            ),
            (
                serde_json::json!({"number": "0300", "code": "1", "callback_url": 5}),
                "callback_url",
                "callback_url must be a string",
            ),
        ] {
            let err = read_order(&map(body)).unwrap_err();
            assert_eq!((err.field, err.message.as_str()), (field, msg));
        }
    }
}
