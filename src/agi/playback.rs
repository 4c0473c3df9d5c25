//! Playback on an answered channel as typed outcomes: what playing a sound
//! or waiting for a key gave. Asterisk's reply codes for these commands are
//! read here and nowhere else, so the call script above never sees a
//! `result=` or an ASCII code.
//!
//! One quirk shapes [`Playback::stream`] and [`Playback::get_data`]:
//! Asterisk answers `STREAM FILE` and `GET DATA` with `result=-1` both for a
//! sound it cannot find and for a channel that hung up mid-playback. A 1 ms
//! `WAIT FOR DIGIT` tells them apart: a dead channel answers it with `511`
//! or `HANGUP` (or `-1`), a live one with `200`.
//!
//! The keys a callee types into `GET DATA` may be a code: they travel only
//! as a [`Secret`], and no error here repeats a reply's text.

use std::future::Future;

use super::{AgiChannel, AgiError, Command, Reply};
use crate::secret::Secret;

/// How a playback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Played {
    /// The sound played to its end.
    Ended,
    /// This key, one of the escape keys, was pressed and stopped it.
    Key(char),
    /// Asterisk has no such sound (in the channel's language); the channel
    /// is alive.
    Missing,
}

/// How a wait for a key ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// No key within the time.
    Timeout,
    /// This key was pressed.
    Key(char),
}

/// What a keypad entry (`GET DATA`) collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The keys typed, in order (`0-9`, `*`, `A-D`; never the `#` that
    /// ended the entry), perhaps none (a lone `#`, or silence). `timed_out`:
    /// the wait for a key ran out rather than `#` or the most keys ending it.
    Typed {
        /// The keys; may be a code.
        keys: Secret,
        /// The entry ended by the timeout.
        timed_out: bool,
    },
    /// Asterisk has no such prompt (the channel is alive); nothing was
    /// collected.
    Missing,
}

/// Why playback cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum PlaybackError {
    /// The callee hung up (or the channel died): the normal end of many calls.
    #[error("channel hung up")]
    HungUp,
    /// Asterisk refused the command, or the FastAGI connection failed.
    #[error(transparent)]
    Agi(AgiError),
}

impl From<AgiError> for PlaybackError {
    fn from(e: AgiError) -> PlaybackError {
        match e {
            AgiError::HungUp => PlaybackError::HungUp,
            other => PlaybackError::Agi(other),
        }
    }
}

/// What a call script asks of a channel. Implemented for every
/// [`AgiChannel`]; a script's tests implement it with a scripted callee
/// that answers these typed requests.
///
/// Declared with `impl Future + Send` so a generic caller's future can be
/// spawned on a multi-threaded runtime; implementors may write `async fn`.
pub trait Playback {
    /// Sets the channel language, so Asterisk plays `sounds/<language>/...`.
    fn set_language(&mut self, language: &str) -> impl Future<Output = Result<(), PlaybackError>> + Send;

    /// Plays `sound` (a name without extension, e.g. `digits/4`); a key in
    /// `escape` (of `0-9*#`, may be empty) stops it. Other keys are lost.
    fn stream(&mut self, sound: &str, escape: &str) -> impl Future<Output = Result<Played, PlaybackError>> + Send;

    /// Waits up to `ms` for any key.
    fn wait_for_digit(&mut self, ms: u32) -> impl Future<Output = Result<Waited, PlaybackError>> + Send;

    /// Plays `prompt` and collects keys, those pressed while it plays
    /// included: `#`, `max_keys` keys or `timeout_ms` without a key (after
    /// the prompt, and between keys) end the entry.
    fn get_data(
        &mut self,
        prompt: &str,
        timeout_ms: u32,
        max_keys: u32,
    ) -> impl Future<Output = Result<Entry, PlaybackError>> + Send;

    /// Sets channel variable `name` to `value` (for the dialplan to read
    /// once the session is over).
    fn set_channel_variable(
        &mut self,
        name: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), PlaybackError>> + Send;

    /// The value of channel variable `name` (`None` when it is not set, or
    /// empty).
    fn channel_variable(&mut self, name: &str) -> impl Future<Output = Result<Option<String>, PlaybackError>> + Send;

