//! Taking in a new call, shared by the seed API and `POST /v1/calls`, so
//! both pass the same checks and limits in the same order:
//!
//! 1. [`check`]: number, code, `language`, `mode`, `require_keypress`, callback URL
//!    (cheap, no database);
//! 2. [`login`]: the failed-login limits, then the bcrypt verify
//!    ([`crate::limits::Limits::login`]);
//! 3. [`place`]: the user's request rate and the toll-fraud guard, then in
//!    one database step the queue's room, the per-number quotas, the user's
//!    daily cap, the user's call defaults and the insert; then the call goes
//!    to the dialler.
//!
//! The front ends differ only in how they read fields and credentials (the
//! JSON API authenticates before reading its body) and in how they word
//! their answers (seed-shaped bodies vs problem+json).

use std::net::IpAddr;

use super::App;
use crate::call::options::{CallOptions, OptionError, RequestedOptions};
use crate::call::{Call, CallId, now_ms};
use crate::limits::{LoginError, Refusal};
use crate::phone::PhoneNumber;
use crate::secret::Secret;
use crate::store::{NewCall, NewCallLifecycle, Store, StoreError, User};
use crate::webhook::{WebhookUrl, check_url};

/// Longest and shortest code we read out (the seed allows 20 digits).
pub const CODE_DIGITS: std::ops::RangeInclusive<usize> = 4..=20;

/// A new call as the client asked for it, fields not yet checked (only
/// typed: each front end reads `require_keypress` its own way).
#[derive(Debug, Clone, Copy)]
pub struct CallOrder<'a> {
    /// Destination as typed.
    pub number: &'a str,
    /// The code as typed.
    pub code: &'a str,
    /// Webhook URL for this call.
    pub callback_url: Option<&'a str>,
    /// The `language` field, if given.
    pub language: Option<&'a str>,
    /// The `require_keypress` field, if given.
    pub require_keypress: Option<bool>,
    /// The `mode` field, if given.
    pub mode: Option<&'a str>,
}

/// A field the client got wrong: names it, and says how (the message starts
/// with the field name, e.g. `code must be 4 to 20 digits long`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field.
    pub field: &'static str,
    /// What is wrong, field name first.
    pub message: String,
}

impl FieldError {
    /// A new field error.
    pub fn new(field: &'static str, message: impl Into<String>) -> FieldError {
        FieldError { field, message: message.into() }
    }
}

impl From<OptionError> for FieldError {
    fn from(e: OptionError) -> FieldError {
        FieldError::new(e.field, e.to_string())
    }
}

/// A call whose fields passed every check.
#[derive(Debug)]
pub struct CheckedCall {
    number: PhoneNumber,
    /// Redacted in `Debug`, like every secret.
    code: Secret,
    callback_url: Option<WebhookUrl>,
    options: RequestedOptions,
}

/// Checks the fields, in the seed's order (number, code, language), then
/// the callback URL.
pub fn check(app: &App, order: CallOrder<'_>) -> Result<CheckedCall, FieldError> {
    let number = PhoneNumber::parse(order.number, app.config.phone.default_country)
        .map_err(|e| FieldError::new("number", format!("number {e}")))?;
    check_code(order.code).map_err(|e| FieldError::new("code", e))?;
    let options = RequestedOptions::check(order.language, order.require_keypress, order.mode, &app.config.call)?;
    let callback_url = order
        .callback_url
        .map(|url| check_url(url, &app.config.webhooks))
        .transpose()
        .map_err(|e| FieldError::new("callback_url", format!("callback_url {e}")))?;
    Ok(CheckedCall { number, code: Secret::new(order.code), callback_url, options })
}

/// Checks credentials behind the failed-login limits of `client` and the
/// name; logs refusals and failed checks (never the password).
pub async fn login(app: &App, name: &str, password: &Secret, client: IpAddr) -> Result<User, LoginError> {
    if !crate::auth::is_possible_name(name) {
        // No user has it: 401 at once, as for any wrong credentials.
        tracing::debug!(%client, "login refused: not a possible user name");
        return Err(LoginError::Unauthorized);
    }
    let result = app.limits.login(&app.auth, name, password, client).await;
    match &result {
        Err(LoginError::Limited(_)) => tracing::warn!(%client, "login refused: failed-login limit"),
        Err(LoginError::Auth(e)) => tracing::error!(error = %e, "credentials could not be checked"),
        Ok(_) | Err(LoginError::Unauthorized) => {}
    }
    result
}

/// Why [`place`] stored no call.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// A limit or the toll-fraud guard refused it (429 or 403).
    #[error("refused by a limit")]
    Refused(Refusal),
    /// The database failed (503).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// For an authenticated `user`: the request rate and the toll-fraud guard,
