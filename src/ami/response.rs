//! Typed answers to actions, so callers branch on what Asterisk meant
//! rather than on its words.
//!
//! Only answers whose meaning the daemon acts on are typed here; every
//! other action's answer is just `Ok` or [`AmiError::Rejected`].

use super::client::AmiError;
use super::codec::Message;

/// Asterisk's answer to `Status` for a channel it does not have
/// (`action_status` in `manager.c`, the same from Asterisk 13 to 22).
const NO_SUCH_CHANNEL: &str = "No such channel";

/// What Asterisk said about one channel asked for with
/// [`super::Action::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelStatus {
    /// Asterisk has the channel (its status events follow the answer).
    Exists,
    /// Asterisk answered "No such channel": the channel is gone.
    Gone,
}

impl ChannelStatus {
    /// Reads the answer to a `Status` action. Only Asterisk's own "no such
    /// channel" means [`ChannelStatus::Gone`]; any other refusal
    /// (`Permission denied` for a manager user without the `system`,
    /// `call` or `reporting` write class, `Status Access Forbidden`, ...) says
    /// nothing about the channel and stays an error, as do link failures:
    /// the caller does not know and must not act as if it did.
    pub fn from_reply(reply: Result<Message, AmiError>) -> Result<ChannelStatus, AmiError> {
        match reply {
            Ok(_) => Ok(ChannelStatus::Exists),
            Err(AmiError::Rejected(message)) if message.trim().eq_ignore_ascii_case(NO_SUCH_CHANNEL) => {
                Ok(ChannelStatus::Gone)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(text: &str) -> Result<Message, AmiError> {
        Err(AmiError::Rejected(text.to_owned()))
    }

    #[test]
    fn only_no_such_channel_means_gone() {
        let ok = Message::new(vec![
            ("Response".into(), "Success".into()),
            ("EventList".into(), "start".into()),
            ("Message".into(), "Channel status will follow".into()),
        ]);
        assert_eq!(ChannelStatus::from_reply(Ok(ok)).ok(), Some(ChannelStatus::Exists));
        for gone in ["No such channel", "no such channel", " No such channel "] {
            assert_eq!(ChannelStatus::from_reply(rejected(gone)).ok(), Some(ChannelStatus::Gone), "{gone:?}");
        }
        for unknown in [
            "Permission denied",
            "Status Access Forbidden: Variables",
            "Memory Allocation Failure",
            "Invalid/unknown command: Status. Use Action: ListCommands to show available commands.",
            "No such channel here, or maybe there",
            "",
        ] {
            match ChannelStatus::from_reply(rejected(unknown)) {
                Err(AmiError::Rejected(text)) => assert_eq!(text, unknown),
                other => panic!("{unknown:?} read as {other:?}"),
            }
        }
        for link in [AmiError::NotConnected, AmiError::Disconnected, AmiError::Timeout] {
            assert!(ChannelStatus::from_reply(Err(link)).is_err());
        }
    }
}
