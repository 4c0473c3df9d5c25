//! Did the callee hear speech? Reads the WAV files that the sandbox's "phone"
//! records (Asterisk `Record`/`MixMonitor`: RIFF, PCM 16-bit LE, mono, 8 kHz)
//! and finds the stretches of speech in them with a small energy-based voice
//! activity detector, so a test can count the spoken digits of a call.
//!
//! The detector is deliberately simple and documented by its numbers (see
//! [`speech_segments`]); it was calibrated on Asterisk's own `digits/N.gsm`
//! prompts and on espeak-ng speech pushed through 8 kHz 16-bit conversion.

use std::fmt;
use std::io;
use std::path::Path;

/// Decoded audio of a mono PCM 16-bit WAV file.
#[derive(Clone, PartialEq, Eq)]
pub struct Wav {
    /// Samples per second as written in the `fmt ` chunk (8000 for Asterisk's `wav`).
    pub sample_rate: u32,
    /// The samples, in order.
    pub samples: Vec<i16>,
}

// A derived Debug would print every sample; a summary is what a failed
// assertion needs.
impl fmt::Debug for Wav {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wav")
            .field("sample_rate", &self.sample_rate)
            .field("samples", &self.samples.len())
            .field("duration_ms", &self.duration_ms())
            .finish()
    }
}

impl Wav {
    /// Length of the audio in milliseconds (rounded down; 0 for no samples).
    pub fn duration_ms(&self) -> u32 {
        samples_to_ms(self.samples.len(), self.sample_rate)
    }
}

/// One stretch of speech found by [`speech_segments`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment {
    /// Start, in ms from the beginning of the file (a multiple of the 20 ms frame).
    pub start_ms: u32,
    /// End (exclusive), in ms from the beginning of the file.
    pub end_ms: u32,
    /// Level of the loudest 20 ms frame in the segment: its RMS in dBFS
    /// (0 dBFS = a full-scale square wave; a full-scale sine is about -3).
    pub peak_dbfs: f32,
}

impl Segment {
    /// Length of the segment in ms.
    pub fn len_ms(&self) -> u32 {
        self.end_ms.saturating_sub(self.start_ms)
    }
}

/// Reads a RIFF/WAVE file holding mono PCM 16-bit little-endian audio.
///
/// Walks the chunk list properly: `fmt ` is checked, unknown chunks (`LIST`,
/// `fact`, ...) are skipped, and a `data` chunk whose size is 0, 0xFFFFFFFF or
/// runs past the end of the file is taken to hold the rest of the file,
/// because Asterisk writes the real size only when it closes the file and a
/// test may read a recording that is still open (or was cut short). A trailing
/// odd byte (half a sample) is ignored.
///
/// Errors (`InvalidData`) name what is wrong: not RIFF/WAVE, no `fmt ` or
/// `data` chunk, a format other than PCM (e.g. Asterisk's `WAV` = GSM in WAV,
/// tag 49), other than 16 bits, other than one channel, or a sample rate of 0.
pub fn read_wav(path: &Path) -> io::Result<Wav> {
    let bytes = std::fs::read(path)?;
    parse_wav(&bytes).map_err(|msg| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {msg}", path.display())))
}

/// Parses WAV bytes; the error is a human-readable reason (no path).
pub fn parse_wav(bytes: &[u8]) -> Result<Wav, String> {
    if bytes.len() < 12 {
        return Err(format!("too short for a RIFF header ({} bytes)", bytes.len()));
    }
    if &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".to_string());
    }
    // The RIFF size itself is not trusted, for the same reason as the data size.
    let mut pos = 12usize;
    let mut format: Option<(u32, u16)> = None; // (sample_rate, channels) once validated
    let mut data: Option<&[u8]> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]);
        let body_start = pos + 8;
        let rest = bytes.len() - body_start;
        if id == b"data" {
            let bogus = size == 0 || size == u32::MAX || size as usize > rest;
            if bogus {
                // Unfinished or truncated recording: everything after the header is audio.
                data = Some(&bytes[body_start..]);
                break;
            }
            data = Some(&bytes[body_start..body_start + size as usize]);
        } else if size as usize > rest {
            // A chunk other than data cannot be "still being written"; stop
            // walking and report below what is missing.
            if id == b"fmt " {
                return Err(format!("fmt chunk truncated ({size} bytes declared, {rest} present)"));
            }
            break;
        } else if id == b"fmt " {
            format = Some(parse_fmt(&bytes[body_start..body_start + size as usize])?);
        }
        // Chunks are padded to an even length.
        pos = body_start.saturating_add(size as usize).saturating_add(size as usize & 1);
    }
    let (sample_rate, _channels) = format.ok_or("no fmt chunk")?;
    let data = data.ok_or("no data chunk")?;
    let samples = data.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    Ok(Wav { sample_rate, samples })
}

