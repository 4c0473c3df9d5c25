//! Outbound AMI actions, and the checks that keep text from a request (a
//! phone number, a variable) from injecting headers or whole actions.
//!
//! An [`Action`] can only be built through checked constructors: every key
//! and value is validated when added, so the encoder can write them as they
//! are. `Debug` hides secrets so an action can be logged as a whole.

use std::fmt;

/// Most headers one action may carry besides `Action` and `ActionID`.
/// Asterisk reads at most 128 lines per action (`AST_MAX_MANHEADERS`) and
/// silently drops the rest, so a longer action would lose variables.
pub const MAX_ACTION_HEADERS: usize = 126;

/// An action to send to Asterisk: a name, an optional `ActionID`, and headers
/// in the order they will be written.
#[derive(Clone, PartialEq, Eq)]
pub struct Action {
    name: String,
    action_id: Option<String>,
    headers: Vec<(String, String)>,
}

/// What `Action::originate` needs to place one call.
///
/// `Async: true` is always sent: Asterisk then answers at once and reports
/// the outcome later as an `OriginateResponse` event with the same ActionID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Originate {
    /// Channel to dial, e.g. `PJSIP/+923001234567@carrier`.
    pub channel: String,
    /// Dialplan context the answered call continues in.
    pub context: String,
    /// Extension in `context`.
    pub exten: String,
    /// Priority in `exten`, usually 1.
    pub priority: u32,
    /// How long to let the callee ring, in milliseconds.
    pub timeout_ms: u64,
    /// Caller ID to present, if any.
    pub caller_id: Option<String>,
    /// Becomes the channel's `Uniqueid`, so every later event of this call
    /// (`Newstate`, `DialEnd`, `Hangup`) can be matched to our call record.
    pub channel_id: String,
    /// Channel variables, one `Variable: name=value` header each.
    pub variables: Vec<(String, String)>,
}

/// Why a header could not be added to an action. Names the header and the
/// rule broken, never the value: values can be secrets or codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A key (or action name, or variable name) was empty.
    #[error("empty AMI {0}")]
    Empty(&'static str),
    /// A key or action name had a character other than visible ASCII
    /// without `:`.
    #[error("AMI header key {key:?} has a forbidden character (only visible ASCII, no ':')")]
    BadKey {
        /// The offending key, shown escaped.
        key: String,
    },
    /// A value held CR, LF or NUL, which would end the header early and let
    /// the rest be read as new headers or a new action.
    #[error("value of AMI header {key:?} contains CR, LF or NUL")]
    BadValue {
        /// The header whose value was refused.
        key: String,
    },
    /// A channel variable name or value held a character Asterisk treats
    /// specially in `Variable` headers (see [`Action::originate`]).
    #[error("channel variable {name:?}: {reason}")]
    BadVariable {
        /// The variable name, shown escaped.
        name: String,
        /// The rule broken.
        reason: &'static str,
    },
    /// `Action` and `ActionID` are written by the encoder and the client;
    /// a second copy would confuse Asterisk or our response matching.
    #[error("AMI header {0:?} is reserved")]
    Reserved(String),
    /// More headers than Asterisk would read.
    #[error("AMI action has more than {MAX_ACTION_HEADERS} headers")]
    TooMany,
}

impl Action {
    /// Starts an action called `name` (e.g. `"CoreStatus"`), with no headers.
    pub fn new(name: impl Into<String>) -> Result<Action, HeaderError> {
        let name = name.into();
        check_key(&name, "action name")?;
        Ok(Action { name, action_id: None, headers: Vec::new() })
    }

