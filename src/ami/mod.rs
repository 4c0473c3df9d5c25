//! Asterisk Manager Interface (AMI) client: everything voice-otp says to and
//! hears from Asterisk's manager port.
//!
//! - [`codec`]: the wire format, pure and fuzzable (bytes to [`Frame`]s,
//!   [`Action`]s to bytes), with bounded frames.
//! - [`action`]: building actions; the only way to make one, and it refuses
//!   header text that could inject AMI headers.
//! - [`client`]: the connection task (login, keepalive, reconnect) and the
//!   [`AmiClient`] handle that sends actions and hands out events.
//!
//! The call logic above this module deals in [`Action`]s and [`Message`]s
//! and never sees a byte.

pub mod action;
pub mod client;
pub mod codec;

pub use action::{Action, HeaderError, Originate};
pub use client::{AmiClient, AmiConfig, AmiError, LinkState};
pub use codec::{AmiCodec, CodecError, Frame, Message, MessageKind};
