//! The AMI wire format: bytes in, [`Frame`]s out, and [`Action`]s back to
//! bytes. No sockets, no clocks, no logging, so it can be fed any byte string
//! (tests, fuzzers) and must never panic or buffer without bound.
//!
//! The stream Asterisk writes is one banner line
//! (`Asterisk Call Manager/11.0.0\r\n`, no blank line after it) followed by
//! messages: `Key: Value` lines closed by an empty line. Line endings are
//! `\r\n`; a bare `\n` is accepted too.
//!
//! Decoding runs in two steps. A linear scan finds where a message ends and
//! enforces the size and header-count bounds while bytes trickle in (it
//! remembers how far it got, so a message fed byte by byte is not rescanned).
//! Then a `nom` grammar parses the complete message. A message costs two
//! allocations however many headers it has: its text, copied once, and the
//! list of where each key and value lies in it.
//!
//! A message larger than the frame bound costs that message, not the link:
//! the decoder yields [`Frame::Oversized`] as soon as the bound is passed,
//! then discards the rest of it up to its blank line, holding no more of it
//! than one read's worth at a time. Asterisk writes each message whole, so
//! nothing else is lost with it.
//!
//! Choices worth knowing:
//! - A line is split at its first `": "`; a line with a colon but no `": "`
//!   (`Key:` or `Key:value`) is split at its first `:`.
//! - A line with no colon at all is dropped, not an error: Asterisk before AMI
//!   2.0 put raw `Command` output in such lines, and one odd line is no reason
//!   to tear down the link. Dropped lines still count toward both bounds.
//! - Bytes that are not UTF-8 are replaced (U+FFFD), never rejected.
//! - Any error ([`CodecError`]: a banner over the bound, a message with more
//!   lines than [`DEFAULT_MAX_HEADERS`] - no AMI peer sends that, so the
//!   stream is not AMI) leaves the stream unusable; the connection that owns
//!   the codec should be dropped.

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};
use nom::branch::alt;
use nom::bytes::complete::{tag, take_till, take_until};
use nom::character::complete::char;
use nom::combinator::{map, rest, verify};
use nom::multi::fold_many0;
use nom::sequence::{separated_pair, terminated};
use nom::{IResult, Parser};
use tokio_util::codec::{Decoder, Encoder};

use super::action::Action;

/// Largest frame (banner line or message, terminators included) accepted by
/// default. Real AMI messages are a few hundred bytes; 64 KiB leaves room for
/// long `Command` output while capping memory per connection.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// Most lines accepted in one message by default. Bounds the number of
/// allocations one message can cause, independently of its byte size.
pub const DEFAULT_MAX_HEADERS: usize = 4096;

/// One AMI message: an ordered list of headers.
///
/// A list rather than a map because keys repeat (`ChanVariable`, `Variable`,
/// `Output`) and their order carries meaning. Keys and values are slices of
/// one text, so decoding allocates per message, not per header.
#[derive(Clone, Default)]
pub struct Message {
    text: String,
    fields: Vec<Field>,
}

/// Where one header's key and value lie in [`Message::text`].
#[derive(Debug, Clone, Copy, Default)]
struct Field {
    key: (usize, usize),
    value: (usize, usize),
}

/// What a [`Message`] is, judged by its first `Event` or `Response` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind<'a> {
    /// An unsolicited event, with its name (`Hangup`, `OriginateResponse`).
    Event(&'a str),
    /// The answer to an action, with its status (`Success`, `Error`,
    /// `Follows`, `Goodbye`).
    Response(&'a str),
    /// Neither header present.
    Unknown,
}

/// One unit decoded from the AMI stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The first line of the stream, e.g. `Asterisk Call Manager/11.0.0`,
    /// without its line ending.
    Banner(String),
    /// Any later message.
    Message(Message),
    /// A message grew past the frame bound and is being skipped: what
    /// arrived of it is gone, the rest is discarded up to its blank line.
    /// The stream stays usable; the next frame is the message after it.
    Oversized {
        /// The bound it passed.
        max: usize,
    },
}

