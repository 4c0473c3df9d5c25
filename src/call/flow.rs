//! What the callee hears, as a small script over typed AGI commands.
//!
//! Pause after answer (carriers clip the first syllables), the intro, the
//! code digit by digit with pauses, "I repeat" and the code again as many
//! times as configured, then goodbye. The flow knows nothing of sockets or
//! bytes: it runs against any [`AgiChannel`], so tests drive it with a
//! scripted peer.

use crate::agi::{AgiChannel, AgiError, Command};
use crate::config::CallConfig;

/// The prompts we ship in `sounds/<lang>/voice-otp/`; digits come from
/// Asterisk's core sounds (`digits/0` .. `digits/9`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// "Your verification code is"
    Intro,
    /// "I repeat"
    Repeat,
    /// "Goodbye"
    Goodbye,
}

impl Prompt {
    /// Every prompt, for sound checks.
    pub const ALL: [Prompt; 3] = [Prompt::Intro, Prompt::Repeat, Prompt::Goodbye];

    /// The sound name Asterisk resolves under `sounds/<language>/`.
    pub fn sound(self) -> &'static str {
        match self {
            Prompt::Intro => "voice-otp/intro",
            Prompt::Repeat => "voice-otp/repeat",
            Prompt::Goodbye => "voice-otp/goodbye",
        }
    }
}

/// How the flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEnd {
    /// Everything was played.
    Finished,
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
    /// How it ended.
    pub end: FlowEnd,
}

enum Stop {
    HungUp,
    Error(String),
}

impl From<AgiError> for Stop {
    fn from(e: AgiError) -> Stop {
        match e {
            AgiError::HungUp | AgiError::Closed => Stop::HungUp,
            other => Stop::Error(other.to_string()),
        }
    }
}

/// Reads `code` (ASCII digits) to the callee on `chan`.
pub async fn read_code<C: AgiChannel>(chan: &mut C, code: &str, cfg: &CallConfig) -> FlowOutcome {
    let mut readings = 0;
    let end = match script(chan, code, cfg, &mut readings).await {
        Ok(()) => FlowEnd::Finished,
        Err(Stop::HungUp) => FlowEnd::HungUp,
        Err(Stop::Error(e)) => FlowEnd::Error(e),
    };
    FlowOutcome { readings, end }
}

async fn script<C: AgiChannel>(chan: &mut C, code: &str, cfg: &CallConfig, readings: &mut u32) -> Result<(), Stop> {
    pause(chan, cfg.answer_pause_ms).await?;
    prompt(chan, Prompt::Intro).await?;
    for round in 0..cfg.readings {
        if round > 0 {
            pause(chan, cfg.reading_pause_ms).await?;
            prompt(chan, Prompt::Repeat).await?;
        }
        for digit in code.chars() {
            pause(chan, cfg.digit_pause_ms).await?;
            play_digit(chan, digit).await?;
        }
        *readings += 1;
    }
    pause(chan, cfg.reading_pause_ms).await?;
    prompt(chan, Prompt::Goodbye).await?;
    Ok(())
}

/// Silence; a key pressed meanwhile just ends the pause early.
async fn pause<C: AgiChannel>(chan: &mut C, ms: u32) -> Result<(), Stop> {
    if ms > 0 {
        let reply = chan.run(Command::WaitForDigit { timeout_ms: i64::from(ms) }).await?;
        if reply.result == Some(-1) {
            return Err(Stop::HungUp);
        }
    }
    Ok(())
}

/// A prompt of ours. A missing prompt is logged and skipped: the digits are
/// what the callee needs, and an admin's half-replaced sound set must not
/// cost them their code.
async fn prompt<C: AgiChannel>(chan: &mut C, which: Prompt) -> Result<(), Stop> {
    if !stream(chan, which.sound()).await? {
        tracing::warn!(sound = which.sound(), "prompt missing in Asterisk's sounds; skipped");
    }
    Ok(())
}

async fn play_digit<C: AgiChannel>(chan: &mut C, digit: char) -> Result<(), Stop> {
    let sound = match digit {
        '0'..='9' => format!("digits/{digit}"),
        other => return Err(Stop::Error(format!("not a digit: {other:?}"))),
    };
    if stream(chan, &sound).await? { Ok(()) } else { Err(Stop::Error(format!("sound {sound} is missing"))) }
}

