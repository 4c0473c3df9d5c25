//! Asterisk Manager Interface (AMI) client: everything voice-otp says to and
//! hears from Asterisk's manager port.
//!
//! - [`codec`]: the wire format, pure and fuzzable (bytes to [`Frame`]s,
//!   [`Action`]s to bytes), with bounded frames.
//! - [`action`]: building actions; the only way to make one, and it refuses
//!   header text that could inject AMI headers.
//! - [`event`]: the events the daemon follows, typed ([`Event::parse`]),
//!   with Asterisk's codes and quirks handled there.
//! - [`response`]: typed answers to actions ([`ChannelStatus`] for
//!   `Status`).
//! - [`client`]: the connection task (login, keepalive, reconnect) and the
//!   [`AmiClient`] handle that sends actions and hands out events.
//!
//! The call logic above this module sends [`Action`]s, reads [`Event`]s and
//! typed answers, and never sees a byte nor a header name.

pub mod action;
pub mod client;
pub mod codec;
pub mod event;
pub mod response;

pub use action::{Action, HeaderError, Originate};
pub use client::{AmiClient, AmiConfig, AmiError, LinkState};
pub use codec::{AmiCodec, CodecError, Frame, Message, MessageKind};
pub use event::{ChannelState, DialEnd, DialStatus, Event, Hangup, Newstate, OriginateReason, OriginateResponse};
pub use response::ChannelStatus;