    /// Ends the call with Q.850 `cause` (16: normal clearing). `EXEC Hangup`
    /// rather than the AGI `HANGUP` command, which leaves the channel's cause
    /// at 0 - the AMI `Hangup` event would then carry no cause to record.
    /// The channel may be gone already: that is no error.
    fn hang_up(&mut self, cause: u16) -> impl Future<Output = ()> + Send;
}

impl<C: AgiChannel> Playback for C {
    async fn set_language(&mut self, language: &str) -> Result<(), PlaybackError> {
        self.run(Command::SetVariable("CHANNEL(language)".into(), language.to_owned())).await?;
        Ok(())
    }

    async fn set_channel_variable(&mut self, name: &str, value: &str) -> Result<(), PlaybackError> {
        self.run(Command::SetVariable(name.to_owned(), value.to_owned())).await?;
        Ok(())
    }

    async fn stream(&mut self, sound: &str, escape: &str) -> Result<Played, PlaybackError> {
        let reply = self
            .run(Command::StreamFile { file: sound.to_owned(), escape_digits: escape.to_owned(), offset: None })
            .await?;
        if reply.result != Some(-1) {
            return Ok(reply.digit().map_or(Played::Ended, Played::Key));
        }
        let probe = self.run(Command::WaitForDigit { timeout_ms: 1 }).await?;
        if probe.result == Some(-1) {
            return Err(PlaybackError::HungUp);
        }
        Ok(Played::Missing)
    }

    async fn wait_for_digit(&mut self, ms: u32) -> Result<Waited, PlaybackError> {
        let reply = self.run(Command::WaitForDigit { timeout_ms: i64::from(ms) }).await?;
        if reply.result == Some(-1) {
            return Err(PlaybackError::HungUp);
        }
        Ok(reply.digit().map_or(Waited::Timeout, Waited::Key))
    }

    async fn channel_variable(&mut self, name: &str) -> Result<Option<String>, PlaybackError> {
        let reply = self.run(Command::GetVariable(name.to_owned())).await?;
        // `200 result=1 (value)` when set, `200 result=0` when not.
        Ok(if reply.result == Some(1) { reply.data.filter(|v| !v.is_empty()) } else { None })
    }

    async fn hang_up(&mut self, cause: u16) {
        let _ = self.run(Command::Exec { app: "Hangup".into(), args: cause.to_string() }).await;
    }

    async fn get_data(&mut self, prompt: &str, timeout_ms: u32, max_keys: u32) -> Result<Entry, PlaybackError> {
        let reply = self.run(Command::GetData { file: prompt.to_owned(), timeout_ms, max_digits: max_keys }).await?;
        if reply.result != Some(-1) {
            return typed(&reply);
        }
        let probe = self.run(Command::WaitForDigit { timeout_ms: 1 }).await?;
        if probe.result == Some(-1) {
            return Err(PlaybackError::HungUp);
        }
        Ok(Entry::Missing)
    }
}

