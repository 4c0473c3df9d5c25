//! What the callee hears: the call scripts, over typed playback requests.
//!
//! Read mode ([`read_code`]):
//!
//! ```text
//! set the channel language     (Asterisk then plays sounds/<lang>/...)
//! pause after answer           (carriers clip the first syllables)
//! [voicemail-safe mode]        "press any key to hear your verification code",
//!                              then a wait; up to keypress_prompts times.
//!                              No key: goodbye, FlowEnd::NoKeypress, no digit played
//! intro                        "your verification code is"
//! readings                     the code digit by digit with pauses, `readings`
//!                              times, "I repeat" between
//! offer                        "press 1 to hear the code again", then a wait:
//!                              1 = one more reading, then the offer again;
//!                              any other key or silence = on to goodbye
//! goodbye
//! ```
//!
//! Keys, in one place. During the readings (digits, the pauses between
//! them, "I repeat") `1` is honoured at once: the reading stops, the code
//! starts over from its first digit, and the callee gets one reading more
//! than planned. Other keys there are ignored (a pause they cut short is
//! just shorter). Every `1` spends one of `max_extra_readings`; when they
//! are spent `1` no longer interrupts and the offer is not made. Keys during
//! the answer pause and the intro are ignored too. In voicemail-safe mode any
//! key (`0-9*#`) starts the code.
//!
//! Enter mode ([`take_code`]): the callee types the code.
//!
//! ```text
//! set the channel language
//! pause after answer           (keys ignored)
//! entry                        "please enter your verification code, then press
//!                              the hash key" while keys are collected (GET DATA):
//!                              `#`, the code's length or entry_timeout_ms without
//!                              a key ends it
//! right                        "thank you, you are verified", goodbye: Verified
//! wrong                        "that code is not correct" (not interruptible: it
//!                              swallows the `#` after a code typed in full), then
//!                              "please try again" as the next entry's prompt
//! nothing typed                (silence, or `#` alone) the first prompt again
//! entry_attempts entries       then goodbye: WrongCode if any code was typed,
//!                              else NoInput
//! ```
//!
//! The typed keys are compared with the code in constant time and go no
//! further: they are not kept in `keys`, stored or logged.
//!
//! This file is the script alone: what is said in which order, and what
//! keys do. Playing a sound or waiting for a key, and what Asterisk's
//! replies mean, are [`crate::agi::playback`]'s; the flow runs against any
//! [`Playback`], so its tests drive it with a scripted callee.

use crate::agi::playback::Entry;
use crate::agi::{Playback, PlaybackError, Played, Waited};
use crate::config::CallConfig;
use crate::secret::constant_time_eq;

use super::options::CallOptions;

/// The prompts we ship in `sounds/<lang>/voice-otp/`; digits are
/// `digits/0` .. `digits/9` in the same language (Asterisk's core sounds for
/// English, ours for the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// "Your verification code is"
    Intro,
    /// "I repeat"
    Repeat,
    /// "Press 1 to hear the code again"
    PressOne,
    /// "Press any key to hear your verification code" (voicemail-safe mode)
    PressAnyKey,
    /// "Goodbye"
    Goodbye,
    /// "Please enter your verification code, then press the hash key" (enter mode)
    EnterCode,
    /// "That code is not correct." (enter mode)
    WrongCode,
    /// "Please try again." (enter mode)
    TryAgain,
    /// "Thank you, you are verified." (enter mode)
    Verified,
}

impl Prompt {
    /// Every prompt, for sound checks: a call of either mode may come.
    pub const ALL: [Prompt; 9] = [
        Prompt::Intro,
        Prompt::Repeat,
        Prompt::PressOne,
        Prompt::PressAnyKey,
        Prompt::Goodbye,
        Prompt::EnterCode,
        Prompt::WrongCode,
        Prompt::TryAgain,
        Prompt::Verified,
    ];

    /// The sound name Asterisk resolves under `sounds/<language>/`.
    pub fn sound(self) -> &'static str {
        match self {
            Prompt::Intro => "voice-otp/intro",
            Prompt::Repeat => "voice-otp/repeat",
            Prompt::PressOne => "voice-otp/press1",
            Prompt::PressAnyKey => "voice-otp/press_any_key",
            Prompt::Goodbye => "voice-otp/goodbye",
            Prompt::EnterCode => "voice-otp/enter_code",
            Prompt::WrongCode => "voice-otp/wrong_code",
            Prompt::TryAgain => "voice-otp/try_again",
            Prompt::Verified => "voice-otp/verified",
        }
    }
}

/// Every sound a call in one language plays: our prompts and the ten digits.
pub fn sounds_needed() -> Vec<String> {
    let mut names: Vec<String> = Prompt::ALL.iter().map(|p| p.sound().to_owned()).collect();
    names.extend((0..=9).map(digit_sound));
    names
}

fn digit_sound(digit: u32) -> String {
    format!("digits/{digit}")
}

/// How the flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEnd {
    /// Everything was played.
    Finished,
    /// Voicemail-safe mode: no key after every "press any key" prompt; no
    /// digit was played.
    NoKeypress,
    /// The callee hung up (or the channel died) on the way.
    HungUp,
    /// Asterisk refused something or a digit sound is missing.
    Error(String),
}

/// The result of one read-mode run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowOutcome {
    /// Readings of the whole code that were played to the end.
    pub readings: u32,
    /// Every key the flow saw, in order (`0-9*#`).
    pub keys: String,
    /// How it ended.
    pub end: FlowEnd,
}

/// Keys that start the code in voicemail-safe mode and answer the offer.
const ANY_KEY: &str = "0123456789*#";

/// The key that asks for the code again.
const REPLAY_KEY: char = '1';

enum Stop {
    HungUp,
    Error(String),
}

