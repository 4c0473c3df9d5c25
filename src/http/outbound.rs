//! `GET|POST /outbound.cgi?number=&code=&username=&password=[&language=][&require_keypress=][&mode=]`:
//! the seed API.
//!
//! Order of checks: every field present and well-formed (400, cheap), then
//! the failed-login lockout (429) and credentials (401, one bcrypt verify),
//! then the user's request rate (429) and the toll-fraud guard (403), then
//! the per-number quotas (429) and storing the call in one step; only then
//! the 200 with its id. Malformed requests never cost a bcrypt verify and
//! never reach the database or Asterisk. Checking, limiting and storing the
//! call is [`super::intake`], shared with the JSON API; this file reads the
//! form and words seed-shaped answers.

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::intake::{self, CallOrder, CheckedCall, PlaceError};
use super::params::Params;
use super::{BodyError, HttpResponse, has_media_type, read_body, refusal_reply, seed_error, seed_reply};
use crate::call::options::parse_require_keypress;
use crate::daemon::App;
use crate::limits::LoginError;

/// What the seed API asks for, checked.
struct Order {
    call: CheckedCall,
    username: String,
    password: String,
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
    let user = match intake::login(app, &order.username, &order.password, client).await {
        Ok(user) => user,
        Err(LoginError::Unauthorized) => return seed_error(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Err(LoginError::Limited(refusal)) => return refusal_reply(&refusal),
        Err(LoginError::Store(_)) => return seed_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
    };
    match intake::place(app, &user, order.call).await {
        Ok(call) => seed_reply(StatusCode::OK, "OK", Some(call.id.as_str())),
        Err(PlaceError::Refused(refusal)) => refusal_reply(&refusal),
        Err(PlaceError::Store(e)) => {
            tracing::error!(error = %e, "could not store call");
            seed_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
        }
    }
}

async fn read_params(app: &App, req: Request<Incoming>) -> Result<Params, HttpResponse> {
    let query = req.uri().query().unwrap_or("").as_bytes().to_vec();
    if req.method() != Method::POST {
        return Ok(Params::decode([query.as_slice()]));
    }
    if !has_media_type(&req, "application/x-www-form-urlencoded") {
        return Err(seed_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type: POST a body of type application/x-www-form-urlencoded",
        ));
    }
    match read_body(req, &app.config.http).await {
        Ok(body) => Ok(Params::decode([query.as_slice(), &body])),
        Err(e @ BodyError::TooLarge(_)) => Err(seed_error(e.status(), &format!("Payload Too Large: {e}"))),
        Err(e @ BodyError::Unreadable) => Err(seed_error(e.status(), &format!("Bad Request: {e}"))),
        Err(e @ BodyError::Timeout) => Err(seed_error(e.status(), &format!("Request Timeout: {e}"))),
    }
}

/// Field checks, in the seed's order; the first failure is reported.
fn check(app: &App, params: &Params) -> Result<Order, String> {
    let number = params.single("number").map_err(|e| e.to_string())?;
    let code = params.single("code").map_err(|e| e.to_string())?;
    let username = params.single("username").map_err(|e| e.to_string())?;
    let password = params.single("password").map_err(|e| e.to_string())?;
    let language = params.optional("language").map_err(|e| e.to_string())?;
    let require_keypress = params.optional("require_keypress").map_err(|e| e.to_string())?;
    let require_keypress = require_keypress.map(parse_require_keypress).transpose().map_err(|e| e.to_string())?;
    let mode = params.optional("mode").map_err(|e| e.to_string())?;
    let order = CallOrder { number, code, callback_url: None, language, require_keypress, mode };
    let call = intake::check(app, order).map_err(|e| e.message)?;
    Ok(Order { call, username: username.to_owned(), password: password.to_owned() })
}
