//! `/v1/verifications`: the daemon makes the code, calls to read it, and
//! checks what the business's user typed (Twilio Verify's model).
//!
//! - `POST /v1/verifications` `{"number", "language"?, "code_length"?,
//!   "callback_url"?, "require_keypress"?}` -> `201` with a new pending
//!   verification and its first call; for a number the same user has a
//!   pending verification for, `200` with that one and a new call reading
//!   the same code (at most `[verify] max_sends` calls, then `429`).
//! - `GET /v1/verifications/{id}` -> the verification.
//! - `POST /v1/verifications/{id}/check` `{"code"}` -> `200`: `approved`
//!   for the right code, `pending` with `attempts_left` for a wrong one,
//!   `max_attempts_reached` after the `[verify] max_checks`-th wrong one,
//!   `expired`/`canceled` once so; `409` for one already approved (a code
//!   serves once).
//! - `POST /v1/verifications/{id}/cancel` -> `200`, `canceled`; `409` once final.
//!
//! Same Basic auth, login limits and problem+json as `/v1/calls`; a call
//! placed for a verification passes the same limits as any call
//! ([`super::intake::place_with`]), in the same transaction that creates
//! the verification or counts the re-send.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{Map, Value};

use super::api::{after_cancel, authenticate, unavailable};
use super::idempotency;
use super::intake::{self, OfVerification, PlaceError, Placement};
use super::json_body::{self, Reject};
use super::problem::{bad_field, problem, refused};
use super::{App, HttpResponse, json};
use crate::call::options::{CallMode, CallOptions, RequestedOptions};
use crate::limits::Refusal;
use crate::phone::PhoneNumber;
use crate::store::{CheckOutcome, NewVerification, StoreError, User};
use crate::time::now_ms;
use crate::verify::code::new_salt;
use crate::verify::{CodeLength, Verification, VerificationId, VerificationStatus};
use crate::webhook::check_url;

/// Fields `POST /v1/verifications` knows; anything else is refused by name.
const CREATE_FIELDS: [&str; 5] = ["number", "language", "code_length", "callback_url", "require_keypress"];

/// Which endpoint a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// `/v1/verifications`
    Verifications,
    /// `/v1/verifications/{id}`
    Verification(String),
    /// `/v1/verifications/{id}/check`
    Check(String),
    /// `/v1/verifications/{id}/cancel`
    Cancel(String),
}

impl Endpoint {
    /// Matches a path; `None` for anything else.
    pub(super) fn parse(path: &str) -> Option<Endpoint> {
        let rest = path.strip_prefix("/v1/verifications")?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [""] => Some(Endpoint::Verifications),
            ["", id] if !id.is_empty() => Some(Endpoint::Verification((*id).to_owned())),
            ["", id, "check"] if !id.is_empty() => Some(Endpoint::Check((*id).to_owned())),
            ["", id, "cancel"] if !id.is_empty() => Some(Endpoint::Cancel((*id).to_owned())),
            _ => None,
        }
    }

    /// The route template, for logs and metrics.
    pub(super) fn route(&self) -> &'static str {
        match self {
            Endpoint::Verifications => "/v1/verifications",
            Endpoint::Verification(_) => "/v1/verifications/{id}",
            Endpoint::Check(_) => "/v1/verifications/{id}/check",
            Endpoint::Cancel(_) => "/v1/verifications/{id}/cancel",
        }
    }

    fn allow(&self) -> &'static str {
        match self {
            Endpoint::Verification(_) => "GET",
            Endpoint::Verifications | Endpoint::Check(_) | Endpoint::Cancel(_) => "POST",
        }
    }
}

pub(super) async fn handle(
    app: &App,
    endpoint: Endpoint,
    req: Request<Incoming>,
    client: std::net::IpAddr,
) -> HttpResponse {
    if let Some(refused) = json_body::method_check(req.method(), endpoint.allow()) {
        return refused;
    }
    let user = match authenticate(app, &req, client).await {
        Ok(user) => user,
        Err(resp) => return resp,
    };
    match endpoint {
        Endpoint::Verifications => create(app, &user, req).await,
        Endpoint::Verification(id) => match own(app, &user, &id).await {
            Ok(v) => reply(app, StatusCode::OK, &v),
            Err(resp) => *resp,
        },
        Endpoint::Check(id) => check(app, &user, &id, req).await,
        Endpoint::Cancel(id) => cancel(app, &user, &id).await,
    }
}

fn reply(app: &App, status: StatusCode, v: &Verification) -> HttpResponse {
    json(status, &v.to_json(now_ms(), app.config.verify.max_checks))
}

/// 400 naming `name`.
fn field(name: &str, detail: String) -> Reject {
    Box::new(bad_field(name, &detail))
}

/// A string field, or the 400 naming it.
fn text<'a>(fields: &'a Map<String, Value>, name: &'static str) -> Result<Option<&'a str>, Reject> {
    json_body::text(fields, name).map_err(|e| field(e.field, e.message))
}

