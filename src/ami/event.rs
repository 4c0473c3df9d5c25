//! The AMI events voice-otp acts on, typed: [`Event::parse`] turns a
//! decoded [`Message`] into an [`Event`] so nothing above this module reads
//! a header by name or knows Asterisk's codes.
//!
//! Parsing borrows from the message (no allocation) and reads its headers
//! once; events of other kinds are told apart by their `Event` header alone,
//! so the many events a busy Asterisk sends that are none of ours cost one
//! header look-up each.
//!
//! Asterisk's quirks, handled here (formats from Asterisk 22's `manager.c`
//! and `manager_channels.c`):
//! - Values are trimmed: fixtures and proxies add stray whitespace.
//! - `OriginateResponse` `Reason` is the last control frame seen while
//!   dialling (0 when the dial failed outright); missing or not a number
//!   reads as 0, a failure.
//! - `OriginateResponse` `Uniqueid` is `<null>` or `<unknown>` when no
//!   channel was created and no `ChannelId` given: no channel, not an id.
//! - `ChannelState` is the number (5 ringing, 6 up); `ChannelStateDesc`
//!   (`Ringing`, `Up`) is read when the number is missing or garbled.
//! - `Hangup` `Cause` 0 means "no cause" (Asterisk reports it when our own
//!   FastAGI `HANGUP` ends the call): it reads as none, not as a cause.
//! - `DialEnd` describes two channels: the caller's (`Uniqueid`, absent for
//!   an `Originate`, which dials with no caller) and the dialled one
//!   (`DestUniqueid`). The dialled one is the channel an Originate created,
//!   so that is what [`Event::uniqueid`] names.

use std::fmt;

use super::codec::{Message, MessageKind};

/// An AMI event voice-otp follows; see [`Event::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The outcome of an `Originate` sent with `Async: true`.
    OriginateResponse(OriginateResponse<'a>),
    /// A channel changed state (`Ringing`, `Up`, ...).
    Newstate(Newstate<'a>),
    /// A channel is gone, with the cause.
    Hangup(Hangup<'a>),
    /// A dial attempt ended, with its `DialStatus`.
    DialEnd(DialEnd<'a>),
}

/// `Event: OriginateResponse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginateResponse<'a> {
    /// The `ActionID` of the `Originate` it answers.
    pub action_id: Option<&'a str>,
    /// The channel's `Uniqueid` (the `ChannelId` we gave), when Asterisk
    /// names one.
    pub uniqueid: Option<&'a str>,
    /// Why the dial ended.
    pub reason: OriginateReason,
}

/// `Reason` of an `OriginateResponse`: the last control frame Asterisk saw
/// while dialling (`AST_CONTROL_*`), or 0 when the dial failed outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginateReason {
    /// 0: the dial failed (most failures; the `Hangup` cause tells them
    /// apart).
    Failed,
    /// 1: the far end hung up.
    Hangup,
    /// 3: it rang until the Originate's `Timeout`: no answer.
    NoAnswer,
    /// 4: answered.
    Answered,
    /// 5: busy.
    Busy,
    /// 8: congestion.
    Congestion,
    /// Any other code (2 local ring, 6/7 off hook, ...).
    Other(u32),
}

/// `Event: Newstate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Newstate<'a> {
    /// The channel's `Uniqueid`.
    pub uniqueid: Option<&'a str>,
    /// Its new state.
    pub state: ChannelState,
}

/// A channel's state (`ChannelState`, Asterisk's `enum ast_channel_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// 0 `Down`.
    Down,
    /// 1 `Rsrvd`.
    Reserved,
    /// 2 `OffHook`.
    OffHook,
    /// 3 `Dialing`.
    Dialing,
    /// 4 `Ring`: ringback on our side (also a new channel's first state).
    Ring,
    /// 5 `Ringing`: on an outbound channel, the far end sent 180 Ringing.
    Ringing,
    /// 6 `Up`: answered.
    Up,
    /// 7 `Busy`.
    Busy,
    /// 8 `Dialing Offhook`.
    DialingOffhook,
    /// 9 `Pre-ring`.
    PreRing,
    /// Missing, or a value Asterisk 22 does not define.
    Unknown,
}

