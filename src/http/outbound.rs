//! `GET|POST /outbound.cgi?number=&code=&username=&password=[&language=][&require_keypress=]`:
//! the seed API.
//!
//! Order of checks: every field present and well-formed (400, cheap), then
//! the failed-login lockout (429) and credentials (401, one bcrypt verify),
//! then the user's request rate (429) and the toll-fraud guard (403), then
//! the per-number quotas (429) and storing the call in one step; only then
//! the 200 with its id. Malformed requests never cost a bcrypt verify and
//! never reach the database or Asterisk. The limits are [`crate::limits`].

use std::net::IpAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, StatusCode};

use super::params::Params;
use super::{HttpResponse, refusal_reply, seed_error, seed_reply};
use crate::call::options::{RequestedOptions, parse_require_keypress};
use crate::call::{CallId, now_ms};
use crate::daemon::App;
use crate::limits::LoginError;
use crate::phone::PhoneNumber;
use crate::store::NewCall;

/// Longest and shortest code we read out (the seed allows 20 digits).
pub const CODE_DIGITS: std::ops::RangeInclusive<usize> = 4..=20;

/// What the seed API asks for, checked.
struct Order {
    number: PhoneNumber,
    code: String,
    username: String,
    password: String,
    options: RequestedOptions,
}

pub(super) async fn handle(app: &App, req: Request<Incoming>, client: IpAddr) -> HttpResponse {
    let params = match read_params(app, req).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let order = match check(app, &params) {
        Ok(o) => o,
        Err(why) => return seed_error(StatusCode::BAD_REQUEST, &format!("Bad Request: {why}")),
    };
    let user = match app.limits.login(&app.auth, &order.username, &order.password, client).await {
        Ok(user) => user,
        Err(LoginError::Unauthorized) => return seed_error(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Err(LoginError::Limited(refusal)) => {
            tracing::warn!(%client, "login refused: failed-login limit");
            return refusal_reply(&refusal);
        }
        Err(LoginError::Store(e)) => {
            tracing::error!(error = %e, "authentication failed on a storage error");
            return seed_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
        }
    };
    if let Err(refusal) = app.limits.check_request(&user, &order.number) {
        tracing::warn!(user = %order.username, ?refusal, "request refused by a limit");
        return refusal_reply(&refusal);
    }
    let id = CallId::generate();
    let number = order.number.e164().to_owned();
    let code = order.code;
    let (requested, call_config) = (order.options, app.config.call.clone());
    let quota = app.limits.number_quota();
    let stored = {
        let id = id.clone();
        app.db
            .run(move |s| {
                if let Err(refusal) = quota.check(s, &number, now_ms())? {
                    return Ok(Err(refusal));
                }
                let options = requested.resolve(&s.user_call_defaults(user.id)?, &call_config);
                s.insert_call(&NewCall { id: &id, user_id: user.id, number: &number, code: &code, options: &options })
                    .map(Ok)
            })
            .await
    };
    match stored {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => {
            tracing::warn!(user = %order.username, ?refusal, "request refused by a limit");
            return refusal_reply(&refusal);
        }
        Err(e) => {
            tracing::error!(error = %e, "could not store call");
            return seed_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
        }
    }
    tracing::info!(call_id = %id, user = %order.username, "call accepted");
    app.dispatcher.submit(id.clone());
    seed_reply(StatusCode::OK, "OK", Some(id.as_str()))
}

async fn read_params(app: &App, req: Request<Incoming>) -> Result<Params, HttpResponse> {
    let query = req.uri().query().unwrap_or("").as_bytes().to_vec();
    if req.method() != Method::POST {
        return Ok(Params::decode([query.as_slice()]));
    }
    let form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !form {
        return Err(seed_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type: POST a body of type application/x-www-form-urlencoded",
        ));
    }
    let limit = app.config.http.max_body_bytes;
    let body_timeout = Duration::from_secs(app.config.http.body_timeout_secs);
    let body = tokio::time::timeout(body_timeout, Limited::new(req.into_body(), limit).collect()).await;
    match body {
        Ok(Ok(collected)) => {
            let body = collected.to_bytes();
            Ok(Params::decode([query.as_slice(), &body]))
        }
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(seed_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Payload Too Large: the body may be at most {limit} bytes"),
        )),
        Ok(Err(_)) => Err(seed_error(StatusCode::BAD_REQUEST, "Bad Request: the body could not be read")),
        Err(_) => Err(seed_error(StatusCode::REQUEST_TIMEOUT, "Request Timeout: the body took too long")),
    }
}

/// Field checks, in the seed's order; the first failure is reported.
fn check(app: &App, params: &Params) -> Result<Order, String> {
    let number = params.single("number").map_err(|e| e.to_string())?;
    let code = params.single("code").map_err(|e| e.to_string())?;
    let username = params.single("username").map_err(|e| e.to_string())?;
    let password = params.single("password").map_err(|e| e.to_string())?;
    let number =
        PhoneNumber::parse(number, app.config.phone.default_country).map_err(|e| format!("number {e}"))?;
    check_code(code)?;
    let language = params.optional("language").map_err(|e| e.to_string())?;
    let require_keypress = params.optional("require_keypress").map_err(|e| e.to_string())?;
    let require_keypress = require_keypress.map(parse_require_keypress).transpose().map_err(|e| e.to_string())?;
    let options =
        RequestedOptions::check(language, require_keypress, &app.config.call).map_err(|e| e.to_string())?;
    Ok(Order {
        number,
        code: code.to_owned(),
        username: username.to_owned(),
        password: password.to_owned(),
        options,
    })
}

/// A code is 4 to 20 ASCII digits, nothing else.
pub fn check_code(code: &str) -> Result<(), String> {
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err("code must contain only digits 0-9".into());
    }
    if !CODE_DIGITS.contains(&code.len()) {
        return Err(format!("code must be {} to {} digits long", CODE_DIGITS.start(), CODE_DIGITS.end()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_code;

    #[test]
    fn codes() {
        assert!(check_code("1234").is_ok());
        assert!(check_code(&"9".repeat(20)).is_ok());
        assert!(check_code("123").unwrap_err().contains("4 to 20"));
        assert!(check_code(&"9".repeat(21)).unwrap_err().contains("4 to 20"));
        assert!(check_code("12a4").unwrap_err().contains("only digits"));
        assert!(check_code("１２３４").unwrap_err().contains("only digits"));
        assert!(check_code("1234\r\n").unwrap_err().contains("only digits"));
        assert!(check_code("-1234").is_err());
    }
}
