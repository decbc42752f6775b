//! Durations and timestamps as Kubernetes YAML writes them.

use std::time::Duration;

use crate::route::Timestamp;

/// A Gateway API duration (GEP-2257): one to four `<1-5 digits><unit>`
/// parts, units `h`, `m`, `s`, `ms` (`10s`, `1h30m`, `250ms`, `0s`).
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else {
            match rest.as_bytes().first()? {
                b'h' => (Duration::from_secs(n * 3600), 1),
                b'm' => (Duration::from_secs(n * 60), 1),
                b's' => (Duration::from_secs(n), 1),
                _ => return None,
            }
        };
        rest = &rest[len..];
        total += unit;
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

/// An RFC 3339 timestamp (`2024-05-01T10:00:00Z`, with optional
/// fractional seconds and a `±hh:mm` offset) as seconds since the epoch.
pub(super) fn parse_timestamp(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        let padded = format!("{:0<9}", &frac[..digits]);
        nanos = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let h: i64 = num_of(&o[1..3])?;
            let m: i64 = num_of(&o[4..6])?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + min * 60 + sec - offset;
    Some(Timestamp { seconds, nanos })
}

fn num_of(t: &str) -> Option<i64> {
    t.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| t.parse().ok())?
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("0s", 0),
            ("10s", 10_000),
            ("1m30s", 90_000),
            ("250ms", 250),
            ("1h", 3_600_000),
            ("1h1m1s1ms", 3_661_001),
            ("99999ms", 99_999),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Some(Duration::from_millis(ms)), "{s}");
        }
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "100000s",
            "1h1m1s1ms1h",
            "10 s",
            "5us",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        let at = |s| parse_timestamp(s).map(|t| (t.seconds, t.nanos));
        assert_eq!(at("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(at("2024-05-01T10:00:00Z"), Some((1_714_557_600, 0)));
        assert_eq!(at("2024-05-01T12:00:00+02:00"), Some((1_714_557_600, 0)));
        assert_eq!(
            at("2024-05-01T10:00:00.5Z"),
            Some((1_714_557_600, 500_000_000))
        );
        assert_eq!(at("2000-02-29T00:00:00Z"), Some((951_782_400, 0)));
        for bad in [
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-05-01T10:00:00",
            "2024-05-01T10:00:00.Z",
            "x024-05-01T10:00:00Z",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }
}