/// Why a byte stream could not be decoded. Carries no payload bytes, so it is
/// safe to log.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The banner line grew past the configured limit. (A message that
    /// does is [`Frame::Oversized`], not an error.)
    #[error("AMI frame larger than {max} bytes")]
    FrameTooLarge {
        /// The limit in force.
        max: usize,
    },
    /// A message had more lines than the configured limit.
    #[error("AMI message with more than {max} header lines")]
    TooManyHeaders {
        /// The limit in force.
        max: usize,
    },
    /// The underlying transport failed (required by `tokio_util::codec`).
    #[error("AMI transport error: {0}")]
    Io(#[from] std::io::Error),
}

/// `tokio_util` codec for one AMI connection, client side: decodes the banner
/// and messages Asterisk sends, encodes [`Action`]s.
#[derive(Debug, Clone)]
pub struct AmiCodec {
    max_frame: usize,
    max_headers: usize,
    banner_seen: bool,
    /// Offset in the read buffer of the first line not yet scanned; every
    /// line before it belongs to the message being assembled.
    scanned: usize,
    /// Lines counted so far in the message being assembled.
    lines: usize,
    /// Set while the rest of an oversized message is being discarded.
    skipping: bool,
    /// While skipping: what was discarded of the current line so far, which
    /// is all it takes to tell a blank line that was split across reads.
    skipped_line: LineStart,
}

/// The start of a line whose end has not arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineStart {
    /// Nothing: a `\n` now makes it a blank line.
    Empty,
    /// Only `\r`: a `\n` now still makes it a blank line.
    Cr,
    /// Anything else: not a blank line, whatever follows.
    Text,
}

impl Message {
    /// Builds a message from headers in wire order.
    pub fn new(headers: Vec<(String, String)>) -> Self {
        let mut text = String::new();
        let mut fields = Vec::with_capacity(headers.len());
        let push = |text: &mut String, part: &str| {
            let start = text.len();
            text.push_str(part);
            (start, text.len())
        };
        for (key, value) in &headers {
            let key = push(&mut text, key);
            text.push_str(": ");
            let value = push(&mut text, value);
            text.push('\n');
            fields.push(Field { key, value });
        }
        Message { text, fields }
    }

    fn slice(&self, (start, end): (usize, usize)) -> &str {
        // Ranges come from the parser and end at ASCII delimiters, so they
        // are always on character boundaries; `get` keeps that from ever
        // becoming a panic.
        self.text.get(start..end).unwrap_or_default()
    }

    /// Value of the first header named `key` (ASCII case-insensitive, as
    /// Asterisk itself compares keys).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_all(key).next()
    }

    /// Values of every header named `key`, in wire order.
    pub fn get_all<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> {
        self.headers().filter(move |(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)
    }

    /// All headers in wire order, repeated keys included.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|f| (self.slice(f.key), self.slice(f.value)))
    }

    /// Classifies the message. `Event` is looked at first because some events
    /// (`OriginateResponse`) also carry a `Response` header; taking those for
    /// action responses would misroute them.
    pub fn kind(&self) -> MessageKind<'_> {
        if let Some(name) = self.get("Event") {
            MessageKind::Event(name)
        } else if let Some(status) = self.get("Response") {
            MessageKind::Response(status)
        } else {
            MessageKind::Unknown
        }
    }

    /// The `ActionID` header, which ties a response (or an
    /// `OriginateResponse` event) to the action that caused it.
    pub fn action_id(&self) -> Option<&str> {
        self.get("ActionID")
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.headers().eq(other.headers())
    }
}

impl Eq for Message {}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.headers()).finish()
    }
}