fn parse_fmt(fmt: &[u8]) -> Result<(u32, u16), String> {
    if fmt.len() < 16 {
        return Err(format!("fmt chunk too short ({} bytes)", fmt.len()));
    }
    let le16 = |i: usize| u16::from_le_bytes([fmt[i], fmt[i + 1]]);
    let mut tag = le16(0);
    let channels = le16(2);
    let sample_rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
    let bits = le16(14);
    // WAVE_FORMAT_EXTENSIBLE: the real format is the first two bytes of the
    // sub-format GUID (at offset 24).
    if tag == 0xFFFE && fmt.len() >= 26 {
        tag = le16(24);
    }
    if tag != 1 {
        let name = match tag {
            3 => " (IEEE float)",
            6 => " (A-law)",
            7 => " (mu-law)",
            49 => " (GSM 6.10, Asterisk's `WAV` format)",
            _ => "",
        };
        return Err(format!("unsupported WAV format tag {tag}{name}; expected PCM (1) 16-bit mono"));
    }
    if bits != 16 {
        return Err(format!("unsupported {bits}-bit PCM; expected 16-bit mono"));
    }
    if channels != 1 {
        return Err(format!("WAV has {channels} channels; expected mono (1)"));
    }
    if sample_rate == 0 {
        return Err("sample rate 0 in fmt chunk".to_string());
    }
    Ok((sample_rate, channels))
}

/// Writes `wav` as a canonical 44-byte-header PCM 16-bit mono WAV file
/// (for tests and for saving audio worth looking at after a failure).
pub fn write_wav(path: &Path, wav: &Wav) -> io::Result<()> {
    std::fs::write(path, wav_bytes(wav))
}

