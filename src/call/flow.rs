//! What the callee hears, as a small script over typed AGI commands.
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
//! The flow knows nothing of sockets or bytes: it runs against any
//! [`AgiChannel`], so tests drive it with a scripted peer.

use crate::agi::{AgiChannel, AgiError, Command};
use crate::config::CallConfig;

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
}

impl Prompt {
    /// Every prompt, for sound checks.
    pub const ALL: [Prompt; 5] =
        [Prompt::Intro, Prompt::Repeat, Prompt::PressOne, Prompt::PressAnyKey, Prompt::Goodbye];

    /// The sound name Asterisk resolves under `sounds/<language>/`.
    pub fn sound(self) -> &'static str {
        match self {
            Prompt::Intro => "voice-otp/intro",
            Prompt::Repeat => "voice-otp/repeat",
            Prompt::PressOne => "voice-otp/press1",
            Prompt::PressAnyKey => "voice-otp/press_any_key",
            Prompt::Goodbye => "voice-otp/goodbye",
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

/// The result of one flow run.
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

impl From<AgiError> for Stop {
    fn from(e: AgiError) -> Stop {
        match e {
            AgiError::HungUp => Stop::HungUp,
            // A callee's hang-up always comes with a HANGUP line first; a
            // connection that just ends means Asterisk (or the network) died.
            AgiError::Closed => Stop::Error("FastAGI connection closed without HANGUP (Asterisk gone?)".into()),
            other => Stop::Error(other.to_string()),
        }
    }
}

/// Reads `code` (ASCII digits) to the callee on `chan`.
pub async fn read_code<C: AgiChannel>(
    chan: &mut C,
    code: &str,
    cfg: &CallConfig,
    options: &CallOptions,
) -> FlowOutcome {
    let mut flow = Flow { chan, cfg, code, readings: 0, keys: String::new(), extra_left: cfg.max_extra_readings };
    let end = match flow.script(options).await {
        Ok(end) => end,
        Err(Stop::HungUp) => FlowEnd::HungUp,
        Err(Stop::Error(e)) => FlowEnd::Error(e),
    };
    FlowOutcome { readings: flow.readings, keys: flow.keys, end }
}

/// How one reading went.
#[derive(PartialEq, Eq)]
enum Reading {
    /// Every digit was played.
    Full,
    /// The callee pressed 1: start over (one extra reading spent).
    Replay,
}

/// What playing a sound or waiting for a key gave.
enum Heard {
    /// It played to the end / the wait timed out.
    Nothing,
    /// This key was pressed (and ended the playback or the wait).
    Key(char),
    /// Asterisk could not play the sound (the channel is alive).
    Missing,
}

struct Flow<'a, C> {
    chan: &'a mut C,
    cfg: &'a CallConfig,
    code: &'a str,
    readings: u32,
    keys: String,
    extra_left: u32,
}

impl<C: AgiChannel> Flow<'_, C> {
    async fn script(&mut self, options: &CallOptions) -> Result<FlowEnd, Stop> {
        self.chan.run(Command::SetVariable("CHANNEL(language)".into(), options.language.clone())).await?;
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
        let reply = self.chan.run(Command::WaitForDigit { timeout_ms: i64::from(ms) }).await?;
        match reply.result {
            Some(-1) => Err(Stop::HungUp),
            Some(code) if code > 0 => Ok(self.key(code)),
            _ => Ok(Heard::Nothing),
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
    ///
    /// `result=-1` means either "file not found" or "hung up mid-playback".
    /// A 1 ms `WAIT FOR DIGIT` tells them apart: on a dead channel Asterisk
    /// answers it with `511`/`HANGUP`, on a live one with `200`.
    async fn stream(&mut self, sound: &str, escape: &str) -> Result<Heard, Stop> {
        let reply = self
            .chan
            .run(Command::StreamFile { file: sound.to_owned(), escape_digits: escape.to_owned(), offset: None })
            .await?;
        match reply.result {
            Some(-1) => {}
            Some(code) if code > 0 => return Ok(self.key(code)),
            _ => return Ok(Heard::Nothing),
        }
        let probe = self.chan.run(Command::WaitForDigit { timeout_ms: 1 }).await?;
        if probe.result == Some(-1) {
            return Err(Stop::HungUp);
        }
        Ok(Heard::Missing)
    }

    /// Notes a key from a reply's ASCII code. Anything but `0-9*#` (which
    /// Asterisk never sends) counts as no key.
    fn key(&mut self, code: i64) -> Heard {
        match u8::try_from(code).ok().map(char::from).filter(|c| ANY_KEY.contains(*c)) {
            Some(k) => {
                self.keys.push(k);
                Heard::Key(k)
            }
            None => Heard::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agi::Reply;
    use std::collections::VecDeque;

    /// Keys a scripted callee presses: (command prefix, which of the
    /// matching commands (0-based), key).
    type Presses = Vec<(&'static str, usize, char)>;

    /// A scripted Asterisk: records every command, answers from a list of
    /// outcomes, presses keys on chosen commands; when the list runs out
    /// every command succeeds with nothing pressed.
    struct Scripted {
        sent: Vec<String>,
        answers: VecDeque<Result<Reply, AgiError>>,
        hang_up_after: Option<usize>,
        presses: Presses,
    }

    fn ok(result: i64) -> Result<Reply, AgiError> {
        Ok(Reply { code: 200, result: Some(result), data: None, endpos: Some(1000), text: String::new() })
    }

    impl Scripted {
        fn new() -> Self {
            Scripted { sent: Vec::new(), answers: VecDeque::new(), hang_up_after: None, presses: Vec::new() }
        }
        fn hanging_up_after(n: usize) -> Self {
            Scripted { hang_up_after: Some(n), ..Scripted::new() }
        }
        /// Presses `key` in reply to the `nth` command starting with `prefix`.
        fn pressing(mut self, prefix: &'static str, nth: usize, key: char) -> Self {
            self.presses.push((prefix, nth, key));
            self
        }
        fn played(&self) -> Vec<&str> {
            self.sent
                .iter()
                .filter_map(|c| c.strip_prefix("STREAM FILE "))
                .map(|c| c.split(' ').next().unwrap())
                .collect()
        }
        fn digits_played(&self) -> usize {
            self.played().iter().filter(|p| p.starts_with("digits/")).count()
        }
    }

    impl AgiChannel for Scripted {
        async fn run(&mut self, cmd: Command) -> Result<Reply, AgiError> {
            let line = cmd.to_line().expect("valid command").trim_end().to_owned();
            self.sent.push(line.clone());
            if self.hang_up_after.is_some_and(|n| self.sent.len() > n) {
                return Err(AgiError::HungUp);
            }
            for &(prefix, nth, key) in &self.presses {
                let seen = self.sent.iter().filter(|c| c.starts_with(prefix)).count();
                if line.starts_with(prefix) && seen == nth + 1 {
                    return ok(key as i64);
                }
            }
            self.answers.pop_front().unwrap_or_else(|| ok(0))
        }
    }

    fn cfg() -> CallConfig {
        CallConfig::default()
    }

    fn en() -> CallOptions {
        CallOptions { language: "en".into(), require_keypress: false }
    }

    fn keypress() -> CallOptions {
        CallOptions { language: "en".into(), require_keypress: true }
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
        assert_eq!(chan.sent[0], "SET VARIABLE CHANNEL(language) \"en\"");
        assert_eq!(chan.sent[1], "WAIT FOR DIGIT 1000");
        // A pause before every digit; 1 interrupts digits while replays are left.
        let before_digits =
            chan.sent.windows(2).filter(|w| w[1].starts_with("STREAM FILE digits/") && w[0] == "WAIT FOR DIGIT 400");
        assert_eq!(before_digits.count(), 8);
        assert!(chan.sent.iter().filter(|c| c.starts_with("STREAM FILE digits/")).all(|c| c.ends_with(" \"1\"")));
        // The offer takes any key, then waits for one.
        let offer = chan.sent.iter().position(|c| c.starts_with("STREAM FILE voice-otp/press1")).unwrap();
        assert_eq!(chan.sent[offer], "STREAM FILE voice-otp/press1 \"0123456789*#\"");
        assert_eq!(chan.sent[offer + 1], "WAIT FOR DIGIT 5000");
    }

    #[tokio::test]
    async fn the_language_is_set_on_the_channel() {
        let mut chan = Scripted::new();
        let options = CallOptions { language: "ur".into(), require_keypress: false };
        read_code(&mut chan, "4821", &cfg(), &options).await;
        assert_eq!(chan.sent[0], "SET VARIABLE CHANNEL(language) \"ur\"");
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
        assert!(chan.sent.iter().filter(|c| c.starts_with("STREAM FILE digits/")).all(|c| c.ends_with(" \"\"")));
    }

    #[tokio::test]
    async fn one_at_the_offer_replays_until_the_extra_readings_are_spent() {
        // The callee presses 1 at every offer: 2 readings + 3 extra, then goodbye.
        let mut chan = Scripted::new()
            .pressing("STREAM FILE voice-otp/press1", 0, '1')
            .pressing("STREAM FILE voice-otp/press1", 1, '1')
            .pressing("STREAM FILE voice-otp/press1", 2, '1');
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
        let mut chan = Scripted::new().pressing("WAIT FOR DIGIT 5000", 0, '1').pressing("WAIT FOR DIGIT 5000", 1, '7');
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
        let mut chan = Scripted::new().pressing("STREAM FILE digits/", 2, '1');
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
        let mut chan = Scripted::new().pressing("WAIT FOR DIGIT 400", 1, '1');
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!((out.readings, out.keys.as_str()), (3, "1"));
        assert_eq!(chan.played()[..3], ["voice-otp/intro", "digits/4", "digits/4"]);

        // During "I repeat": the second reading starts at once, and a third follows.
        let mut chan = Scripted::new().pressing("STREAM FILE voice-otp/repeat", 0, '1');
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
        let mut chan = Scripted::new().pressing("WAIT FOR DIGIT 400", 1, '5').pressing("WAIT FOR DIGIT 400", 2, '#');
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out, FlowOutcome { readings: 2, keys: "5#".into(), end: FlowEnd::Finished });
        assert_eq!(chan.digits_played(), 8);
    }

    #[tokio::test]
    async fn pressing_one_all_the_time_is_bounded_by_max_extra_readings() {
        // 1 on every digit: three restarts, then 1 no longer interrupts.
        let mut chan = Scripted::new();
        chan.presses = (0..200).map(|i| ("STREAM FILE digits/", i, '1')).collect();
        let config = CallConfig { max_extra_readings: 3, ..cfg() };
        let out = read_code(&mut chan, "4821", &config, &en()).await;
        assert_eq!(out.end, FlowEnd::Finished);
        // Three 1s honoured (each cut a reading after its first digit),
        // then the planned 2 + 3 readings play in full.
        assert_eq!(out.readings, 5);
        assert_eq!(chan.digits_played(), 3 + 5 * 4);
        assert!(!chan.played().contains(&"voice-otp/press1"));
        let quiet = chan.sent.iter().filter(|c| c.starts_with("STREAM FILE digits/") && c.ends_with(" \"\"")).count();
        assert_eq!(quiet, 5 * 4, "once spent, digits are played without escape digits");
    }

    #[tokio::test]
    async fn keypress_mode_reads_the_code_only_after_a_key() {
        // The key comes in the wait after the second prompt.
        let mut chan = Scripted::new().pressing("WAIT FOR DIGIT 5000", 1, '3');
        let out = read_code(&mut chan, "4821", &cfg(), &keypress()).await;
        assert_eq!(out, FlowOutcome { readings: 2, keys: "3".into(), end: FlowEnd::Finished });
        let played = chan.played();
        assert_eq!(played[..3], ["voice-otp/press_any_key", "voice-otp/press_any_key", "voice-otp/intro"]);
        assert_eq!(chan.sent[2], "STREAM FILE voice-otp/press_any_key \"0123456789*#\"");
        assert_eq!(chan.digits_played(), 8);

        // A key during the prompt itself counts at once.
        let mut chan = Scripted::new().pressing("STREAM FILE voice-otp/press_any_key", 0, '*');
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
        assert_eq!(chan.sent.iter().filter(|c| *c == "WAIT FOR DIGIT 5000").count(), 4);
    }

    /// Every command of a run, as a list, for the hang-up sweep.
    async fn full_run(code: &str, options: &CallOptions, presses: &[(&'static str, usize, char)]) -> Vec<String> {
        let mut chan = Scripted::new();
        chan.presses = presses.to_vec();
        read_code(&mut chan, code, &cfg(), options).await;
        chan.sent
    }

    #[tokio::test]
    async fn hang_up_at_every_step_is_reported_with_the_readings_done() {
        // Plain, keypress mode, a restart mid-reading and a replay at the offer.
        let scenarios: [(CallOptions, Presses); 4] = [
            (en(), vec![]),
            (keypress(), vec![("WAIT FOR DIGIT 5000", 0, '5')]),
            (en(), vec![("STREAM FILE digits/", 2, '1')]),
            (en(), vec![("STREAM FILE voice-otp/press1", 0, '1')]),
        ];
        for (options, presses) in scenarios {
            let full = full_run("4821", &options, &presses).await;
            // A reading is complete when its last digit has played, unless
            // that digit was the one interrupted by 1 (never the case here).
            let last_digit: Vec<usize> = full
                .iter()
                .enumerate()
                .filter(|(_, c)| c.starts_with("STREAM FILE digits/1"))
                .map(|(i, _)| i)
                .collect();
            for n in 0..full.len() {
                let mut chan = Scripted::hanging_up_after(n);
                chan.presses = presses.clone();
                let out = read_code(&mut chan, "4821", &cfg(), &options).await;
                let at = format!("hang-up after {n} commands, {options:?} {presses:?}");
                assert_eq!(out.end, FlowEnd::HungUp, "{at}");
                let expected = last_digit.iter().filter(|&&i| i < n).count() as u32;
                assert_eq!(out.readings, expected, "{at}");
                assert_eq!(chan.sent.len(), n + 1, "nothing is sent after the hang-up: {at}");
                assert_eq!(chan.sent[..], full[..=n], "the same script up to the hang-up: {at}");
            }
        }
    }

    #[tokio::test]
    async fn minus_one_then_dead_probe_is_a_hang_up() {
        let mut chan = Scripted::new();
        chan.answers.extend([ok(1), ok(0), ok(-1), Err(AgiError::HungUp)]);
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out, FlowOutcome { readings: 0, keys: String::new(), end: FlowEnd::HungUp });
        assert_eq!(chan.sent[3], "WAIT FOR DIGIT 1");
    }

    #[tokio::test]
    async fn a_missing_prompt_is_skipped_but_a_missing_digit_is_an_error() {
        // Intro missing (-1, channel alive): the code is still read.
        let mut chan = Scripted::new();
        chan.answers.extend([ok(1), ok(0), ok(-1), ok(0)]);
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out, FlowOutcome { readings: 2, keys: String::new(), end: FlowEnd::Finished });

        // First digit missing: stop with an error, nothing more is played.
        let mut chan = Scripted::new();
        chan.answers.extend([ok(1), ok(0), ok(0), ok(0), ok(-1), ok(0)]);
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out.readings, 0);
        assert!(matches!(out.end, FlowEnd::Error(ref e) if e.contains("digits/4")), "{out:?}");
        assert_eq!(chan.sent.len(), 6);
    }

    #[tokio::test]
    async fn asterisk_errors_end_the_flow() {
        let mut chan = Scripted::new();
        chan.answers.extend([ok(1), Err(AgiError::UnknownCommand("510 Invalid or unknown command".into()))]);
        let out = read_code(&mut chan, "4821", &cfg(), &en()).await;
        assert_eq!(out.readings, 0);
        assert!(matches!(out.end, FlowEnd::Error(_)));
    }

    #[test]
    fn every_language_needs_the_prompts_and_ten_digits() {
        let needed = sounds_needed();
        assert_eq!(needed.len(), 15);
        assert!(needed.contains(&"voice-otp/press_any_key".to_owned()));
        assert!(needed.contains(&"digits/0".to_owned()) && needed.contains(&"digits/9".to_owned()));
    }
}
