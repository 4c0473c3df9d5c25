//! Public identifiers (calls, verifications) as 32 lowercase hex digits:
//! 128 bits from the OS-seeded CSPRNG, or (calls) the creation time in
//! ms, 48 bits, then 80 such bits. Unguessable but no secret: they are in
//! API replies, webhooks and logs.
//!
//! [`hex_id!`](crate::hex_id) defines such an id type; its `parse` takes only the exact
//! shape `generate` makes, so an id read back from a URL, Asterisk or the
//! database is known to be plain hex (safe in an AMI header, a log line, a
//! file name).

/// 32 lowercase hex digits of fresh randomness.
pub fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// 32 lowercase hex digits: `created_ms` (Unix ms, 48 bits: until the year
/// 10889) then 80 bits of fresh randomness. Ids made this way sort by
/// creation time, so a database index keyed by them grows at one end.
pub fn time_ordered_hex(created_ms: i64) -> String {
    let time = (created_ms.max(0) as u64) & 0xffff_ffff_ffff;
    format!("{time:012x}{}", hex::encode(rand::random::<[u8; 10]>()))
}

/// Whether `s` is the shape [`random_hex`] and [`time_ordered_hex`] make.
pub fn is_hex_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Defines `$name`, a [`random_hex`] id with `generate`, `parse`, `as_str`,
/// `Display` and a transparent `Serialize`.
///
/// `hex_id!(time_ordered ...)` makes ids of [`time_ordered_hex`] instead,
/// with `generate_at(created_ms)` beside `generate` (now).
#[macro_export]
macro_rules! hex_id {
    (time_ordered $(#[$doc:meta])* $name:ident) => {
        $crate::hex_id!(@common $(#[$doc])* $name);

        impl $name {
            /// A fresh id for something made now.
            pub fn generate() -> $name {
                $name::generate_at($crate::time::now_ms())
            }

            /// A fresh id for something made at `created_ms` (Unix ms).
            pub fn generate_at(created_ms: i64) -> $name {
                $name($crate::id::time_ordered_hex(created_ms))
            }
        }
    };
    ($(#[$doc:meta])* $name:ident) => {
        $crate::hex_id!(@common $(#[$doc])* $name);

        impl $name {
            /// A fresh random id.
            pub fn generate() -> $name {
                $name($crate::id::random_hex())
            }
        }
    };
    (@common $(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Accepts only the exact shape [`Self::generate`] makes.
            pub fn parse(s: &str) -> Option<$name> {
                $crate::id::is_hex_id(s).then(|| $name(s.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    hex_id!(
        /// A test id.
        TestId
    );

    #[test]
    fn ids_are_random_hex_and_round_trip() {
        let a = TestId::generate();
        assert_ne!(a, TestId::generate());
        assert!(is_hex_id(a.as_str()));
        assert_eq!(TestId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(a.to_string(), a.as_str());
        assert!(is_hex_id(&time_ordered_hex(1_764_580_000_123)));
        for bad in ["", "xyz", &"A".repeat(32), &"a".repeat(31), &"a".repeat(33), "0123456789abcdef0123456789abcdeg"] {
            assert_eq!(TestId::parse(bad), None, "{bad:?}");
        }
    }
}
