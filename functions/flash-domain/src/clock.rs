//! Timestamps are stored as Unix epoch milliseconds (cheap to compare inside a DynamoDB
//! condition) and shown to callers as RFC 3339.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

pub fn now_ms() -> Millis {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as Millis
}

pub fn to_rfc3339(ms: Millis) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// RFC 3339 with the `T` separator, whose UTC instant RFC 3339 can also show (years 0–9999),
/// so what is stored always renders back.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    if !matches!(s.as_bytes().get(10), Some(b'T' | b't')) {
        return None;
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .and_then(|t| t.checked_to_offset(time::UtcOffset::UTC))
        .filter(|t| (0..=9999).contains(&t.year()))
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as Millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_through_millis() {
        let ms = parse_rfc3339("2026-11-24T10:00:00.250Z").unwrap();
        assert_eq!(to_rfc3339(ms), "2026-11-24T10:00:00.25Z");
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2030-01-01 00:00:00Z"), None);
        // Valid RFC 3339, but past year 9999 in UTC: it could not be shown back.
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59-23:59"), None);
    }
}
