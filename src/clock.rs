//! The wall clock as the server uses it: Unix milliseconds (stored in raft
//! commands and offline entries) and XEP-0082 date-times (delay stamps).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// XEP-0082 §3.2 DateTime profile in UTC with milliseconds
/// (`1970-01-01T00:00:00.000Z`) from Unix ms, as XEP-0203 delay stamps use.
pub fn datetime(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::datetime;

    #[test]
    fn xep_0082_datetimes() {
        assert_eq!(datetime(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(datetime(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(datetime(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }
}