/// `Event: Hangup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hangup<'a> {
    /// The channel's `Uniqueid`.
    pub uniqueid: Option<&'a str>,
    /// The Q.850 cause; `None` when missing, garbled or 0 ("no cause").
    pub cause: Option<u16>,
    /// Asterisk's text for the cause (`Cause-txt`, e.g. `User busy`).
    pub cause_text: Option<&'a str>,
    /// The technology's own code (`TechCause`, the SIP status, from
    /// Asterisk 22.7).
    pub tech_cause: Option<u16>,
}

/// `Event: DialEnd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialEnd<'a> {
    /// The calling channel's `Uniqueid`; `None` for an `Originate`.
    pub uniqueid: Option<&'a str>,
    /// The dialled channel's `Uniqueid` (`DestUniqueid`).
    pub dest_uniqueid: Option<&'a str>,
    /// How the dial ended.
    pub status: DialStatus<'a>,
}

/// `DialStatus` of a `DialEnd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialStatus<'a> {
    /// `ANSWER`.
    Answer,
    /// `BUSY`.
    Busy,
    /// `NOANSWER`.
    NoAnswer,
    /// `CANCEL`.
    Cancel,
    /// `CONGESTION`.
    Congestion,
    /// `CHANUNAVAIL`.
    ChanUnavail,
    /// `ABORT`.
    Abort,
    /// `CONTINUE`.
    Continue,
    /// `GOTO` (Asterisk may append `:<location>`).
    Goto,
    /// Anything else, as sent (empty when missing).
    Other(&'a str),
}

impl<'a> Event<'a> {
    /// The event `msg` is, if it is one voice-otp follows; `None` for every
    /// other event, responses, and messages of neither kind.
    pub fn parse(msg: &'a Message) -> Option<Event<'a>> {
        let MessageKind::Event(name) = msg.kind() else { return None };
        let name = name.trim();
        let is = |want: &str| name.eq_ignore_ascii_case(want);
        if is("OriginateResponse") {
            let [action_id, uniqueid, reason] = fields(msg, ["ActionID", "Uniqueid", "Reason"]);
            Some(Event::OriginateResponse(OriginateResponse {
                action_id,
                uniqueid: uniqueid.filter(|u| !matches!(*u, "<null>" | "<unknown>")),
                reason: OriginateReason::from_code(reason.and_then(|r| r.parse().ok()).unwrap_or(0)),
            }))
        } else if is("Newstate") {
            let [uniqueid, state, desc] = fields(msg, ["Uniqueid", "ChannelState", "ChannelStateDesc"]);
            Some(Event::Newstate(Newstate { uniqueid, state: ChannelState::parse(state, desc) }))
        } else if is("Hangup") {
            let [uniqueid, cause, cause_text, tech_cause] =
                fields(msg, ["Uniqueid", "Cause", "Cause-txt", "TechCause"]);
            Some(Event::Hangup(Hangup {
                uniqueid,
                cause: cause.and_then(|c| c.parse().ok()).filter(|&c| c != 0),
                cause_text,
                tech_cause: tech_cause.and_then(|c| c.parse().ok()),
            }))
        } else if is("DialEnd") {
            let [uniqueid, dest_uniqueid, status] = fields(msg, ["Uniqueid", "DestUniqueid", "DialStatus"]);
            Some(Event::DialEnd(DialEnd { uniqueid, dest_uniqueid, status: DialStatus::parse(status.unwrap_or("")) }))
        } else {
            None
        }
    }

    /// The `Uniqueid` of the channel the event is about: for a `DialEnd`
    /// the dialled channel's, the one an `Originate` creates.
    pub fn uniqueid(&self) -> Option<&'a str> {
        match self {
            Event::OriginateResponse(e) => e.uniqueid,
            Event::Newstate(e) => e.uniqueid,
            Event::Hangup(e) => e.uniqueid,
            Event::DialEnd(e) => e.dest_uniqueid,
        }
    }
}