impl From<PlaybackError> for Stop {
    fn from(e: PlaybackError) -> Stop {
        match e {
            PlaybackError::HungUp => Stop::HungUp,
            // A callee's hang-up always comes with a HANGUP line first; a
            // connection that just ends means Asterisk (or the network) died.
            PlaybackError::Agi(crate::agi::AgiError::Closed) => {
                Stop::Error("FastAGI connection closed without HANGUP (Asterisk gone?)".into())
            }
            PlaybackError::Agi(other) => Stop::Error(other.to_string()),
        }
    }
}

/// Reads `code` (ASCII digits) to the callee on `chan`.
pub async fn read_code<P: Playback>(chan: &mut P, code: &str, cfg: &CallConfig, options: &CallOptions) -> FlowOutcome {
    let mut flow = Flow { chan, cfg, code, readings: 0, keys: String::new(), extra_left: cfg.max_extra_readings };
    let end = match flow.script(options).await {
        Ok(end) => end,
        Err(Stop::HungUp) => FlowEnd::HungUp,
        Err(Stop::Error(e)) => FlowEnd::Error(e),
    };
    FlowOutcome { readings: flow.readings, keys: flow.keys, end }
}

/// What a keypad entry decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The callee typed the code.
    Verified,
    /// They typed codes, every one wrong.
    WrongCode,
    /// They typed nothing at any prompt.
    NoInput,
}

/// The result of one enter-mode run. Never holds what was typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOutcome {
    /// Codes typed and compared (silence or a lone `#` is none).
    pub attempts: u32,
    /// What the entry decided, once it did: `None` when the callee hung up
    /// (or the flow failed) before.
    pub verdict: Option<Verdict>,
    /// How the script ended: [`FlowEnd::Finished`], `HungUp` or `Error`.
    pub end: FlowEnd,
}

/// Has the callee on `chan` type `code` (ASCII digits) and says whether it
/// was right.
pub async fn take_code<P: Playback>(chan: &mut P, code: &str, cfg: &CallConfig, options: &CallOptions) -> EntryOutcome {
    let mut keypad = Keypad { chan, cfg, code, attempts: 0, verdict: None };
    let end = match keypad.script(options.language.as_str()).await {
        Ok(()) => FlowEnd::Finished,
        Err(Stop::HungUp) => FlowEnd::HungUp,
        Err(Stop::Error(e)) => FlowEnd::Error(e),
    };
    EntryOutcome { attempts: keypad.attempts, verdict: keypad.verdict, end }
}

struct Keypad<'a, P> {
    chan: &'a mut P,
    cfg: &'a CallConfig,
    code: &'a str,
    attempts: u32,
    verdict: Option<Verdict>,
}

impl<P: Playback> Keypad<'_, P> {
    async fn script(&mut self, language: &str) -> Result<(), Stop> {
        self.chan.set_language(language).await?;
        self.quiet(self.cfg.answer_pause_ms).await?;
        let mut prompt = Prompt::EnterCode;
        for round in 1..=self.cfg.entry_attempts {
            let last = round == self.cfg.entry_attempts;
            let typed = self.entry(prompt).await?;
            if typed.is_empty() {
                if last {
                    self.verdict = Some(if self.attempts > 0 { Verdict::WrongCode } else { Verdict::NoInput });
                }
                prompt = Prompt::EnterCode;
                continue;
            }
            self.attempts += 1;
            if constant_time_eq(typed.expose().as_bytes(), self.code.as_bytes()) {
                self.verdict = Some(Verdict::Verified);
                self.say(Prompt::Verified).await?;
                return self.goodbye().await;
            }
            if last {
                self.verdict = Some(Verdict::WrongCode);
            }
            self.say(Prompt::WrongCode).await?;
            prompt = Prompt::TryAgain;
        }
        self.goodbye().await
    }

    /// One entry, `prompt` playing while keys are collected: at most the
    /// code's length of them. A missing prompt ends the call: without it
    /// the callee cannot know what to do (`sounds check` finds it first).
    async fn entry(&mut self, prompt: Prompt) -> Result<crate::secret::Secret, Stop> {
        let max_keys = u32::try_from(self.code.len()).unwrap_or(u32::MAX);
        match self.chan.get_data(prompt.sound(), self.cfg.entry_timeout_ms, max_keys).await? {
            Entry::Typed { keys, .. } => Ok(keys),
            Entry::Missing => Err(Stop::Error(format!("sound {} is missing", prompt.sound()))),
        }
    }

    /// A prompt no key interrupts; a missing one is logged and skipped.
    async fn say(&mut self, which: Prompt) -> Result<(), Stop> {
        if let Played::Missing = self.chan.stream(which.sound(), "").await? {
            tracing::warn!(sound = which.sound(), "prompt missing in Asterisk's sounds; skipped");
        }
        Ok(())
    }

    /// Silence of `ms` (none for 0); a key only shortens it.
    async fn quiet(&mut self, ms: u32) -> Result<(), Stop> {
        if ms > 0 {
            self.chan.wait_for_digit(ms).await?;
        }
        Ok(())
    }

    async fn goodbye(&mut self) -> Result<(), Stop> {
        self.quiet(self.cfg.reading_pause_ms).await?;
        self.say(Prompt::Goodbye).await
    }
}

/// How one reading went.
#[derive(PartialEq, Eq)]
enum Reading {
    /// Every digit was played.
    Full,
    /// The callee pressed 1: start over (one extra reading spent).
    Replay,
}

/// What the callee did while a sound played or the flow waited.
enum Heard {
    /// Nothing: it played to the end / the wait timed out.
    Nothing,
    /// This key was pressed (and ended the playback or the wait).
    Key(char),
    /// Asterisk could not play the sound (the channel is alive).
    Missing,
}

struct Flow<'a, P> {
    chan: &'a mut P,
    cfg: &'a CallConfig,
    code: &'a str,
    readings: u32,
    keys: String,
    extra_left: u32,
}