/// Plays a sound; `Ok(false)` if Asterisk could not play it.
///
/// `result=-1` means either "file not found" or "hung up mid-playback".
/// A 1 ms `WAIT FOR DIGIT` tells them apart: on a dead channel Asterisk
/// answers it with `511`/`HANGUP`, on a live one with `200`.
async fn stream<C: AgiChannel>(chan: &mut C, sound: &str) -> Result<bool, Stop> {
    let reply = chan
        .run(Command::StreamFile { file: sound.to_owned(), escape_digits: String::new(), offset: None })
        .await?;
    if reply.result != Some(-1) {
        return Ok(true);
    }
    let probe = chan.run(Command::WaitForDigit { timeout_ms: 1 }).await?;
    if probe.result == Some(-1) {
        return Err(Stop::HungUp);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agi::Reply;
    use std::collections::VecDeque;

    /// A scripted Asterisk: records every command, answers from a list of
    /// outcomes; when the list runs out every command succeeds.
    struct Scripted {
        sent: Vec<String>,
        answers: VecDeque<Result<Reply, AgiError>>,
        hang_up_after: Option<usize>,
    }

    fn ok(result: i64) -> Result<Reply, AgiError> {
        Ok(Reply { code: 200, result: Some(result), data: None, endpos: Some(1000), text: String::new() })
    }

    impl Scripted {
        fn new() -> Self {
            Scripted { sent: Vec::new(), answers: VecDeque::new(), hang_up_after: None }
        }
        fn hanging_up_after(n: usize) -> Self {
            Scripted { hang_up_after: Some(n), ..Scripted::new() }
        }
        fn played(&self) -> Vec<&str> {
            self.sent.iter().filter_map(|c| c.strip_prefix("STREAM FILE ")).map(|c| c.split(' ').next().unwrap()).collect()
        }
    }

    impl AgiChannel for Scripted {
        async fn run(&mut self, cmd: Command) -> Result<Reply, AgiError> {
            self.sent.push(cmd.to_line().expect("valid command").trim_end().to_owned());
            if self.hang_up_after.is_some_and(|n| self.sent.len() > n) {
                return Err(AgiError::HungUp);
            }
            self.answers.pop_front().unwrap_or_else(|| ok(0))
        }
    }

    fn cfg() -> CallConfig {
        CallConfig::default()
    }

    #[tokio::test]
    async fn reads_the_code_twice_between_intro_and_goodbye() {
        let mut chan = Scripted::new();
        let out = read_code(&mut chan, "4821", &cfg()).await;
        assert_eq!(out, FlowOutcome { readings: 2, end: FlowEnd::Finished });
        assert_eq!(
            chan.played(),
            [
                "voice-otp/intro", "digits/4", "digits/8", "digits/2", "digits/1", "voice-otp/repeat", "digits/4",
                "digits/8", "digits/2", "digits/1", "voice-otp/goodbye"
            ]
        );
        // The first thing is a pause (carriers clip the start of audio).
        assert_eq!(chan.sent[0], "WAIT FOR DIGIT 1000");
        // A pause before every digit.
        let before_digits =
            chan.sent.windows(2).filter(|w| w[1].starts_with("STREAM FILE digits/") && w[0] == "WAIT FOR DIGIT 400");
        assert_eq!(before_digits.count(), 8);
    }

    #[tokio::test]
    async fn readings_follow_the_config() {
        let mut chan = Scripted::new();
        let config = CallConfig { readings: 3, ..cfg() };
        let out = read_code(&mut chan, "12345678", &config).await;
        assert_eq!(out.readings, 3);
        assert_eq!(chan.played().iter().filter(|p| p.starts_with("digits/")).count(), 24);
        assert_eq!(chan.played().iter().filter(|p| **p == "voice-otp/repeat").count(), 2);
    }

    #[tokio::test]
    async fn hang_up_at_every_step_is_reported_with_the_readings_done() {
        let mut full = Scripted::new();
        read_code(&mut full, "4821", &cfg()).await;
        let total = full.sent.len();
        // Index of the command that completes each reading.
        let last_digit: Vec<usize> = full
            .sent
            .iter()
            .enumerate()
            .filter(|(_, c)| c.starts_with("STREAM FILE digits/1"))
            .map(|(i, _)| i)
            .collect();
        for n in 0..total {
            let mut chan = Scripted::hanging_up_after(n);
            let out = read_code(&mut chan, "4821", &cfg()).await;
            assert_eq!(out.end, FlowEnd::HungUp, "hang-up after {n} commands");
            let expected = last_digit.iter().filter(|&&i| i < n).count() as u32;
            assert_eq!(out.readings, expected, "hang-up after {n} commands");
            assert_eq!(chan.sent.len(), n + 1, "nothing is sent after the hang-up");
        }
    }

    #[tokio::test]
    async fn minus_one_then_dead_probe_is_a_hang_up() {
        let mut chan = Scripted::new();
        chan.answers.extend([ok(0), ok(-1), Err(AgiError::HungUp)]);
        let out = read_code(&mut chan, "4821", &cfg()).await;
        assert_eq!(out, FlowOutcome { readings: 0, end: FlowEnd::HungUp });
        assert_eq!(chan.sent[2], "WAIT FOR DIGIT 1");
    }

    #[tokio::test]
    async fn a_missing_prompt_is_skipped_but_a_missing_digit_is_an_error() {
        // Intro missing (-1, channel alive): the code is still read.
        let mut chan = Scripted::new();
        chan.answers.extend([ok(0), ok(-1), ok(0)]);
        let out = read_code(&mut chan, "4821", &cfg()).await;
        assert_eq!(out, FlowOutcome { readings: 2, end: FlowEnd::Finished });

        // First digit missing: stop with an error, nothing more is played.
        let mut chan = Scripted::new();
        chan.answers.extend([ok(0), ok(0), ok(0), ok(-1), ok(0)]);
        let out = read_code(&mut chan, "4821", &cfg()).await;
        assert_eq!(out.readings, 0);
        assert!(matches!(out.end, FlowEnd::Error(ref e) if e.contains("digits/4")), "{out:?}");
        assert_eq!(chan.sent.len(), 5);
    }

    #[tokio::test]
    async fn asterisk_errors_end_the_flow() {
        let mut chan = Scripted::new();
        chan.answers.extend([ok(0), Err(AgiError::UnknownCommand("510 Invalid or unknown command".into()))]);
        let out = read_code(&mut chan, "4821", &cfg()).await;
        assert_eq!(out.readings, 0);
        assert!(matches!(out.end, FlowEnd::Error(_)));
    }
}
