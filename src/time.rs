//! Time as the daemon stores and shows it: Unix milliseconds in the
//! database, RFC 3339 UTC text (`2026-12-01T09:30:00.123Z`) in the APIs,
//! the CLI and webhooks. The calendar arithmetic is jiff's; this leaf
//! module is the one place that knows the formats.

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds:
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`. Out-of-range values (beyond jiff's years
/// -9999..=9999, only a corrupt row could hold one) print as the epoch
/// offset in ms, so a listing never fails on one bad row.
pub fn format_ms(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Err(_) => format!("{ms}ms"),
    }
}

/// Reads an RFC 3339 timestamp (any offset, `Z` included) as Unix
/// milliseconds; `None` for anything else.
pub fn parse_ms(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_795_651_200_123), "2026-11-26T00:00:00.123Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_ms(i64::MAX), format!("{}ms", i64::MAX));
    }

    #[test]
    fn parses_what_it_formats_and_other_offsets() {
        for ms in [0, 1_795_651_200_123, 951_782_400_000, -1] {
            assert_eq!(parse_ms(&format_ms(ms)), Some(ms));
        }
        assert_eq!(parse_ms("2026-11-26T05:00:00.123+05:00"), Some(1_795_651_200_123));
        assert_eq!(parse_ms("2026-11-26"), None);
        assert_eq!(parse_ms("yesterday"), None);
    }

    #[test]
    fn now_is_after_this_code_was_written() {
        assert!(now_ms() > 1_795_651_200_000);
    }
}