impl<P: Playback> Flow<'_, P> {
    async fn script(&mut self, options: &CallOptions) -> Result<FlowEnd, Stop> {
        self.chan.set_language(options.language.as_str()).await?;
        self.pause(self.cfg.answer_pause_ms, "").await?;
        if options.require_keypress && !self.wait_for_any_key().await? {
            self.pause(self.cfg.reading_pause_ms, "").await?;
            self.prompt(Prompt::Goodbye, "").await?;
            return Ok(FlowEnd::NoKeypress);
        }
        self.prompt(Prompt::Intro, "").await?;
        let mut owed = self.cfg.readings;
        // The first reading follows the intro; a restarted one follows nothing.
        let mut lead_in = None;
        loop {
            while self.readings < owed {
                match self.read_once(lead_in).await? {
                    Reading::Full => {
                        self.readings += 1;
                        lead_in = Some(Prompt::Repeat);
                    }
                    Reading::Replay => {
                        owed += 1;
                        lead_in = None;
                    }
                }
            }
            if !self.offer_replay().await? {
                break;
            }
            owed += 1;
            lead_in = None;
        }
        self.pause(self.cfg.reading_pause_ms, "").await?;
        self.prompt(Prompt::Goodbye, "").await?;
        Ok(FlowEnd::Finished)
    }

    /// Voicemail-safe mode: true once the callee pressed any key.
    async fn wait_for_any_key(&mut self) -> Result<bool, Stop> {
        for round in 0..self.cfg.keypress_prompts {
            if round > 0 {
                self.pause(self.cfg.reading_pause_ms, "").await?;
            }
            if let Heard::Key(_) = self.prompt(Prompt::PressAnyKey, ANY_KEY).await? {
                return Ok(true);
            }
            if let Heard::Key(_) = self.wait(self.cfg.keypress_wait_ms).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One reading of the code, `lead_in` ("I repeat") first if given.
    async fn read_once(&mut self, lead_in: Option<Prompt>) -> Result<Reading, Stop> {
        if let Some(prompt) = lead_in {
            let heard = self.pause(self.cfg.reading_pause_ms, self.replay_escape()).await?;
            if self.asks_replay(&heard) {
                return Ok(Reading::Replay);
            }
            let heard = self.prompt(prompt, self.replay_escape()).await?;
            if self.asks_replay(&heard) {
                return Ok(Reading::Replay);
            }
        }
        let code = self.code;
        for digit in code.chars() {
            let heard = self.pause(self.cfg.digit_pause_ms, self.replay_escape()).await?;
            if self.asks_replay(&heard) {
                return Ok(Reading::Replay);
            }
            let Some(d) = digit.to_digit(10) else {
                return Err(Stop::Error(format!("not a digit: {digit:?}")));
            };
            let sound = digit_sound(d);
            let heard = self.stream(&sound, self.replay_escape()).await?;
            if let Heard::Missing = heard {
                return Err(Stop::Error(format!("sound {sound} is missing")));
            }
            if self.asks_replay(&heard) {
                return Ok(Reading::Replay);
            }
        }
        Ok(Reading::Full)
    }

    /// "Press 1 to hear the code again", then a wait. True if the callee
    /// pressed 1 (one extra reading spent); false for any other key,
    /// silence, or no extra reading left (then nothing is played).
    async fn offer_replay(&mut self) -> Result<bool, Stop> {
        if self.extra_left == 0 {
            return Ok(false);
        }
        self.pause(self.cfg.reading_pause_ms, "").await?;
        let mut heard = self.prompt(Prompt::PressOne, ANY_KEY).await?;
        if let Heard::Nothing | Heard::Missing = heard {
            heard = self.wait(self.cfg.replay_wait_ms).await?;
        }
        Ok(self.asks_replay(&heard))
    }

    /// Keys that interrupt the readings: `1` while extra readings are left.
    fn replay_escape(&self) -> &'static str {
        if self.extra_left > 0 { "1" } else { "" }
    }

    /// Whether `heard` is a `1` to honour; spends an extra reading if so.
    fn asks_replay(&mut self, heard: &Heard) -> bool {
        if matches!(heard, Heard::Key(REPLAY_KEY)) && self.extra_left > 0 {
            self.extra_left -= 1;
            return true;
        }
        false
    }

    /// Silence of `ms` (none for 0). A key in `escape` ends it and is
    /// returned; any other key is noted and ends the pause early, as
    /// Asterisk's `WAIT FOR DIGIT` cannot ignore keys.
    async fn pause(&mut self, ms: u32, escape: &str) -> Result<Heard, Stop> {
        if ms == 0 {
            return Ok(Heard::Nothing);
        }
        match self.wait(ms).await? {
            Heard::Key(k) if escape.contains(k) => Ok(Heard::Key(k)),
            _ => Ok(Heard::Nothing),
        }
    }

    /// Waits up to `ms` for a key.
    async fn wait(&mut self, ms: u32) -> Result<Heard, Stop> {
        match self.chan.wait_for_digit(ms).await? {
            Waited::Key(k) => Ok(self.key(k)),
            Waited::Timeout => Ok(Heard::Nothing),
        }
    }

    /// A prompt of ours. A missing prompt is logged and skipped: the digits
    /// are what the callee needs, and an admin's half-replaced sound set
    /// must not cost them their code.
    async fn prompt(&mut self, which: Prompt, escape: &str) -> Result<Heard, Stop> {
        let heard = self.stream(which.sound(), escape).await?;
        if let Heard::Missing = heard {
            tracing::warn!(sound = which.sound(), "prompt missing in Asterisk's sounds; skipped");
        }
        Ok(heard)
    }

    /// Plays a sound, interruptible by the keys in `escape`.
    async fn stream(&mut self, sound: &str, escape: &str) -> Result<Heard, Stop> {
        match self.chan.stream(sound, escape).await? {
            Played::Ended => Ok(Heard::Nothing),
            Played::Key(k) => Ok(self.key(k)),
            Played::Missing => Ok(Heard::Missing),
        }
    }

    /// Notes a key. Anything but `0-9*#` (the A-D of some keypads, never
    /// seen on a phone) counts as no key.
    fn key(&mut self, k: char) -> Heard {
        if !ANY_KEY.contains(k) {
            return Heard::Nothing;
        }
        self.keys.push(k);
        Heard::Key(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agi::AgiError;
    use crate::call::options::CallMode;
    use crate::secret::Secret;
    use std::collections::VecDeque;

    /// One request the flow made of the channel.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Asked {
        Language(String),
        Play { sound: String, escape: String },
        Wait(u32),
        Entry { prompt: String, timeout_ms: u32, max_keys: u32 },
    }

    fn entry(prompt: &str, max_keys: u32) -> Asked {
        Asked::Entry { prompt: prompt.into(), timeout_ms: 6000, max_keys }
    }

    fn play(sound: &str, escape: &str) -> Asked {
        Asked::Play { sound: sound.into(), escape: escape.into() }
    }

    /// Where a scripted callee presses a key.
    #[derive(Debug, Clone, Copy)]
    enum At {
        /// During the playback of a sound whose name starts with this.
        Sound(&'static str),
        /// During a wait of this many ms.
        Wait(u32),
    }

    /// Keys a scripted callee presses: (where, which of the matching
    /// requests (0-based), key).
    type Presses = Vec<(At, usize, char)>;

    /// A scripted callee behind typed playback: records every request,
    /// presses keys where told (a key stops a playback only if it is one of
    /// its escape keys, as in Asterisk), types `typing` at its entries, one
    /// each, then nothing; has no sounds named in `missing`, and hangs up
    /// or fails after a given number of requests.
    #[derive(Default)]
    struct Scripted {
        asked: Vec<Asked>,
        presses: Presses,
        typing: VecDeque<Entry>,
        missing: Vec<&'static str>,
        hang_up_after: Option<usize>,
        fail_at: Option<usize>,
    }

    impl Scripted {
        fn new() -> Self {
            Scripted::default()
        }
        fn hanging_up_after(n: usize) -> Self {
            Scripted { hang_up_after: Some(n), ..Scripted::new() }
        }
        /// Types each of `entries` (`#` ends one; `~` at its end: the
        /// timeout did), one per entry.
        fn typing(mut self, entries: &[&str]) -> Self {
            self.typing = entries.iter().map(|e| typed(e)).collect();
            self
        }
        fn entries(&self) -> Vec<&str> {
            self.asked
                .iter()
                .filter_map(|a| match a {
                    Asked::Entry { prompt, .. } => Some(prompt.as_str()),
                    _ => None,
                })
                .collect()
        }
        /// Presses `key` during the `nth` request matching `at`.
        fn pressing(mut self, at: At, nth: usize, key: char) -> Self {
            self.presses.push((at, nth, key));
            self
        }
        fn played(&self) -> Vec<&str> {
            self.asked
                .iter()
                .filter_map(|a| match a {
                    Asked::Play { sound, .. } => Some(sound.as_str()),
                    _ => None,
                })
                .collect()
        }
        fn digits_played(&self) -> usize {
            self.played().iter().filter(|p| p.starts_with("digits/")).count()
        }
        fn waits(&self, ms: u32) -> usize {
            self.asked.iter().filter(|a| **a == Asked::Wait(ms)).count()
        }
        /// Records `asked`; `Err` if the callee is gone by now.
        fn ask(&mut self, asked: Asked) -> Result<(), PlaybackError> {
            self.asked.push(asked);
            if self.hang_up_after.is_some_and(|n| self.asked.len() > n) {
                return Err(PlaybackError::HungUp);
            }
            if self.fail_at == Some(self.asked.len() - 1) {
                return Err(PlaybackError::Agi(AgiError::UnknownCommand("510 Invalid or unknown command".into())));
            }
            Ok(())
        }
        /// The key pressed during the last request, if the script says so.
        fn pressed(&self) -> Option<char> {
            let last = self.asked.last()?;
            let matches = |at: &At, a: &Asked| match (at, a) {
                (At::Sound(prefix), Asked::Play { sound, .. }) => sound.starts_with(prefix),
                (At::Wait(ms), Asked::Wait(w)) => ms == w,
                _ => false,
            };
            self.presses.iter().find_map(|(at, nth, key)| {
                let seen = self.asked.iter().filter(|a| matches(at, a)).count();
                (matches(at, last) && seen == nth + 1).then_some(*key)
            })
        }
    }

    impl Playback for Scripted {
        async fn set_language(&mut self, language: &str) -> Result<(), PlaybackError> {
            self.ask(Asked::Language(language.into()))
        }

        async fn stream(&mut self, sound: &str, escape: &str) -> Result<Played, PlaybackError> {
            self.ask(play(sound, escape))?;
            if self.missing.contains(&sound) {
                return Ok(Played::Missing);
            }
            Ok(match self.pressed() {
                Some(key) if escape.contains(key) => Played::Key(key),
                _ => Played::Ended,
            })
        }

        async fn wait_for_digit(&mut self, ms: u32) -> Result<Waited, PlaybackError> {
            self.ask(Asked::Wait(ms))?;
            Ok(self.pressed().map_or(Waited::Timeout, Waited::Key))
        }

        async fn get_data(&mut self, prompt: &str, timeout_ms: u32, max_keys: u32) -> Result<Entry, PlaybackError> {
            self.ask(Asked::Entry { prompt: prompt.into(), timeout_ms, max_keys })?;
            if self.missing.contains(&prompt) {
                return Ok(Entry::Missing);
            }
            Ok(self.typing.pop_front().unwrap_or_else(|| typed("~")))
        }

        async fn channel_variable(&mut self, _name: &str) -> Result<Option<String>, PlaybackError> {
            unreachable!("the call script reads no channel variable (the handler reads the token)")
        }

        async fn set_channel_variable(&mut self, _name: &str, _value: &str) -> Result<(), PlaybackError> {
            unreachable!("the call script sets no channel variable but the language (the handler marks the call)")
        }

        async fn hang_up(&mut self, _cause: u16) {
            unreachable!("the call script never hangs up itself (the handler does)")
        }
    }

    /// An entry as Asterisk reports it: the keys before a `#` (or `~`, the
    /// timeout), or all of them.
    fn typed(keys: &str) -> Entry {
        let timed_out = keys.ends_with('~');
        let keys = keys.trim_end_matches(['#', '~']);
        Entry::Typed { keys: Secret::new(keys), timed_out }
    }

    fn cfg() -> CallConfig {
        CallConfig::default()
    }

    fn en() -> CallOptions {
        CallOptions { mode: CallMode::Read, language: "en".into(), require_keypress: false }
    }

    fn keypress() -> CallOptions {
        CallOptions { mode: CallMode::Read, language: "en".into(), require_keypress: true }
    }

    fn enter() -> CallOptions {
        CallOptions { mode: CallMode::Enter, language: "en".into(), require_keypress: false }
    }

    const CODE_4821: [&str; 4] = ["digits/4", "digits/8", "digits/2", "digits/1"];

    #[tokio::test]
    async fn reads_the_code_twice_then_offers_a_replay_then_goodbye() {
        let mut chan = Scripted::new();
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out, FlowOutcome { readings: 2, keys: String::new(), end: FlowEnd::Finished });
        let mut expected = vec!["voice-otp/intro"];
        expected.extend(CODE_4821);
        expected.push("voice-otp/repeat");
        expected.extend(CODE_4821);
        expected.extend(["voice-otp/press1", "voice-otp/goodbye"]);
        assert_eq!(chan.played(), expected);
        // The channel language first, then a pause (carriers clip the start of audio).
        assert_eq!(chan.asked[..3], [Asked::Language("en".into()), Asked::Wait(1000), play("voice-otp/intro", "")]);
        // A pause before every digit; 1 interrupts digits while replays are left.
        let digit = |a: &Asked| matches!(a, Asked::Play { sound, .. } if sound.starts_with("digits/"));
        let before_digits = chan.asked.windows(2).filter(|w| digit(&w[1]) && w[0] == Asked::Wait(400));
        assert_eq!(before_digits.count(), 8);
        assert!(
            chan.asked.iter().filter(|a| digit(a)).all(|a| matches!(a, Asked::Play { escape, .. } if escape == "1"))
        );
        // The offer takes any key, then waits for one.
        let offer = chan.asked.iter().position(|a| *a == play("voice-otp/press1", "0123456789*#")).unwrap();
        assert_eq!(chan.asked[offer + 1], Asked::Wait(5000));
    }

    #[tokio::test]
    async fn the_language_is_set_on_the_channel() {
        let mut chan = Scripted::new();
        let options = CallOptions { language: "ur".into(), ..en() };
        read_code(&mut chan, "4821", &cfg(), &options).await;
        assert_eq!(chan.asked[0], Asked::Language("ur".into()));
        // Sound names stay language-neutral: Asterisk maps them to sounds/ur/.
        assert!(chan.played().contains(&"digits/4"));
    }

    #[tokio::test]
    async fn readings_follow_the_config() {
        let mut chan = Scripted::new();
        let config = CallConfig { readings: 3, max_extra_readings: 0, ..cfg() };
        let out = read_code(&mut chan, "12345678", &config, &en()).await;
        assert_eq!(out.readings, 3);
        assert_eq!(chan.digits_played(), 24);
        assert_eq!(chan.played().iter().filter(|p| **p == "voice-otp/repeat").count(), 2);
        // No replay left: no offer, and 1 does not interrupt the digits.
        assert!(!chan.played().contains(&"voice-otp/press1"));
        let digits = chan.asked.iter().filter_map(|a| match a {
            Asked::Play { sound, escape } if sound.starts_with("digits/") => Some(escape.as_str()),
            _ => None,
        });
        assert!(digits.clone().count() == 24 && digits.into_iter().all(str::is_empty));
    }

    #[tokio::test]
    async fn one_at_the_offer_replays_until_the_extra_readings_are_spent() {
        // The callee presses 1 at every offer: 2 readings + 3 extra, then goodbye.
        let mut chan = Scripted::new()
            .pressing(At::Sound("voice-otp/press1"), 0, '1')
            .pressing(At::Sound("voice-otp/press1"), 1, '1')
            .pressing(At::Sound("voice-otp/press1"), 2, '1');
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out, FlowOutcome { readings: 5, keys: "111".into(), end: FlowEnd::Finished });
        assert_eq!(chan.digits_played(), 20);
        let played = chan.played();
        assert_eq!(played.iter().filter(|p| **p == "voice-otp/press1").count(), 3, "no offer once spent");
        assert_eq!(played.last(), Some(&"voice-otp/goodbye"));
        // A replay is the code again, without "I repeat" before it.
        let offer = played.iter().position(|p| *p == "voice-otp/press1").unwrap();
        assert_eq!(played[offer + 1..offer + 5], CODE_4821);
    }

    #[tokio::test]
    async fn one_in_the_wait_after_the_offer_replays_and_other_keys_say_goodbye() {
        let mut chan = Scripted::new().pressing(At::Wait(5000), 0, '1').pressing(At::Wait(5000), 1, '7');
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out, FlowOutcome { readings: 3, keys: "17".into(), end: FlowEnd::Finished });
        let played = chan.played();
        let tail = &played[played.len() - 7..];
        assert_eq!(tail[..5], ["voice-otp/press1", "digits/4", "digits/8", "digits/2", "digits/1"]);
        assert_eq!(tail[5..], ["voice-otp/press1", "voice-otp/goodbye"]);
    }

    #[tokio::test]
    async fn one_mid_reading_starts_the_code_over_and_adds_a_reading() {
        // 1 pressed during the third digit of the first reading.
        let mut chan = Scripted::new().pressing(At::Sound("digits/"), 2, '1');
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out, FlowOutcome { readings: 3, keys: "1".into(), end: FlowEnd::Finished });
        let played = chan.played();
        assert_eq!(
            played[..8],
            ["voice-otp/intro", "digits/4", "digits/8", "digits/2", "digits/4", "digits/8", "digits/2", "digits/1"],
            "the code starts over at once, with no prompt in between"
        );
        assert_eq!(chan.digits_played(), 3 + 3 * 4);
        assert_eq!(played.iter().filter(|p| **p == "voice-otp/repeat").count(), 2);
    }

    #[tokio::test]
    async fn one_in_a_pause_or_during_i_repeat_is_honoured_too() {
        // During the pause before the second digit of the first reading.
        let mut chan = Scripted::new().pressing(At::Wait(400), 1, '1');
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!((out.readings, out.keys.as_str()), (3, "1"));
        assert_eq!(chan.played()[..3], ["voice-otp/intro", "digits/4", "digits/4"]);

        // During "I repeat": the second reading starts at once, and a third follows.
        let mut chan = Scripted::new().pressing(At::Sound("voice-otp/repeat"), 0, '1');
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out.readings, 3);
        let played = chan.played();
        let repeat = played.iter().position(|p| *p == "voice-otp/repeat").unwrap();
        assert_eq!(played[repeat + 1], "digits/4");
    }

    #[tokio::test]
    async fn other_keys_mid_reading_are_ignored() {
        // Asterisk only interrupts playback for escape digits ("1"); a key
        // in a pause ends that pause, and the reading goes on.
        let mut chan = Scripted::new().pressing(At::Wait(400), 1, '5').pressing(At::Wait(400), 2, '#').pressing(
            At::Sound("digits/"),
            3,
            '9',
        );
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out, FlowOutcome { readings: 2, keys: "5#".into(), end: FlowEnd::Finished });
        assert_eq!(chan.digits_played(), 8);
    }

    #[tokio::test]
    async fn pressing_one_all_the_time_is_bounded_by_max_extra_readings() {
        // 1 on every digit: three restarts, then 1 no longer interrupts.
        let mut chan = Scripted::new();
        chan.presses = (0..200).map(|i| (At::Sound("digits/"), i, '1')).collect();
        let config = CallConfig { max_extra_readings: 3, ..cfg() };
        let out = read_code(&mut chan, "4821", &config, &en()).await;
        assert_eq!(out.end, FlowEnd::Finished);
        // Three 1s honoured (each cut a reading after its first digit),
        // then the planned 2 + 3 readings play in full.
        assert_eq!((out.readings, out.keys.as_str()), (5, "111"));
        assert_eq!(chan.digits_played(), 3 + 5 * 4);
        assert!(!chan.played().contains(&"voice-otp/press1"));
        let quiet = chan
            .asked
            .iter()
            .filter(|a| matches!(a, Asked::Play { sound, escape } if sound.starts_with("digits/") && escape.is_empty()))
            .count();
        assert_eq!(quiet, 5 * 4, "once spent, digits are played without escape digits");
    }

    #[tokio::test]
    async fn keypress_mode_reads_the_code_only_after_a_key() {
        // The key comes in the wait after the second prompt.
        let mut chan = Scripted::new().pressing(At::Wait(5000), 1, '3');
        let out = read_code(&mut chan, "4821", &cfg(), &keypress()).await;
        assert_eq!(out, FlowOutcome { readings: 2, keys: "3".into(), end: FlowEnd::Finished });
        let played = chan.played();
        assert_eq!(played[..3], ["voice-otp/press_any_key", "voice-otp/press_any_key", "voice-otp/intro"]);
        assert_eq!(chan.asked[2], play("voice-otp/press_any_key", "0123456789*#"));
        assert_eq!(chan.digits_played(), 8);

        // A key during the prompt itself counts at once.
        let mut chan = Scripted::new().pressing(At::Sound("voice-otp/press_any_key"), 0, '*');
        let out = read_code(&mut chan, "4821", &cfg(), &keypress()).await;
        assert_eq!((out.readings, out.keys.as_str()), (2, "*"));
        assert_eq!(chan.played()[..2], ["voice-otp/press_any_key", "voice-otp/intro"]);
    }

    #[tokio::test]
    async fn keypress_mode_without_a_key_plays_no_digit() {
        let mut chan = Scripted::new();
        let config = CallConfig { keypress_prompts: 4, ..cfg() };
        let out = read_code(&mut chan, "4821", &config, &keypress()).await;
        assert_eq!(out, FlowOutcome { readings: 0, keys: String::new(), end: FlowEnd::NoKeypress });
        let mut expected = vec!["voice-otp/press_any_key"; 4];
        expected.push("voice-otp/goodbye");
        assert_eq!(chan.played(), expected);
        assert_eq!(chan.waits(5000), 4);
    }

    /// Every request of a run, as a list, for the hang-up sweep.
    async fn full_run(code: &str, options: &CallOptions, presses: &Presses) -> Vec<Asked> {
        let mut chan = Scripted::new();
        chan.presses = presses.clone();
        read_code(&mut chan, code, &cfg(), options).await;
        chan.asked
    }

    #[tokio::test]
    async fn hang_up_at_every_step_is_reported_with_the_readings_done() {
        // Plain, keypress mode, a restart mid-reading and a replay at the offer.
        let scenarios: [(CallOptions, Presses); 4] = [
            (en(), vec![]),
            (keypress(), vec![(At::Wait(5000), 0, '5')]),
            (en(), vec![(At::Sound("digits/"), 2, '1')]),
            (en(), vec![(At::Sound("voice-otp/press1"), 0, '1')]),
        ];
        for (options, presses) in scenarios {
            let full = full_run("4821", &options, &presses).await;
            // A reading is complete when its last digit has played, unless
            // that digit was the one interrupted by 1 (never the case here).
            let last_digit: Vec<usize> = full
                .iter()
                .enumerate()
                .filter(|(_, a)| matches!(a, Asked::Play { sound, .. } if sound == "digits/1"))
                .map(|(i, _)| i)
                .collect();
            for n in 0..full.len() {
                let mut chan = Scripted::hanging_up_after(n);
                chan.presses = presses.clone();
                let out = read_code(&mut chan, "4821", &cfg(), &options).await;
                let at = format!("hang-up after {n} requests, {options:?} {presses:?}");
                assert_eq!(out.end, FlowEnd::HungUp, "{at}");
                let expected = last_digit.iter().filter(|&&i| i < n).count() as u32;
                assert_eq!(out.readings, expected, "{at}");
                assert_eq!(chan.asked.len(), n + 1, "nothing is asked after the hang-up: {at}");
                assert_eq!(chan.asked[..], full[..=n], "the same script up to the hang-up: {at}");
            }
        }
    }

    #[tokio::test]
    async fn a_missing_prompt_is_skipped_but_a_missing_digit_is_an_error() {
        // Intro missing (the channel alive): the code is still read.
        let mut chan = Scripted { missing: vec!["voice-otp/intro"], ..Scripted::new() };
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out, FlowOutcome { readings: 2, keys: String::new(), end: FlowEnd::Finished });
        assert_eq!(chan.digits_played(), 8);

        // First digit missing: stop with an error, nothing more is played.
        let mut chan = Scripted { missing: vec!["digits/4"], ..Scripted::new() };
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out.readings, 0);
        assert!(matches!(out.end, FlowEnd::Error(ref e) if e.contains("digits/4")), "{out:?}");
        assert_eq!(chan.played(), ["voice-otp/intro", "digits/4"]);
    }

    #[tokio::test]
    async fn asterisk_errors_end_the_flow() {
        let mut chan = Scripted { fail_at: Some(1), ..Scripted::new() };
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out.readings, 0);
        assert!(matches!(out.end, FlowEnd::Error(ref e) if e.contains("510")), "{out:?}");
        assert_eq!(chan.asked.len(), 2, "nothing after the failure");
    }

    const CODE: &str = "246810";

    async fn enter_run(chan: &mut Scripted) -> EntryOutcome {
        take_code(chan, CODE, &cfg(), &enter()).await
    }

    #[tokio::test]
    async fn entry_right_first_time_is_verified() {
        let mut chan = Scripted::new().typing(&["246810"]);
        let out = enter_run(&mut chan).await;
        assert_eq!(out, EntryOutcome { attempts: 1, verdict: Some(Verdict::Verified), end: FlowEnd::Finished });
        assert_eq!(
            chan.asked,
            [
                Asked::Language("en".into()),
                Asked::Wait(1000),
                // At most the code's length of keys: the sixth ends the entry.
                entry("voice-otp/enter_code", 6),
                play("voice-otp/verified", ""),
                Asked::Wait(600),
                play("voice-otp/goodbye", ""),
            ]
        );
        // Ended by # or by the timeout after the code: the same.
        for typing in ["246810#", "246810~"] {
            let mut chan = Scripted::new().typing(&[typing]);
            assert_eq!(enter_run(&mut chan).await.verdict, Some(Verdict::Verified), "{typing}");
        }
    }

    #[tokio::test]
    async fn entry_wrong_then_right_is_verified_in_two_attempts() {
        let mut chan = Scripted::new().typing(&["135790", "246810#"]);
        let out = enter_run(&mut chan).await;
        assert_eq!(out, EntryOutcome { attempts: 2, verdict: Some(Verdict::Verified), end: FlowEnd::Finished });
        assert_eq!(chan.entries(), ["voice-otp/enter_code", "voice-otp/try_again"]);
        // "That code is not correct" takes no key (it swallows the wrong
        // code's #), then "please try again" collects the next one.
        let wrong = chan.asked.iter().position(|a| *a == play("voice-otp/wrong_code", "")).expect("said wrong");
        assert_eq!(chan.asked[wrong - 1], entry("voice-otp/enter_code", 6));
        assert_eq!(chan.asked[wrong + 1], entry("voice-otp/try_again", 6));
        assert_eq!(chan.played(), ["voice-otp/wrong_code", "voice-otp/verified", "voice-otp/goodbye"]);
    }

    #[tokio::test]
    async fn entry_all_wrong_is_wrong_code() {
        let mut chan = Scripted::new().typing(&["135790#", "000000", "2468#"]);
        let out = enter_run(&mut chan).await;
        assert_eq!(out, EntryOutcome { attempts: 3, verdict: Some(Verdict::WrongCode), end: FlowEnd::Finished });
        assert_eq!(chan.entries(), ["voice-otp/enter_code", "voice-otp/try_again", "voice-otp/try_again"]);
        assert_eq!(
            chan.played(),
            ["voice-otp/wrong_code", "voice-otp/wrong_code", "voice-otp/wrong_code", "voice-otp/goodbye"],
            "the last wrong code is not followed by 'try again'"
        );

        // The number of entries follows the config.
        let mut chan = Scripted::new().typing(&["1", "2", "3", "4", "5"]);
        let config = CallConfig { entry_attempts: 5, ..cfg() };
        let out = take_code(&mut chan, CODE, &config, &enter()).await;
        assert_eq!((out.attempts, out.verdict), (5, Some(Verdict::WrongCode)));
    }

    #[tokio::test]
    async fn entry_with_nothing_typed_is_no_input() {
        let mut chan = Scripted::new();
        let out = enter_run(&mut chan).await;
        assert_eq!(out, EntryOutcome { attempts: 0, verdict: Some(Verdict::NoInput), end: FlowEnd::Finished });
        assert_eq!(chan.entries(), ["voice-otp/enter_code"; 3], "the instructions again after each silence");
        assert_eq!(chan.played(), ["voice-otp/goodbye"]);

        // A wrong code, then silence: the code typed was wrong.
        let mut chan = Scripted::new().typing(&["135790"]);
        let out = enter_run(&mut chan).await;
        assert_eq!((out.attempts, out.verdict), (1, Some(Verdict::WrongCode)));
        assert_eq!(chan.entries(), ["voice-otp/enter_code", "voice-otp/try_again", "voice-otp/enter_code"]);
    }

    #[tokio::test]
    async fn entry_hash_alone_is_no_attempt() {
        let mut chan = Scripted::new().typing(&["#", "246810#"]);
        let out = enter_run(&mut chan).await;
        assert_eq!(out, EntryOutcome { attempts: 1, verdict: Some(Verdict::Verified), end: FlowEnd::Finished });
        assert_eq!(chan.entries(), ["voice-otp/enter_code", "voice-otp/enter_code"]);
        assert!(!chan.played().contains(&"voice-otp/wrong_code"), "nothing typed is not a wrong code");

        let mut chan = Scripted::new().typing(&["#", "#", "#"]);
        let out = enter_run(&mut chan).await;
        assert_eq!((out.attempts, out.verdict), (0, Some(Verdict::NoInput)));
    }

    #[tokio::test]
    async fn entry_with_too_many_digits_is_wrong() {
        // Asterisk stops at the code's length (max_keys); a peer that hands
        // back more, or a prefix with more after it, never matches.
        let mut chan = Scripted::new().typing(&["2468101", "24681", "246810"]);
        let out = enter_run(&mut chan).await;
        assert_eq!((out.attempts, out.verdict), (3, Some(Verdict::Verified)));
        assert_eq!(chan.played()[..2], ["voice-otp/wrong_code", "voice-otp/wrong_code"]);
        assert!(chan.asked.iter().all(|a| !matches!(a, Asked::Entry { max_keys, .. } if *max_keys != 6)));
        // A four-digit code is asked for with at most four keys.
        let mut chan = Scripted::new().typing(&["4821"]);
        let out = take_code(&mut chan, "4821", &cfg(), &enter()).await;
        assert_eq!(out.verdict, Some(Verdict::Verified));
        assert_eq!(chan.asked[2], entry("voice-otp/enter_code", 4));
    }

    #[tokio::test]
    async fn entry_hang_up_at_every_step_keeps_what_was_decided() {
        let scenarios: [&[&str]; 3] = [&["135790", "246810#"], &[], &["1", "2", "3"]];
        for typing in scenarios {
            let mut chan = Scripted::new().typing(typing);
            enter_run(&mut chan).await;
            let full = chan.asked;
            // The verdict is known from the entry that decides it on.
            let decided_at = |full: &[Asked]| {
                let entries: Vec<usize> =
                    full.iter().enumerate().filter(|(_, a)| matches!(a, Asked::Entry { .. })).map(|(i, _)| i).collect();
                let right = typing.iter().position(|t| t.trim_end_matches('#') == CODE);
                entries[right.unwrap_or(entries.len() - 1)]
            };
            let decided = decided_at(&full);
            for n in 0..full.len() {
                let mut chan = Scripted::hanging_up_after(n).typing(typing);
                let out = enter_run(&mut chan).await;
                let at = format!("hang-up after {n} requests, typing {typing:?}");
                assert_eq!(out.end, FlowEnd::HungUp, "{at}");
                assert_eq!(out.verdict.is_some(), n > decided, "{at}: {out:?}");
                assert_eq!(chan.asked[..], full[..=n], "the same script up to the hang-up: {at}");
            }
        }
        // Mid-entry: nothing decided, the codes typed before counted.
        let mut chan = Scripted { hang_up_after: Some(4), ..Scripted::new().typing(&["135790"]) };
        let out = enter_run(&mut chan).await;
        assert_eq!(chan.asked.last(), Some(&entry("voice-otp/try_again", 6)));
        assert_eq!(out, EntryOutcome { attempts: 1, verdict: None, end: FlowEnd::HungUp });
    }

    #[tokio::test]
    async fn entry_prompts_missing() {
        // Without the instructions the callee cannot know what to type.
        let mut chan = Scripted { missing: vec!["voice-otp/enter_code"], ..Scripted::new() };
        let out = enter_run(&mut chan).await;
        assert_eq!(out.verdict, None);
        assert!(matches!(out.end, FlowEnd::Error(ref e) if e.contains("voice-otp/enter_code")), "{out:?}");
        assert_eq!(chan.asked.len(), 3, "nothing after it");
        // A missing "verified" is skipped: the verdict stands.
        let mut chan = Scripted { missing: vec!["voice-otp/verified"], ..Scripted::new().typing(&[CODE]) };
        assert_eq!(enter_run(&mut chan).await.verdict, Some(Verdict::Verified));
        assert_eq!(chan.played().last(), Some(&"voice-otp/goodbye"));
    }

    #[tokio::test]
    async fn entry_language_and_no_keys_kept() {
        let mut chan = Scripted::new().typing(&[CODE]);
        let options = CallOptions { language: "ur".into(), ..enter() };
        let out = take_code(&mut chan, CODE, &cfg(), &options).await;
        assert_eq!(chan.asked[0], Asked::Language("ur".into()));
        assert!(!format!("{out:?}").contains(CODE), "the outcome holds nothing typed: {out:?}");
    }

    #[test]
    fn every_language_needs_the_prompts_and_ten_digits() {
        let needed = sounds_needed();
        assert_eq!(needed.len(), 19);
        assert!(needed.contains(&"voice-otp/press_any_key".to_owned()));
        assert!(needed.contains(&"voice-otp/enter_code".to_owned()));
        assert!(needed.contains(&"digits/0".to_owned()) && needed.contains(&"digits/9".to_owned()));
    }
}
