//! Taking in a new call, shared by the seed API and `POST /v1/calls`:
//! check the number, the code and the callback URL, store the call, hand it
//! to the dialler. The two front ends differ only in how they read fields,
//! authenticate and shape their answers.

use crate::call::{Call, CallId, now_ms};
use crate::daemon::App;
use crate::phone::PhoneNumber;
use crate::store::{NewCall, NewCallLifecycle, StoreError, User};
use crate::webhook::{WebhookUrl, check_url};

/// Longest and shortest code we read out (the seed allows 20 digits).
pub const CODE_DIGITS: std::ops::RangeInclusive<usize> = 4..=20;

/// Per-call options of the JSON API. Accepted and type-checked here; what
/// they do belongs to the call flow (language of the prompts, waiting for a
/// key press before reading the code).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// Prompt language, e.g. `en`, `ur`.
    pub language: Option<String>,
    /// Read the code only after the callee presses a key.
    pub require_keypress: Option<bool>,
}

/// A new call as the client asked for it, fields not yet checked.
#[derive(Debug, Clone, Copy)]
pub struct CallOrder<'a> {
    /// Destination as typed.
    pub number: &'a str,
    /// The code as typed.
    pub code: &'a str,
    /// Webhook URL for this call.
    pub callback_url: Option<&'a str>,
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

/// A call whose fields passed every check.
#[derive(Debug)]
pub struct CheckedCall {
    number: PhoneNumber,
    code: String,
    callback_url: Option<WebhookUrl>,
    options: CallOptions,
}

/// Checks the fields, in the seed's order (number, code), then the callback URL.
pub fn check(app: &App, order: CallOrder<'_>, options: CallOptions) -> Result<CheckedCall, FieldError> {
    let number = PhoneNumber::parse(order.number, app.config.phone.default_country)
        .map_err(|e| FieldError::new("number", format!("number {e}")))?;
    check_code(order.code).map_err(|e| FieldError::new("code", e))?;
    let callback_url = order
        .callback_url
        .map(|url| check_url(url, &app.config.webhooks))
        .transpose()
        .map_err(|e| FieldError::new("callback_url", format!("callback_url {e}")))?;
    Ok(CheckedCall { number, code: order.code.to_owned(), callback_url, options })
}

/// Stores the call as `queued` for `user` and hands it to the dialler.
/// Returns the stored call.
pub async fn place(app: &App, user: &User, call: CheckedCall) -> Result<Call, StoreError> {
    let id = CallId::generate();
    let user_id = user.id;
    let number = call.number.e164().to_owned();
    let life = NewCallLifecycle {
        deadline_at: Some(now_ms() + i64::from(app.config.dial.deadline_secs) * 1000),
        callback_url: call.callback_url.map(|u| u.url),
    };
    // The options are carried this far for the call flow to use.
    let _ = &call.options;
    let code = call.code;
    let stored = {
        let id = id.clone();
        app.db
            .run(move |s| {
                s.insert_call_with(&NewCall { id: &id, user_id, number: &number, code: &code }, &life)?;
                s.call(&id)?.ok_or_else(|| StoreError::Corrupt("call vanished after insert".into()))
            })
            .await?
    };
    tracing::info!(call_id = %id, user = %user.name, "call accepted");
    app.dispatcher.submit(id);
    Ok(stored)
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