impl OriginateReason {
    /// The reason a `Reason:` code stands for.
    pub fn from_code(code: u32) -> OriginateReason {
        match code {
            0 => OriginateReason::Failed,
            1 => OriginateReason::Hangup,
            3 => OriginateReason::NoAnswer,
            4 => OriginateReason::Answered,
            5 => OriginateReason::Busy,
            8 => OriginateReason::Congestion,
            n => OriginateReason::Other(n),
        }
    }

    /// The code as Asterisk sends it.
    pub fn code(self) -> u32 {
        match self {
            OriginateReason::Failed => 0,
            OriginateReason::Hangup => 1,
            OriginateReason::NoAnswer => 3,
            OriginateReason::Answered => 4,
            OriginateReason::Busy => 5,
            OriginateReason::Congestion => 8,
            OriginateReason::Other(n) => n,
        }
    }
}

impl fmt::Display for OriginateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

impl ChannelState {
    /// The state from `ChannelState` (a number) or, when that is missing or
    /// garbled, from `ChannelStateDesc` (Asterisk's `ast_state2str` words,
    /// any case).
    pub fn parse(state: Option<&str>, desc: Option<&str>) -> ChannelState {
        // Bit 16 is AST_STATE_MUTE, a flag some drivers OR into the state.
        if let Some(n) = state.and_then(|s| s.parse::<u32>().ok()) {
            return ChannelState::from_number(n & !(1 << 16));
        }
        const WORDS: [(&str, ChannelState); 10] = [
            ("Down", ChannelState::Down),
            ("Rsrvd", ChannelState::Reserved),
            ("OffHook", ChannelState::OffHook),
            ("Dialing", ChannelState::Dialing),
            ("Ring", ChannelState::Ring),
            ("Ringing", ChannelState::Ringing),
            ("Up", ChannelState::Up),
            ("Busy", ChannelState::Busy),
            ("Dialing Offhook", ChannelState::DialingOffhook),
            ("Pre-ring", ChannelState::PreRing),
        ];
        desc.and_then(|d| WORDS.iter().find(|(word, _)| d.eq_ignore_ascii_case(word)))
            .map_or(ChannelState::Unknown, |&(_, state)| state)
    }

    fn from_number(n: u32) -> ChannelState {
        match n {
            0 => ChannelState::Down,
            1 => ChannelState::Reserved,
            2 => ChannelState::OffHook,
            3 => ChannelState::Dialing,
            4 => ChannelState::Ring,
            5 => ChannelState::Ringing,
            6 => ChannelState::Up,
            7 => ChannelState::Busy,
            8 => ChannelState::DialingOffhook,
            9 => ChannelState::PreRing,
            _ => ChannelState::Unknown,
        }
    }
}

