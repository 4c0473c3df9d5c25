//! Typed AGI commands: the only way this crate builds a command line.
//!
//! Asterisk splits a command line into words at spaces and tabs; `"` toggles
//! quoting and `\` makes the next character literal (res_agi `parse_args`).
//! It reads a command into a 2048-byte buffer and treats whatever exceeds it
//! as the *next* command. So a value taken from outside (a variable's value,
//! a message) could inject a second command through a line break, an
//! unbalanced quote or sheer length. [`Command::to_line`] closes all three:
//! every control character is refused, free text is always quoted and
//! escaped, identifiers and file names are limited to safe characters, and
//! the whole line is capped at [`MAX_COMMAND_LEN`].

use std::fmt;

/// Longest command line written, newline excluded. Asterisk's read buffer is
/// 2048 bytes; beyond it the remainder would run as a separate command.
pub const MAX_COMMAND_LEN: usize = 2000;

/// Longest digit string [`Command::SayDigits`] accepts.
pub const MAX_SAY_DIGITS: usize = 64;

/// Most keys [`Command::GetData`] may collect: Asterisk gathers them in a
/// 1024-byte buffer with its terminating NUL.
pub const MAX_GET_DATA_DIGITS: u32 = 1023;

/// A command to run on the channel, one at a time.
///
/// `Debug` redacts what may be secret: the digits of `SayDigits` (the OTP
/// itself), the value of `SetVariable` and the arguments of `Exec`.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// `ANSWER`: answer the channel if not yet up.
    Answer,
    /// `HANGUP`: hang up this channel. Still sent after a hang-up is known
    /// (harmless; Asterisk answers 200 or 511).
    Hangup,
    /// `STREAM FILE file "escape" [offset]`: play a sound file (no
    /// extension; Asterisk picks the channel's language). `result` is 0, the
    /// ASCII code of an escape digit pressed, or -1 (missing file, hang-up).
    StreamFile {
        /// Sound file name: `[A-Za-z0-9_/.-]`, no `..`.
        file: String,
        /// Keys that interrupt playback: `0-9*#`, may be empty.
        escape_digits: String,
        /// Sample offset to start at.
        offset: Option<u64>,
    },
    /// `GET OPTION file "escape" [timeout]`: like `StreamFile`, then wait
    /// for one of the escape digits.
    GetOption {
        /// Sound file name: `[A-Za-z0-9_/.-]`, no `..`.
        file: String,
        /// Keys accepted: `0-9*#`, may be empty.
        escape_digits: String,
        /// How long to wait after playback, in ms (Asterisk's default, the
        /// dialplan digit timeout, when `None`).
        timeout_ms: Option<u32>,
    },
    /// `GET DATA file timeout maxdigits`: play a prompt and collect keys,
    /// those pressed during the prompt included. `#` ends the entry (and is
    /// not part of it), so do `maxdigits` keys and `timeout` ms without a
    /// key (after the prompt, and between keys). `result` is the keys
    /// (`200 result=123`, `(timeout)` after them on a timeout, empty for a
    /// lone `#` or nothing), or -1 (missing prompt, hang-up).
    GetData {
        /// Prompt sound file name: `[A-Za-z0-9_/.-]`, no `..`.
        file: String,
        /// Wait for each key, in ms (1..=`i32::MAX`; 0 would be Asterisk's
        /// own defaults).
        timeout_ms: u32,
        /// Most keys collected (1..=[`MAX_GET_DATA_DIGITS`]).
        max_digits: u32,
    },
    /// `WAIT FOR DIGIT ms`: wait for one key; -1 waits forever. `result` is
    /// 0 on timeout, the key's ASCII code, or -1 on hang-up.
    WaitForDigit {
        /// Milliseconds to wait, -1 for ever (`-1..=i32::MAX`).
        timeout_ms: i64,
    },
    /// `SAY DIGITS digits "escape"`: say each digit in the channel language.
    SayDigits {
        /// Decimal digits only, 1 to [`MAX_SAY_DIGITS`] of them.
        digits: String,
        /// Keys that interrupt: `0-9*#`, may be empty.
        escape_digits: String,
    },
    /// `GET VARIABLE name`: `result=1 (value)` when set, `result=0` if not.
    /// Names: `[A-Za-z0-9_]`, optionally followed by a function argument
    /// list such as `CHANNEL(language)`.
    GetVariable(String),
    /// `SET VARIABLE name "value"`.
    SetVariable(String, String),
    /// `EXEC app "args"`: run a dialplan application. The arguments are
    /// quoted for AGI, but the application parses them itself (commas,
    /// options): keep outside data out of them or validate it first.
    Exec {
        /// Application name: `[A-Za-z0-9_]`.
        app: String,
        /// Its argument string.
        args: String,
    },
    /// `VERBOSE "message" level`: log to the Asterisk console (level 1-4).
    Verbose(String, u8),
}

