//! FastAGI wire format: bytes in, typed frames out; typed commands in, bytes
//! out. No I/O lives here, so every parser can be fed hostile or truncated
//! input in a unit test (or a fuzzer) without a socket.
//!
//! What Asterisk sends on a FastAGI connection, in order:
//!
//! 1. the request block: `agi_name: value` lines ended by an empty line;
//! 2. then, for each command we write, one reply: `200 result=N [(data)]
//!    [endpos=N]`, `510 ...`, `511 ...`, `520 ...` or a multi-line
//!    `520-...` usage ended by `520 End of proper usage.`, possibly preceded
//!    by `100 Trying...`;
//! 3. at any point between reply lines, a `HANGUP` line when the channel hangs
//!    up (it may come *before* the pending command's reply).
//!
//! Every buffer is bounded (line length, number and total size of request
//! variables, size of a multi-line usage reply); crossing a bound is an error,
//! never unbounded buffering. Once the decoder has failed it stays failed: a
//! stream that desynchronised once cannot be trusted again.
//!
//! Non-UTF-8 bytes are decoded lossily (U+FFFD). Asterisk passes caller-id
//! names and variable values through byte for byte, and refusing a whole call
//! because a caller name is Latin-1 would be worse than a replacement
//! character. Lossy decoding cannot create a line break, so it cannot smuggle
//! in a second frame.

use std::fmt;
use std::io;

use bytes::{BufMut, BytesMut};
use nom::bytes::complete::{tag, take_while, take_while_m_n};
use nom::character::complete::{char, digit1};
use nom::combinator::{map_res, opt, recognize, rest};
use nom::{IResult, Parser};
use tokio_util::codec::{Decoder, Encoder};

use super::command::{Command, CommandError};

/// Longest line (without its line terminator) the decoder accepts.
pub const MAX_LINE_LEN: usize = 8 * 1024;
/// Most `agi_*` variables accepted in one request block (Asterisk sends ~25
/// plus one per AGI argument).
pub const MAX_REQUEST_VARS: usize = 256;
/// Largest request block accepted, in bytes, terminators included.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most lines accepted in one multi-line (`520-`) reply.
pub const MAX_USAGE_LINES: usize = 256;
/// Largest multi-line (`520-`) reply accepted, in bytes of collected text.
pub const MAX_USAGE_BYTES: usize = 32 * 1024;

/// The `agi_*` variables Asterisk sends when it opens a FastAGI connection,
/// in the order received (names are kept whole, e.g. `agi_channel`).
///
/// `Debug` shows only the identifying fields, never every value: variables
/// may carry caller data that has no business in a log.
///
/// Names and values are slices of one text, so a request block costs a
/// couple of allocations, not two per variable.
#[derive(Clone, Default)]
pub struct AgiRequest {
    text: String,
    /// Byte ranges in `text` of each variable's name and value.
    vars: Vec<VarSpan>,
}

type VarSpan = ((usize, usize), (usize, usize));

impl AgiRequest {
    /// Builds a request from `(name, value)` pairs, e.g. for a scripted test
    /// peer standing in for Asterisk.
    pub fn from_vars(vars: Vec<(String, String)>) -> Self {
        let mut request = AgiRequest::default();
        for (name, value) in &vars {
            request.push(name, value);
        }
        request
    }

    fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        let middle = self.text.len();
        self.text.push_str(value);
        self.vars.push(((start, middle), (middle, self.text.len())));
    }

    fn slice(&self, (start, end): (usize, usize)) -> &str {
        // Ranges are made by `push` from whole strings: always on character
        // boundaries; `get` keeps that from ever becoming a panic.
        self.text.get(start..end).unwrap_or_default()
    }

    /// The value of the first variable called `name` (the full name, e.g.
    /// `"agi_callerid"`).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// `agi_uniqueid`: the channel's Uniqueid, i.e. the `ChannelId` given to
    /// the AMI Originate - the key to match this session to a call record.
    pub fn uniqueid(&self) -> Option<&str> {
        self.get("agi_uniqueid")
    }

    /// `agi_channel`: the channel name, e.g. `PJSIP/carrier-00000001`.
    pub fn channel(&self) -> Option<&str> {
        self.get("agi_channel")
    }

    /// `agi_language`: the channel language Asterisk picks sounds by.
    pub fn language(&self) -> Option<&str> {
        self.get("agi_language")
    }

    /// `agi_network_script`: the path part of the `agi://` URL (`otp`).
    pub fn network_script(&self) -> Option<&str> {
        self.get("agi_network_script")
    }

    /// The AGI arguments `agi_arg_1`, `agi_arg_2`, ... in order, up to the
    /// first missing index.
    pub fn args(&self) -> Vec<&str> {
        (1..).map_while(|n| self.get(&format!("agi_arg_{n}"))).collect()
    }

    /// Every variable in the order received.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|&(name, value)| (self.slice(name), self.slice(value)))
    }
}

impl PartialEq for AgiRequest {
    fn eq(&self, other: &Self) -> bool {
        self.vars().eq(other.vars())
    }
}

impl Eq for AgiRequest {}

impl fmt::Debug for AgiRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgiRequest")
            .field("network_script", &self.network_script())
            .field("uniqueid", &self.uniqueid())
            .field("channel", &self.channel())
            .field("vars", &self.vars.len())
            .finish()
    }
}

/// One reply from Asterisk to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code: 200 success, 510 unknown command, 511 not permitted on a
    /// dead channel, 520 bad syntax.
    pub code: u16,
    /// `result=N` of a 200 reply: often 0 (done), -1 (error, missing sound
    /// file or hang-up), or the ASCII code of a pressed key.
    pub result: Option<i64>,
    /// The `(data)` of a 200 reply, without the parentheses (`GET VARIABLE`'s
    /// value, `timeout`, `hangup`, ...).
    pub data: Option<String>,
    /// `endpos=N` of a playback reply: the sample offset where it stopped.
    pub endpos: Option<u64>,
    /// Everything after the status code: the raw `result=...` text of a 200,
    /// the message of a 5xx, or, for a multi-line reply, all its lines joined
    /// with `\n` (first line, usage text, closing line).
    pub text: String,
}

impl Reply {
    /// The key pressed, when `result` is the ASCII code of a DTMF key
    /// (`0`-`9`, `*`, `#`, `A`-`D`).
    pub fn digit(&self) -> Option<char> {
        let code = u8::try_from(self.result?).ok()?;
        let c = char::from(code);
        (c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D')).then_some(c)
    }
}

/// One unit decoded from the FastAGI stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgiFrame {
    /// The request block, always the first frame and only once.
    Request(AgiRequest),
    /// A final reply to the pending command (`100 Trying` is not one).
    Reply(Reply),
    /// A `HANGUP` line: the channel has hung up.
    Hangup,
}