/// then the per-number quotas, the user's daily cap, the options (request, else the user's
/// defaults, else `[call]`) and the insert as one database step, so two
/// requests cannot both take a number's last slot. The stored call then
/// goes to the dialler and is returned.
pub async fn place(app: &App, user: &User, call: CheckedCall) -> Result<Call, PlaceError> {
    let code = call.code;
    let placement =
        Placement { number: call.number, callback_url: call.callback_url.map(|u| u.url), options: call.options };
    let (call, ()) =
        place_with(app, user, placement, move |_, _, options, _| Ok(Ok((code, options, None, ())))).await?;
    Ok(call)
}

/// A call to place whose code is decided in the database step that stores it.
#[derive(Debug)]
pub struct Placement {
    /// Destination.
    pub number: PhoneNumber,
    /// Its webhook URL (checked), if it has its own.
    pub callback_url: Option<String>,
    /// Its options as the request gave them.
    pub options: RequestedOptions,
}

/// What decides a call's code once every limit has passed, inside the same
/// database transaction as the insert: given the store, the new call's id,
/// its resolved options and the time, the code to read, the options to
/// store (a re-send keeps its verification's), the verification it belongs
/// to, and a value for the caller - or a refusal, which stores nothing.
pub type Decision<T> = Result<Result<(Secret, CallOptions, Option<OfVerification>, T), Refusal>, StoreError>;

/// The verification a call is placed for: its id, and the URL its calls'
/// webhooks go to (the verification's own, whatever a re-send asked for;
/// `None`: the user's default).
pub struct OfVerification {
    /// The verification's id.
    pub id: String,
    /// Where its calls' webhooks go.
    pub callback_url: Option<String>,
}

/// [`place`] for a call whose code `decide` picks in the database step:
/// the same limits in the same order, then `decide`, then the insert, all
/// one transaction.
pub async fn place_with<T, F>(app: &App, user: &User, placement: Placement, decide: F) -> Result<(Call, T), PlaceError>
where
    T: Send + 'static,
    F: FnOnce(&mut Store, &CallId, CallOptions, i64) -> Decision<T> + Send + 'static,
{
    if let Err(refusal) = app.limits.check_request(user, &placement.number) {
        tracing::warn!(user = %user.name, ?refusal, "request refused by a limit");
        return Err(PlaceError::Refused(refusal));
    }
    let id = CallId::generate();
    let user_id = user.id;
    let number = placement.number.e164().to_owned();
    let deadline_at = Some(now_ms() + i64::from(app.config.dial.deadline_secs) * 1000);
    let callback_url = placement.callback_url;
    let (requested, call_config) = (placement.options, app.config.call.clone());
    let quota = app.limits.number_quota();
    let user_quota = app.limits.user_quota();
    let max_queued = u64::from(app.config.queue.max_queued);
    let stored = {
        let id = id.clone();
        app.db
            .run(move |s| {
                s.atomically(|s| {
                    if s.queued_count()? >= max_queued {
                        return Ok(Err(Refusal::queue_full(
                            format!("{max_queued} calls are waiting to be dialled (queue.max_queued)"),
                            QUEUE_FULL_RETRY,
                        )));
                    }
                    let now = now_ms();
                    if let Err(refusal) = quota.check(s, &number, now)? {
                        return Ok(Err(refusal));
                    }
                    if let Err(refusal) = user_quota.check(s, user_id, now)? {
                        return Ok(Err(refusal));
                    }
                    let options = requested.resolve(&s.user_call_defaults(user_id)?, &call_config);
                    let (code, options, verification, out) = match decide(s, &id, options, now)? {
                        Ok(decided) => decided,
                        Err(refusal) => return Ok(Err(refusal)),
                    };
                    let new = NewCall { id: &id, user_id, number: &number, code: code.expose(), options: &options };
                    let (verification_id, callback_url) = match verification {
                        Some(v) => (Some(v.id), v.callback_url),
                        None => (None, callback_url),
                    };
                    let life = NewCallLifecycle { deadline_at, callback_url, verification_id };
                    s.insert_call_with(&new, &life)?;
                    let call = s.call(&id)?.ok_or_else(|| StoreError::Corrupt("call vanished after insert".into()))?;
                    Ok(Ok((call, out)))
                })
            })
            .await?
    };
    let stored = stored.map_err(|refusal| {
        tracing::warn!(user = %user.name, ?refusal, "request refused by a limit");
        PlaceError::Refused(refusal)
    })?;
    tracing::info!(call_id = %id, user = %user.name, "call accepted");
    app.dispatcher.submit(id);
    Ok(stored)
}

/// What a client refused for a full queue is told to wait.
const QUEUE_FULL_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

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
    fn a_checked_call_never_shows_its_code() {
        let checked = super::CheckedCall {
            number: crate::phone::PhoneNumber::parse("03001234567", crate::phone::Country::parse("PK").unwrap())
                .unwrap(),
            code: crate::secret::Secret::new("482915"),
            callback_url: None,
            options: Default::default(),
        };
        assert!(!format!("{checked:?}").contains("482915"));
    }

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
