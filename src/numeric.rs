//! Numbers between Rust and SQL: exact, or an error. Every conversion of a
//! number between duroxide's types and the database's goes through here.
//!
//! * **Into SQL** (ids, limits, durations, timestamps handed to the
//!   provider): a value the SQL side cannot use as it is (an id beyond
//!   `BIGINT`, a count beyond `INT`, a duration or timestamp beyond what
//!   PostgreSQL's timestamp arithmetic computes) is refused with the
//!   permanent [`Error::Data`] before anything is sent. Builder options
//!   that become server settings are checked the same way when the provider
//!   is built ([`Error::InvalidOption`], see [`MAX_SETTING_MS`]).
//! * **Out of SQL** (counts, ids, versions and times read back): a stored
//!   value that does not fit its Rust type (a negative count or id, a time
//!   before 1970) was not written by this crate, and is reported as
//!   [`Error::Data`]. The one exception is the path that disposes of
//!   undecodable queue rows, which treats such an id like a missing one.
//!
//! Nothing is clamped. Clamping changes what a call does (another row, more
//! or fewer rows, another time) without telling anyone; and a value beyond
//! what the server computes with would only move the failure into the
//! server, whose error this crate cannot tell apart from a transient one
//! (see [`Error`]), so the call would be retried in vain. The limits are far
//! beyond any real id, count, duration or date, so only mistakes and
//! sentinel values such as `u64::MAX` or `Duration::MAX` meet them.

use std::time::Duration;

use diesel::pg::data_types::PgTimestamp;

use crate::error::{Error, Result};

/// Longest duration passed to SQL: 1000 years (365,250 days). The
/// procedures add durations to `now()` or subtract them from it, and
/// PostgreSQL's timestamps span 4713 BC to 294276 AD.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365_250 * 86_400);

/// Latest Unix-millisecond time passed to SQL: 9999-12-31T23:59:59.999Z.
pub(crate) const MAX_UNIX_MS: u64 = 253_402_300_799_999;

/// Largest millisecond value of a server setting (`statement_timeout`,
/// `lock_timeout`): PostgreSQL keeps them as `int`.
pub(crate) const MAX_SETTING_MS: u128 = i32::MAX as u128;

/// Milliseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_UNIX_MS: i64 = 946_684_800_000;

/// An id or other value as a `BIGINT` parameter.
pub(crate) fn to_bigint(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Data(format!("{what} {v} exceeds the BIGINT range")))
}

/// A count or version component as an `INT` parameter.
pub(crate) fn to_int(v: impl Into<u64>, what: &str) -> Result<i32> {
    let v = v.into();
    i32::try_from(v).map_err(|_| Error::Data(format!("{what} {v} exceeds the INT range")))
}

/// A duration as the procedures' milliseconds (`BIGINT`), sub-millisecond
/// parts dropped; at most [`MAX_DURATION`].
pub(crate) fn duration_ms(d: Duration, what: &str) -> Result<i64> {
    if d > MAX_DURATION {
        return Err(Error::Data(format!(
            "{what} of {d:?} exceeds the longest duration the store computes with ({} days)",
            MAX_DURATION.as_secs() / 86_400
        )));
    }
    // At most 3.2e13: fits.
    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A Unix-millisecond time as the procedures' `BIGINT`; at most [`MAX_UNIX_MS`].
pub(crate) fn unix_ms(ms: u64, what: &str) -> Result<i64> {
    if ms > MAX_UNIX_MS {
        return Err(Error::Data(format!(
            "{what} {ms} ms is later than the year 9999, beyond what the store computes with"
        )));
    }
    // At most 2.6e14: fits.
    Ok(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// A stored `BIGINT` id, count or version as `u64`.
pub(crate) fn from_bigint(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| negative(v, what))
}

/// A stored count as `usize`.
pub(crate) fn to_count(v: i64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| negative(v, what))
}

/// A stored time as Unix milliseconds, truncated to the millisecond.
pub(crate) fn from_timestamp(t: PgTimestamp, what: &str) -> Result<u64> {
    let ms = t.0.div_euclid(1000).saturating_add(PG_EPOCH_UNIX_MS);
    u64::try_from(ms).map_err(|_| Error::Data(format!("stored {what} is before 1970 ({ms} ms)")))
}

fn negative(v: i64, what: &str) -> Error {
    Error::Data(format!("stored {what} {v} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_into_sql_are_exact_or_refused() {
        assert_eq!(to_bigint(i64::MAX as u64, "id").unwrap(), i64::MAX);
        let err = to_bigint(u64::MAX, "execution_id").unwrap_err();
        assert!(
            matches!(err, Error::Data(_)) && !err.is_retryable(),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("execution_id 18446744073709551615")
        );

        assert_eq!(to_int(i32::MAX as u32, "limit").unwrap(), i32::MAX);
        assert!(matches!(to_int(u32::MAX, "limit"), Err(Error::Data(_))));
        assert!(matches!(to_int(u64::MAX, "major"), Err(Error::Data(_))));

        assert_eq!(duration_ms(Duration::from_micros(1999), "d").unwrap(), 1);
        assert_eq!(
            duration_ms(MAX_DURATION, "d").unwrap(),
            365_250 * 86_400 * 1000
        );
        let err = duration_ms(Duration::MAX, "lock timeout").unwrap_err();
        assert!(matches!(err, Error::Data(_)), "{err}");
        assert!(err.to_string().contains("lock timeout"), "{err}");
        assert!(duration_ms(MAX_DURATION + Duration::from_secs(1), "d").is_err());

        assert_eq!(unix_ms(MAX_UNIX_MS, "t").unwrap(), MAX_UNIX_MS as i64);
        assert!(matches!(unix_ms(u64::MAX, "t"), Err(Error::Data(_))));
        assert!(matches!(unix_ms(MAX_UNIX_MS + 1, "t"), Err(Error::Data(_))));
    }

    #[test]
    fn values_out_of_sql_are_exact_or_corrupt() {
        assert_eq!(from_bigint(0, "id").unwrap(), 0);
        assert_eq!(from_bigint(i64::MAX, "id").unwrap(), i64::MAX as u64);
        let err = from_bigint(-1, "execution id").unwrap_err();
        assert!(
            matches!(err, Error::Data(_)) && !err.is_retryable(),
            "{err}"
        );
        assert!(err.to_string().contains("execution id -1"), "{err}");
        assert_eq!(to_count(7, "n").unwrap(), 7);
        assert!(matches!(to_count(-7, "n"), Err(Error::Data(_))));
    }

    #[test]
    fn stored_times_are_unix_milliseconds() {
        // 2000-01-01 is PostgreSQL's epoch.
        assert_eq!(
            from_timestamp(PgTimestamp(0), "t").unwrap(),
            PG_EPOCH_UNIX_MS as u64
        );
        assert_eq!(
            from_timestamp(PgTimestamp(1_999), "t").unwrap(),
            PG_EPOCH_UNIX_MS as u64 + 1
        );
        // 1970-01-01 itself, and one microsecond before it.
        let unix_epoch_us = -PG_EPOCH_UNIX_MS * 1000;
        assert_eq!(from_timestamp(PgTimestamp(unix_epoch_us), "t").unwrap(), 0);
        assert!(matches!(
            from_timestamp(PgTimestamp(unix_epoch_us - 1), "created_at"),
            Err(Error::Data(_))
        ));
        // -infinity does not overflow.
        assert!(from_timestamp(PgTimestamp(i64::MIN), "t").is_err());
    }
}
