//! The per-call FastAGI token: what proves that a FastAGI session comes
//! from the channel we originated, not from any local process that knows
//! the call id.
//!
//! The call id is no secret (it is in API replies, webhooks, logs, CDRs,
//! and it is the channel's Uniqueid), and the FastAGI port is reachable by
//! every local process. So each dial makes a fresh random token, sends it
//! with the `Originate` as the channel variable [`TOKEN_VARIABLE`], and
//! stores only its BLAKE3 hash with the call. The FastAGI session's first
//! command reads the variable back from the channel (`GET VARIABLE`); only
//! a peer that is that very channel can answer it. The token never appears
//! in the dialplan's arguments, so Asterisk's verbose log does not show it.
//!
//! 128 random bits make guessing hopeless, so a plain fast hash is right
//! (no bcrypt): the hash only keeps a copy of the database from being a
//! list of live tokens.

use crate::secret::{Secret, constant_time_eq};

/// The channel variable that carries the token.
pub const TOKEN_VARIABLE: &str = "VOICE_OTP_TOKEN";

/// The stored form of a token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not secret, but nobody needs to read it either.
        f.write_str("TokenHash(..)")
    }
}

impl TokenHash {
    /// The hash of a token as presented by a FastAGI peer.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(*blake3::hash(token.as_bytes()).as_bytes())
    }

    /// Compares with a stored hash in constant time.
    pub fn matches(&self, stored: &[u8]) -> bool {
        constant_time_eq(&self.0, stored)
    }
}

/// A fresh token and its hash: 128 bits from the OS-seeded CSPRNG, as 32
/// lowercase hex digits (safe in an AMI `Variable` header).
pub fn generate() -> (Secret, TokenHash) {
    let bytes: [u8; 16] = rand::random();
    let token = hex::encode(bytes);
    let hash = TokenHash::of(&token);
    (Secret::new(token), hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_hex_and_match_only_their_hash() {
        let (a, ha) = generate();
        let (b, hb) = generate();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.len(), 32);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(TokenHash::of(a.expose()).matches(&ha.0));
        assert!(!TokenHash::of(b.expose()).matches(&ha.0));
        assert!(!TokenHash::of("").matches(&hb.0));
        assert!(!TokenHash::of(a.expose()).matches(&ha.0[..31]), "a truncated stored hash never matches");
        assert!(!format!("{ha:?}").contains(&hex::encode(ha.0)));
    }
}