    /// Appends `key: value`. Refuses empty keys, keys with anything but
    /// visible ASCII (so no `:`, space, CR, LF or NUL), values with CR, LF or
    /// NUL, and the reserved keys `Action` and `ActionID`.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Result<Action, HeaderError> {
        let key = key.into();
        let value = value.into();
        check_key(&key, "header key")?;
        if key.eq_ignore_ascii_case("Action") || key.eq_ignore_ascii_case("ActionID") {
            return Err(HeaderError::Reserved(key));
        }
        check_value(&key, &value)?;
        if self.headers.len() >= MAX_ACTION_HEADERS {
            return Err(HeaderError::TooMany);
        }
        self.headers.push((key, value));
        Ok(self)
    }

    /// Sets the `ActionID`, replacing any earlier one. The client calls this
    /// with its own unique id on every send, so callers need not.
    pub fn set_action_id(&mut self, id: impl Into<String>) -> Result<(), HeaderError> {
        let id = id.into();
        check_value("ActionID", &id)?;
        self.action_id = Some(id);
        Ok(())
    }

    /// The action's `ActionID`, if one was set.
    pub fn action_id(&self) -> Option<&str> {
        self.action_id.as_deref()
    }

    /// The action name, written as the `Action` header.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Headers in the order they will be written (without `Action` and
    /// `ActionID`).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// `Login` with a plaintext secret. `Events: on` asks for every event the
    /// user's `read=` permissions allow: the call flow needs
    /// `OriginateResponse` and `Hangup`, which `Events: off` would hide.
    pub fn login(username: &str, secret: &str) -> Result<Action, HeaderError> {
        Action::builtin("Login").header("Username", username)?.header("Secret", secret)?.header("Events", "on")
    }

    /// `Ping`; Asterisk answers `Response: Success` with `Ping: Pong`.
    pub fn ping() -> Action {
        Action::builtin("Ping")
    }

    /// `Logoff`; Asterisk answers `Response: Goodbye` and closes.
    pub fn logoff() -> Action {
        Action::builtin("Logoff")
    }

    /// `Status` of one channel, named by its name or its `Uniqueid`
    /// (Asterisk looks up both). Read the answer with
    /// [`super::ChannelStatus::from_reply`]. An empty `channel` is refused:
    /// Asterisk would answer with the status of every channel.
    pub fn status(channel: &str) -> Result<Action, HeaderError> {
        if channel.is_empty() {
            return Err(HeaderError::Empty("Status channel"));
        }
        Action::builtin("Status").header("Channel", channel)
    }

    /// `Hangup` of `channel` with a Q.850 `cause` (16 is normal clearing).
    pub fn hangup(channel: &str, cause: u32) -> Result<Action, HeaderError> {
        Action::builtin("Hangup").header("Channel", channel)?.header("Cause", cause.to_string())
    }

    /// `Originate` with `Async: true`, dialling `channel` and sending the
    /// answered call to `context`/`exten`/`priority`.
    ///
    /// Asterisk splits a `Variable` header at commas (honouring quotes and
    /// backslashes, which it strips), so a comma in a value would set a
    /// second, attacker-chosen variable. Variable names and values with `,`,
    /// `"` or `\`, and names with `=` or nothing, are refused.
    pub fn originate(o: Originate) -> Result<Action, HeaderError> {
        let mut action = Action::builtin("Originate")
            .header("Async", "true")?
            .header("ChannelId", o.channel_id)?
            .header("Channel", o.channel)?
            .header("Context", o.context)?
            .header("Exten", o.exten)?
            .header("Priority", o.priority.to_string())?
            .header("Timeout", o.timeout_ms.to_string())?;
        if let Some(caller_id) = o.caller_id {
            action = action.header("CallerID", caller_id)?;
        }
        for (name, value) in o.variables {
            check_variable(&name, &value)?;
            action = action.header("Variable", format!("{name}={value}"))?;
        }
        Ok(action)
    }

    /// An action whose name is a known-good literal.
    fn builtin(name: &'static str) -> Action {
        Action { name: name.to_owned(), action_id: None, headers: Vec::new() }
    }
}

impl fmt::Debug for Action {
    /// Prints headers with sensitive values replaced, so actions can be
    /// logged whole without leaking the AMI secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Headers<'a>(&'a [(String, String)]);
        impl fmt::Debug for Headers<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut list = f.debug_list();
                for (key, value) in self.0 {
                    let shown = if is_sensitive_header(key, value) { "<redacted>" } else { value.as_str() };
                    list.entry(&(key, shown));
                }
                list.finish()
            }
        }
        f.debug_struct("Action")
            .field("name", &self.name)
            .field("action_id", &self.action_id)
            .field("headers", &Headers(&self.headers))
            .finish()
    }
}

