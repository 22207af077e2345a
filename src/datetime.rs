//! Calendar arithmetic for the few dates we print (RFC 5322 `Date:`, `mailq` listings), so
//! that no date crate is needed. All dates are rendered in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Splits seconds since the Unix epoch into (year, month 1-12, day 1-31, hour, minute,
/// second, weekday 0 = Sunday).
pub fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 4).rem_euclid(7) as u32;
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
        weekday,
    )
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Formats a time as an RFC 5322 date: `Tue, 24 Nov 2026 14:16:26 +0000`.
pub fn rfc5322(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, wd) = civil(unix_secs(t));
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[wd as usize],
        d,
        MONTHS[mo as usize - 1],
        y,
        h,
        mi,
        s
    )
}

/// Formats a time as `2026-11-24 14:16:26` (UTC), as `mailq` listings do.
pub fn iso(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, _) = civil(unix_secs(t));
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_dates() {
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc5322(t(0)), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322(t(951_782_400)), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322(t(1_795_529_786)), "Tue, 24 Nov 2026 14:16:26 +0000");
        assert_eq!(iso(t(1_795_529_786)), "2026-11-24 14:16:26");
        assert_eq!(iso(t(4_107_542_399)), "2100-02-28 23:59:59");
    }
}
