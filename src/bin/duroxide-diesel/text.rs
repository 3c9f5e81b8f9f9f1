//! Plain-text output: aligned tables, UTC times, durations; and parsing of
//! the times operators type.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Rows printed with each column padded to its widest cell; columns listed
/// in `right` are right-aligned (numbers).
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = w - cell.chars().count();
            if right.contains(&i) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else if i + 1 < cells.len() {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str(cell);
            }
        }
        // An empty last cell would leave the padding before it.
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmmZ` (UTC).
pub fn time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        unix_ms % 1000
    )
}

/// A duration for people: `850ms`, `12.3s`, `4m05s`, `3h07m`, `2d04h`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// A point in time as milliseconds since the Unix epoch, from
/// `7d` / `12h` / `30m` / `45s` (that long ago), `2026-12-01` or
/// `2026-12-01T08:00:00Z` (UTC), or plain Unix milliseconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid time {s:?}: use an age (7d, 12h, 30m, 45s), a UTC date \
             (2026-12-01 or 2026-12-01T08:00:00Z) or Unix milliseconds"
        )
    };
    let s = s.trim();
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c)) {
        let n: u64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
        let secs = match unit {
            's' => n,
            'm' => n.saturating_mul(60),
            'h' => n.saturating_mul(3600),
            _ => n.saturating_mul(86_400),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970".to_owned())?;
        return Ok(now
            .saturating_sub(Duration::from_secs(secs))
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    let (date, clock) = match s.split_once(['T', ' ']) {
        Some((date, clock)) => (date, clock.trim_end_matches('Z')),
        None => (s, "00:00:00"),
    };
    let num = |part: Option<&str>| part.and_then(|p| p.parse::<u32>().ok()).ok_or_else(bad);
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next())?, num(d.next())?, num(d.next())?);
    let mut c = clock.split(':');
    let (hh, mm, ss) = (num(c.next())?, num(c.next())?, num(c.next().or(Some("0")))?);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) || y < 1970 {
        return Err(bad());
    }
    if hh > 23 || mm > 59 || ss > 59 {
        return Err(bad());
    }
    let days = days_from_civil(y.into(), m, day);
    let secs = days * 86_400 + i64::from(hh * 3600 + mm * 60 + ss);
    u64::try_from(secs * 1000).map_err(|_| bad())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm, public domain).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let ms = parse_time("2026-12-03T16:38:09Z").unwrap();
        assert_eq!(time(ms + 5), "2026-12-03 16:38:09.005Z");
        assert_eq!(parse_time("2000-03-01").unwrap(), 951_868_800_000);
        assert_eq!(parse_time("1234").unwrap(), 1234);
        assert!(parse_time("2026-13-01").is_err());
        assert!(parse_time("soon").is_err());
        let day_ago = parse_time("1d").unwrap();
        let hours_ago = parse_time("24h").unwrap();
        assert!(hours_ago.abs_diff(day_ago) < 5_000);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration(Duration::from_secs(3 * 86_400 + 7200)), "3d02h");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["queue", "ready"],
            &[vec!["worker".into(), "12".into()]],
            &[1],
        );
        assert_eq!(t, "queue   ready\nworker     12\n");
    }
}