/// Why a [`Command`] cannot be written. Never echoes the offending value:
/// it may be the OTP or caller data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A field holds a control character (CR, LF, NUL, ...).
    #[error("{0} contains a control character")]
    ControlChar(&'static str),
    /// A sound file name is empty, has `..` or a character outside
    /// `[A-Za-z0-9_/.-]`.
    #[error("invalid sound file name")]
    BadFileName,
    /// Escape digits other than `0-9*#`.
    #[error("escape digits may only be 0-9, * and #")]
    BadEscapeDigits,
    /// `SayDigits` needs 1 to [`MAX_SAY_DIGITS`] decimal digits.
    #[error("digits to say must be 1 to {MAX_SAY_DIGITS} decimal digits")]
    BadDigits,
    /// A variable or application name outside the allowed characters.
    #[error("invalid {0} name")]
    BadName(&'static str),
    /// A numeric argument out of range.
    #[error("{0} out of range")]
    OutOfRange(&'static str),
    /// The line would exceed [`MAX_COMMAND_LEN`].
    #[error("command longer than {MAX_COMMAND_LEN} bytes")]
    TooLong,
}

impl Command {
    /// The command's verb, for logs (never its arguments).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Answer => "ANSWER",
            Command::Hangup => "HANGUP",
            Command::StreamFile { .. } => "STREAM FILE",
            Command::GetOption { .. } => "GET OPTION",
            Command::GetData { .. } => "GET DATA",
            Command::WaitForDigit { .. } => "WAIT FOR DIGIT",
            Command::SayDigits { .. } => "SAY DIGITS",
            Command::GetVariable(_) => "GET VARIABLE",
            Command::SetVariable(..) => "SET VARIABLE",
            Command::Exec { .. } => "EXEC",
            Command::Verbose(..) => "VERBOSE",
        }
    }

    /// The validated command line, without its trailing `\n`.
    pub fn to_line(&self) -> Result<String, CommandError> {
        let mut line = String::new();
        self.write_line(&mut line)?;
        Ok(line)
    }

    /// Checks the command as [`to_line`](Self::to_line) would, without
    /// building the line.
    pub fn check(&self) -> Result<(), CommandError> {
        self.write_line(&mut Discard)
    }

    /// Writes the validated command line, without its trailing `\n`, to
    /// `out` (the encoder writes straight into the send buffer). On an
    /// error `out` may hold part of the line: the caller drops it.
    pub fn write_line<W: fmt::Write>(&self, out: &mut W) -> Result<(), CommandError> {
        let mut w = Counted { out, len: 0 };
        self.write_parts(&mut w).map_err(|e| match e {
            Written::Invalid(e) => e,
            // Our writers (String, BytesMut, the counter) never fail; a
            // failing one can only mean the line could not be built whole.
            Written::Fmt => CommandError::TooLong,
        })?;
        if w.len > MAX_COMMAND_LEN {
            return Err(CommandError::TooLong);
        }
        Ok(())
    }

    fn write_parts<W: fmt::Write>(&self, w: &mut W) -> Result<(), Written> {
        match self {
            Command::Answer => w.write_str("ANSWER")?,
            Command::Hangup => w.write_str("HANGUP")?,
            Command::StreamFile { file, escape_digits, offset } => {
                write!(w, "STREAM FILE {} ", sound_file(file)?)?;
                write_quoted(w, escape(escape_digits)?)?;
                if let Some(offset) = offset {
                    write!(w, " {offset}")?;
                }
            }
            Command::GetOption { file, escape_digits, timeout_ms } => {
                write!(w, "GET OPTION {} ", sound_file(file)?)?;
                write_quoted(w, escape(escape_digits)?)?;
                if let Some(ms) = timeout_ms {
                    if *ms > i32::MAX as u32 {
                        return Err(CommandError::OutOfRange("timeout").into());
                    }
                    write!(w, " {ms}")?;
                }
            }
            Command::GetData { file, timeout_ms, max_digits } => {
                // Asterisk scans both as C ints (atoi).
                if *timeout_ms == 0 || *timeout_ms > i32::MAX as u32 {
                    return Err(CommandError::OutOfRange("timeout").into());
                }
                if !(1..=MAX_GET_DATA_DIGITS).contains(max_digits) {
                    return Err(CommandError::OutOfRange("max digits").into());
                }
                write!(w, "GET DATA {} {timeout_ms} {max_digits}", sound_file(file)?)?;
            }
            Command::WaitForDigit { timeout_ms } => {
                // Asterisk scans the timeout as a C int.
                if !(-1..=i64::from(i32::MAX)).contains(timeout_ms) {
                    return Err(CommandError::OutOfRange("timeout").into());
                }
                write!(w, "WAIT FOR DIGIT {timeout_ms}")?;
            }
            Command::SayDigits { digits, escape_digits } => {
                let ok = (1..=MAX_SAY_DIGITS).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
                if !ok {
                    return Err(CommandError::BadDigits.into());
                }
                write!(w, "SAY DIGITS {digits} ")?;
                write_quoted(w, escape(escape_digits)?)?;
            }
            Command::GetVariable(name) => write!(w, "GET VARIABLE {}", variable(name)?)?,
            Command::SetVariable(name, value) => {
                write!(w, "SET VARIABLE {} ", variable(name)?)?;
                write_quoted(w, text("variable value", value)?)?;
            }
            Command::Exec { app, args } => {
                let ok = !app.is_empty() && app.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(CommandError::BadName("application").into());
                }
                write!(w, "EXEC {app} ")?;
                write_quoted(w, text("application arguments", args)?)?;
            }
            Command::Verbose(message, level) => {
                if !(1..=4).contains(level) {
                    return Err(CommandError::OutOfRange("verbose level").into());
                }
                w.write_str("VERBOSE ")?;
                write_quoted(w, text("message", message)?)?;
                write!(w, " {level}")?;
            }
        }
        Ok(())
    }
}