/// The bytes of `wav` as a canonical PCM 16-bit mono WAV file.
pub fn wav_bytes(wav: &Wav) -> Vec<u8> {
    let data_len = (wav.samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&wav.sample_rate.to_le_bytes());
    out.extend_from_slice(&(wav.sample_rate * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in &wav.samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------------------
// Voice activity detection
// ---------------------------------------------------------------------------

/// Analysis frame length. 20 ms is one RTP packet of audio and short enough
/// to place segment edges well inside a 300 ms pause.
pub const FRAME_MS: u32 = 20;
/// A frame quieter than this is never speech, whatever the noise floor. Codec
/// silence (GSM -> ulaw) sits around -70 dBFS or below and comfort noise is
/// normally under -55 dBFS; speech prompts peak around -20..-10 dBFS per frame.
pub const ABSOLUTE_FLOOR_DBFS: f32 = -45.0;
/// A frame must be this far above the estimated noise floor to be speech.
pub const NOISE_MARGIN_DB: f32 = 15.0;
/// Pauses shorter than this are bridged: they occur inside one word (the
/// closure before the "t" of "eight", the "k" of "six") and between the words
/// of a phrase, while digits read one by one are 300 ms or more apart.
pub const MERGE_GAP_MS: u32 = 120;
/// Segments shorter than this (after bridging) are clicks, not speech: the
/// shortest spoken digit is well over 200 ms.
pub const MIN_SEGMENT_MS: u32 = 60;
/// Percentile of frame levels taken as the noise floor: a call recording is
/// mostly pauses, so its quietest tenth is background.
const NOISE_PERCENTILE: f32 = 0.10;
/// When the file has too little silence for the percentile to find the
/// background (continuous speech or a steady tone), the threshold is capped
/// this far below the loudest frame so the loud part is still found.
const BELOW_LOUDEST_DB: f32 = 12.0;
/// Level given to a frame of pure zeros (log of 0 is -inf).
const SILENCE_DBFS: f32 = -120.0;

/// Finds the stretches of speech in `wav`.
///
/// Method: frames of [`FRAME_MS`]; a frame is speech when its RMS level (dBFS)
/// reaches the threshold `max(ABSOLUTE_FLOOR_DBFS, min(noise + NOISE_MARGIN_DB,
/// loudest - 12))`, where `noise` is the 10th percentile of the frame levels.
/// Runs of speech frames separated by less than [`MERGE_GAP_MS`] are joined,
/// then segments shorter than [`MIN_SEGMENT_MS`] are dropped.
///
/// What to expect (calibrated at 8 kHz on Asterisk's `digits/0..9.gsm`
/// (en_US_f_Allison) and on espeak-ng words, also after a u-law or GSM round
/// trip, at -20 dB gain, and under white noise at -55 and -35 dBFS): one
/// segment per digit, never two. Inside a digit the longest dip below the
/// threshold was 80 ms (bridged); between digit files it was 180 ms even with
/// no added pause, 520 ms or more with a 350 ms pause. A phrase like "Your
/// verification code is" came out as one segment (its dips were 20-40 ms);
/// longer prompts split where the speaker pauses 120 ms or more (e.g.
/// `vm-intro` -> 3 segments at its clause breaks), so a test should count the
/// segments after a prompt, or allow the prompt 1-2 segments. Tones, noise
/// bursts and clicks above the threshold count as "speech": this is an
/// energy detector, not a speech recogniser.
pub fn speech_segments(wav: &Wav) -> Vec<Segment> {
    let levels = frame_levels(wav);
    if levels.is_empty() {
        return Vec::new();
    }
    let threshold = threshold_dbfs(&levels);
    let frame_ms = FRAME_MS;
    let duration = wav.duration_ms();

    // Raw runs of frames at or above the threshold: (first frame, end frame, peak).
    let mut runs: Vec<(usize, usize, f32)> = Vec::new();
    for (i, &level) in levels.iter().enumerate() {
        if level < threshold {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last.1 == i => {
                last.1 = i + 1;
                last.2 = last.2.max(level);
            }
            _ => runs.push((i, i + 1, level)),
        }
    }

    // Bridge short pauses.
    let merge_frames = (MERGE_GAP_MS / frame_ms) as usize; // gaps of < 120 ms = < 6 frames
    let mut merged: Vec<(usize, usize, f32)> = Vec::new();
    for run in runs {
        match merged.last_mut() {
            Some(last) if run.0 - last.1 < merge_frames => {
                last.1 = run.1;
                last.2 = last.2.max(run.2);
            }
            _ => merged.push(run),
        }
    }

    merged
        .into_iter()
        .map(|(start, end, peak)| Segment {
            start_ms: (start as u32).saturating_mul(frame_ms).min(duration),
            end_ms: (end as u32).saturating_mul(frame_ms).min(duration),
            peak_dbfs: peak,
        })
        .filter(|s| s.len_ms() >= MIN_SEGMENT_MS)
        .collect()
}

/// Sum of the lengths of `segments`, in ms.
pub fn total_speech_ms(segments: &[Segment]) -> u32 {
    segments.iter().map(Segment::len_ms).sum()
}

/// RMS level in dBFS of each [`FRAME_MS`] frame (the last one may be shorter).
pub fn frame_levels(wav: &Wav) -> Vec<f32> {
    if wav.sample_rate == 0 {
        return Vec::new();
    }
    let frame_len = ((wav.sample_rate as u64 * FRAME_MS as u64 / 1000) as usize).max(1);
    wav.samples
        .chunks(frame_len)
        // A tail of a few samples says nothing reliable; ignore under half a frame.
        .filter(|c| c.len() * 2 >= frame_len)
        .map(rms_dbfs)
        .collect()
}

/// The speech/non-speech threshold that [`speech_segments`] uses for these frame levels.
pub fn threshold_dbfs(levels: &[f32]) -> f32 {
    if levels.is_empty() {
        return ABSOLUTE_FLOOR_DBFS;
    }
    let mut sorted = levels.to_vec();
    sorted.sort_by(f32::total_cmp);
    let noise = sorted[((sorted.len() - 1) as f32 * NOISE_PERCENTILE) as usize];
    let loudest = sorted[sorted.len() - 1];
    ABSOLUTE_FLOOR_DBFS.max((noise + NOISE_MARGIN_DB).min(loudest - BELOW_LOUDEST_DB))
}

fn rms_dbfs(frame: &[i16]) -> f32 {
    if frame.is_empty() {
        return SILENCE_DBFS;
    }
    let sum_sq: f64 = frame.iter().map(|&s| (s as f64) * (s as f64)).sum();
    let rms = (sum_sq / frame.len() as f64).sqrt();
    if rms <= 0.0 {
        return SILENCE_DBFS;
    }
    ((20.0 * (rms / 32768.0).log10()) as f32).max(SILENCE_DBFS)
}

fn samples_to_ms(n: usize, sample_rate: u32) -> u32 {
    if sample_rate == 0 {
        return 0;
    }
    (n as u64 * 1000 / sample_rate as u64).min(u32::MAX as u64) as u32
}

/// Which of `templates` (the sound files a call plays, in the same 8 kHz
/// 16-bit form) was heard at `segment` of `recording`, and how surely: the
/// template whose speech, slid within `slack_ms` around the segment's start,
/// correlates best with the recording (normalized cross-correlation of the
/// samples: 1.0 is the very waveform; telephone codecs such as G.711 keep it
/// near that, while another word scores far lower). Returns the index and
/// the best and second-best scores, so a caller can insist on a clear win.
pub fn best_match(recording: &Wav, segment: &Segment, templates: &[Wav], slack_ms: u32) -> (usize, f32, f32) {
    let per_ms = (recording.sample_rate / 1000).max(1) as usize;
    let slack = slack_ms as usize * per_ms;
    let start = segment.start_ms as usize * per_ms;
    let mut scores: Vec<(usize, f32)> = templates
        .iter()
        .enumerate()
        .map(|(i, template)| {
            // The template's own speech, from its first segment on.
            let from = speech_segments(template).first().map_or(0, |s| s.start_ms as usize * per_ms);
            let speech = &template.samples[from.min(template.samples.len())..];
            let energy: f32 = speech.iter().map(|&s| f32::from(s) * f32::from(s)).sum();
            let mut best = 0.0f32;
            for at in start.saturating_sub(slack)..=start + slack {
                let Some(heard) = recording.samples.get(at..at + speech.len()) else { break };
                let (mut dot, mut heard_energy) = (0.0f32, 0.0f32);
                for (&h, &t) in heard.iter().zip(speech) {
                    dot += f32::from(h) * f32::from(t);
                    heard_energy += f32::from(h) * f32::from(h);
                }
                let denominator = (energy * heard_energy).sqrt();
                if denominator > 0.0 {
                    best = best.max(dot / denominator);
                }
            }
            (i, best)
        })
        .collect();
    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
    (scores[0].0, scores[0].1, scores.get(1).map_or(0.0, |s| s.1))
}

/// Our Urdu digit recordings, `sounds/ur/digits/0.wav` to `9.wav`, in order.
pub fn urdu_digit_files() -> Vec<Wav> {
    (0..=9)
        .map(|d| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("sounds/ur/digits/{d}.wav"));
            read_wav(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
        })
        .collect()
}

/// Each spoken word of `recording` with the digit it is, if any: matched
/// against `digits` (the ten digit files, 0 to 9) with [`best_match`]; a
/// word that matches one clearly is that digit, any other (a prompt,
/// another voice) `None`. Clearly: 0.8 or more and 0.2 ahead of the next -
/// or, nearly the very waveform (0.95 or more), ahead by 0.05: a 7 heard
/// at 0.97 whose runner-up template once caught 0.89 of it (a clean run of
/// the press-one test) is still a 7. The strings are each
/// word's scores, for messages.
pub fn heard_words(recording: &Wav, digits: &[Wav]) -> Vec<(Segment, Option<char>, String)> {
    speech_segments(recording)
        .into_iter()
        .map(|segment| {
            let (digit, best, second) = best_match(recording, &segment, digits, 60);
            let score = format!("{}ms: {digit} {best:.2} (next {second:.2})", segment.start_ms);
            let clear = (best >= 0.8 && best - second >= 0.2) || (best >= 0.95 && best - second >= 0.05);
            let heard = clear.then(|| char::from(b'0' + digit as u8));
            (segment, heard, score)
        })
        .collect()
}

/// The digits heard in `recording` ([`heard_words`]), in order, and each
/// word's scores.
pub fn heard_digits(recording: &Wav, digits: &[Wav]) -> (String, Vec<String>) {
    let words = heard_words(recording, digits);
    let heard = words.iter().filter_map(|(_, digit, _)| *digit).collect();
    (heard, words.into_iter().map(|(_, _, score)| score).collect())
}
