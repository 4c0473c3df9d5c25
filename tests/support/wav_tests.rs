//! Self-tests of [`super::wav`], built only by the `support` test target
//! (`tests/support/main.rs`), not by every integration test that includes
//! `mod support;`.

use super::wav::*;
use std::io;

const RATE: u32 = 8000;

/// Tiny deterministic PRNG (xorshift) so noise tests need no crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

fn ms(n: u32) -> usize {
    (RATE * n / 1000) as usize
}

fn tone(len_ms: u32, freq: f64, amp: f64) -> Vec<i16> {
    (0..ms(len_ms))
        .map(|i| (amp * 32767.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / RATE as f64).sin()) as i16)
        .collect()
}

fn noise(len_ms: u32, amp: f64, rng: &mut Rng) -> Vec<i16> {
    (0..ms(len_ms)).map(|_| (amp * 32767.0 * rng.unit()) as i16).collect()
}

fn silence(len_ms: u32) -> Vec<i16> {
    vec![0; ms(len_ms)]
}

/// Adds `bg` onto `signal` sample by sample (saturating).
fn mix(signal: &mut [i16], bg: &[i16]) {
    for (s, b) in signal.iter_mut().zip(bg) {
        *s = s.saturating_add(*b);
    }
}

fn wav(samples: Vec<i16>) -> Wav {
    Wav { sample_rate: RATE, samples }
}

/// `bursts` of (burst ms, following gap ms) after `lead` ms of silence.
fn bursts(lead: u32, parts: &[(u32, u32)], make: &mut dyn FnMut(u32) -> Vec<i16>) -> Vec<i16> {
    let mut out = silence(lead);
    for &(b, g) in parts {
        out.extend(make(b));
        out.extend(silence(g));
    }
    out
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("voice-otp-wav-{}-{name}", std::process::id()))
}

fn assert_near(actual: u32, expected: u32, tol: u32, what: &str) {
    assert!(actual.abs_diff(expected) <= tol, "{what}: got {actual} ms, expected {expected} ± {tol} ms");
}

#[test]
fn round_trip_and_duration() {
    let w = wav(tone(250, 440.0, 0.5));
    let path = temp_path("rt.wav");
    write_wav(&path, &w).unwrap();
    let r = read_wav(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(r, w);
    assert_eq!(r.duration_ms(), 250);
}

#[test]
fn tone_bursts_are_counted_with_their_lengths() {
    let parts = [(400, 300), (250, 500), (600, 350), (300, 400)];
    let samples = bursts(1000, &parts, &mut |n| tone(n, 440.0, 0.3));
    let segs = speech_segments(&wav(samples));
    assert_eq!(segs.len(), 4, "{segs:?}");
    let mut t = 1000;
    for (seg, &(b, g)) in segs.iter().zip(&parts) {
        assert_near(seg.start_ms, t, 20, "start");
        assert_near(seg.len_ms(), b, 20, "length");
        assert!((seg.peak_dbfs - (-13.5)).abs() < 1.0, "0.3 sine is about -13.5 dBFS: {seg:?}");
        t += b + g;
    }
    assert_near(total_speech_ms(&segs), 1550, 80, "total");
}

#[test]
fn noise_bursts_over_background_noise() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let parts = [(300, 300), (300, 300), (300, 300), (300, 300), (300, 300), (300, 1000)];
    let mut samples = bursts(800, &parts, &mut |n| noise(n, 0.2, &mut Rng(n as u64 + 7)));
    // Background hiss at about -65 dBFS RMS, like comfort noise.
    let bg = noise(10_000, 0.001, &mut rng);
    mix(&mut samples, &bg);
    let segs = speech_segments(&wav(samples));
    assert_eq!(segs.len(), 6, "{segs:?}");
    assert!(segs.iter().all(|s| s.len_ms().abs_diff(300) <= 20), "{segs:?}");
}

#[test]
fn loud_background_raises_the_threshold() {
    // Hiss at about -40 dBFS is above the absolute floor: the noise-floor
    // estimate must keep it from being one long "speech" segment.
    let mut rng = Rng(42);
    let mut samples = bursts(1000, &[(400, 400), (400, 400), (400, 1000)], &mut |n| tone(n, 700.0, 0.5));
    let bg = noise(10_000, 0.017, &mut rng);
    mix(&mut samples, &bg);
    let segs = speech_segments(&wav(samples));
    assert_eq!(segs.len(), 3, "{segs:?}");
}

#[test]
fn short_gaps_inside_a_word_are_bridged() {
    // A "word" with a 80 ms closure inside, then a real 300 ms pause.
    let samples = bursts(500, &[(200, 80), (100, 300), (250, 500)], &mut |n| tone(n, 300.0, 0.3));
    let segs = speech_segments(&wav(samples));
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert_near(segs[0].len_ms(), 380, 20, "bridged word");
}

#[test]
fn blips_are_dropped() {
    let mut samples = silence(1000);
    samples.extend(tone(40, 1000.0, 0.8)); // a click-like 40 ms burst
    samples.extend(silence(1000));
    assert!(speech_segments(&wav(samples)).is_empty());
}

#[test]
fn quiet_signal_below_floor_is_not_speech() {
    // A -55 dBFS tone: audible in a quiet room, but not prompt-level speech.
    let samples = bursts(500, &[(500, 500)], &mut |n| tone(n, 440.0, 0.0025));
    assert!(speech_segments(&wav(samples)).is_empty());
}

