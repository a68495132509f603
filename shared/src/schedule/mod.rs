//! Schedule expressions: when a job's runs are due.
//!
//! Forms, each in the job's IANA time zone (default UTC):
//! - one-shot ISO 8601 / RFC 3339 instants (`2016-11-22T19:39:22Z`; without an offset, UTC, as seed
//!   003's `2016-11-18T23:59:59`); a past instant runs at once;
//! - 5-field Unix cron (`*/10 * * * *`), `?` accepted as `*` in any field (minion's `* * * ? *`), names,
//!   steps, ranges, lists, the Vixie rule (day-of-month OR day-of-week when both are restricted), and
//!   6 fields with seconds first;
//! - descriptors `@yearly @annually @monthly @weekly @daily @midnight @hourly` and `@every <duration>`;
//! - the AWS forms `cron(min hour dom month dow year)`, `rate(5 minutes)` and `at(2030-01-01T10:00:00)`.
//!
//! Patterns are matched by the `croner` crate on the zone's wall clock; [`wall_clock`] decides what a
//! wall time fires at on the days the clock changes.

#[cfg(test)]
mod dst_tests;
mod exclusions;
pub mod jitter;
mod wall_clock;

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};

use crate::error::{Error, Result};
pub use exclusions::{Exclusions, MAX_EXCLUSIONS};
pub use wall_clock::HourField;
use wall_clock::ZonedCron;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Runs once, at this instant (at once if it has passed).
    Once(DateTime<Utc>),
    /// Runs at every match of a cron pattern, read on a time zone's wall clock.
    Cron(Box<ZonedCron>),
    /// Runs every `period`, counted from `anchor` (the job's creation): `@every`, `rate(...)`.
    Every {
        period: chrono::Duration,
        anchor: DateTime<Utc>,
    },
}

/// A time zone by IANA name; `field` names the input for the error.
pub fn parse_time_zone(name: &str, field: &str) -> Result<Tz> {
    Tz::from_str(name.trim()).map_err(|_| {
        Error::invalid(
            field,
            format!("{name:?} is not an IANA time zone such as UTC or America/New_York"),
        )
    })
}

impl Schedule {
    /// Parses `expression` in time zone `tz`; `anchor` is where `@every`/`rate` periods count from.
    /// `field` names the input, for error messages. A recurring expression that can never fire (Feb 30)
    /// is refused.
    pub fn parse(expression: &str, tz: Tz, anchor: DateTime<Utc>, field: &str) -> Result<Schedule> {
        // Instants are kept to the millisecond everywhere (Redis scores, fire keys, messages).
        let anchor = truncate_to_millis(anchor);
        let text = expression.trim();
        if text.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if text.len() > 256 {
            return Err(Error::invalid(field, "longer than 256 characters"));
        }
        let invalid = |message: String| Error::invalid(field, message);
        let schedule = if let Some(inner) = wrapped(text, "cron(") {
            let cron = parse_aws_cron(inner, tz).map_err(|e| invalid(format!("{text:?}: {e}")))?;
            Schedule::Cron(Box::new(cron))
        } else if let Some(inner) = wrapped(text, "rate(") {
            let period = parse_rate(inner).map_err(|e| invalid(format!("{text:?}: {e}")))?;
            Schedule::Every { period, anchor }
        } else if let Some(inner) = wrapped(text, "at(") {
            let local = NaiveDateTime::parse_from_str(inner.trim(), "%Y-%m-%dT%H:%M:%S")
                .map_err(|_| invalid(format!("{text:?}: at() takes yyyy-mm-ddThh:mm:ss")))?;
            // A local time the clock skips means the first instant after the gap.
            Schedule::Once(wall_clock::instant_of(tz, local))
        } else if let Some(duration) = text.strip_prefix("@every") {
            let period = parse_every(duration).map_err(|e| invalid(format!("{text:?}: {e}")))?;
            Schedule::Every { period, anchor }
        } else if text.starts_with('@') {
            let pattern = descriptor(text).ok_or_else(|| {
                invalid(format!(
                    "{text:?} is not one of @yearly @annually @monthly @weekly @daily @midnight @hourly @every"
                ))
            })?;
            Schedule::Cron(Box::new(parse_unix_cron(pattern, tz).map_err(invalid)?))
        } else if text.split_whitespace().count() >= 5 {
            Schedule::Cron(Box::new(parse_unix_cron(text, tz).map_err(invalid)?))
        } else if let Some(at) = parse_instant(text) {
            Schedule::Once(truncate_to_millis(at))
        } else {
            return Err(invalid(format!(
                "{text:?} is neither an ISO 8601 date-time (2016-11-22T19:39:22Z) nor a cron expression \
                 (*/10 * * * *, @hourly, @every 90s, cron(0 12 * * ? *), rate(5 minutes))"
            )));
        };
        if let Schedule::Once(at) = &schedule {
            check_instant(*at, field)?;
        }
        if schedule.is_recurring() && schedule.next_after(anchor.min(Utc::now())).is_none() {
            return Err(invalid(format!("{text:?} never fires")));
        }
        Ok(schedule)
    }