async fn create(app: &App, user: &User, req: Request<Incoming>) -> HttpResponse {
    idempotency::create(app, user, req, "/v1/verifications", |fields| create_from(app, user, fields)).await
}

/// The checked fields of a new verification.
struct Order {
    number: PhoneNumber,
    code_length: CodeLength,
    callback_url: Option<String>,
    options: RequestedOptions,
}

fn read_order(app: &App, fields: &Map<String, Value>) -> Result<Order, Reject> {
    if let Some(refused) = json_body::unknown_field(fields, &CREATE_FIELDS) {
        return Err(Box::new(refused));
    }
    let number = text(fields, "number")?.ok_or_else(|| field("number", "number is required".into()))?;
    let number = PhoneNumber::parse(number, app.config.phone.default_country)
        .map_err(|e| field("number", format!("number {e}")))?;
    let range = format!("code_length must be an integer from {} to {}", CodeLength::MIN, CodeLength::MAX);
    let code_length = match fields.get("code_length") {
        None | Some(Value::Null) => CodeLength::DEFAULT,
        Some(Value::Number(n)) => {
            n.as_u64().and_then(CodeLength::new).ok_or_else(|| field("code_length", range.clone()))?
        }
        Some(_) => return Err(field("code_length", range)),
    };
    let require_keypress = json_body::flag(fields, "require_keypress").map_err(|e| field(e.field, e.message))?;
    let options = RequestedOptions::check(text(fields, "language")?, require_keypress, None, &app.config.call)
        .map_err(|e| field(e.field, e.to_string()))?;
    let callback_url = text(fields, "callback_url")?
        .map(|url| check_url(url, &app.config.webhooks))
        .transpose()
        .map_err(|e| field("callback_url", format!("callback_url {e}")))?
        .map(|u| u.url);
    Ok(Order { number, code_length, callback_url, options })
}

async fn create_from(app: &App, user: &User, fields: Map<String, Value>) -> HttpResponse {
    let order = match read_order(app, &fields) {
        Ok(o) => o,
        Err(resp) => return *resp,
    };
    let cfg = &app.config.verify;
    let (key, ttl_ms, max_sends) = (app.verify_key.clone(), i64::from(cfg.ttl_secs) * 1000, cfg.max_sends);
    let (user_id, e164, code_length) = (user.id, order.number.e164().to_owned(), order.code_length);
    let verification_url = order.callback_url.clone();
    // A new verification's call reports to its URL; a re-send's call to
    // the verification's (see `OfVerification`), whatever this request says.
    let placement = Placement { number: order.number, callback_url: order.callback_url, options: order.options };
    let placed = intake::place_with(app, user, placement, move |s, call_id, options, now| {
        // Read, never enter: the callee is told the code to type elsewhere.
        let options = CallOptions { mode: CallMode::Read, ..options };
        let (v, created) = match s.pending_verification(user_id, &e164, now)? {
            Some(v) if v.sends >= max_sends => {
                let wait = Duration::from_millis((v.expires_at - now).max(0) as u64);
                let detail = format!("limit of {max_sends} calls per verification reached (verify.max_sends)");
                return Ok(Err(Refusal::too_many(detail, wait)));
            }
            Some(v) => (v, false),
            None => {
                let id = VerificationId::generate();
                let new = NewVerification {
                    id: &id,
                    user_id,
                    number: &e164,
                    code_length,
                    salt: new_salt(),
                    language: &options.language,
                    callback_url: verification_url.as_deref(),
                    expires_at: now + ttl_ms,
                };
                s.insert_verification(&new)?;
                let v = s.verification(&id)?.ok_or_else(|| StoreError::Corrupt("verification vanished".into()))?;
                (v, true)
            }
        };
        let Some(salt) = v.salt else {
            return Err(StoreError::Corrupt(format!("pending verification {} has no salt", v.id)));
        };
        let code = key.code(&v.id, &salt, v.code_length);
        s.record_verification_send(&v.id, call_id.as_str())?;
        // A re-send reads the same code in the verification's language.
        let options = CallOptions { language: v.language.clone(), ..options };
        let v = s.verification(&v.id)?.ok_or_else(|| StoreError::Corrupt("verification vanished".into()))?;
        let of = OfVerification { id: v.id.as_str().to_owned(), callback_url: v.callback_url.clone() };
        Ok(Ok((code, options, Some(of), (v, created))))
    })
    .await;
    match placed {
        Ok((call, (v, created))) => {
            tracing::info!(verification = %v.id, call_id = %call.id, sends = v.sends, created, "verification call placed");
            let resp = reply(app, if created { StatusCode::CREATED } else { StatusCode::OK }, &v);
            json_body::with_location(resp, &format!("/v1/verifications/{}", v.id))
        }
        Err(PlaceError::Refused(refusal)) => refused(&refusal),
        Err(PlaceError::Store(e)) => {
            tracing::error!(error = %e, "could not store verification");
            unavailable()
        }
    }
}

