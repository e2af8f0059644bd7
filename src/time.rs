//! RFC 3339 timestamps in UTC with milliseconds, as the seeds show them:
//! `2024-12-22T10:30:00.123Z`. Written by hand to keep a date crate off the
//! dependency list; the clock is read by the caller.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub const TIMESTAMP_LEN: usize = 24;

/// Formats `at` (clamped to the Unix epoch and year 9999).
pub fn rfc3339_millis(at: SystemTime) -> [u8; TIMESTAMP_LEN] {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let millis = since_epoch.as_millis().min(253_402_300_799_999) as u64;
    let (secs, ms) = (millis / 1000, millis % 1000);
    let (days, secs_of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);

    let mut out = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut out[0..4], year as u64);
    put_digits(&mut out[5..7], month as u64);
    put_digits(&mut out[8..10], day as u64);
    put_digits(&mut out[11..13], secs_of_day / 3600);
    put_digits(&mut out[14..16], secs_of_day % 3600 / 60);
    put_digits(&mut out[17..19], secs_of_day % 60);
    put_digits(&mut out[20..23], ms);
    out
}

/// The same as a `String`, for replies that are built with serde.
pub fn rfc3339_millis_string(at: SystemTime) -> String {
    String::from_utf8_lossy(&rfc3339_millis(at)).into_owned()
}

fn put_digits(slot: &mut [u8], mut value: u64) {
    for byte in slot.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar; Howard Hinnant's `civil_from_days`, on 400-year eras.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(millis: u64) -> String {
        rfc3339_millis_string(UNIX_EPOCH + Duration::from_millis(millis))
    }

    #[test]
    fn known_instants() {
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        // The seed's example timestamp.
        assert_eq!(at(1_734_863_400_123), "2024-12-22T10:30:00.123Z");
        // A leap day and the last millisecond of a leap year.
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
        assert_eq!(at(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn before_epoch_clamps() {
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc3339_millis_string(before), "1970-01-01T00:00:00.000Z");
    }
}
