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

pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
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
    }
}