#[test]
fn continuous_tone_without_silence_is_one_segment() {
    let segs = speech_segments(&wav(tone(2000, 440.0, 0.3)));
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert_near(segs[0].len_ms(), 2000, 20, "whole file");
}

#[test]
fn silent_and_near_silent_files_have_no_speech() {
    assert!(speech_segments(&wav(silence(3000))).is_empty());
    // Codec silence: +-1..8 LSB wobble.
    let mut rng = Rng(7);
    let wobble: Vec<i16> = (0..ms(3000)).map(|_| (rng.unit() * 8.0) as i16).collect();
    assert!(speech_segments(&wav(wobble)).is_empty());
    assert!(speech_segments(&wav(Vec::new())).is_empty());
    assert!(speech_segments(&Wav { sample_rate: 0, samples: vec![1000; 100] }).is_empty());
}

#[test]
fn header_only_file() {
    let bytes = wav_bytes(&wav(Vec::new()));
    assert_eq!(bytes.len(), 44);
    let w = parse_wav(&bytes).unwrap();
    assert_eq!(w.sample_rate, 8000);
    assert!(w.samples.is_empty());
    assert_eq!(w.duration_ms(), 0);
    assert!(speech_segments(&w).is_empty());
}

#[test]
fn bogus_data_sizes_take_the_rest_of_the_file() {
    let samples = tone(100, 440.0, 0.5);
    let good = wav_bytes(&wav(samples.clone()));
    for size in [0u32, u32::MAX, 1_000_000] {
        let mut b = good.clone();
        b[40..44].copy_from_slice(&size.to_le_bytes());
        b[4..8].copy_from_slice(&size.to_le_bytes()); // RIFF size equally unpatched
        let w = parse_wav(&b).unwrap_or_else(|e| panic!("data size {size:#x}: {e}"));
        assert_eq!(w.samples, samples, "data size {size:#x}");
    }
    // Truncated mid-sample: the half sample is dropped.
    let mut b = good.clone();
    b.truncate(44 + 101);
    b[40..44].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    assert_eq!(parse_wav(&b).unwrap().samples, samples[..50]);
}

#[test]
fn unknown_chunks_are_skipped() {
    let samples = tone(50, 440.0, 0.5);
    let good = wav_bytes(&wav(samples.clone()));
    // Insert an odd-sized LIST chunk (with its pad byte) between fmt and data.
    let mut b = good[..36].to_vec();
    b.extend_from_slice(b"LIST");
    b.extend_from_slice(&5u32.to_le_bytes());
    b.extend_from_slice(b"INFOx\0");
    b.extend_from_slice(&good[36..]);
    // ...and a trailing chunk after data, which must not be read as audio.
    b.extend_from_slice(b"junk");
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&[1, 2]);
    assert_eq!(parse_wav(&b).unwrap().samples, samples);
}

#[test]
fn extensible_pcm_is_accepted() {
    let mut b = wav_bytes(&wav(vec![1, 2, 3]));
    // Rewrite fmt as a 40-byte WAVE_FORMAT_EXTENSIBLE chunk.
    let mut fmt = b[20..36].to_vec();
    fmt[0..2].copy_from_slice(&0xFFFEu16.to_le_bytes());
    fmt.extend_from_slice(&22u16.to_le_bytes()); // cbSize
    fmt.extend_from_slice(&16u16.to_le_bytes()); // valid bits
    fmt.extend_from_slice(&4u32.to_le_bytes()); // channel mask
    fmt.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71]);
    let mut out = b[..12].to_vec();
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    out.extend_from_slice(&fmt);
    out.extend_from_slice(&b.split_off(36));
    assert_eq!(parse_wav(&out).unwrap().samples, vec![1, 2, 3]);
}

#[test]
fn unsupported_formats_give_clear_errors() {
    let base = wav_bytes(&wav(vec![0; 10]));
    let with = |off: usize, val: u16| {
        let mut b = base.clone();
        b[off..off + 2].copy_from_slice(&val.to_le_bytes());
        parse_wav(&b).unwrap_err()
    };
    let e = with(22, 2);
    assert!(e.contains("2 channels") && e.contains("mono"), "{e}");
    let e = with(34, 8);
    assert!(e.contains("8-bit"), "{e}");
    let e = with(20, 49);
    assert!(e.contains("GSM"), "{e}");
    let e = with(20, 7);
    assert!(e.contains("mu-law"), "{e}");

    assert!(parse_wav(b"RIFF").unwrap_err().contains("too short"));
    assert!(parse_wav(b"RIFF\0\0\0\0WAVX").unwrap_err().contains("not a RIFF/WAVE"));
    assert!(parse_wav(b"RIFF\0\0\0\0WAVE").unwrap_err().contains("no fmt chunk"));
    assert!(parse_wav(&base[..36]).unwrap_err().contains("no data chunk"));
    assert!(parse_wav(&base[..30]).unwrap_err().contains("fmt chunk truncated"));

    // Through read_wav the error is InvalidData and names the file.
    let path = temp_path("stereo.wav");
    let mut b = base.clone();
    b[22..24].copy_from_slice(&2u16.to_le_bytes());
    std::fs::write(&path, b).unwrap();
    let err = read_wav(&path).unwrap_err();
    std::fs::remove_file(&path).ok();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("stereo.wav"), "{err}");
    assert_eq!(read_wav(&temp_path("missing.wav")).unwrap_err().kind(), io::ErrorKind::NotFound);
}