/// One of the user's verifications, or the reply to give instead (404 for
/// unknown ids and other users' alike).
async fn own(app: &App, user: &User, id: &str) -> Result<Verification, Reject> {
    let not_found = || Box::new(problem(StatusCode::NOT_FOUND, "no such verification", None));
    let Some(id) = VerificationId::parse(id) else { return Err(not_found()) };
    match app.db.run(move |s| s.verification(&id)).await {
        Ok(Some(v)) if v.user_id == Some(user.id) => Ok(v),
        Ok(_) => Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "could not read verification");
            Err(Box::new(unavailable()))
        }
    }
}

async fn check(app: &App, user: &User, id: &str, req: Request<Incoming>) -> HttpResponse {
    let (_, fields) = match json_body::object(app, req).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    if let Some(refused) = json_body::unknown_field(&fields, &["code"]) {
        return refused;
    }
    let guess = match text(&fields, "code") {
        Ok(Some(code)) => code.to_owned(),
        Ok(None) => return bad_field("code", "code is required"),
        Err(resp) => return *resp,
    };
    if guess.len() > usize::from(CodeLength::MAX) || !guess.bytes().all(|b| b.is_ascii_digit()) {
        return bad_field("code", &format!("code must be 1 to {} digits 0-9", CodeLength::MAX));
    }
    let not_found = || problem(StatusCode::NOT_FOUND, "no such verification", None);
    let Some(vid) = VerificationId::parse(id) else { return not_found() };
    let (key, max_checks, user_id) = (app.verify_key.clone(), app.config.verify.max_checks, user.id);
    let lookup = vid.clone();
    let outcome = app
        .db
        .run(move |s| {
            let outcome = s.check_verification(&lookup, user_id, &key, &guess, max_checks, now_ms())?;
            Ok((outcome, s.verification(&lookup)?))
        })
        .await;
    let (outcome, v) = match outcome {
        Ok((outcome, Some(v))) => (outcome, v),
        Ok((_, None)) => return not_found(),
        Err(e) => {
            tracing::error!(error = %e, "could not check verification");
            return unavailable();
        }
    };
    match outcome {
        CheckOutcome::NotFound => not_found(),
        CheckOutcome::Final(VerificationStatus::Approved) => {
            problem(StatusCode::CONFLICT, "the verification is approved already; a code serves once", None)
        }
        outcome => {
            tracing::info!(verification = %vid, outcome = ?outcome, "verification checked");
            reply(app, StatusCode::OK, &v)
        }
    }
}

async fn cancel(app: &App, user: &User, id: &str) -> HttpResponse {
    let v = match own(app, user, id).await {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let (target, user_id) = (v.id.clone(), user.id);
    let done = app
        .db
        .run(move |s| {
            // One transaction: the verification and its calls end together.
            s.atomically(|s| {
                let canceled = s.cancel_verification(&target, now_ms())?;
                // Its calls still unanswered (a re-send's and any earlier
                // one's) go too: nobody is to hear a code that can no
                // longer be checked.
                let mut calls = Vec::new();
                if canceled {
                    for call in s.cancelable_calls_of(user_id, target.as_str())? {
                        if s.cancel_call(&call)?
                            && let Some(row) = s.call(&call)?
                        {
                            calls.push(row);
                        }
                    }
                }
                Ok((canceled, calls, s.verification(&target)?))
            })
        })
        .await;
    match done {
        Ok((true, calls, Some(now))) => {
            for call in &calls {
                after_cancel(app, call).await;
            }
            tracing::info!(verification = %v.id, "verification canceled");
            reply(app, StatusCode::OK, &now)
        }
        Ok((false, _, Some(now))) => {
            let detail = format!("the verification is {}; only a pending one can be canceled", now.status_at(now_ms()));
            problem(StatusCode::CONFLICT, &detail, None)
        }
        Ok((_, _, None)) => problem(StatusCode::NOT_FOUND, "no such verification", None),
        Err(e) => {
            tracing::error!(error = %e, "could not cancel verification");
            unavailable()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(Endpoint::parse("/v1/verifications"), Some(Endpoint::Verifications));
        assert_eq!(Endpoint::parse("/v1/verifications/ab"), Some(Endpoint::Verification("ab".into())));
        assert_eq!(Endpoint::parse("/v1/verifications/ab/check"), Some(Endpoint::Check("ab".into())));
        assert_eq!(Endpoint::parse("/v1/verifications/ab/cancel"), Some(Endpoint::Cancel("ab".into())));
        for other in ["/v1/verification", "/v1/verifications/", "/v1/verifications/ab/x", "/v1/verificationsx"] {
            assert_eq!(Endpoint::parse(other), None, "{other}");
        }
    }
}
