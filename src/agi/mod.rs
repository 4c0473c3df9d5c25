//! FastAGI: the connection Asterisk opens when the dialplan runs
//! `AGI(agi://127.0.0.1:4573/otp,ARG)` on an answered call, through which the
//! daemon plays the code.
//!
//! - [`codec`]: the wire format alone - request block, replies, `HANGUP`
//!   lines in; command lines out. Pure and bounded.
//! - [`command`]: typed commands, validated and quoted so no outside value
//!   can inject a second command.
//! - [`session`]: one connection, one command at a time, replies turned into
//!   results ([`AgiChannel`]: one command, one reply).
//! - [`playback`]: sounds, waits for keys, as typed outcomes
//!   ([`Playback`] is what the call flow is written against).
//! - [`server`]: the listener - allow-list, session limit, one task per
//!   connection, graceful drain on shutdown.

pub mod codec;
pub mod command;
pub mod playback;
pub mod server;
pub mod session;

pub use codec::{AgiCodec, AgiFrame, AgiRequest, Reply};
pub use command::{Command, CommandError};
pub use playback::{Playback, PlaybackError, Played, Waited};
pub use server::{Admission, AgiHandler, AgiServer, DEFAULT_MAX_SESSIONS};
pub use session::{AgiChannel, AgiError, AgiSession};
