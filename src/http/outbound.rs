//! `GET|POST /outbound.cgi?number=&code=&username=&password=[&language=][&require_keypress=][&mode=]`:
//! the seed API.
//!
//! Order of checks: every field present and well-formed (400, cheap), then
//! the failed-login limits (429) and credentials (401, one bcrypt verify),
//! then the user's request rate (429) and the toll-fraud guard (403), then
//! the per-number quotas (429) and storing the call in one step; only then
//! the 200 with its id. Malformed requests never cost a bcrypt verify and
//! never reach the database or Asterisk. Checking, limiting and storing the
//! call is [`super::intake`], shared with the JSON API; this file reads the
//! form and words seed-shaped answers.

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::App;
use super::intake::{self, CallOrder, CheckedCall, FieldError, PlaceError};
use super::params::{ParamError, Params};
use super::{HttpResponse, has_media_type, read_body, refusal_reply, seed_accepted, seed_detail, seed_error};
use crate::call::options::parse_require_keypress;
use crate::limits::LoginError;
use crate::secret::Secret;

/// What the seed API asks for, checked.
struct Order {
    call: CheckedCall,
    username: String,
    password: Secret,
}

pub(super) async fn handle(app: &App, req: Request<Incoming>, client: IpAddr) -> HttpResponse {
    let params = match read_params(app, req).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let order = match check(app, &params) {
        Ok(o) => o,
        Err(e) => return seed_detail(StatusCode::BAD_REQUEST, &e.message, Some(e.field)),
    };
    let user = match intake::login(app, &order.username, &order.password, client).await {
        Ok(user) => user,
        Err(LoginError::Unauthorized) => return seed_error(StatusCode::UNAUTHORIZED),
        Err(LoginError::Limited(refusal)) => return refusal_reply(&refusal),
        Err(LoginError::Auth(_)) => return unavailable(),
    };
    match intake::place(app, &user, order.call).await {
        Ok(call) => seed_accepted(call.id.as_str()),
        Err(PlaceError::Refused(refusal)) => refusal_reply(&refusal),
        Err(PlaceError::Store(e)) => {
            tracing::error!(error = %e, "could not store call");
            unavailable()
        }
    }
}

fn unavailable() -> HttpResponse {
    seed_detail(StatusCode::SERVICE_UNAVAILABLE, "the database is unavailable; try again", None)
}

async fn read_params(app: &App, req: Request<Incoming>) -> Result<Params, HttpResponse> {
    let query = req.uri().query().unwrap_or("").as_bytes().to_vec();
    if req.method() != Method::POST {
        return Ok(Params::decode([query.as_slice()]));
    }
    if !has_media_type(&req, "application/x-www-form-urlencoded") {
        return Err(seed_detail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST a body of type application/x-www-form-urlencoded",
            None,
        ));
    }
    match read_body(req, &app.config.http).await {
        Ok(body) => Ok(Params::decode([query.as_slice(), &body])),
        Err(e) => Err(seed_detail(e.status(), &e.to_string(), None)),
    }
}

/// Field checks, in the seed's order; the first failure is reported.
fn check(app: &App, params: &Params) -> Result<Order, FieldError> {
    let number = params.single("number")?;
    let code = params.single("code")?;
    let username = params.single("username")?;
    let password = params.single("password")?;
    let language = params.optional("language")?;
    let require_keypress = params.optional("require_keypress")?;
    let require_keypress = require_keypress.map(parse_require_keypress).transpose()?;
    let mode = params.optional("mode")?;
    let order = CallOrder { number, code, callback_url: None, language, require_keypress, mode };
    let call = intake::check(app, order)?;
    Ok(Order { call, username: username.to_owned(), password: Secret::new(password) })
}

impl From<ParamError> for FieldError {
    fn from(e: ParamError) -> FieldError {
        FieldError::new(e.field(), e.to_string())
    }
}