/// Whether a header's value must not be shown: the key names a secret, or
/// it is a `Variable` whose variable name does.
pub(crate) fn is_sensitive_header(key: &str, value: &str) -> bool {
    if key.eq_ignore_ascii_case("Variable") {
        let name = value.split('=').next().unwrap_or("");
        return is_sensitive_name(name);
    }
    is_sensitive_name(key)
}

fn is_sensitive_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["secret", "password", "passwd", "token"].iter().any(|w| lower.contains(w))
}

fn check_key(key: &str, what: &'static str) -> Result<(), HeaderError> {
    if key.is_empty() {
        return Err(HeaderError::Empty(what));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(HeaderError::BadKey { key: key.to_owned() });
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), HeaderError> {
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(HeaderError::BadValue { key: key.to_owned() });
    }
    Ok(())
}

fn check_variable(name: &str, value: &str) -> Result<(), HeaderError> {
    let bad = |reason| Err(HeaderError::BadVariable { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("empty name");
    }
    if name.contains('=') {
        return bad("'=' in name");
    }
    let special = |c: char| matches!(c, ',' | '"' | '\\' | '\r' | '\n' | '\0');
    // A function's arguments, as in `PJSIP_HEADER(add,X-Voice-OTP-Call)`:
    // Asterisk splits a `Variable` header at commas outside parentheses
    // only, so commas inside balanced parentheses of the name are safe.
    let mut depth = 0u32;
    for c in name.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return bad("unbalanced parentheses in name"),
            ')' => depth -= 1,
            ',' if depth > 0 => {}
            c if special(c) => return bad("',' outside parentheses, '\"', '\\', CR, LF or NUL in name"),
            _ => {}
        }
    }
    if depth != 0 {
        return bad("unbalanced parentheses in name");
    }
    if value.contains(special) {
        return bad("',', '\"', '\\', CR, LF or NUL in value");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn originate() -> Originate {
        Originate {
            channel: "PJSIP/+923001234567@carrier".into(),
            context: "otp".into(),
            exten: "s".into(),
            priority: 1,
            timeout_ms: 30_000,
            caller_id: Some("\"OTP\" <1000>".into()),
            channel_id: "call-42".into(),
            variables: vec![("OTP_CALL".into(), "42".into()), ("LANG".into(), "en".into())],
        }
    }

    #[test]
    fn originate_headers_in_order() {
        let a = Action::originate(originate()).expect("valid");
        assert_eq!(a.name(), "Originate");
        let keys: Vec<&str> = a.headers().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "Async",
                "ChannelId",
                "Channel",
                "Context",
                "Exten",
                "Priority",
                "Timeout",
                "CallerID",
                "Variable",
                "Variable"
            ]
        );
        assert_eq!(a.headers()[0].1, "true");
        assert_eq!(a.headers()[6].1, "30000");
        assert_eq!(a.headers()[8].1, "OTP_CALL=42");
        assert_eq!(a.headers()[9].1, "LANG=en");
    }

    #[test]
    fn status_of_one_channel() {
        let a = Action::status("9f1c0c5e2b7d4a8f9e3b6d1c2a4f8e07").expect("valid");
        assert_eq!(a.name(), "Status");
        assert_eq!(a.headers(), [("Channel".to_owned(), "9f1c0c5e2b7d4a8f9e3b6d1c2a4f8e07".to_owned())]);
        assert_eq!(Action::status(""), Err(HeaderError::Empty("Status channel")));
        assert!(matches!(Action::status("x\r\nAction: Originate"), Err(HeaderError::BadValue { .. })));
    }

    #[test]
    fn originate_without_caller_id() {
        let a = Action::originate(Originate { caller_id: None, variables: vec![], ..originate() }).expect("valid");
        assert!(a.headers().iter().all(|(k, _)| k != "CallerID"));
    }

    #[test]
    fn crlf_and_nul_in_values_refused() {
        for bad in ["100\r\nAction: Originate", "100\nx", "100\r", "a\0b"] {
            let err = Action::new("Hangup").and_then(|a| a.header("Channel", bad));
            assert_eq!(err, Err(HeaderError::BadValue { key: "Channel".into() }), "{bad:?}");
            let o = Originate { channel: bad.into(), ..originate() };
            assert!(Action::originate(o).is_err());
        }
        assert!(Action::hangup("PJSIP/x\r\n\r\nAction: Originate", 16).is_err());
        let mut a = Action::ping();
        assert!(a.set_action_id("x\r\nAction: Logoff").is_err());
        assert_eq!(a.action_id(), None);
    }

    #[test]
    fn bad_keys_refused() {
        for key in ["", "A B", "A:B", "A\r\nB", "A\0", "Ключ", "Tab\t"] {
            assert!(Action::ping().header(key, "v").is_err(), "{key:?}");
        }
        assert!(Action::new("Ping\r\nAction: Originate").is_err());
        assert!(Action::new("").is_err());
        assert!(matches!(Action::ping().header("actionid", "1"), Err(HeaderError::Reserved(_))));
        assert!(matches!(Action::ping().header("Action", "Logoff"), Err(HeaderError::Reserved(_))));
    }

    #[test]
    fn values_may_contain_colons_and_spaces() {
        let a = Action::ping().header("Command", "core show channels: concise").expect("valid");
        assert_eq!(a.headers()[0].1, "core show channels: concise");
    }

    #[test]
    fn variable_injection_refused() {
        for (name, value) in [
            ("A", "1,CALLERID(num)=666"),
            ("A", "\"x\""),
            ("A", "x\\"),
            ("A=B", "1"),
            ("", "1"),
            ("A,B", "1"),
            ("F(a,b", "1"),
            ("F(a),b", "1"),
            ("F(a))", "1"),
            ("F(a,\"b\")", "1"),
        ] {
            let o = Originate { variables: vec![(name.into(), value.into())], ..originate() };
            let err = Action::originate(o).expect_err("refused");
            assert!(matches!(err, HeaderError::BadVariable { .. }), "{name:?}={value:?}");
            assert!(!err.to_string().contains("666"), "value leaked: {err}");
        }
    }

    #[test]
    fn function_arguments_in_names_are_allowed() {
        let o =
            Originate { variables: vec![("PJSIP_HEADER(add,X-Voice-OTP-Call)".into(), "9f1c".into())], ..originate() };
        let a = Action::originate(o).expect("commas inside parentheses are not split by Asterisk");
        assert_eq!(a.headers().last().unwrap().1, "PJSIP_HEADER(add,X-Voice-OTP-Call)=9f1c");
    }

    #[test]
    fn header_count_bounded() {
        let mut a = Action::ping();
        for i in 0..MAX_ACTION_HEADERS {
            a = a.header(format!("H{i}"), "v").expect("within bound");
        }
        assert_eq!(a.header("One", "more"), Err(HeaderError::TooMany));
    }

    #[test]
    fn debug_redacts_secrets() {
        let a = Action::login("otp", "hunter2-very-secret").expect("valid");
        let shown = format!("{a:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("otp"), "{shown}");
        let a = Action::ping().header("X-Password", "pw-123").expect("valid");
        assert!(!format!("{a:?}").contains("pw-123"));
        let o = Originate { variables: vec![("AUTH_TOKEN".into(), "tok-999".into())], ..originate() };
        assert!(!format!("{:?}", Action::originate(o).expect("valid")).contains("tok-999"));
    }

    #[test]
    fn errors_never_show_values() {
        let err = Action::login("otp", "top\nsecret").expect_err("refused");
        assert!(!err.to_string().contains("top") && !format!("{err:?}").contains("top"), "{err}");
    }
}
