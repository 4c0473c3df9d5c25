//! A verification's code: derived, never stored.
//!
//! `code = digits(HMAC-SHA256(key, label || id || salt || counter))`, where
//! the key is the daemon's verification key (32 random bytes in a file of
//! its own, `[verify] key_file`) and the salt 16 random bytes kept with the
//! verification while it is pending. The digits are drawn from the HMAC
//! output by rejection sampling (bytes 250-255 are skipped, the rest taken
//! mod 10), so each digit is uniform over 0-9; the construction is a
//! keyed pseudo-random function fed by the OS CSPRNG's salt, so codes are as
//! unpredictable as drawing them from the CSPRNG directly.
//!
//! Why not store the code, or its hash: a re-send must read the *same*
//! code again (a second call for a pending verification), which a hash
//! cannot give back; and a plain hash of six digits is broken by trying all
//! 10^6. Here a copy of the database holds only salts: without the key file
//! they say nothing about any code, and a final verification's salt is
//! erased, so not even the key brings its code back.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::VerificationId;
use crate::secret::{Secret, constant_time_eq};

/// Digits in a generated code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLength(u8);

impl CodeLength {
    /// Shortest code we make.
    pub const MIN: u8 = 4;
    /// Longest code we make.
    pub const MAX: u8 = 10;
    /// What a request that names none gets.
    pub const DEFAULT: CodeLength = CodeLength(6);

    /// `n` if it is within [`Self::MIN`]..=[`Self::MAX`].
    pub fn new(n: u64) -> Option<CodeLength> {
        (u64::from(Self::MIN)..=u64::from(Self::MAX)).contains(&n).then_some(CodeLength(n as u8))
    }

    /// The number of digits.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// The daemon's verification key: 32 random bytes. `Debug` redacts it.
#[derive(Clone)]
pub struct VerifyKey([u8; 32]);

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyKey(<redacted>)")
    }
}

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or creating it failed.
    #[error("verification key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exists but does not hold 64 hex digits.
    #[error(
        "verification key file {0} does not hold 64 hex digits (32 bytes); restore it or remove it to make a new one (pending verifications then fail their checks)"
    )]
    Malformed(String),
}

impl VerifyKey {
    /// A key from its bytes (tests, and daemons sharing a key).
    pub fn from_bytes(bytes: [u8; 32]) -> VerifyKey {
        VerifyKey(bytes)
    }

    /// Reads the key from `path`, creating it (mode 0600, 32 random bytes as
    /// hex) if it does not exist. Every daemon sharing a database must use
    /// the same file's contents.
    pub fn load_or_create(path: &Path) -> Result<VerifyKey, KeyError> {
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut bytes)
                    .map_err(|_| KeyError::Malformed(path.display().to_string()))?;
                Ok(VerifyKey(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::random();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                // create_new: two daemons starting at once must not each
                // write a different key; the loser reads the winner's.
                match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
                    Ok(mut file) => {
                        file.write_all(format!("{}\n", hex::encode(bytes)).as_bytes()).map_err(io)?;
                        file.sync_all().map_err(io)?;
                        Ok(VerifyKey(bytes))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => VerifyKey::load_or_create(path),
                    Err(e) => Err(io(e)),
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The code of verification `id` with `salt`, `length` digits long.
    pub fn code(&self, id: &VerificationId, salt: &[u8; 16], length: CodeLength) -> Secret {
        let mut digits = String::with_capacity(usize::from(length.get()));
        let mut counter: u32 = 0;
        while digits.len() < usize::from(length.get()) {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
            mac.update(b"voice-otp verification code v1\0");
            mac.update(id.as_str().as_bytes());
            mac.update(salt);
            mac.update(&counter.to_be_bytes());
            for byte in mac.finalize().into_bytes() {
                // 250 = 25 * 10: taking only bytes below it keeps every
                // digit equally likely.
                if byte < 250 && digits.len() < usize::from(length.get()) {
                    digits.push(char::from(b'0' + byte % 10));
                }
            }
            counter += 1;
        }
        Secret::new(digits)
    }

    /// Whether `guess` is the code, compared in constant time.
    pub fn is_code(&self, id: &VerificationId, salt: &[u8; 16], length: CodeLength, guess: &str) -> bool {
        constant_time_eq(self.code(id, salt, length).expose().as_bytes(), guess.as_bytes())
    }
}

/// A fresh salt from the OS-seeded CSPRNG.
pub fn new_salt() -> [u8; 16] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> VerifyKey {
        VerifyKey::from_bytes([7; 32])
    }

    #[test]
    fn codes_are_stable_digits_of_the_asked_length() {
        let id = VerificationId::generate();
        let salt = new_salt();
        for n in CodeLength::MIN..=CodeLength::MAX {
            let len = CodeLength::new(u64::from(n)).unwrap();
            let code = key().code(&id, &salt, len);
            assert_eq!(code.len(), usize::from(n));
            assert!(code.expose().bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(key().code(&id, &salt, len), code, "the same inputs give the same code");
            assert!(key().is_code(&id, &salt, len, code.expose()));
            assert!(!key().is_code(&id, &salt, len, &code.expose()[1..]));
        }
        assert_eq!(CodeLength::new(3), None);
        assert_eq!(CodeLength::new(11), None);
    }

    #[test]
    fn another_salt_id_or_key_gives_another_code() {
        let id = VerificationId::generate();
        let salt = new_salt();
        let len = CodeLength::new(10).unwrap();
        let code = key().code(&id, &salt, len);
        assert_ne!(key().code(&id, &new_salt(), len), code);
        assert_ne!(key().code(&VerificationId::generate(), &salt, len), code);
        assert_ne!(VerifyKey::from_bytes([8; 32]).code(&id, &salt, len), code);
    }

    /// Each position's digits are uniform: 20,000 codes, every digit's count
    /// within 5 standard deviations of 2,000 at every position (a bias of a
    /// mod-256 mapping, 0-5 drawn 4% more often, would show as ~80 extra).
    /// Fixed id and salts: the outcome is the same on every run.
    #[test]
    fn digits_are_uniform() {
        let id = VerificationId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let len = CodeLength::new(6).unwrap();
        let mut counts = [[0u32; 10]; 6];
        for i in 0..20_000u128 {
            let code = key().code(&id, &i.to_be_bytes(), len);
            for (i, b) in code.expose().bytes().enumerate() {
                counts[i][usize::from(b - b'0')] += 1;
            }
        }
        for position in counts {
            for n in position {
                assert!((1_790..=2_210).contains(&n), "{position:?}");
            }
        }
    }

    #[test]
    fn the_key_file_is_made_once_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("voice-otp-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/verify.key");
        let made = VerifyKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = VerifyKey::load_or_create(&path).unwrap();
        let (id, salt, len) = (VerificationId::generate(), new_salt(), CodeLength::DEFAULT);
        assert_eq!(made.code(&id, &salt, len), again.code(&id, &salt, len));
        assert!(!format!("{made:?}").contains(&hex::encode(made.0)));
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(VerifyKey::load_or_create(&path), Err(KeyError::Malformed(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