/// Why writing a line stopped.
enum Written {
    Invalid(CommandError),
    Fmt,
}

impl From<CommandError> for Written {
    fn from(e: CommandError) -> Self {
        Written::Invalid(e)
    }
}

impl From<fmt::Error> for Written {
    fn from(_: fmt::Error) -> Self {
        Written::Fmt
    }
}

/// Passes writes through and counts the bytes.
struct Counted<'a, W> {
    out: &'a mut W,
    len: usize,
}

impl<W: fmt::Write> fmt::Write for Counted<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.len += s.len();
        self.out.write_str(s)
    }
}

/// Writes nothing: for checking a command without building its line.
struct Discard;

impl fmt::Write for Discard {
    fn write_str(&mut self, _: &str) -> fmt::Result {
        Ok(())
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::SayDigits { digits, escape_digits } => f
                .debug_struct("SayDigits")
                .field("digits", &format_args!("<{} redacted>", digits.len()))
                .field("escape_digits", escape_digits)
                .finish(),
            Command::SetVariable(name, _) => {
                f.debug_tuple("SetVariable").field(name).field(&format_args!("<redacted>")).finish()
            }
            Command::Exec { app, .. } => {
                f.debug_struct("Exec").field("app", app).field("args", &format_args!("<redacted>")).finish()
            }
            Command::Answer => f.write_str("Answer"),
            Command::Hangup => f.write_str("Hangup"),
            Command::StreamFile { file, escape_digits, offset } => f
                .debug_struct("StreamFile")
                .field("file", file)
                .field("escape_digits", escape_digits)
                .field("offset", offset)
                .finish(),
            Command::GetOption { file, escape_digits, timeout_ms } => f
                .debug_struct("GetOption")
                .field("file", file)
                .field("escape_digits", escape_digits)
                .field("timeout_ms", timeout_ms)
                .finish(),
            Command::GetData { file, timeout_ms, max_digits } => f
                .debug_struct("GetData")
                .field("file", file)
                .field("timeout_ms", timeout_ms)
                .field("max_digits", max_digits)
                .finish(),
            Command::WaitForDigit { timeout_ms } => {
                f.debug_struct("WaitForDigit").field("timeout_ms", timeout_ms).finish()
            }
            Command::GetVariable(name) => f.debug_tuple("GetVariable").field(name).finish(),
            Command::Verbose(message, level) => f.debug_tuple("Verbose").field(message).field(level).finish(),
        }
    }
}