    pub fn is_recurring(&self) -> bool {
        !matches!(self, Schedule::Once(_))
    }

    /// The first fire at or after `from`. A one-shot's instant is its first fire even when past.
    pub fn first_at_or_after(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Once(at) => Some(*at),
            Schedule::Cron(_) | Schedule::Every { .. } => {
                self.next_after(from - chrono::Duration::milliseconds(1))
            }
        }
    }

    /// The first fire strictly after `after`; `None` when there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Once(at) => (*at > after).then_some(*at),
            Schedule::Cron(cron) => cron.next_after(after),
            Schedule::Every { period, anchor } => {
                let period_ms = period.num_milliseconds();
                let elapsed = (after - *anchor).num_milliseconds();
                // Fires are anchor + k * period for k >= 1.
                let k = if elapsed < period_ms {
                    1
                } else {
                    elapsed / period_ms + 1
                };
                anchor.checked_add_signed(chrono::Duration::milliseconds(period_ms.checked_mul(k)?))
            }
        }
    }

    /// The next `count` fires strictly after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut fires = Vec::with_capacity(count);
        let mut cursor = after;
        while fires.len() < count {
            match self.next_after(cursor) {
                Some(next) => {
                    fires.push(next);
                    cursor = next;
                }
                None => break,
            }
        }
        fires
    }
}

/// The instant without its sub-millisecond part.
pub fn truncate_to_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

fn wrapped<'a>(text: &'a str, open: &str) -> Option<&'a str> {
    let lower = text.to_ascii_lowercase();
    if lower.starts_with(open) && text.ends_with(')') {
        Some(&text[open.len()..text.len() - 1])
    } else {
        None
    }
}

fn descriptor(text: &str) -> Option<&'static str> {
    Some(match text.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

/// 5 fields (minute first) or 6 (seconds first); `?` means `*` in every field.
fn parse_unix_cron(text: &str, tz: Tz) -> Result<ZonedCron, String> {
    let fields: Vec<String> = text
        .split_whitespace()
        .map(|f| f.replace('?', "*"))
        .collect();
    if !(5..=6).contains(&fields.len()) {
        return Err(format!(
            "{text:?} has {} fields; cron takes 5 (minute hour day month weekday) or 6 (seconds first)",
            fields.len()
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .dom_and_dow(vixie_and(
            &fields[fields.len() - 3],
            &fields[fields.len() - 1],
        ))
        .build()
        .parse(&fields.join(" "))
        .map_err(|e| format!("{text:?} is not a valid cron expression: {e}"))?;
    Ok(ZonedCron::new(
        cron,
        tz,
        HourField::of(&fields[fields.len() - 4]),
    ))
}

/// The Vixie day rule: a day of the month and a day of the week both restricted match either (OR);
/// a day field that starts with `*` (`*`, `*/2`) counts as unrestricted, and then both must match.
fn vixie_and(day_of_month: &str, day_of_week: &str) -> bool {
    day_of_month.starts_with('*') || day_of_week.starts_with('*')
}

/// AWS `cron(minutes hours day-of-month month day-of-week year)`: weekdays 1-7 are SUN-SAT.
fn parse_aws_cron(inner: &str, tz: Tz) -> Result<ZonedCron, String> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    if fields.len() != 6 {
        return Err(format!(
            "AWS cron takes 6 fields (minutes hours day-of-month month day-of-week year), got {}",
            fields.len()
        ));
    }
    let fields: Vec<String> = fields.iter().map(|f| f.replace('?', "*")).collect();
    let cron = CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Required)
        .alternative_weekdays(true)
        .dom_and_dow(vixie_and(&fields[2], &fields[4]))
        .build()
        .parse(&format!("0 {}", fields.join(" ")))
        .map_err(|e| format!("not a valid AWS cron expression: {e}"))?;
    Ok(ZonedCron::new(cron, tz, HourField::of(&fields[1])))
}

/// `rate(value unit)`, unit minute(s), hour(s) or day(s).
fn parse_rate(inner: &str) -> Result<chrono::Duration, String> {
    let mut parts = inner.split_whitespace();
    let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("rate takes a value and a unit: rate(5 minutes)".into());
    };
    let value: i64 = value
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or("the rate's value must be a positive whole number")?;
    let unit_secs = match unit.to_ascii_lowercase().as_str() {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        other => {
            return Err(format!(
                "unknown rate unit {other:?}; use minutes, hours or days"
            ))
        }
    };
    chrono::Duration::try_seconds(value.checked_mul(unit_secs).ok_or("rate too long")?)
        .ok_or_else(|| "rate too long".into())
}

/// `@every <duration>`: `90s`, `5m`, `1h30m`, `2h 15m`; at least one second.
fn parse_every(text: &str) -> Result<chrono::Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("@every needs a duration, such as @every 90s".into());
    }
    let std = humantime::parse_duration(text).map_err(|e| format!("bad duration: {e}"))?;
    if std < std::time::Duration::from_secs(1) {
        return Err("the period must be at least one second".into());
    }
    chrono::Duration::from_std(std).map_err(|_| "the period is too long".into())
}