impl<'a> DialStatus<'a> {
    /// Reads a `DialStatus` value (any case; a `GOTO:<where>` is `Goto`).
    pub fn parse(value: &'a str) -> DialStatus<'a> {
        let word = value.split(':').next().unwrap_or("");
        const WORDS: [(&str, DialStatus<'static>); 9] = [
            ("ANSWER", DialStatus::Answer),
            ("BUSY", DialStatus::Busy),
            ("NOANSWER", DialStatus::NoAnswer),
            ("CANCEL", DialStatus::Cancel),
            ("CONGESTION", DialStatus::Congestion),
            ("CHANUNAVAIL", DialStatus::ChanUnavail),
            ("ABORT", DialStatus::Abort),
            ("CONTINUE", DialStatus::Continue),
            ("GOTO", DialStatus::Goto),
        ];
        WORDS.iter().find(|(w, _)| word.eq_ignore_ascii_case(w)).map_or(DialStatus::Other(value), |&(_, status)| status)
    }
}

impl fmt::Display for DialStatus<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DialStatus::Answer => "ANSWER",
            DialStatus::Busy => "BUSY",
            DialStatus::NoAnswer => "NOANSWER",
            DialStatus::Cancel => "CANCEL",
            DialStatus::Congestion => "CONGESTION",
            DialStatus::ChanUnavail => "CHANUNAVAIL",
            DialStatus::Abort => "ABORT",
            DialStatus::Continue => "CONTINUE",
            DialStatus::Goto => "GOTO",
            DialStatus::Other(other) => other,
        })
    }
}