/// Reads `GET DATA`'s `result=<keys> [(timeout)]` from the reply's text:
/// `Reply::result` holds a number, which would drop a leading `0` and stop
/// at a `*`.
fn typed(reply: &Reply) -> Result<Entry, PlaybackError> {
    let garbled = || PlaybackError::Agi(AgiError::Protocol("GET DATA reply is not result=<keys>".into()));
    let rest = reply.text.trim_end().strip_prefix("result=").ok_or_else(garbled)?;
    let (keys, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let timed_out = match tail.trim() {
        "" => false,
        "(timeout)" => true,
        _ => return Err(garbled()),
    };
    if !keys.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'*' | b'A'..=b'D')) {
        return Err(garbled());
    }
    Ok(Entry::Typed { keys: Secret::new(keys), timed_out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agi::Reply;
    use std::collections::VecDeque;

    /// Asterisk's side at the wire: records each command line, answers from
    /// a list (then `200 result=0`).
    #[derive(Default)]
    struct Wire {
        sent: Vec<String>,
        answers: VecDeque<Result<Reply, AgiError>>,
    }

    fn ok(text: &str) -> Result<Reply, AgiError> {
        let line = format!("200 {text}\n");
        let mut codec = crate::agi::AgiCodec::new();
        let mut buf = bytes::BytesMut::from("agi_network: yes\n\n");
        let _request = tokio_util::codec::Decoder::decode(&mut codec, &mut buf).unwrap();
        buf.extend_from_slice(line.as_bytes());
        match tokio_util::codec::Decoder::decode(&mut codec, &mut buf).unwrap() {
            Some(crate::agi::AgiFrame::Reply(reply)) => Ok(reply),
            other => panic!("{line:?} decoded as {other:?}"),
        }
    }

    impl Wire {
        fn answering(answers: impl IntoIterator<Item = Result<Reply, AgiError>>) -> Wire {
            Wire { sent: Vec::new(), answers: answers.into_iter().collect() }
        }
    }

    impl AgiChannel for Wire {
        async fn run(&mut self, cmd: Command) -> Result<Reply, AgiError> {
            self.sent.push(cmd.to_line().expect("valid command"));
            self.answers.pop_front().unwrap_or_else(|| ok("result=0"))
        }
    }

    #[tokio::test]
    async fn stream_reads_the_end_a_key_and_ignores_non_keys() {
        let mut wire =
            Wire::answering([ok("result=0 endpos=6560"), ok("result=49 endpos=2000"), ok("result=35"), ok("result=5")]);
        assert_eq!(wire.stream("digits/4", "1").await.unwrap(), Played::Ended);
        assert_eq!(wire.stream("digits/4", "1").await.unwrap(), Played::Key('1'));
        assert_eq!(wire.stream("voice-otp/press1", "0123456789*#").await.unwrap(), Played::Key('#'));
        // Not the ASCII code of a DTMF key: nothing was pressed.
        assert_eq!(wire.stream("voice-otp/intro", "").await.unwrap(), Played::Ended);
        assert_eq!(
            wire.sent,
            [
                r#"STREAM FILE digits/4 "1""#,
                r#"STREAM FILE digits/4 "1""#,
                r#"STREAM FILE voice-otp/press1 "0123456789*#""#,
                r#"STREAM FILE voice-otp/intro """#,
            ]
        );
    }

    #[tokio::test]
    async fn minus_one_is_probed_missing_on_a_live_channel() {
        let mut wire = Wire::answering([ok("result=-1 endpos=0"), ok("result=0")]);
        assert_eq!(wire.stream("voice-otp/intro", "").await.unwrap(), Played::Missing);
        assert_eq!(wire.sent, [r#"STREAM FILE voice-otp/intro """#, "WAIT FOR DIGIT 1"]);
    }

    #[tokio::test]
    async fn minus_one_is_a_hang_up_when_the_probe_finds_the_channel_dead() {
        // The probe answered by HANGUP/511 ...
        let mut wire = Wire::answering([ok("result=-1 endpos=0"), Err(AgiError::HungUp)]);
        assert!(matches!(wire.stream("digits/4", "1").await, Err(PlaybackError::HungUp)));
        assert_eq!(wire.sent.len(), 2);
        // ... or by -1 itself.
        let mut wire = Wire::answering([ok("result=-1 endpos=0"), ok("result=-1")]);
        assert!(matches!(wire.stream("digits/4", "1").await, Err(PlaybackError::HungUp)));
    }

    #[tokio::test]
    async fn waits_give_a_key_a_timeout_or_the_hang_up() {
        let mut wire = Wire::answering([ok("result=0"), ok("result=55"), ok("result=42"), ok("result=-1")]);
        assert_eq!(wire.wait_for_digit(5000).await.unwrap(), Waited::Timeout);
        assert_eq!(wire.wait_for_digit(5000).await.unwrap(), Waited::Key('7'));
        assert_eq!(wire.wait_for_digit(400).await.unwrap(), Waited::Key('*'));
        assert!(matches!(wire.wait_for_digit(400).await, Err(PlaybackError::HungUp)));
        assert_eq!(
            wire.sent,
            ["WAIT FOR DIGIT 5000", "WAIT FOR DIGIT 5000", "WAIT FOR DIGIT 400", "WAIT FOR DIGIT 400"]
        );
    }

    fn typed(keys: &str, timed_out: bool) -> Entry {
        Entry::Typed { keys: Secret::new(keys), timed_out }
    }

    #[tokio::test]
    async fn get_data_reads_the_keys_as_text() {
        let mut wire = Wire::answering([
            ok("result=246810"),
            ok("result=0123"),
            ok("result=12*3 (timeout)"),
            ok("result="),
            ok("result= (timeout)"),
        ]);
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(wire.get_data("voice-otp/enter_code", 6000, 6).await.unwrap());
        }
        assert_eq!(
            got,
            [
                typed("246810", false),
                // A leading zero and a star survive: the text is read, not the number.
                typed("0123", false),
                typed("12*3", true),
                // A lone #, and silence.
                typed("", false),
                typed("", true),
            ]
        );
        assert!(wire.sent.iter().all(|c| c == "GET DATA voice-otp/enter_code 6000 6"), "{:?}", wire.sent);
        let Entry::Typed { keys, .. } = &got[0] else { unreachable!() };
        assert!(!format!("{:?}", got[0]).contains("246810") && keys.expose() == "246810", "typed keys are a secret");
    }

    #[tokio::test]
    async fn get_data_minus_one_is_a_missing_prompt_or_the_hang_up() {
        let mut wire = Wire::answering([ok("result=-1"), ok("result=0")]);
        assert_eq!(wire.get_data("voice-otp/try_again", 3000, 4).await.unwrap(), Entry::Missing);
        assert_eq!(wire.sent, ["GET DATA voice-otp/try_again 3000 4", "WAIT FOR DIGIT 1"]);
        let mut wire = Wire::answering([ok("result=-1"), Err(AgiError::HungUp)]);
        assert!(matches!(wire.get_data("voice-otp/enter_code", 6000, 6).await, Err(PlaybackError::HungUp)));
        let mut wire = Wire::answering([Err(AgiError::HungUp)]);
        assert!(matches!(wire.get_data("voice-otp/enter_code", 6000, 6).await, Err(PlaybackError::HungUp)));
    }

    #[tokio::test]
    async fn a_garbled_get_data_reply_is_an_error_that_repeats_nothing() {
        for text in ["result=12x4", "result=1234 (hangup)", "result=#1", "12345"] {
            let mut wire = Wire::answering([ok(text)]);
            let err = wire.get_data("voice-otp/enter_code", 6000, 6).await.unwrap_err();
            assert!(matches!(err, PlaybackError::Agi(AgiError::Protocol(_))), "{text}: {err:?}");
            assert!(!err.to_string().contains("12"), "{text}: {err}");
        }
    }

    #[tokio::test]
    async fn channel_variables_are_read_set_or_not() {
        let mut wire = Wire::answering([ok("result=1 (a1b2)"), ok("result=0"), ok("result=1 ()")]);
        assert_eq!(wire.channel_variable("VOICE_OTP_TOKEN").await.unwrap().as_deref(), Some("a1b2"));
        assert_eq!(wire.channel_variable("VOICE_OTP_TOKEN").await.unwrap(), None);
        assert_eq!(wire.channel_variable("VOICE_OTP_TOKEN").await.unwrap(), None, "empty is unset");
        assert_eq!(wire.sent, ["GET VARIABLE VOICE_OTP_TOKEN"; 3]);
    }

    #[tokio::test]
    async fn hang_up_runs_the_hangup_application_with_its_cause() {
        let mut wire = Wire::answering([ok("result=-1")]);
        wire.hang_up(16).await;
        assert_eq!(wire.sent, ["EXEC Hangup \"16\""]);
    }

    #[tokio::test]
    async fn the_language_is_a_channel_variable() {
        let mut wire = Wire::default();
        wire.set_language("ur").await.unwrap();
        assert_eq!(wire.sent, [r#"SET VARIABLE CHANNEL(language) "ur""#]);
    }

    #[tokio::test]
    async fn hang_ups_and_failures_are_told_apart() {
        let mut wire = Wire::answering([
            Err(AgiError::HungUp),
            Err(AgiError::UnknownCommand("510 Invalid or unknown command".into())),
            Err(AgiError::Closed),
        ]);
        assert!(matches!(wire.wait_for_digit(10).await, Err(PlaybackError::HungUp)));
        assert!(matches!(wire.stream("digits/1", "").await, Err(PlaybackError::Agi(AgiError::UnknownCommand(_)))));
        assert!(matches!(wire.set_language("en").await, Err(PlaybackError::Agi(AgiError::Closed))));
    }
}
