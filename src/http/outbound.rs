//! `GET|POST /outbound.cgi?number=&code=&username=&password=`: the seed API.
//!
//! Order of checks: every field present and well-formed (400, cheap), then
//! credentials (401, one bcrypt verify), then the call is stored and only
//! then answered 200 with its id. Malformed requests never cost a bcrypt
//! verify and never reach the database or Asterisk. Checking and storing
//! the call is [`super::intake`], shared with the JSON API.

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::intake::{self, CallOptions, CallOrder, CheckedCall};
use super::params::Params;
use super::{BodyError, HttpResponse, has_media_type, read_body, seed_error, seed_reply};
use crate::daemon::App;

/// What the seed API asks for, checked.
struct Order {
    call: CheckedCall,
    username: String,
    password: String,
}

pub(super) async fn handle(app: &App, req: Request<Incoming>) -> HttpResponse {
    let params = match read_params(app, req).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let order = match check(app, &params) {
        Ok(o) => o,
        Err(why) => return seed_error(StatusCode::BAD_REQUEST, &format!("Bad Request: {why}")),
    };
    let user = match app.auth.authenticate(&order.username, &order.password).await {
        Ok(Some(user)) => user,
        Ok(None) => return seed_error(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Err(e) => {
            tracing::error!(error = %e, "authentication failed on a storage error");
            return seed_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
        }
    };
    match intake::place(app, &user, order.call).await {
        Ok(call) => seed_reply(StatusCode::OK, "OK", Some(call.id.as_str())),
        Err(e) => {
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
    match read_body(req, app.config.http.max_body_bytes).await {
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
    let call = intake::check(app, CallOrder { number, code, callback_url: None }, CallOptions::default())
        .map_err(|e| e.message)?;
    Ok(Order { call, username: username.to_owned(), password: password.to_owned() })
}