/// Free text: anything printable; quoted by [`write_quoted`] afterwards.
fn text<'a>(field: &'static str, s: &'a str) -> Result<&'a str, CommandError> {
    if s.chars().any(char::is_control) {
        return Err(CommandError::ControlChar(field));
    }
    Ok(s)
}

/// Wraps `s` in double quotes, escaping `"` and `\` so Asterisk's parser
/// hands it back as exactly one argument, unchanged.
fn write_quoted<W: fmt::Write>(w: &mut W, s: &str) -> fmt::Result {
    w.write_char('"')?;
    let mut rest = s;
    while let Some(at) = rest.find(['"', '\\']) {
        w.write_str(&rest[..at])?;
        w.write_char('\\')?;
        w.write_str(&rest[at..at + 1])?;
        rest = &rest[at + 1..];
    }
    w.write_str(rest)?;
    w.write_char('"')
}

fn escape(digits: &str) -> Result<&str, CommandError> {
    if digits.bytes().all(|b| b.is_ascii_digit() || b == b'*' || b == b'#') {
        Ok(digits)
    } else {
        Err(CommandError::BadEscapeDigits)
    }
}

/// A sound file name. Written unquoted: its charset has no separator, quote
/// or escape. `..` is refused so no name climbs out of the sounds tree;
/// absolute paths stay allowed for prompts installed elsewhere.
fn sound_file(file: &str) -> Result<&str, CommandError> {
    let ok = !file.is_empty()
        && !file.as_bytes().windows(2).any(|w| w == b"..")
        && file.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'/' | b'.' | b'-'));
    if ok { Ok(file) } else { Err(CommandError::BadFileName) }
}