/// The first value of each of `keys` (ASCII case-insensitive, as Asterisk
/// compares keys), trimmed, empty ones as `None`; one pass over the
/// headers.
fn fields<'a, const N: usize>(msg: &'a Message, keys: [&str; N]) -> [Option<&'a str>; N] {
    let mut found = [None; N];
    for (key, value) in msg.headers() {
        if let Some(i) = keys.iter().position(|k| key.eq_ignore_ascii_case(k))
            && found[i].is_none()
        {
            found[i] = Some(value.trim());
        }
    }
    found.map(|v| v.filter(|v: &&str| !v.is_empty()))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::ami::codec::{AmiCodec, Frame};

    /// Decodes one message from wire text (CRLF lines, blank line included).
    fn decode(wire: &str) -> Message {
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(format!("Asterisk Call Manager/11.0.0\r\n{wire}").as_bytes());
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Frame::Banner(_)))));
        match codec.decode(&mut buf) {
            Ok(Some(Frame::Message(m))) => m,
            other => panic!("no message: {other:?}"),
        }
    }

    const ID: &str = "9f1c0c5e2b7d4a8f9e3b6d1c2a4f8e07";

    /// As Asterisk 22 writes it for an Originate with `ChannelId`.
    fn originate_response(response: &str, reason: &str, uniqueid: &str) -> String {
        format!(
            "Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: votp-1-7\r\n\
             Response: {response}\r\nChannel: PJSIP/carrier-00000001\r\nContext: voice-otp\r\n\
             Exten: s\r\nReason: {reason}\r\nUniqueid: {uniqueid}\r\nCallerIDNum: <unknown>\r\n\
             CallerIDName: <unknown>\r\n\r\n"
        )
    }

    /// A channel event in `ast_manager_build_channel_state_string`'s shape.
    fn channel_event(event: &str, state: &str, desc: &str, extra: &str) -> String {
        format!(
            "Event: {event}\r\nPrivilege: call,all\r\nChannel: PJSIP/carrier-00000001\r\n\
             ChannelState: {state}\r\nChannelStateDesc: {desc}\r\nCallerIDNum: 1000\r\n\
             CallerIDName: OTP\r\nConnectedLineNum: <unknown>\r\nConnectedLineName: <unknown>\r\n\
             Language: en\r\nAccountCode: \r\nContext: voice-otp\r\nExten: s\r\nPriority: 1\r\n\
             Uniqueid: {ID}\r\nLinkedid: {ID}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn originate_response_reasons() {
        for (code, reason) in [
            ("0", OriginateReason::Failed),
            ("1", OriginateReason::Hangup),
            ("3", OriginateReason::NoAnswer),
            ("4", OriginateReason::Answered),
            ("5", OriginateReason::Busy),
            ("8", OriginateReason::Congestion),
            ("2", OriginateReason::Other(2)),
        ] {
            let msg = decode(&originate_response("Failure", code, ID));
            let Some(Event::OriginateResponse(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
            assert_eq!(e.reason, reason, "Reason {code}");
            assert_eq!(e.reason.code().to_string(), code);
            assert_eq!(e.action_id, Some("votp-1-7"));
            assert_eq!(e.uniqueid, Some(ID));
        }
    }

    #[test]
    fn originate_response_without_a_channel_or_reason() {
        for none in ["<null>", "<unknown>", ""] {
            let msg = decode(&originate_response("Failure", "0", none));
            let Some(event) = Event::parse(&msg) else { panic!("{msg:?}") };
            assert_eq!(event.uniqueid(), None, "Uniqueid {none:?}");
        }
        // No Reason at all, or not a number: a failure, as Reason 0.
        for wire in [
            "Event: OriginateResponse\r\nResponse: Failure\r\nUniqueid: x\r\n\r\n",
            "Event: OriginateResponse\r\nReason: four\r\nUniqueid: x\r\n\r\n",
        ] {
            let msg = decode(wire);
            let Some(Event::OriginateResponse(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
            assert_eq!(e.reason, OriginateReason::Failed, "{wire:?}");
            assert_eq!(e.action_id, None);
        }
    }

    #[test]
    fn newstate_ringing_and_up() {
        let msg = decode(&channel_event("Newstate", "5", "Ringing", ""));
        let Some(Event::Newstate(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
        assert_eq!((e.uniqueid, e.state), (Some(ID), ChannelState::Ringing));
        let msg = decode(&channel_event("Newstate", "6", "Up", ""));
        assert_eq!(Event::parse(&msg), Some(Event::Newstate(Newstate { uniqueid: Some(ID), state: ChannelState::Up })));
    }

    #[test]
    fn channel_state_number_first_then_description() {
        let parse = ChannelState::parse;
        assert_eq!(parse(Some("4"), Some("Ring")), ChannelState::Ring);
        assert_eq!(parse(Some("5"), Some("Up")), ChannelState::Ringing, "the number wins");
        assert_eq!(parse(None, Some("ringing")), ChannelState::Ringing);
        assert_eq!(parse(Some("x"), Some("Dialing Offhook")), ChannelState::DialingOffhook);
        assert_eq!(parse(Some("65541"), None), ChannelState::Ringing, "the mute flag is not a state");
        assert_eq!(parse(Some("42"), Some("Unknown (42)")), ChannelState::Unknown);
        assert_eq!(parse(None, None), ChannelState::Unknown);
        for n in 0..10 {
            assert_ne!(parse(Some(&n.to_string()), None), ChannelState::Unknown, "{n}");
        }
    }

    #[test]
    fn hangup_cause_and_text() {
        let msg = decode(&channel_event("Hangup", "0", "Down", "Cause: 17\r\nCause-txt: User busy\r\n"));
        let Some(Event::Hangup(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
        assert_eq!(e, Hangup { uniqueid: Some(ID), cause: Some(17), cause_text: Some("User busy"), tech_cause: None });
        // 22.7+ adds the SIP status.
        let msg = decode(&channel_event(
            "Hangup",
            "6",
            "Up",
            "Cause: 16\r\nCause-txt: Normal Clearing\r\nTechCause: 200\r\n",
        ));
        let Some(Event::Hangup(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
        assert_eq!((e.cause, e.tech_cause), (Some(16), Some(200)));
    }

    #[test]
    fn hangup_cause_zero_missing_or_garbled_is_none() {
        for extra in ["Cause: 0\r\nCause-txt: Unknown\r\n", "", "Cause: busy\r\n", "Cause: 70000\r\n", "Cause:\r\n"] {
            let msg = decode(&channel_event("Hangup", "6", "Up", extra));
            let Some(Event::Hangup(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
            assert_eq!(e.cause, None, "{extra:?}");
        }
    }

    #[test]
    fn stray_whitespace_and_key_case() {
        let msg = decode(&format!(
            "Event:  Hangup \r\nuniqueid:   {ID}  \r\nCAUSE: 21 \r\ncause-TXT:  Call Rejected \r\n\r\n"
        ));
        let Some(Event::Hangup(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
        assert_eq!(e.uniqueid, Some(ID));
        assert_eq!(e.cause, Some(21));
        assert_eq!(e.cause_text, Some("Call Rejected"));
        let msg = decode("Event: Newstate\r\nUniqueid: \r\nChannelState:  5\r\n\r\n");
        let Some(Event::Newstate(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
        assert_eq!((e.uniqueid, e.state), (None, ChannelState::Ringing), "an empty Uniqueid is none");
    }

    #[test]
    fn first_of_repeated_headers_wins() {
        let msg = decode("Event: Hangup\r\nUniqueid: first\r\nCause: 17\r\nUniqueid: second\r\nCause: 18\r\n\r\n");
        let Some(Event::Hangup(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
        assert_eq!((e.uniqueid, e.cause), (Some("first"), Some(17)));
    }

    #[test]
    fn dial_end_of_an_originate_names_the_dialled_channel() {
        // An Originate dials with no caller: only the Dest* snapshot.
        let wire = format!(
            "Event: DialEnd\r\nPrivilege: call,all\r\nDestChannel: PJSIP/carrier-00000001\r\n\
             DestChannelState: 5\r\nDestChannelStateDesc: Ringing\r\nDestUniqueid: {ID}\r\n\
             DestLinkedid: {ID}\r\nDialStatus: BUSY\r\n\r\n"
        );
        let msg = decode(&wire);
        let Some(event @ Event::DialEnd(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
        assert_eq!((e.uniqueid, e.dest_uniqueid, e.status), (None, Some(ID), DialStatus::Busy));
        assert_eq!(event.uniqueid(), Some(ID));
        // From Dial() in a dialplan, both channels; still the dialled one.
        let wire =
            format!("Event: DialEnd\r\nUniqueid: 1700000000.1\r\nDestUniqueid: {ID}\r\nDialStatus: ANSWER\r\n\r\n");
        let msg = decode(&wire);
        let Some(event @ Event::DialEnd(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
        assert_eq!((e.uniqueid, event.uniqueid(), e.status), (Some("1700000000.1"), Some(ID), DialStatus::Answer));
    }

    #[test]
    fn dial_statuses() {
        for (text, status) in [
            ("ANSWER", DialStatus::Answer),
            ("noanswer", DialStatus::NoAnswer),
            ("CANCEL", DialStatus::Cancel),
            ("CONGESTION", DialStatus::Congestion),
            ("CHANUNAVAIL", DialStatus::ChanUnavail),
            ("ABORT", DialStatus::Abort),
            ("CONTINUE", DialStatus::Continue),
            ("GOTO:voice-otp,s,1", DialStatus::Goto),
            ("TORTURE", DialStatus::Other("TORTURE")),
        ] {
            assert_eq!(DialStatus::parse(text), status, "{text}");
        }
        assert_eq!(DialStatus::Busy.to_string(), "BUSY");
        let msg = decode("Event: DialEnd\r\nDestUniqueid: x\r\n\r\n");
        let Some(Event::DialEnd(e)) = Event::parse(&msg) else { panic!("{msg:?}") };
        assert_eq!(e.status, DialStatus::Other(""), "missing");
    }

    #[test]
    fn other_events_and_responses_are_not_ours() {
        for wire in [
            "Event: VarSet\r\nUniqueid: x\r\nVariable: A\r\nValue: 1\r\n\r\n",
            "Event: FullyBooted\r\nStatus: Fully Booted\r\n\r\n",
            "Response: Success\r\nActionID: 1\r\nMessage: Originate successfully queued\r\n\r\n",
            "Response: Error\r\nMessage: No such channel\r\n\r\n",
            "Message: neither\r\n\r\n",
        ] {
            assert_eq!(Event::parse(&decode(wire)), None, "{wire:?}");
        }
    }
}
