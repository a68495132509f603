//! Schedule expressions: when a job's runs are due.
//!
//! Today this knows one-shot instants: ISO 8601 / RFC 3339 (`2016-11-22T19:39:22Z`); one written without
//! an offset is UTC, as seed 003's `2016-11-18T23:59:59` is.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::error::{Error, Result};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Runs once, at this instant (at once if it has passed).
    Once(DateTime<Utc>),
}

impl Schedule {
    /// Parses a schedule expression; `field` names the input it came from, for the error message.
    pub fn parse(expression: &str, field: &str) -> Result<Schedule> {
        let text = expression.trim();
        if text.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        parse_instant(text).map(Schedule::Once).ok_or_else(|| {
            Error::invalid(
                field,
                format!(
                    "{text:?} is not an ISO 8601 date-time such as 2016-11-22T19:39:22Z \
                     (without an offset it is read as UTC)"
                ),
            )
        })
    }

    /// The first fire time strictly after `after`, or, for a one-shot, its instant if not yet fired.
    pub fn first_fire(&self) -> DateTime<Utc> {
        match self {
            Schedule::Once(at) => *at,
        }
    }

    /// The fire after the one at `fired`; `None` when the schedule has no more.
    pub fn next_after(&self, _fired: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Once(_) => None,
        }
    }
}

/// An RFC 3339 instant, or an ISO 8601 local date-time (read as UTC), or a bare date (midnight UTC).
pub fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    // RFC 3339 needs a seconds field and an upper-case T/Z in chrono; accept the common ISO 8601 variants.
    for format in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z"] {
        if let Ok(at) = DateTime::parse_from_str(text, format) {
            return Some(at.with_timezone(&Utc));
        }
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Some(naive.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn seed_003_instants_parse() {
        assert_eq!(
            Schedule::parse("2016-11-22T19:39:22Z", "schedule").unwrap(),
            Schedule::Once(utc(2016, 11, 22, 19, 39, 22))
        );
        // No offset means UTC.
        assert_eq!(
            Schedule::parse("2016-11-18T23:59:59", "schedule").unwrap(),
            Schedule::Once(utc(2016, 11, 18, 23, 59, 59))
        );
    }

    #[test]
    fn offsets_are_honoured() {
        assert_eq!(
            parse_instant("2016-11-22T21:39:22+02:00"),
            Some(utc(2016, 11, 22, 19, 39, 22))
        );
        assert_eq!(
            parse_instant("2016-11-22T21:39+0200"),
            Some(utc(2016, 11, 22, 19, 39, 0))
        );
        assert_eq!(
            parse_instant("2016-11-22"),
            Some(utc(2016, 11, 22, 0, 0, 0))
        );
    }

    #[test]
    fn malformed_schedules_name_the_field() {
        for bad in [
            "",
            "  ",
            "tomorrow",
            "2016-13-01T00:00:00Z",
            "2016-11-22T25:00:00",
        ] {
            let err = Schedule::parse(bad, "schedule").unwrap_err();
            assert_eq!(err.field.as_deref(), Some("schedule"), "{bad:?}");
        }
    }

    #[test]
    fn one_shots_fire_once() {
        let schedule = Schedule::parse("2030-01-01T00:00:00Z", "schedule").unwrap();
        let at = schedule.first_fire();
        assert_eq!(at, utc(2030, 1, 1, 0, 0, 0));
        assert_eq!(schedule.next_after(at), None);
    }
}
