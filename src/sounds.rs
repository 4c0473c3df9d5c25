//! The sounds a configured installation needs in Asterisk's sounds folder,
//! and which are missing there (`voice-otp sounds check`).
//!
//! Asterisk looks a sound up as `<sounds dir>/<channel language>/<name>.<ext>`
//! with any extension a loaded format module reads, so a sound is present
//! when such a file exists in the language's own folder. Asterisk would fall
//! back to English for a missing one; for us that is a fault (an Urdu call
//! reading English digits), so it is reported as missing.

use std::path::{Path, PathBuf};

use crate::call::flow::sounds_needed;
use crate::config::CallConfig;

/// Where Debian's (and most distributions') Asterisk keeps its sounds.
pub const DEFAULT_SOUNDS_DIR: &str = "/usr/share/asterisk/sounds";

/// File extensions Asterisk's stock format modules play (format_wav,
/// format_gsm, format_pcm, format_sln, format_g722, format_g729,
/// format_g723, format_ilbc, format_ogg_vorbis, format_siren*, format_vox).
pub const PLAYABLE_EXTENSIONS: &[&str] = &[
    "wav", "WAV", "wav16", "gsm", "sln", "raw", "sln12", "sln16", "sln24", "sln32", "sln44", "sln48", "sln96",
    "sln192", "ulaw", "ul", "mu", "pcm", "alaw", "al", "g722", "g729", "g723", "g723sf", "ilbc", "ogg", "siren7",
    "siren14", "vox", "au",
];

/// One needed sound and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoundStatus {
    /// The call language.
    pub language: String,
    /// The sound name without extension (`voice-otp/intro`, `digits/4`).
    pub name: String,
    /// The file found, or `None` when it is missing.
    pub found: Option<PathBuf>,
}

/// Every sound each language of `cfg` needs, looked up under `dir`, in
/// language order (the configuration's), prompts first, then digits.
pub fn check(dir: &Path, cfg: &CallConfig) -> Vec<SoundStatus> {
    let mut report = Vec::new();
    for language in &cfg.languages {
        for name in sounds_needed() {
            let found = PLAYABLE_EXTENSIONS
                .iter()
                .map(|ext| dir.join(language.as_str()).join(format!("{name}.{ext}")))
                .find(|path| path.is_file());
            report.push(SoundStatus { language: language.as_str().to_owned(), name, found });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_missing_sound_per_language() {
        let dir = std::env::temp_dir().join(format!("voice-otp-sounds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = CallConfig::default();
        for lang in ["en", "ur"] {
            for name in sounds_needed() {
                let path = dir.join(lang).join(format!("{name}.gsm"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, b"x").unwrap();
            }
        }
        assert!(check(&dir, &cfg).iter().all(|s| s.found.is_some()));
        assert_eq!(check(&dir, &cfg).len(), 2 * 19);

        // Another format is as good; a missing Urdu digit is missing even
        // though the English one exists (Asterisk's fallback is not ours).
        std::fs::rename(dir.join("ur/voice-otp/intro.gsm"), dir.join("ur/voice-otp/intro.sln16")).unwrap();
        std::fs::remove_file(dir.join("ur/digits/7.gsm")).unwrap();
        std::fs::write(dir.join("ur/digits/7.mp3"), b"x").unwrap();
        let missing: Vec<_> = check(&dir, &cfg).into_iter().filter(|s| s.found.is_none()).collect();
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!((missing[0].language.as_str(), missing[0].name.as_str()), ("ur", "digits/7"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