/// The years an instant may fall in: what every store, message and client reads back.
pub const YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

/// Refuses an instant outside [`YEARS`], naming `field`.
pub fn check_instant(at: DateTime<Utc>, field: &str) -> Result<()> {
    use chrono::Datelike;
    if YEARS.contains(&at.year()) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{} is outside the years {} to {}",
                at.to_rfc3339(),
                YEARS.start(),
                YEARS.end()
            ),
        ))
    }
}

/// An RFC 3339 instant, or an ISO 8601 local date-time (read as UTC), or a bare date (midnight UTC).
pub fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    // RFC 3339 needs seconds and an offset; accept the common ISO 8601 variants too.
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

    #[test]
    fn instants_outside_1970_to_9999_are_refused_naming_the_field() {
        let now = Utc::now();
        for text in ["-0001-01-01T00:00:00", "1969-12-31T23:59:59Z", "0100-01-01"] {
            let err = Schedule::parse(text, Tz::UTC, now, "schedule").unwrap_err();
            assert_eq!(err.field.as_deref(), Some("schedule"), "{text}");
            assert!(err.message.contains("1970 to 9999"), "{text}: {err}");
        }
        assert!(Schedule::parse("at(0001-01-01T00:00:00)", Tz::UTC, now, "schedule").is_err());
        assert!(Schedule::parse("9999-12-31T23:59:59Z", Tz::UTC, now, "schedule").is_ok());
        assert!(Schedule::parse("1970-01-01T00:00:00Z", Tz::UTC, now, "schedule").is_ok());
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn parse(expression: &str) -> Schedule {
        parse_in(expression, "UTC")
    }

    fn parse_in(expression: &str, tz: &str) -> Schedule {
        let anchor = utc(2026, 1, 1, 0, 0, 0);
        Schedule::parse(
            expression,
            parse_time_zone(tz, "timezone").unwrap(),
            anchor,
            "schedule",
        )
        .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// The next `n` fires after `from`.
    fn fires(expression: &str, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        parse(expression).upcoming(from, n)
    }

    #[test]
    fn seed_003_instants_parse() {
        let schedule = parse("2016-11-22T19:39:22Z");
        assert_eq!(
            schedule.first_at_or_after(Utc::now()),
            Some(utc(2016, 11, 22, 19, 39, 22))
        );
        // No offset means UTC.
        let schedule = parse("2016-11-18T23:59:59");
        assert_eq!(
            schedule.first_at_or_after(Utc::now()),
            Some(utc(2016, 11, 18, 23, 59, 59))
        );
        assert!(!schedule.is_recurring());
        assert_eq!(schedule.next_after(utc(2016, 11, 18, 23, 59, 59)), None);
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
    fn question_mark_is_a_wildcard_in_any_field() {
        let from = utc(2026, 3, 1, 10, 0, 30);
        assert_eq!(
            fires("* * * ? *", from, 3),
            vec![
                utc(2026, 3, 1, 10, 1, 0),
                utc(2026, 3, 1, 10, 2, 0),
                utc(2026, 3, 1, 10, 3, 0)
            ]
        );
        assert_eq!(
            fires("0 12 ? * ?", from, 1),
            vec![utc(2026, 3, 1, 12, 0, 0)]
        );
    }

    #[test]
    fn unix_cron_names_steps_ranges_lists() {
        // 2026-03-02 is a Monday.
        let from = utc(2026, 3, 1, 0, 0, 0);
        assert_eq!(
            fires("*/20 9-10 * * mon-fri", from, 4),
            vec![
                utc(2026, 3, 2, 9, 0, 0),
                utc(2026, 3, 2, 9, 20, 0),
                utc(2026, 3, 2, 9, 40, 0),
                utc(2026, 3, 2, 10, 0, 0)
            ]
        );
        assert_eq!(
            fires("0 0 1 jan,jul *", from, 2),
            vec![utc(2026, 7, 1, 0, 0, 0), utc(2027, 1, 1, 0, 0, 0)]
        );
        assert_eq!(
            fires("15,45 1 * * *", from, 2),
            vec![utc(2026, 3, 1, 1, 15, 0), utc(2026, 3, 1, 1, 45, 0)]
        );
    }

    #[test]
    fn vixie_rule_ors_day_of_month_and_day_of_week() {
        // The 13th, or any Friday: 2026-03-06 (Fri), 2026-03-13 (Fri and 13th), 2026-03-20 (Fri).
        let from = utc(2026, 3, 1, 0, 0, 0);
        assert_eq!(
            fires("0 0 13 * fri", from, 3),
            vec![
                utc(2026, 3, 6, 0, 0, 0),
                utc(2026, 3, 13, 0, 0, 0),
                utc(2026, 3, 20, 0, 0, 0)
            ]
        );
    }

    #[test]
    fn descriptors() {
        let from = utc(2026, 3, 4, 10, 30, 0);
        assert_eq!(fires("@hourly", from, 1), vec![utc(2026, 3, 4, 11, 0, 0)]);
        assert_eq!(fires("@daily", from, 1), vec![utc(2026, 3, 5, 0, 0, 0)]);
        assert_eq!(fires("@midnight", from, 1), vec![utc(2026, 3, 5, 0, 0, 0)]);
        assert_eq!(fires("@weekly", from, 1), vec![utc(2026, 3, 8, 0, 0, 0)]);
        assert_eq!(fires("@monthly", from, 1), vec![utc(2026, 4, 1, 0, 0, 0)]);
        assert_eq!(fires("@yearly", from, 1), vec![utc(2027, 1, 1, 0, 0, 0)]);
        assert_eq!(fires("@annually", from, 1), vec![utc(2027, 1, 1, 0, 0, 0)]);
    }

    #[test]
    fn every_counts_from_the_anchor() {
        // Anchor 2026-01-01T00:00:00Z.
        let from = utc(2026, 1, 1, 0, 2, 0);
        assert_eq!(
            fires("@every 90s", from, 3),
            vec![
                utc(2026, 1, 1, 0, 3, 0),
                utc(2026, 1, 1, 0, 4, 30),
                utc(2026, 1, 1, 0, 6, 0)
            ]
        );
        assert_eq!(
            fires("@every 1h30m", from, 1),
            vec![utc(2026, 1, 1, 1, 30, 0)]
        );
        let schedule = parse("@every 90s");
        assert_eq!(
            schedule.first_at_or_after(utc(2026, 1, 1, 0, 0, 0)),
            Some(utc(2026, 1, 1, 0, 1, 30))
        );
        assert_eq!(
            schedule.first_at_or_after(utc(2026, 1, 1, 0, 3, 0)),
            Some(utc(2026, 1, 1, 0, 3, 0))
        );
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let from = utc(2026, 3, 1, 0, 0, 0);
        assert_eq!(
            fires("*/15 * * * * *", from, 3),
            vec![
                utc(2026, 3, 1, 0, 0, 15),
                utc(2026, 3, 1, 0, 0, 30),
                utc(2026, 3, 1, 0, 0, 45)
            ]
        );
    }

    #[test]
    fn aws_forms() {
        let from = utc(2026, 3, 1, 13, 0, 0);
        assert_eq!(
            fires("cron(0 12 * * ? *)", from, 2),
            vec![utc(2026, 3, 2, 12, 0, 0), utc(2026, 3, 3, 12, 0, 0)]
        );
        // AWS weekdays: 2 is Monday.
        assert_eq!(
            fires("cron(0 8 ? * 2 *)", from, 1),
            vec![utc(2026, 3, 2, 8, 0, 0)]
        );
        assert_eq!(
            fires("cron(30 9 1 1 ? 2027)", from, 1),
            vec![utc(2027, 1, 1, 9, 30, 0)]
        );
        assert_eq!(
            fires("rate(5 minutes)", utc(2026, 1, 1, 0, 7, 0), 2),
            vec![utc(2026, 1, 1, 0, 10, 0), utc(2026, 1, 1, 0, 15, 0)]
        );
        assert_eq!(
            fires("rate(1 hour)", utc(2026, 1, 1, 0, 7, 0), 1),
            vec![utc(2026, 1, 1, 1, 0, 0)]
        );
        let at = parse_in("at(2030-06-01T10:00:00)", "Europe/Paris");
        assert_eq!(at.first_at_or_after(from), Some(utc(2030, 6, 1, 8, 0, 0)));
    }

    #[test]
    fn time_zones_shift_local_times() {
        let schedule = parse_in("0 9 * * *", "America/New_York");
        assert_eq!(
            schedule.next_after(utc(2026, 7, 1, 0, 0, 0)),
            Some(utc(2026, 7, 1, 13, 0, 0))
        );
        assert_eq!(
            schedule.next_after(utc(2026, 12, 1, 0, 0, 0)),
            Some(utc(2026, 12, 1, 14, 0, 0))
        );
    }

    #[test]
    fn a_time_skipped_by_dst_fires_once_right_after_the_gap() {
        // 2026-03-08 in New York: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
        let schedule = parse_in("30 2 * * *", "America/New_York");
        let fires = schedule.upcoming(utc(2026, 3, 7, 12, 0, 0), 3);
        assert_eq!(
            fires,
            vec![
                utc(2026, 3, 8, 7, 0, 0),  // 03:00 EDT, the first instant after the gap
                utc(2026, 3, 9, 6, 30, 0), // 02:30 EDT
                utc(2026, 3, 10, 6, 30, 0)
            ]
        );
    }

    #[test]
    fn a_time_that_occurs_twice_fires_once() {
        // 2026-11-01 in New York: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        let schedule = parse_in("30 1 * * *", "America/New_York");
        let fires = schedule.upcoming(utc(2026, 10, 31, 12, 0, 0), 3);
        assert_eq!(
            fires,
            vec![
                utc(2026, 11, 1, 5, 30, 0), // 01:30 EDT, the first of the two
                utc(2026, 11, 2, 6, 30, 0), // 01:30 EST the next day
                utc(2026, 11, 3, 6, 30, 0)
            ]
        );
    }

    #[test]
    fn bad_schedules_are_refused_with_the_field_named() {
        let tz = Tz::UTC;
        for bad in [
            "",
            "tomorrow",
            "2016-13-01T00:00:00Z",
            "61 * * * *",
            "* * * *",
            "* * * * * * * *",
            "0 0 30 2 *",
            "@fortnightly",
            "@every",
            "@every 0s",
            "@every soon",
            "rate(0 minutes)",
            "rate(5 fortnights)",
            "cron(0 12 * *)",
            "at(tomorrow)",
        ] {
            let err = Schedule::parse(bad, tz, Utc::now(), "schedule").unwrap_err();
            assert_eq!(err.field.as_deref(), Some("schedule"), "{bad:?}");
        }
        let err = Schedule::parse("0 0 30 2 *", tz, Utc::now(), "schedule").unwrap_err();
        assert!(err.message.contains("never fires"), "{err}");
        assert!(parse_time_zone("Mars/Olympus", "timezone").is_err());
    }
}