/// Why the decoder gave up on a stream (or the encoder on a command).
#[derive(Debug, thiserror::Error)]
pub enum AgiCodecError {
    /// A line exceeded [`MAX_LINE_LEN`].
    #[error("line longer than {MAX_LINE_LEN} bytes")]
    LineTooLong,
    /// The request block had more than [`MAX_REQUEST_VARS`] variables.
    #[error("more than {MAX_REQUEST_VARS} request variables")]
    TooManyVars,
    /// The request block exceeded [`MAX_REQUEST_BYTES`].
    #[error("request block larger than {MAX_REQUEST_BYTES} bytes")]
    RequestTooLarge,
    /// A multi-line reply exceeded [`MAX_USAGE_LINES`] or [`MAX_USAGE_BYTES`].
    #[error("multi-line reply too long")]
    UsageTooLong,
    /// Input that is not FastAGI.
    #[error("malformed AGI input: {0}")]
    Malformed(String),
    /// The stream ended in the middle of a line, request block or reply.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The decoder failed earlier and refuses to guess where frames resume.
    #[error("decoder already failed")]
    Failed,
    /// The command to encode is invalid.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Reading or writing the underlying stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Decoder/encoder for one FastAGI connection: decodes the request block,
/// then replies and `HANGUP` lines; encodes [`Command`]s as `LINE\n`.
#[derive(Debug, Default)]
pub struct AgiCodec {
    state: State,
    /// How far the current partial line has been searched for `\n`, so a line
    /// arriving byte by byte is not rescanned from its start each time.
    scanned: usize,
}

#[derive(Debug)]
enum State {
    Request { vars: AgiRequest, bytes: usize },
    Replies,
    MultiLine { code: u16, text: String, lines: usize },
    Failed,
}

impl Default for State {
    fn default() -> Self {
        // Sized for Asterisk's ~25 variables (~600 bytes) so that a usual
        // request block needs no regrowth.
        State::Request {
            vars: AgiRequest { text: String::with_capacity(1024), vars: Vec::with_capacity(32) },
            bytes: 0,
        }
    }
}

impl AgiCodec {
    /// A codec for a fresh connection: expects the request block first.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next complete line off `buf`, without its `\n` or `\r\n`.
    fn next_line(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, AgiCodecError> {
        // Room for a maximal line plus "\r\n"; never search further than that.
        let window = buf.len().min(MAX_LINE_LEN + 2);
        let found = buf.get(self.scanned..window).and_then(|s| s.iter().position(|&b| b == b'\n'));
        match found {
            Some(pos) => {
                let end = self.scanned + pos;
                self.scanned = 0;
                let mut line = buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if line.len() > MAX_LINE_LEN {
                    return Err(AgiCodecError::LineTooLong);
                }
                Ok(Some(line))
            }
            None if buf.len() >= MAX_LINE_LEN + 2 => Err(AgiCodecError::LineTooLong),
            None => {
                self.scanned = window;
                Ok(None)
            }
        }
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<AgiFrame>, AgiCodecError> {
        loop {
            let Some(raw) = self.next_line(buf)? else {
                return Ok(None);
            };
            let line = String::from_utf8_lossy(&raw);
            match &mut self.state {
                State::Failed => return Err(AgiCodecError::Failed),
                State::Request { vars, bytes } => {
                    *bytes += raw.len() + 1;
                    if *bytes > MAX_REQUEST_BYTES {
                        return Err(AgiCodecError::RequestTooLarge);
                    }
                    if line.is_empty() {
                        if vars.vars.is_empty() {
                            return Err(AgiCodecError::Malformed("empty request block".into()));
                        }
                        let request = std::mem::take(vars);
                        self.state = State::Replies;
                        return Ok(Some(AgiFrame::Request(request)));
                    }
                    if vars.vars.len() >= MAX_REQUEST_VARS {
                        return Err(AgiCodecError::TooManyVars);
                    }
                    let (name, value) = parse_var(&line).ok_or_else(|| {
                        // The line itself is not echoed: it may be a value.
                        AgiCodecError::Malformed("request line is not `agi_name: value`".into())
                    })?;
                    vars.push(name, value);
                }
                State::Replies => match classify(&line)? {
                    ReplyLine::Blank | ReplyLine::Trying => {}
                    ReplyLine::Hangup => return Ok(Some(AgiFrame::Hangup)),
                    ReplyLine::Final(reply) => return Ok(Some(AgiFrame::Reply(reply))),
                    ReplyLine::Begin { code, text } => {
                        self.state = State::MultiLine { code, text: text.to_owned(), lines: 1 };
                    }
                },
                State::MultiLine { code, text, lines } => {
                    let code = *code;
                    if let Some(last) = closing_line(&line, code) {
                        let mut all = std::mem::take(text);
                        all.push('\n');
                        all.push_str(last);
                        self.state = State::Replies;
                        return Ok(Some(AgiFrame::Reply(Reply {
                            code,
                            result: None,
                            data: None,
                            endpos: None,
                            text: all,
                        })));
                    }
                    // Usage text lines come bare; tolerate a `520-` prefix too.
                    let prefix = format!("{code}-");
                    let body = line.strip_prefix(prefix.as_str()).unwrap_or(&line);
                    *lines += 1;
                    if *lines > MAX_USAGE_LINES || text.len() + body.len() + 1 > MAX_USAGE_BYTES {
                        return Err(AgiCodecError::UsageTooLong);
                    }
                    text.push('\n');
                    text.push_str(body);
                }
            }
        }
    }
}

impl Decoder for AgiCodec {
    type Item = AgiFrame;
    type Error = AgiCodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<AgiFrame>, AgiCodecError> {
        if matches!(self.state, State::Failed) {
            return Err(AgiCodecError::Failed);
        }
        let result = self.decode_inner(buf);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<AgiFrame>, AgiCodecError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        // A clean end is at a frame boundary: nothing buffered and not in the
        // middle of a request block or multi-line reply.
        let clean = buf.is_empty()
            && match &self.state {
                State::Replies => true,
                State::Request { vars, .. } => vars.vars.is_empty(),
                State::MultiLine { .. } | State::Failed => false,
            };
        if clean {
            Ok(None)
        } else {
            self.state = State::Failed;
            Err(AgiCodecError::Truncated)
        }
    }
}

impl Encoder<&Command> for AgiCodec {
    type Error = AgiCodecError;

    /// Writes the command's validated line and `\n`. An invalid command
    /// leaves `dst` untouched.
    fn encode(&mut self, cmd: &Command, dst: &mut BytesMut) -> Result<(), AgiCodecError> {
        // Written in place; on an error the partial line is cut off again.
        let start = dst.len();
        if let Err(e) = cmd.write_line(dst) {
            dst.truncate(start);
            return Err(e.into());
        }
        dst.put_u8(b'\n');
        Ok(())
    }
}

/// What one line in the reply phase is.
#[derive(Debug, PartialEq, Eq)]
enum ReplyLine<'a> {
    Blank,
    Trying,
    Hangup,
    Final(Reply),
    /// `NNN-text`: the first line of a multi-line reply.
    Begin {
        code: u16,
        text: &'a str,
    },
}

/// `agi_name: value` (the space after the colon is optional; the value may
/// be empty and may itself contain `": "`).
fn parse_var(line: &str) -> Option<(&str, &str)> {
    let name = recognize((tag("agi_"), take_while(|c: char| c.is_ascii_alphanumeric() || c == '_')));
    let parsed: IResult<&str, (&str, char, Option<char>, &str)> = (name, char(':'), opt(char(' ')), rest).parse(line);
    parsed.ok().map(|(_, (name, _, _, value))| (name, value))
}

/// Three-digit status code, its separator (`' '`, `'-'` or none at end of
/// line) and the rest of the line.
fn status(line: &str) -> IResult<&str, (u16, Option<char>)> {
    let code = map_res(take_while_m_n(3, 3, |c: char| c.is_ascii_digit()), str::parse::<u16>);
    let sep = opt(nom::branch::alt((char(' '), char('-'))));
    (code, sep).parse(line)
}

/// Short, escaped excerpt of a bad line for an error message.
fn excerpt(line: &str) -> String {
    let cut: String = line.chars().take(32).collect();
    format!("{cut:?}")
}

fn classify(line: &str) -> Result<ReplyLine<'_>, AgiCodecError> {
    let trimmed = line.trim_end();
    if trimmed.is_empty() {
        return Ok(ReplyLine::Blank);
    }
    if trimmed == "HANGUP" {
        return Ok(ReplyLine::Hangup);
    }
    let Ok((text, (code, sep))) = status(line) else {
        return Err(AgiCodecError::Malformed(format!("not a reply line: {}", excerpt(line))));
    };
    if !(100..=599).contains(&code) || (sep.is_none() && !text.is_empty()) {
        return Err(AgiCodecError::Malformed(format!("not a reply line: {}", excerpt(line))));
    }
    if sep == Some('-') {
        return Ok(ReplyLine::Begin { code, text });
    }
    if code == 100 {
        return Ok(ReplyLine::Trying);
    }
    let mut reply = Reply { code, result: None, data: None, endpos: None, text: text.to_owned() };
    if code == 200 {
        parse_success(text, &mut reply);
    }
    Ok(ReplyLine::Final(reply))
}

/// `NNN text` (or a bare `NNN`) closing a multi-line reply of `code`.
fn closing_line(line: &str, code: u16) -> Option<&str> {
    match status(line) {
        Ok((text, (c, Some(' ')))) if c == code => Some(text),
        Ok(("", (c, None))) if c == code => Some(""),
        _ => None,
    }
}

fn result_value(i: &str) -> IResult<&str, i64> {
    let number = map_res(recognize((opt(char('-')), digit1)), str::parse::<i64>);
    let (i, (_, n)) = (tag("result="), number).parse(i)?;
    Ok((i, n))
}

fn endpos_value(i: &str) -> IResult<&str, u64> {
    let (i, (_, n)) = (tag("endpos="), map_res(digit1, str::parse::<u64>)).parse(i)?;
    Ok((i, n))
}

/// Fills `result`, `data` and `endpos` from `result=N [(data)] [endpos=N]`.
/// Lenient: a part that does not parse stays `None` (the raw text is kept in
/// `Reply::text`), because Asterisk adds fields to some replies
/// (`SPEECH RECOGNIZE`, `RECORD FILE`) that we never need to understand.
fn parse_success(text: &str, reply: &mut Reply) {
    let Ok((mut tail, result)) = result_value(text) else {
        return;
    };
    reply.result = Some(result);
    // endpos is the last field; data sits between result and endpos and may
    // contain spaces and parentheses of its own (a variable's value).
    if let Some(at) = tail.rfind("endpos=") {
        let before = &tail[..at];
        let separated = before.is_empty() || before.ends_with(' ');
        if let (true, Ok(("", n))) = (separated, endpos_value(&tail[at..])) {
            reply.endpos = Some(n);
            tail = before;
        }
    }
    let middle = tail.trim_start_matches(' ');
    if let Some(inner) = middle.strip_prefix('(')
        && let Some(close) = inner.rfind(')')
    {
        reply.data = Some(inner[..close].to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = "agi_network: yes\n\
        agi_network_script: otp\n\
        agi_request: agi://127.0.0.1:4573/otp\n\
        agi_channel: PJSIP/carrier-00000001\n\
        agi_language: en\n\
        agi_type: PJSIP\n\
        agi_uniqueid: call-42\n\
        agi_callerid: unknown\n\
        agi_accountcode: \n\
        agi_arg_1: first\n\
        agi_arg_2: second: with colon\n\
        \n";

    /// Feeds `input` in one piece, then signals EOF; returns every frame or
    /// the first error.
    fn decode_all(input: &[u8]) -> Result<Vec<AgiFrame>, AgiCodecError> {
        let mut codec = AgiCodec::new();
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        while let Some(f) = codec.decode(&mut buf)? {
            frames.push(f);
        }
        while let Some(f) = codec.decode_eof(&mut buf)? {
            frames.push(f);
        }
        Ok(frames)
    }

    /// Feeds `input` in chunks of `chunk` bytes, decoding after each.
    fn decode_chunked(input: &[u8], chunk: usize) -> Result<Vec<AgiFrame>, AgiCodecError> {
        let mut codec = AgiCodec::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = codec.decode(&mut buf)? {
                frames.push(f);
            }
        }
        while let Some(f) = codec.decode_eof(&mut buf)? {
            frames.push(f);
        }
        Ok(frames)
    }

    /// Decodes the request block then `replies`; returns the frames after
    /// the request.
    fn replies(replies: &str) -> Result<Vec<AgiFrame>, AgiCodecError> {
        let mut input = REQUEST.to_owned();
        input.push_str(replies);
        let mut frames = decode_all(input.as_bytes())?;
        assert!(matches!(frames.first(), Some(AgiFrame::Request(_))));
        frames.remove(0);
        Ok(frames)
    }

    fn one_reply(line: &str) -> Reply {
        match replies(line).unwrap().as_slice() {
            [AgiFrame::Reply(r)] => r.clone(),
            other => panic!("expected one reply, got {other:?}"),
        }
    }

    #[test]
    fn request_block_and_accessors() {
        let frames = decode_all(REQUEST.as_bytes()).unwrap();
        let [AgiFrame::Request(req)] = frames.as_slice() else {
            panic!("expected a request, got {frames:?}");
        };
        assert_eq!(req.uniqueid(), Some("call-42"));
        assert_eq!(req.channel(), Some("PJSIP/carrier-00000001"));
        assert_eq!(req.language(), Some("en"));
        assert_eq!(req.network_script(), Some("otp"));
        assert_eq!(req.get("agi_accountcode"), Some(""));
        assert_eq!(req.get("agi_nope"), None);
        assert_eq!(req.args(), vec!["first", "second: with colon"]);
        assert_eq!(req.vars().count(), 11);
        assert_eq!(req.vars().next(), Some(("agi_network", "yes")));
        // Debug names the call, not every value.
        let dbg = format!("{req:?}");
        assert!(dbg.contains("call-42") && !dbg.contains("second: with colon"));
    }

    #[test]
    fn args_stop_at_first_gap() {
        let req = AgiRequest::from_vars(vec![
            ("agi_arg_2".into(), "b".into()),
            ("agi_arg_1".into(), "a".into()),
            ("agi_arg_4".into(), "d".into()),
        ]);
        assert_eq!(req.args(), vec!["a", "b"]);
    }

    #[test]
    fn byte_by_byte_and_crlf_give_the_same_frames() {
        let session = format!(
            "{REQUEST}100 Trying...\n200 result=0 endpos=6560\nHANGUP\n\
             520-Invalid command syntax.  Proper usage follows:\n usage line\n\
             520 End of proper usage.\n200 result=1 (a value)\n"
        );
        let whole = decode_all(session.as_bytes()).unwrap();
        assert_eq!(whole.len(), 5);
        for chunk in [1, 2, 3, 7, 64] {
            assert_eq!(decode_chunked(session.as_bytes(), chunk).unwrap(), whole, "chunk {chunk}");
        }
        let crlf = session.replace('\n', "\r\n");
        for chunk in [1, 5, 4096] {
            assert_eq!(decode_chunked(crlf.as_bytes(), chunk).unwrap(), whole, "crlf chunk {chunk}");
        }
    }

    #[test]
    fn playback_reply() {
        let r = one_reply("200 result=0 endpos=6560\n");
        assert_eq!((r.code, r.result, r.data, r.endpos), (200, Some(0), None, Some(6560)));
        assert_eq!(r.text, "result=0 endpos=6560");
    }

    #[test]
    fn variable_reply() {
        let r = one_reply("200 result=1 (value)\n");
        assert_eq!((r.result, r.data.as_deref(), r.endpos), (Some(1), Some("value"), None));
        // A value with spaces and parentheses of its own.
        let r = one_reply("200 result=1 (a (b) c)\n");
        assert_eq!(r.data.as_deref(), Some("a (b) c"));
        let r = one_reply("200 result=1 ()\n");
        assert_eq!(r.data.as_deref(), Some(""));
    }

    #[test]
    fn missing_file_reply() {
        let r = one_reply("200 result=-1 endpos=0\n");
        assert_eq!((r.result, r.endpos), (Some(-1), Some(0)));
        assert_eq!(r.digit(), None);
    }

    #[test]
    fn key_pressed_reply() {
        let r = one_reply("200 result=49 endpos=1234\n");
        assert_eq!((r.result, r.endpos, r.digit()), (Some(49), Some(1234), Some('1')));
        assert_eq!(one_reply("200 result=35\n").digit(), Some('#'));
        assert_eq!(one_reply("200 result=0\n").digit(), None);
    }

    #[test]
    fn data_and_endpos_together() {
        let r = one_reply("200 result=0 (timeout) endpos=4000\n");
        assert_eq!((r.data.as_deref(), r.endpos), (Some("timeout"), Some(4000)));
    }

    #[test]
    fn lenient_success_fields() {
        let r = one_reply("200 result=oops\n");
        assert_eq!((r.code, r.result), (200, None));
        let r = one_reply("200\n");
        assert_eq!((r.code, r.result, r.text.as_str()), (200, None, ""));
    }

    #[test]
    fn error_replies_keep_their_text() {
        let r = one_reply("510 Invalid or unknown command\n");
        assert_eq!((r.code, r.text.as_str()), (510, "Invalid or unknown command"));
        let r = one_reply("511 Command Not Permitted on a dead channel or intercept routine\n");
        assert_eq!(r.code, 511);
        assert_eq!(r.text, "Command Not Permitted on a dead channel or intercept routine");
        let r = one_reply("520 Invalid command syntax.  Proper usage not available.\n");
        assert_eq!(r.code, 520);
    }

    #[test]
    fn multi_line_usage() {
        let r = one_reply(
            "520-Invalid command syntax.  Proper usage follows:\n\
             Usage: STREAM FILE <filename> <escape digits> [sample offset]\n\
             \n\
             520-tolerated prefix\n\
             520 End of proper usage.\n",
        );
        assert_eq!(r.code, 520);
        assert_eq!(
            r.text,
            "Invalid command syntax.  Proper usage follows:\n\
             Usage: STREAM FILE <filename> <escape digits> [sample offset]\n\
             \n\
             tolerated prefix\n\
             End of proper usage."
        );
    }

    #[test]
    fn trying_is_skipped() {
        let frames = replies("100 Trying...\n200 result=0\n").unwrap();
        assert_eq!(frames.len(), 1);
        assert!(matches!(&frames[0], AgiFrame::Reply(r) if r.code == 200));
    }

    #[test]
    fn hangup_before_reply_is_its_own_frame() {
        let frames = replies("HANGUP\n511 Command Not Permitted on a dead channel\n").unwrap();
        assert!(matches!(frames.as_slice(), [AgiFrame::Hangup, AgiFrame::Reply(r)] if r.code == 511));
    }

    #[test]
    fn non_utf8_is_lossy() {
        let input = b"agi_calleridname: Jos\xe9\n\n200 result=1 (\xff)\n";
        let frames = decode_all(input).unwrap();
        let AgiFrame::Request(req) = &frames[0] else { panic!() };
        assert_eq!(req.get("agi_calleridname"), Some("Jos\u{fffd}"));
        assert!(matches!(&frames[1], AgiFrame::Reply(r) if r.data.as_deref() == Some("\u{fffd}")));
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"\n",
            b"agi_x value\n\n",
            b"x_agi: value\n\n",
            b"\x00\x01\x02\xff\n",
        ] {
            assert!(decode_all(bad).is_err(), "{bad:?}");
        }
        for bad in ["hello\n", "2000 result=0\n", "99 x\n", "600 x\n", "20 result=0\n", "200x\n"] {
            assert!(matches!(replies(bad), Err(AgiCodecError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn failed_decoder_stays_failed() {
        let mut codec = AgiCodec::new();
        let mut buf = BytesMut::from(&b"junk\n"[..]);
        assert!(codec.decode(&mut buf).is_err());
        let mut buf = BytesMut::from(REQUEST.as_bytes());
        assert!(matches!(codec.decode(&mut buf), Err(AgiCodecError::Failed)));
    }

    #[test]
    fn oversized_line_without_newline_fails_early() {
        let mut codec = AgiCodec::new();
        let mut buf = BytesMut::new();
        let mut result = Ok(None);
        for _ in 0..(MAX_LINE_LEN / 1000 + 2) {
            buf.extend_from_slice(&[b'a'; 1000]);
            result = codec.decode(&mut buf);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(AgiCodecError::LineTooLong)));
        assert!(buf.len() <= MAX_LINE_LEN + 1000);
        // Exactly at the limit is fine.
        let ok = format!("agi_x: {}\n\n", "v".repeat(MAX_LINE_LEN - 7));
        assert!(decode_all(ok.as_bytes()).is_ok());
        let long = format!("agi_x: {}\n\n", "v".repeat(MAX_LINE_LEN - 6));
        assert!(matches!(decode_all(long.as_bytes()), Err(AgiCodecError::LineTooLong)));
    }

    #[test]
    fn request_bounds() {
        let many: String = (0..=MAX_REQUEST_VARS).map(|n| format!("agi_v{n}: x\n")).collect();
        assert!(matches!(decode_all(many.as_bytes()), Err(AgiCodecError::TooManyVars)));
        let big: String = (0..20).map(|n| format!("agi_v{n}: {}\n", "x".repeat(4000))).collect();
        assert!(matches!(decode_all(big.as_bytes()), Err(AgiCodecError::RequestTooLarge)));
    }

    #[test]
    fn usage_bounds() {
        let mut lines = "520-Invalid command syntax.\n".to_owned();
        for _ in 0..MAX_USAGE_LINES {
            lines.push_str("more usage\n");
        }
        assert!(matches!(replies(&lines), Err(AgiCodecError::UsageTooLong)));
        let mut fat = "520-Invalid command syntax.\n".to_owned();
        for _ in 0..10 {
            fat.push_str(&"u".repeat(4000));
            fat.push('\n');
        }
        assert!(matches!(replies(&fat), Err(AgiCodecError::UsageTooLong)));
    }

    #[test]
    fn eof_mid_frame_is_truncated() {
        assert!(matches!(decode_all(b"agi_network: yes\n"), Err(AgiCodecError::Truncated)));
        assert!(matches!(replies("200 result=0"), Err(AgiCodecError::Truncated)));
        assert!(matches!(replies("520-Invalid\nusage\n"), Err(AgiCodecError::Truncated)));
        assert!(decode_all(b"").unwrap().is_empty());
        assert!(replies("").unwrap().is_empty());
    }

    /// A cheap stand-in for a fuzzer: pseudo-random bytes (biased towards
    /// protocol characters) in pseudo-random chunks must never panic, and
    /// the buffer must stay bounded.
    #[test]
    fn random_input_never_panics() {
        let alphabet = b"agi_: \n\r-0123456789resultndpo=()HANGUP\xff\x00";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let len = (next() % 4000) as usize;
            let input: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let mut codec = AgiCodec::new();
            let mut buf = BytesMut::new();
            let mut rest = &input[..];
            'feed: while !rest.is_empty() {
                let n = ((next() % 64) as usize + 1).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
                assert!(buf.len() <= MAX_LINE_LEN + 2 + 64);
            }
            let _ = codec.decode_eof(&mut buf);
        }
    }

    #[test]
    fn encoder_writes_one_line_or_nothing() {
        let mut codec = AgiCodec::new();
        let mut dst = BytesMut::new();
        codec.encode(&Command::WaitForDigit { timeout_ms: 1500 }, &mut dst).unwrap();
        assert_eq!(&dst[..], b"WAIT FOR DIGIT 1500\n");
        // Refused before anything is written, half-way through the line,
        // and once the whole line turns out too long: nothing stays behind.
        for bad in [
            Command::GetVariable("X\nHANGUP".into()),
            Command::SetVariable("X".into(), "a\nHANGUP".into()),
            Command::SetVariable("X".into(), "y".repeat(crate::agi::command::MAX_COMMAND_LEN)),
        ] {
            assert!(matches!(codec.encode(&bad, &mut dst), Err(AgiCodecError::Command(_))), "{bad:?}");
            assert_eq!(&dst[..], b"WAIT FOR DIGIT 1500\n");
        }
    }
}