/// A variable name, optionally a dialplan function call with simple
/// arguments: `NAME` or `FUNC(arg,arg)`. Written unquoted.
fn variable(name: &str) -> Result<&str, CommandError> {
    let ident = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let ok = match name.split_once('(') {
        None => ident(name),
        Some((func, rest)) => {
            ident(func)
                && rest.strip_suffix(')').is_some_and(|args| {
                    args.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b',' | b'.' | b'-' | b':'))
                })
        }
    };
    if ok { Ok(name) } else { Err(CommandError::BadName("variable")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port of Asterisk's `parse_args` (res_agi.c): how Asterisk will split
    /// the line we write. Used to prove quoting round-trips.
    fn asterisk_parse_args(line: &str) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let (mut quoted, mut escaped, mut whitespace) = (false, false, true);
        for c in line.chars() {
            let normal = match c {
                '"' if !escaped => {
                    quoted = !quoted;
                    if quoted && whitespace {
                        args.push(String::new());
                        whitespace = false;
                    }
                    false
                }
                ' ' | '\t' if !quoted && !escaped => {
                    whitespace = true;
                    false
                }
                '\\' if !escaped => {
                    escaped = true;
                    false
                }
                _ => true,
            };
            if normal {
                if whitespace {
                    args.push(String::new());
                    whitespace = false;
                }
                if let Some(last) = args.last_mut() {
                    last.push(c);
                }
                escaped = false;
            } else if c == '"' {
                escaped = false;
            }
        }
        args
    }

    fn line(cmd: Command) -> String {
        cmd.to_line().unwrap()
    }

    #[test]
    fn lines_match_what_asterisk_expects() {
        assert_eq!(line(Command::Answer), "ANSWER");
        assert_eq!(line(Command::Hangup), "HANGUP");
        assert_eq!(
            line(Command::StreamFile { file: "digits/4".into(), escape_digits: "1".into(), offset: None }),
            r#"STREAM FILE digits/4 "1""#
        );
        assert_eq!(
            line(Command::StreamFile { file: "otp/intro".into(), escape_digits: "".into(), offset: Some(800) }),
            r#"STREAM FILE otp/intro "" 800"#
        );
        assert_eq!(
            line(Command::GetOption { file: "otp/repeat".into(), escape_digits: "1#".into(), timeout_ms: Some(5000) }),
            r#"GET OPTION otp/repeat "1#" 5000"#
        );
        assert_eq!(
            line(Command::GetData { file: "voice-otp/enter_code".into(), timeout_ms: 6000, max_digits: 6 }),
            "GET DATA voice-otp/enter_code 6000 6"
        );
        assert_eq!(line(Command::WaitForDigit { timeout_ms: 1500 }), "WAIT FOR DIGIT 1500");
        assert_eq!(line(Command::WaitForDigit { timeout_ms: -1 }), "WAIT FOR DIGIT -1");
        assert_eq!(
            line(Command::SayDigits { digits: "4821".into(), escape_digits: "".into() }),
            r#"SAY DIGITS 4821 """#
        );
        assert_eq!(line(Command::GetVariable("X".into())), "GET VARIABLE X");
        assert_eq!(line(Command::GetVariable("CHANNEL(language)".into())), "GET VARIABLE CHANNEL(language)");
        assert_eq!(
            line(Command::SetVariable("OTP_STATUS".into(), r#"said "ok" \o/"#.into())),
            r#"SET VARIABLE OTP_STATUS "said \"ok\" \\o/""#
        );
        assert_eq!(
            line(Command::Exec { app: "Playback".into(), args: "beep,noanswer".into() }),
            r#"EXEC Playback "beep,noanswer""#
        );
        assert_eq!(line(Command::Verbose("hello world".into(), 1)), r#"VERBOSE "hello world" 1"#);
    }

    #[test]
    fn line_breaks_and_control_chars_are_refused() {
        for evil in ["a\nHANGUP", "a\r", "a\0b", "\u{1b}[2J", "tab\there", "x\u{85}y"] {
            assert!(matches!(
                Command::SetVariable("X".into(), evil.into()).to_line(),
                Err(CommandError::ControlChar(_))
            ));
            assert!(Command::Verbose(evil.into(), 1).to_line().is_err());
            assert!(Command::Exec { app: "NoOp".into(), args: evil.into() }.to_line().is_err());
            assert!(Command::GetVariable(evil.into()).to_line().is_err());
            let play = Command::StreamFile { file: evil.into(), escape_digits: "".into(), offset: None };
            assert!(play.to_line().is_err());
        }
    }

    #[test]
    fn quotes_and_backslashes_cannot_split_an_argument() {
        for value in ["", "plain", r#"a" HANGUP ""#, r#"\"#, r#"\\""#, r#"x\" y"#, "\"", "  spaced  out  ", "ünïcödé ✓"]
        {
            let l = line(Command::SetVariable("V".into(), value.into()));
            assert!(!l.contains(['\r', '\n', '\0']));
            assert_eq!(
                asterisk_parse_args(&l),
                vec!["SET".to_owned(), "VARIABLE".into(), "V".into(), value.into()],
                "value {value:?} -> line {l:?}"
            );
        }
        let l = line(Command::SayDigits { digits: "123".into(), escape_digits: "".into() });
        assert_eq!(asterisk_parse_args(&l), vec!["SAY", "DIGITS", "123", ""]);
    }

    #[test]
    fn file_names_are_restricted() {
        let play = |f: &str| Command::StreamFile { file: f.into(), escape_digits: "".into(), offset: None }.to_line();
        let ask = |f: &str| Command::GetData { file: f.into(), timeout_ms: 6000, max_digits: 6 }.to_line();
        for bad in ["", "../etc/passwd", "otp/../../x", "a b", "a\"b", "digits/4 \"1\"", "x;y", "a\\b", "é"] {
            assert_eq!(play(bad), Err(CommandError::BadFileName), "{bad:?}");
            assert_eq!(ask(bad), Err(CommandError::BadFileName), "{bad:?}");
        }
        for good in ["digits/4", "otp/intro-en_2", "/var/lib/voice-otp/sounds/x.y"] {
            assert!(play(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn digits_and_names_are_restricted() {
        let say = |d: &str, e: &str| Command::SayDigits { digits: d.into(), escape_digits: e.into() }.to_line();
        assert_eq!(say("", ""), Err(CommandError::BadDigits));
        assert_eq!(say("12a", ""), Err(CommandError::BadDigits));
        assert_eq!(say("1 2", ""), Err(CommandError::BadDigits));
        assert_eq!(say(&"1".repeat(MAX_SAY_DIGITS + 1), ""), Err(CommandError::BadDigits));
        assert_eq!(say("12", "1a"), Err(CommandError::BadEscapeDigits));
        assert_eq!(say("12", "\""), Err(CommandError::BadEscapeDigits));
        assert!(say("12", "0123456789*#").is_ok());
        for bad in ["", "A B", "A\"", "F(x", "F(a b)", "(x)", "F(x)y"] {
            assert!(Command::GetVariable(bad.into()).to_line().is_err(), "{bad:?}");
        }
        assert!(Command::Exec { app: "Sys tem".into(), args: "".into() }.to_line().is_err());
        assert!(Command::Exec { app: "".into(), args: "".into() }.to_line().is_err());
    }

    #[test]
    fn numeric_ranges() {
        assert!(Command::WaitForDigit { timeout_ms: -2 }.to_line().is_err());
        assert!(Command::WaitForDigit { timeout_ms: i64::from(i32::MAX) + 1 }.to_line().is_err());
        assert!(Command::Verbose("m".into(), 0).to_line().is_err());
        assert!(Command::Verbose("m".into(), 5).to_line().is_err());
        let opt = Command::GetOption { file: "a".into(), escape_digits: "".into(), timeout_ms: Some(u32::MAX) };
        assert!(opt.to_line().is_err());
        let data = |timeout_ms, max_digits| Command::GetData { file: "a".into(), timeout_ms, max_digits }.to_line();
        assert_eq!(data(0, 6), Err(CommandError::OutOfRange("timeout")));
        assert_eq!(data(i32::MAX as u32 + 1, 6), Err(CommandError::OutOfRange("timeout")));
        assert_eq!(data(6000, 0), Err(CommandError::OutOfRange("max digits")));
        assert_eq!(data(6000, MAX_GET_DATA_DIGITS + 1), Err(CommandError::OutOfRange("max digits")));
        assert!(data(i32::MAX as u32, MAX_GET_DATA_DIGITS).is_ok());
    }

    #[test]
    fn overlong_lines_are_refused() {
        // Otherwise Asterisk would run the tail past its 2048-byte buffer as
        // a command of its own.
        let tail = format!("{}HANGUP", " ".repeat(2100));
        assert_eq!(Command::Verbose(tail, 1).to_line(), Err(CommandError::TooLong));
        let fits = "x".repeat(MAX_COMMAND_LEN - r#"VERBOSE "" 1"#.len());
        assert_eq!(line(Command::Verbose(fits, 1)).len(), MAX_COMMAND_LEN);
    }

    #[test]
    fn debug_redacts_secrets() {
        let dbg = format!(
            "{:?} {:?} {:?}",
            Command::SayDigits { digits: "482193".into(), escape_digits: "".into() },
            Command::SetVariable("CODE".into(), "482193".into()),
            Command::Exec { app: "SayDigits".into(), args: "482193".into() },
        );
        assert!(!dbg.contains("482193"), "{dbg}");
        assert!(dbg.contains("SayDigits") && dbg.contains("CODE"));
    }

    #[test]
    fn errors_do_not_echo_values() {
        let err = Command::SetVariable("X".into(), "secret\n".into()).to_line().unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }
}