impl AmiCodec {
    /// A codec with the default bounds ([`DEFAULT_MAX_FRAME`],
    /// [`DEFAULT_MAX_HEADERS`]).
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A codec accepting frames of at most `max_frame` bytes (line endings
    /// included). As soon as a message passes the limit, without waiting for
    /// its end, it becomes [`Frame::Oversized`] and is skipped; a banner
    /// that does fails with [`CodecError::FrameTooLarge`].
    pub fn with_max_frame(max_frame: usize) -> Self {
        AmiCodec {
            max_frame: max_frame.max(1),
            max_headers: DEFAULT_MAX_HEADERS,
            banner_seen: false,
            scanned: 0,
            lines: 0,
            skipping: false,
            skipped_line: LineStart::Empty,
        }
    }

    /// Sets the most lines one message may have before
    /// [`CodecError::TooManyHeaders`].
    pub fn max_headers(mut self, max_headers: usize) -> Self {
        self.max_headers = max_headers.max(1);
        self
    }

    fn reset_scan(&mut self) {
        self.scanned = 0;
        self.lines = 0;
    }

    fn decode_banner(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(pos) = src.iter().position(|&b| b == b'\n') else {
            if src.len() > self.max_frame {
                return Err(CodecError::FrameTooLarge { max: self.max_frame });
            }
            return Ok(None);
        };
        if pos + 1 > self.max_frame {
            return Err(CodecError::FrameTooLarge { max: self.max_frame });
        }
        let line = src.split_to(pos + 1);
        self.banner_seen = true;
        Ok(Some(Frame::Banner(lossy(strip_line_end(&line)))))
    }

    fn decode_message(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if self.skipping && !self.discard(src) {
            return Ok(None);
        }
        if self.scanned > src.len() {
            // The caller replaced the buffer under us; start over.
            self.reset_scan();
        }
        loop {
            let Some(rel) = src[self.scanned..].iter().position(|&b| b == b'\n') else {
                if src.len() > self.max_frame {
                    // Over the bound mid-line: drop what came, skip the rest.
                    self.skipped_line = match &src[self.scanned..] {
                        [] => LineStart::Empty,
                        [b'\r'] => LineStart::Cr,
                        _ => LineStart::Text,
                    };
                    src.clear();
                    self.reset_scan();
                    self.skipping = true;
                    return Ok(Some(Frame::Oversized { max: self.max_frame }));
                }
                return Ok(None);
            };
            let end = self.scanned + rel + 1; // one past this line's '\n'
            let blank = strip_line_end(&src[self.scanned..end]).is_empty();
            if blank && self.scanned == 0 {
                // A blank line before any header is not a message: skip it
                // rather than emit an empty message.
                src.advance(end);
                continue;
            }
            if end > self.max_frame {
                // Over the bound with this line. If it was the blank line
                // the message is over; if not, skip up to that blank line.
                src.advance(end);
                self.reset_scan();
                self.skipping = !blank;
                self.skipped_line = LineStart::Empty;
                return Ok(Some(Frame::Oversized { max: self.max_frame }));
            }
            if blank {
                let raw = src.split_to(end);
                let lines = self.lines;
                self.reset_scan();
                return Ok(Some(Frame::Message(parse_message(&raw, lines))));
            }
            self.lines += 1;
            if self.lines > self.max_headers {
                self.reset_scan();
                return Err(CodecError::TooManyHeaders { max: self.max_headers });
            }
            self.scanned = end;
        }
    }

    /// Discards the rest of an oversized message. True once its blank line
    /// was consumed (the bytes after it are left for the next message);
    /// false when `src` ran out first, all of it discarded, so memory stays
    /// bounded however long the message goes on.
    fn discard(&mut self, src: &mut BytesMut) -> bool {
        loop {
            let Some(pos) = src.iter().position(|&b| b == b'\n') else {
                self.skipped_line = match (self.skipped_line, &src[..]) {
                    (start, []) => start,
                    (LineStart::Empty, [b'\r']) => LineStart::Cr,
                    _ => LineStart::Text,
                };
                src.clear();
                return false;
            };
            let blank = match self.skipped_line {
                LineStart::Empty => matches!(&src[..pos], [] | [b'\r']),
                LineStart::Cr => pos == 0,
                LineStart::Text => false,
            };
            src.advance(pos + 1);
            self.skipped_line = LineStart::Empty;
            if blank {
                self.skipping = false;
                return true;
            }
        }
    }
}

impl Default for AmiCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for AmiCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if self.banner_seen { self.decode_message(src) } else { self.decode_banner(src) }
    }
}

impl Encoder<&Action> for AmiCodec {
    type Error = CodecError;

    fn encode(&mut self, action: &Action, dst: &mut BytesMut) -> Result<(), CodecError> {
        // `Action` checked every key and value when it was built, so nothing
        // here can smuggle a line ending into the stream.
        let mut put = |key: &str, value: &str| {
            dst.reserve(key.len() + value.len() + 4);
            dst.put_slice(key.as_bytes());
            dst.put_slice(b": ");
            dst.put_slice(value.as_bytes());
            dst.put_slice(b"\r\n");
        };
        put("Action", action.name());
        if let Some(id) = action.action_id() {
            put("ActionID", id);
        }
        for (key, value) in action.headers() {
            put(key, value);
        }
        dst.put_slice(b"\r\n");
        Ok(())
    }
}

impl Encoder<Action> for AmiCodec {
    type Error = CodecError;

    fn encode(&mut self, action: Action, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&action, dst)
    }
}

impl fmt::Display for MessageKind<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageKind::Event(name) => write!(f, "event {name}"),
            MessageKind::Response(status) => write!(f, "response {status}"),
            MessageKind::Unknown => f.write_str("unknown message"),
        }
    }
}

/// The line without its `\n` or `\r\n`.
fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One line, terminator consumed and stripped.
fn line(input: &[u8]) -> IResult<&[u8], &[u8]> {
    map(terminated(take_till(|b| b == b'\n'), char('\n')), strip_line_end).parse(input)
}

/// `Key: Value`, split at the first `": "`; failing that, at the first `:`.
fn header(input: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
    alt((separated_pair(take_until(": "), tag(": "), rest), separated_pair(take_until(":"), tag(":"), rest)))
        .parse(input)
}

/// A whole message: non-blank lines, then the blank line that closes it.
/// Lines that are not headers are skipped; the others come out as where
/// their key and value lie in `input`. `lines` sizes the list up front.
fn message(input: &[u8], lines: usize) -> IResult<&[u8], Vec<Field>> {
    let base = input.as_ptr() as usize;
    let at = move |part: &[u8]| {
        let start = (part.as_ptr() as usize).saturating_sub(base);
        (start, start + part.len())
    };
    terminated(
        fold_many0(
            map(verify(line, |l: &[u8]| !l.is_empty()), |l| header(l).ok().map(|(_, kv)| kv)),
            move || Vec::with_capacity(lines),
            move |mut fields, kv| {
                if let Some((key, value)) = kv {
                    fields.push(Field { key: at(key), value: at(value) });
                }
                fields
            },
        ),
        verify(line, |l: &[u8]| l.is_empty()),
    )
    .parse(input)
}

/// Parses a frame the scanner has already delimited (non-blank lines ending
/// in a blank line). The grammar cannot fail on such input; should it ever,
/// the result is an empty message, which callers ignore as `Unknown`.
fn parse_message(raw: &[u8], lines: usize) -> Message {
    let text = lossy(raw);
    match message(text.as_bytes(), lines) {
        Ok((_, fields)) => Message { text, fields },
        Err(_) => Message::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BANNER: &[u8] = b"Asterisk Call Manager/11.0.0\r\n";

    /// Decodes everything available, feeding `input` in chunks of `chunk`.
    fn decode_chunked(codec: &mut AmiCodec, input: &[u8], chunk: usize) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(frame) = codec.decode(&mut buf).expect("decodes") {
                out.push(frame);
            }
        }
        out
    }

    fn decode_all(input: &[u8]) -> Vec<Frame> {
        decode_chunked(&mut AmiCodec::new(), input, input.len())
    }

    fn messages(frames: Vec<Frame>) -> Vec<Message> {
        frames
            .into_iter()
            .filter_map(|f| match f {
                Frame::Message(m) => Some(m),
                Frame::Banner(_) | Frame::Oversized { .. } => None,
            })
            .collect()
    }

    fn msg(pairs: &[(&str, &str)]) -> Message {
        Message::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    /// A transcript in the shape Asterisk 22 was seen to send for one OTP call.
    fn transcript() -> Vec<u8> {
        let mut t = BANNER.to_vec();
        t.extend_from_slice(
            b"Response: Success\r\nActionID: votp-1\r\nMessage: Authentication accepted\r\n\r\n\
              Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n\
              Response: Success\r\nActionID: votp-2\r\nMessage: Originate successfully queued\r\n\r\n\
              Event: Hangup\r\nPrivilege: call,all\r\nChannel: PJSIP/carrier-00000001\r\n\
              Uniqueid: call-42\r\nCause: 17\r\nCause-txt: User busy\r\n\r\n\
              Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: votp-2\r\n\
              Response: Failure\r\nChannel: PJSIP/+923001234567@carrier\r\nReason: 0\r\n\
              Uniqueid: <null>\r\n\r\n",
        );
        t
    }

    #[test]
    fn banner_is_first_frame_without_blank_line() {
        let frames = decode_all(b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\n\r\n");
        assert_eq!(frames[0], Frame::Banner("Asterisk Call Manager/11.0.0".into()));
        assert_eq!(frames[1], Frame::Message(msg(&[("Response", "Success")])));
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn login_success_and_failure() {
        let mut input = BANNER.to_vec();
        input.extend_from_slice(
            b"Response: Success\r\nActionID: a-1\r\nMessage: Authentication accepted\r\n\r\n\
              Response: Error\r\nActionID: a-2\r\nMessage: Authentication failed\r\n\r\n",
        );
        let m = messages(decode_all(&input));
        assert_eq!(m[0].kind(), MessageKind::Response("Success"));
        assert_eq!(m[0].action_id(), Some("a-1"));
        assert_eq!(m[1].kind(), MessageKind::Response("Error"));
        assert_eq!(m[1].get("message"), Some("Authentication failed"));
    }

    #[test]
    fn originate_response_event_is_an_event_not_a_response() {
        let m = messages(decode_all(&transcript()));
        assert_eq!(m.len(), 5);
        assert_eq!(m[2].get("Message"), Some("Originate successfully queued"));
        assert_eq!(m[2].kind(), MessageKind::Response("Success"));
        let orig = &m[4];
        assert_eq!(orig.kind(), MessageKind::Event("OriginateResponse"));
        assert_eq!(orig.action_id(), Some("votp-2"));
        assert_eq!(orig.get("Response"), Some("Failure"));
        assert_eq!(orig.get("Reason"), Some("0"));
    }

    #[test]
    fn hangup_cause_fields() {
        let m = messages(decode_all(&transcript()));
        let hangup = &m[3];
        assert_eq!(hangup.kind(), MessageKind::Event("Hangup"));
        assert_eq!(hangup.get("Cause"), Some("17"));
        assert_eq!(hangup.get("Cause-txt"), Some("User busy"));
        assert_eq!(hangup.get("uniqueid"), Some("call-42"));
    }

    #[test]
    fn repeated_keys_kept_in_order() {
        let mut input = BANNER.to_vec();
        input.extend_from_slice(
            b"Event: Newchannel\r\nChanVariable: A=1\r\nUniqueid: x\r\n\
              ChanVariable: B=2\r\nchanvariable: C=3\r\n\r\n",
        );
        let m = &messages(decode_all(&input))[0];
        let all: Vec<&str> = m.get_all("ChanVariable").collect();
        assert_eq!(all, ["A=1", "B=2", "C=3"]);
        assert_eq!(m.get("CHANVARIABLE"), Some("A=1"));
        assert_eq!(m.headers().count(), 5);
        assert_eq!(m.headers().nth(3), Some(("ChanVariable", "B=2")));
    }

    #[test]
    fn split_at_first_colon_space_only() {
        let mut input = BANNER.to_vec();
        input.extend_from_slice(
            b"Response: Follows\r\nOutput: Name: value: more\r\nEmpty:\r\n\
              Tight:value\r\nBlank: \r\nURL: sip:a@b:5060\r\n\r\n",
        );
        let m = &messages(decode_all(&input))[0];
        assert_eq!(m.get("Output"), Some("Name: value: more"));
        assert_eq!(m.get("Empty"), Some(""));
        assert_eq!(m.get("Tight"), Some("value"));
        assert_eq!(m.get("Blank"), Some(""));
        assert_eq!(m.get("URL"), Some("sip:a@b:5060"));
    }

    #[test]
    fn command_follows_output_lines_are_headers() {
        let mut input = BANNER.to_vec();
        input.extend_from_slice(
            b"Response: Follows\r\nActionID: c-1\r\nMessage: Command output follows\r\n\
              Output: Name/username   Host\r\nOutput: carrier/carrier 127.0.0.2\r\n\r\n",
        );
        let m = &messages(decode_all(&input))[0];
        assert_eq!(m.kind(), MessageKind::Response("Follows"));
        assert_eq!(m.get_all("Output").count(), 2);
    }

    #[test]
    fn bare_lf_line_endings_and_leading_blank_lines() {
        let frames = decode_all(b"Asterisk Call Manager/2.10.0\n\r\n\nEvent: Foo\nA: 1\n\nResponse: Success\r\n\n");
        assert_eq!(frames[0], Frame::Banner("Asterisk Call Manager/2.10.0".into()));
        let m = messages(frames);
        assert_eq!(m, [msg(&[("Event", "Foo"), ("A", "1")]), msg(&[("Response", "Success")])]);
    }

    #[test]
    fn lines_without_colon_are_dropped() {
        let mut input = BANNER.to_vec();
        input.extend_from_slice(b"Response: Follows\r\nraw output line\r\n--END COMMAND--\r\n\r\n");
        let m = &messages(decode_all(&input))[0];
        assert_eq!(m, &msg(&[("Response", "Follows")]));
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let t = transcript();
        let whole = decode_all(&t);
        for chunk in [1, 2, 3, 7, 13, 64] {
            assert_eq!(decode_chunked(&mut AmiCodec::new(), &t, chunk), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn partial_message_waits_for_more() {
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(&b"Asterisk Call Manager/11.0.0\r\nResponse: Succ"[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Frame::Banner(_)))));
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(b"ess\r\n");
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(b"\r\n");
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Frame::Message(_)))));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_line_without_newline_is_skipped_at_once() {
        let mut codec = AmiCodec::with_max_frame(64);
        let mut buf = BytesMut::from(BANNER);
        assert!(codec.decode(&mut buf).is_ok());
        buf.extend_from_slice(&[b'a'; 65]);
        assert_eq!(codec.decode(&mut buf).expect("not an error"), Some(Frame::Oversized { max: 64 }));
        assert!(buf.is_empty(), "what came of it is dropped");
        buf.extend_from_slice(b"aaa\r\nKey: more of it\r\n\r\nEvent: Next\r\n\r\n");
        assert_eq!(codec.decode(&mut buf).expect("decodes"), Some(Frame::Message(msg(&[("Event", "Next")]))));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_across_many_lines_stays_bounded() {
        let mut codec = AmiCodec::with_max_frame(100);
        let mut buf = BytesMut::from(BANNER);
        assert!(codec.decode(&mut buf).is_ok());
        let mut frames = Vec::new();
        for _ in 0..200 {
            buf.extend_from_slice(b"Key: value\r\n");
            while let Some(frame) = codec.decode(&mut buf).expect("not an error") {
                frames.push(frame);
            }
            assert!(buf.len() <= 100 + 12, "buffer stayed bounded: {}", buf.len());
        }
        assert_eq!(frames, [Frame::Oversized { max: 100 }], "one frame for the whole message");
        buf.extend_from_slice(b"\r\nResponse: Success\r\nActionID: 7\r\n\r\n");
        let next = codec.decode(&mut buf).expect("decodes");
        assert_eq!(next, Some(Frame::Message(msg(&[("Response", "Success"), ("ActionID", "7")]))));
    }

    /// Banner, a normal event, an event with a 300-byte value, a normal
    /// response, for a codec bounded at 128 bytes.
    fn with_oversized() -> (Vec<u8>, Vec<Frame>) {
        let mut input = BANNER.to_vec();
        input.extend_from_slice(b"Event: Newstate\r\nUniqueid: a\r\n\r\n");
        input.extend_from_slice(b"Event: VarSet\r\nUniqueid: a\r\nValue: ");
        input.extend(std::iter::repeat_n(b'v', 300));
        input.extend_from_slice(b"\r\nVariable: X\r\n\r\n");
        input.extend_from_slice(b"Response: Success\r\nActionID: 9\r\n\r\n");
        let expected = vec![
            Frame::Banner("Asterisk Call Manager/11.0.0".into()),
            Frame::Message(msg(&[("Event", "Newstate"), ("Uniqueid", "a")])),
            Frame::Oversized { max: 128 },
            Frame::Message(msg(&[("Response", "Success"), ("ActionID", "9")])),
        ];
        (input, expected)
    }

    #[test]
    fn oversized_then_normal_within_one_read() {
        let (input, expected) = with_oversized();
        assert_eq!(decode_chunked(&mut AmiCodec::with_max_frame(128), &input, input.len()), expected);
    }

    #[test]
    fn oversized_then_normal_in_reads_of_every_size() {
        let (input, expected) = with_oversized();
        for chunk in 1..=input.len() {
            assert_eq!(decode_chunked(&mut AmiCodec::with_max_frame(128), &input, chunk), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn oversized_then_normal_split_at_every_byte() {
        let (input, expected) = with_oversized();
        for at in 0..=input.len() {
            let mut codec = AmiCodec::with_max_frame(128);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in [&input[..at], &input[at..]] {
                buf.extend_from_slice(piece);
                while let Some(frame) = codec.decode(&mut buf).expect("decodes") {
                    out.push(frame);
                }
            }
            assert_eq!(out, expected, "split at {at}");
            assert!(buf.is_empty(), "split at {at}: {} bytes left", buf.len());
        }
    }

    #[test]
    fn blank_line_ends_the_skip_however_it_is_split() {
        // Bare LF and CRLF endings, the CR and LF of the closing blank line in
        // separate reads, and a "\r\r\n" line that is not blank.
        for tail in [&b"\n\n"[..], b"\r\n\r\n", b"\r\n\r\r\nMore: x\r\n\r\n", b"\n\r\n"] {
            let mut input = BANNER.to_vec();
            input.extend_from_slice(b"Event: Big\r\nData: ");
            input.extend(std::iter::repeat_n(b'd', 200));
            input.extend_from_slice(tail);
            input.extend_from_slice(b"Event: After\r\n\r\n");
            for chunk in 1..8 {
                let frames = decode_chunked(&mut AmiCodec::with_max_frame(64), &input, chunk);
                assert_eq!(
                    frames[1..],
                    [Frame::Oversized { max: 64 }, Frame::Message(msg(&[("Event", "After")]))],
                    "tail {tail:?}, chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn a_message_whose_blank_line_passes_the_bound_is_skipped_whole() {
        // A 20-byte header line, then the blank line as bytes 21-22.
        let input = b"B\r\nEvent: Twenty-one!\r\n\r\nEvent: Ok\r\n\r\n";
        let frames = decode_chunked(&mut AmiCodec::with_max_frame(21), input, input.len());
        assert_eq!(frames[1..], [Frame::Oversized { max: 21 }, Frame::Message(msg(&[("Event", "Ok")]))]);
        // Within the bound, terminator included, it is a message.
        let frames = decode_chunked(&mut AmiCodec::with_max_frame(21), b"B\r\nEvent: Nineteen\r\n\r\n", 64);
        assert_eq!(frames[1..], [Frame::Message(msg(&[("Event", "Nineteen")]))]);
    }

    #[test]
    fn a_huge_message_in_small_reads_never_buffers_past_the_bound() {
        let mut codec = AmiCodec::with_max_frame(1024);
        let mut buf = BytesMut::from(BANNER);
        assert!(codec.decode(&mut buf).is_ok());
        buf.extend_from_slice(b"Event: VarSet\r\nValue: ");
        let mut oversized = 0;
        for _ in 0..10_000 {
            buf.extend_from_slice(b"0123456789abcdef0123456789abcdef");
            while let Some(frame) = codec.decode(&mut buf).expect("not an error") {
                assert_eq!(frame, Frame::Oversized { max: 1024 });
                oversized += 1;
            }
            assert!(buf.len() <= 1024 + 32, "{} bytes buffered", buf.len());
        }
        buf.extend_from_slice(b"\r\n\r\nEvent: Hangup\r\n\r\n");
        assert_eq!(codec.decode(&mut buf).expect("decodes"), Some(Frame::Message(msg(&[("Event", "Hangup")]))));
        assert_eq!(oversized, 1);
    }

    #[test]
    fn banner_too_large() {
        let mut codec = AmiCodec::with_max_frame(16);
        let mut buf = BytesMut::from(&[b'x'; 17][..]);
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::FrameTooLarge { .. })));
    }

    #[test]
    fn too_many_headers() {
        let mut codec = AmiCodec::new().max_headers(3);
        let mut buf = BytesMut::from(BANNER);
        buf.extend_from_slice(b"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n");
        assert!(codec.decode(&mut buf).is_ok());
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::TooManyHeaders { max: 3 })));
        // Exactly at the bound is fine.
        let mut codec = AmiCodec::new().max_headers(3);
        let mut buf = BytesMut::from(BANNER);
        buf.extend_from_slice(b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n");
        assert!(codec.decode(&mut buf).is_ok());
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Frame::Message(_)))));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_rejected() {
        let mut input = BANNER.to_vec();
        input.extend_from_slice(b"Event: X\r\nName: \xff\xfe\r\n\r\n");
        let m = &messages(decode_all(&input))[0];
        assert_eq!(m.get("Name"), Some("\u{fffd}\u{fffd}"));
    }

    /// Poor man's fuzzing (no fuzz crate allowed): random bytes and mutated
    /// transcripts, in random chunk sizes, with tight bounds. Only checks that
    /// nothing panics and the buffer never outgrows the bound.
    #[test]
    fn garbage_never_panics_and_stays_bounded() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"\r\n: aZ\x00\xff";
        let base = transcript();
        for round in 0..400 {
            let mut input: Vec<u8> = if round % 2 == 0 {
                (0..next() % 2000).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect()
            } else {
                base.clone()
            };
            for _ in 0..(next() % 20) {
                if input.is_empty() {
                    break;
                }
                let i = (next() % input.len() as u64) as usize;
                input[i] = next() as u8;
            }
            let max = 32 + (next() % 512) as usize;
            let mut codec = AmiCodec::with_max_frame(max).max_headers(1 + (next() % 16) as usize);
            let mut buf = BytesMut::new();
            let mut rest = &input[..];
            'feed: while !rest.is_empty() {
                let n = (1 + next() % 40) as usize;
                let (piece, tail) = rest.split_at(n.min(rest.len()));
                rest = tail;
                buf.extend_from_slice(piece);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
                assert!(buf.len() <= max + 40, "buffer {} over bound {max}", buf.len());
            }
            let _ = codec.decode_eof(&mut buf);
        }
    }

    #[test]
    fn encodes_action_in_order() {
        let mut action = Action::new("Originate")
            .and_then(|a| a.header("Channel", "PJSIP/100@carrier"))
            .and_then(|a| a.header("Variable", "A=1"))
            .and_then(|a| a.header("Variable", "B=2"))
            .expect("valid action");
        action.set_action_id("votp-7").expect("valid id");
        let mut dst = BytesMut::new();
        AmiCodec::new().encode(&action, &mut dst).expect("encodes");
        assert_eq!(
            &dst[..],
            b"Action: Originate\r\nActionID: votp-7\r\nChannel: PJSIP/100@carrier\r\n\
              Variable: A=1\r\nVariable: B=2\r\n\r\n"
        );
    }

    #[test]
    fn encoded_action_decodes_back() {
        let action = Action::login("otp", "s3cret").expect("valid");
        let mut buf = BytesMut::from(BANNER);
        AmiCodec::new().encode(action, &mut buf).expect("encodes");
        let m = &messages(decode_all(&buf))[0];
        assert_eq!(m.get("Action"), Some("Login"));
        assert_eq!(m.get("Username"), Some("otp"));
    }
}
